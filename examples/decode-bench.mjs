// One absorbed-decode microbenchmark at a FlashMLA-like shape (64 requests × 4096 cached tokens,
// 128 heads, one query token each, 64-token pages, bf16): the result is first checked against
// the float64 reference, then the kernel is timed with CUDA events. The emulated device
// (MLA_CUDA_DEVICE=emulator, or auto without a GPU) only checks a tiny shape: its times mean
// nothing. The full sweep with rooflines: `npx mla-cuda bench decode` (`npm run bench -- decode`
// in a checkout). Run: node examples/decode-bench.mjs
import { cuda, decode, DecodeWorkspace, DeviceTensor, Event, MLA_PRESETS, reference } from 'mla-cuda';

const DIM_QK = 576; // latent 512 + RoPE 64
const DIM_V = 512;
const scale = MLA_PRESETS['deepseek-v3'].softmaxScale; // 192^-0.5 · mscale², not 576^-0.5

// Uniform values in [-1, 1) from a seeded generator, as float32 (uploads round them to bf16).
function random(n, rng) {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = 2 * rng() - 1;
  return a;
}

// Request b owns pages b·pagesPerSeq … (b+1)·pagesPerSeq − 1. The cache is uploaded one request
// at a time, so the host never holds the whole (302 MB at the benchmark shape) cache.
function makeInputs({ batch, seqLen, heads, pageSize }) {
  const rng = reference.mulberry32(1);
  const pagesPerSeq = Math.ceil(seqLen / pageSize);
  const made = [];
  const keep = (t) => (made.push(t), t);
  try {
    const q = keep(DeviceTensor.fromArray(random(batch * heads * DIM_QK, rng), [batch, heads, DIM_QK], 'bf16'));
    const cache = keep(DeviceTensor.empty([batch * pagesPerSeq, pageSize, DIM_QK], 'bf16'));
    for (let b = 0; b < batch; b++) {
      const part = DeviceTensor.fromArray(random(pagesPerSeq * pageSize * DIM_QK, rng), [pagesPerSeq, pageSize, DIM_QK], 'bf16');
      cache.slice(0, b * pagesPerSeq, (b + 1) * pagesPerSeq).copyFrom(part);
      part.dispose();
    }
    const table = Int32Array.from({ length: batch * pagesPerSeq }, (_, i) => i);
    const blockTable = keep(DeviceTensor.fromArray(table, [batch, pagesPerSeq], 'i32'));
    const seqLens = keep(DeviceTensor.fromArray(new Int32Array(batch).fill(seqLen), [batch], 'i32'));
    const out = keep(DeviceTensor.empty([batch, heads, DIM_V], 'bf16'));
    const lse = keep(DeviceTensor.empty([batch, heads], 'f32'));
    const workspace = new DecodeWorkspace({ maxBatch: batch, maxHeads: heads });
    made.push(workspace);
    const dispose = () => made.forEach((t) => t.dispose());
    return { args: { q, cache, blockTable, seqLens, out, lse, workspace, scale, causal: true }, pagesPerSeq, dispose };
  } catch (e) {
    made.forEach((t) => t.dispose());
    throw e;
  }
}

// decode() on the device against reference.decode on the first `n` requests, using
// the bf16 values the device holds. Returns the relative Frobenius error.
function check(shape, inputs, n) {
  const { args, pagesPerSeq } = inputs;
  decode(args); // checks every index on the host before launching (checkIndices defaults to true)
  const want = reference.decode({
    q: Float64Array.from(args.q.slice(0, 0, n).toFloat32Sync()),
    cache: Float64Array.from(args.cache.slice(0, 0, n * pagesPerSeq).toFloat32Sync()),
    pageSize: shape.pageSize,
    blockTable: Int32Array.from({ length: n * pagesPerSeq }, (_, i) => i),
    seqLens: new Int32Array(n).fill(shape.seqLen),
    qSeqLens: 1,
    numHeads: shape.heads,
    dimLatent: DIM_V,
    scale,
    causal: true,
  });
  return reference.relError(args.out.slice(0, 0, n).toFloat32Sync(), want.out);
}

const label = ({ batch, seqLen, heads, pageSize }) => `decode b=${batch} s_k=${seqLen} h_q=${heads} s_q=1 page=${pageSize} bf16`;
const status = cuda.deviceStatus();
if (!status.ok) {
  console.log(`decode benchmark: needs a GPU (${status.code}: ${status.message}); ` +
    'MLA_CUDA_DEVICE=emulator runs a correctness check of a tiny shape on the CPU instead');
} else if (cuda.buildInfo().emulated) {
  const shape = { batch: 2, seqLen: 200, heads: 16, pageSize: 64 };
  const inputs = makeInputs(shape);
  try {
    const err = check(shape, inputs, shape.batch);
    console.log(`${label(shape)} on the emulated device: rel err vs float64 reference ${err.toExponential(2)}; ` +
      'correctness only, no timing (emulated times mean nothing)');
    if (!(err < 1e-2)) process.exitCode = 1;
  } finally {
    inputs.dispose();
  }
} else {
  const shape = { batch: 64, seqLen: 4096, heads: 128, pageSize: 64 };
  const inputs = makeInputs(shape);
  // One event between consecutive calls, all queued before the first wait, so the timings hold
  // the GPU's time per call, not the host's launch latency.
  const runs = 20;
  const events = Array.from({ length: runs + 1 }, () => new Event());
  try {
    const err = check(shape, inputs, 2); // two requests keep the float64 check to a few seconds
    console.log(`${label(shape)}: rel err vs float64 reference ${err.toExponential(2)} (first 2 requests)`);
    if (!(err < 1e-2)) throw new Error(`decode disagrees with the reference (rel err ${err})`);

    // Timed calls skip the blocking host copy of the indices, as a serving loop would. The
    // 302 MB cache is far larger than L2, so every call reads it from device memory.
    const timed = { ...inputs.args, checkIndices: false };
    for (let i = 0; i < 5; i++) decode(timed); // warm-up
    events[0].record();
    for (let i = 0; i < runs; i++) {
      decode(timed);
      events[i + 1].record();
    }
    const ms = Array.from({ length: runs }, (_, i) => events[i].elapsedMs(events[i + 1])).sort((a, b) => a - b);
    inputs.args.workspace.throwIfErrors(); // the kernels' own index guards
    const median = ms[runs >> 1];
    const { batch, seqLen, heads } = shape;
    // FlashMLA's accounting: the cache read once, plus q and out; 2 FLOPs per multiply-add.
    const bytes = 2 * (batch * seqLen * DIM_QK + batch * heads * (DIM_QK + DIM_V));
    const flops = 2 * batch * heads * seqLen * (DIM_QK + DIM_V);
    console.log(`${cuda.deviceInfo().name}: ${(median * 1e3).toFixed(1)} µs (median of ${runs}, CUDA events), ` +
      `${(bytes / median / 1e9).toFixed(2)} TB/s, ${(flops / median / 1e9).toFixed(1)} TFLOP/s`);
  } finally {
    events.forEach((e) => e.dispose());
    inputs.dispose();
  }
}

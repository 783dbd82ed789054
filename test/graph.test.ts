// CUDA graphs: stream capture and replay of the ops (decode, whose split plan is computed on
// the device, so a replay follows new lengths and tables), in-place update, and the calls a
// capture cannot hold, which throw before they reach CUDA.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { cuda, CudaGraph, DeviceTensor, LatentCache, loadMlaConfig, loadMlaWeights, MlaAttention, MlaError, Stream } from '../lib/index.js';
import { emulatorUnavailable, native, packageRoot } from '../lib/native.js';
import { decode, DecodeWorkspace } from '../lib/ops/decode.js';
import { rmsNorm } from '../lib/ops/rmsnorm.js';
import { build, checkOutputs, disposeBuilt, DV, type CaseSpec } from './helpers/decode-cases.js';
import { emulated, gpuSkip, poison, randn } from './helpers/gpu.js';
import { rejects } from './helpers/validation.js';

const SCALE = 0.1352337788608801;
const spec: CaseSpec = { B: 3, H: 16, pageSize: 64, seqLens: [70, 1, 130], sQ: 1, causal: true, dtype: 'bf16', seed: 7 };

/** Bytes that differ between two device tensors (bit for bit; NaN-safe). */
function differingBytes(a: DeviceTensor, b: DeviceTensor): number {
  const x = new Uint8Array(a.toHostSync().buffer);
  const y = new Uint8Array(b.toHostSync().buffer);
  let n = Math.abs(x.length - y.length);
  for (let i = 0; i < Math.min(x.length, y.length); i++) if (x[i] !== y[i]) n++;
  return n;
}

function decodeStep(b: ReturnType<typeof build>, out: DeviceTensor, lse: DeviceTensor, ws: DecodeWorkspace, stream: Stream): () => void {
  return () => {
    decode({ q: b.q, cache: b.cache, blockTable: b.blockTable, seqLens: b.seqLens, scale: SCALE, causal: true, out, lse, workspace: ws, checkIndices: false, stream });
  };
}

t.test('a captured decode replays bit for bit like the eager call, and follows its inputs in place', { skip: gpuSkip }, async (t) => {
  const b = build(spec);
  const next = build({ ...spec, seqLens: [120, 33, 180], seed: 8 }); // same shapes; new lengths, table, values
  using s = new Stream();
  using ws = new DecodeWorkspace({ maxBatch: spec.B, maxHeads: spec.H });
  using out = poison(DeviceTensor.empty([b.tokens, spec.H, DV], 'bf16'));
  using lse = poison(DeviceTensor.empty([b.tokens, spec.H], 'f32'));
  using eagerOut = DeviceTensor.empty([b.tokens, spec.H, DV], 'bf16');
  using eagerLse = DeviceTensor.empty([b.tokens, spec.H], 'f32');
  try {
    const step = decodeStep(b, out, lse, ws, s);
    step();
    s.synchronize();
    eagerOut.copyFrom(out);
    eagerLse.copyFrom(lse);
    checkOutputs(t, 'eager', { out: out.toFloat32Sync(), lse: lse.toFloat32Sync() }, b.ref);

    poison(out);
    poison(lse);
    using graph = s.capture(step);
    t.ok(graph instanceof CudaGraph, 'a CudaGraph');
    t.notOk(s.isCapturing, 'the capture ended');
    t.ok(Number.isNaN(out.toFloat32Sync()[0]!), 'capturing ran nothing');
    graph.launch(s);
    s.synchronize();
    t.equal(differingBytes(out, eagerOut), 0, 'replayed out equals the eager out bit for bit');
    t.equal(differingBytes(lse, eagerLse), 0, 'replayed lse equals the eager lse bit for bit');

    // New contents in the same buffers: the graph reads them (lengths and table included).
    for (const [dst, src] of [[b.q, next.q], [b.cache, next.cache], [b.blockTable, next.blockTable], [b.seqLens, next.seqLens]] as const) dst.copyFrom(src, { stream: s });
    poison(out);
    graph.launch(s);
    s.synchronize();
    checkOutputs(t, 'replay after the inputs changed', { out: out.toFloat32Sync(), lse: lse.toFloat32Sync() }, next.ref);
  } finally {
    disposeBuilt(b);
    disposeBuilt(next);
  }
});

t.test("two layers in one graph on one plan (plan 'reuse'), with pdl: a replay after new lengths follows them in both", { skip: gpuSkip }, async (t) => {
  const b = build(spec);
  const next = build({ ...spec, seqLens: [120, 33, 180], seed: 8 });
  using s = new Stream();
  using ws = new DecodeWorkspace({ maxBatch: spec.B, maxHeads: spec.H });
  using cache2 = DeviceTensor.fromArray(randn(b.cache.numel, 9), b.cache.shape, 'bf16');
  const outs = [0, 1].map(() => [poison(DeviceTensor.empty([b.tokens, spec.H, DV], 'bf16')), poison(DeviceTensor.empty([b.tokens, spec.H], 'f32'))] as const);
  using want = DeviceTensor.empty([b.tokens, spec.H, DV], 'bf16');
  try {
    // Captured with programmatic dependent launch (its graph edges on a GPU), compared without.
    const layer = (i: 0 | 1, plan: 'compute' | 'reuse', pdl: boolean): void => {
      decode({ q: b.q, cache: i === 0 ? b.cache : cache2, blockTable: b.blockTable, seqLens: b.seqLens, scale: SCALE, causal: true, out: outs[i]![0], lse: outs[i]![1], workspace: ws, checkIndices: false, stream: s, plan, pdl });
    };
    using graph = s.capture(() => {
      layer(0, 'compute', true);
      layer(1, 'reuse', true);
    });
    for (const [dst, src] of [[b.q, next.q], [b.cache, next.cache], [b.blockTable, next.blockTable], [b.seqLens, next.seqLens]] as const) dst.copyFrom(src, { stream: s });
    graph.launch(s);
    s.synchronize();
    checkOutputs(t, 'layer 1 replayed on the new lengths', { out: outs[0]![0].toFloat32Sync(), lse: outs[0]![1].toFloat32Sync() }, next.ref);
    want.copyFrom(outs[1]![0], { stream: s });
    poison(outs[1]![0]);
    layer(1, 'compute', false);
    s.synchronize();
    t.equal(differingBytes(want, outs[1]![0]), 0, 'layer 2 replayed on layer 1\'s plan equals layer 2 planned eagerly, bit for bit');
  } finally {
    for (const [o, l] of outs) {
      o.dispose();
      l.dispose();
    }
    disposeBuilt(b);
    disposeBuilt(next);
  }
});

t.test('what a capture cannot hold throws ERR_ARGUMENT before reaching CUDA, and the capture survives', { skip: gpuSkip }, async (t) => {
  const b = build(spec);
  using s = new Stream();
  using ws = new DecodeWorkspace({ maxBatch: spec.B, maxHeads: spec.H });
  using out = DeviceTensor.empty([b.tokens, spec.H, DV], 'bf16');
  using lse = DeviceTensor.empty([b.tokens, spec.H], 'f32');
  const dropped = DeviceTensor.empty([1024, 1024], 'f32');
  const freeBefore = cuda.deviceInfo(0).freeMemory;
  try {
    s.beginCapture();
    t.ok(s.isCapturing);
    await rejects(t, () => s.beginCapture(), 'ERR_ARGUMENT', /already capturing/);
    await rejects(t, () => DeviceTensor.empty([4], 'f32'), 'ERR_ARGUMENT', /allocating device memory .* not allowed while a CUDA graph is being captured: allocate every buffer before beginCapture/);
    await rejects(t, () => out.toHostSync(), 'ERR_ARGUMENT', /copying to the host .* `checkIndices: false`/);
    await rejects(t, () => out.toHost(), 'ERR_ARGUMENT', /copying to the host/);
    await rejects(t, () => s.synchronize(), 'ERR_ARGUMENT', /Stream.synchronize is not allowed/);
    await rejects(t, () => cuda.synchronize(), 'ERR_ARGUMENT', /cuda.synchronize is not allowed/);
    await rejects(t, () => decode({ q: b.q, cache: b.cache, blockTable: b.blockTable, seqLens: b.seqLens, scale: SCALE, causal: true, out, lse, workspace: ws, stream: s }),
      'ERR_ARGUMENT', /decode: `checkIndices` must be false while a CUDA graph is being captured/);
    decodeStep(b, out, lse, ws, s)();
    dropped.dispose(); // held back until the capture ends: cudaFree would break it
    // The emulated device's free memory moves only with our allocations; a GPU's driver also
    // reserves memory for the capture, so there the 4 MiB must just not have come back yet.
    const freeDuring = cuda.deviceInfo(0).freeMemory;
    if (emulated) t.equal(freeDuring, freeBefore, 'the free waits for the end of the capture');
    else t.ok(freeDuring < freeBefore + 4 * 2 ** 20, `the free waits for the end of the capture (free ${freeBefore} -> ${freeDuring} bytes)`);
    using graph = s.endCapture();
    t.ok(cuda.deviceInfo(0).freeMemory >= freeDuring + 4 * 2 ** 20, 'and happens then');
    poison(out);
    graph.launch(s);
    s.synchronize();
    checkOutputs(t, 'the capture that survived the refused calls', { out: out.toFloat32Sync(), lse: lse.toFloat32Sync() }, b.ref);
    await rejects(t, () => s.endCapture(), 'ERR_ARGUMENT', /not capturing/);
  } finally {
    if (s.isCapturing) s.endCapture().dispose();
    disposeBuilt(b);
  }
});

t.test('a throw inside Stream.capture ends the capture and propagates', { skip: gpuSkip }, async (t) => {
  using s = new Stream();
  t.throws(() => s.capture(() => {
    throw new Error('boom');
  }), /boom/);
  t.notOk(s.isCapturing, 'no capture left open');
  using g = s.capture(() => undefined);
  g.launch(s); // an empty graph is a graph
  t.pass('the stream captures again');
});

t.test('update in place: same kernels, new buffers -> true; a different sequence -> false, graph unchanged', { skip: gpuSkip }, async (t) => {
  const dim = 512;
  using s = new Stream();
  using w = DeviceTensor.fromArray(randn(dim, 3, 0.5).map((v) => 1 + v), [dim], 'f32');
  using x1 = DeviceTensor.fromArray(randn(4 * dim, 4), [4, dim], 'bf16');
  using x2 = DeviceTensor.fromArray(randn(4 * dim, 5), [4, dim], 'bf16');
  using y1 = poison(DeviceTensor.empty([4, dim], 'bf16'));
  using y2 = poison(DeviceTensor.empty([4, dim], 'bf16'));
  using want2 = DeviceTensor.empty([4, dim], 'bf16');
  rmsNorm(x2, w, 1e-6, { out: want2, stream: s });

  using g = s.capture(() => rmsNorm(x1, w, 1e-6, { out: y1, stream: s }));
  t.equal(g.update(s, () => rmsNorm(x2, w, 1e-6, { out: y2, stream: s })), true, 'same topology: updated');
  g.launch(s);
  s.synchronize();
  t.equal(differingBytes(y2, want2), 0, 'the updated graph writes the new output from the new input');
  t.ok(Number.isNaN(y1.toFloat32Sync()[0]!), 'and no longer the old one');

  poison(y2);
  const changed = g.update(s, () => {
    rmsNorm(x1, w, 1e-6, { out: y1, stream: s });
    y1.fill(0, { stream: s });
  });
  t.equal(changed, false, 'an extra kernel: not updated');
  g.launch(s);
  s.synchronize();
  t.equal(differingBytes(y2, want2), 0, 'the graph is the previous one');

  g.dispose();
  await rejects(t, () => g.launch(s), 'ERR_DISPOSED', /graph/);
  g.dispose(); // idempotent
});

t.test('a call CUDA refuses during capture invalidates it: endCapture throws the CUDA error', { skip: gpuSkip || (!emulated && 'the emulated device\'s capture rules') }, async (t) => {
  using s = new Stream();
  s.beginCapture();
  // Straight to the addon, past the TypeScript guard: cudaMalloc while capturing.
  try {
    new (native().DeviceBuffer)(256);
    t.fail('cudaMalloc should fail');
  } catch (e) {
    t.ok(e instanceof MlaError && /cudaErrorStreamCaptureUnsupported/.test(e.message), `refused: ${String(e)}`);
  }
  try {
    s.endCapture();
    t.fail('endCapture should fail');
  } catch (e) {
    t.ok(e instanceof MlaError && e.cudaError === 'cudaErrorStreamCaptureInvalidated', `ERR_CUDA cudaErrorStreamCaptureInvalidated (${String(e)})`);
  }
  t.notOk(s.isCapturing, 'the capture ended anyway');
  using g = s.capture(() => undefined);
  t.pass('the stream captures again');
});

t.test('MlaAttention.captureDecode: a replayed step writes the same bits as the eager step (output and cache rows)', { skip: gpuSkip }, async (t) => {
  const file = join(packageRoot, 'test', 'fixtures', 'mla-v3slim.safetensors');
  const config = loadMlaConfig(file);
  const weights = loadMlaWeights(file, config, { prefix: 'weights.' });
  const hid = config.hiddenSize;
  const pageSize = 16;
  using s = new Stream();
  using cache = new LatentCache({ config, numLayers: 1, numPages: 12, pageSize, backend: 'gpu' });
  using attn = MlaAttention.create({ config, weights, cache, layer: 0, backend: 'gpu', stream: s });
  const ids = ['a', 'b'] as const;
  const prompt = [20, 31];
  for (const id of ids) cache.addSequence(id);
  {
    using x = DeviceTensor.fromArray(randn((prompt[0]! + prompt[1]!) * hid, 11, 0.5), [prompt[0]! + prompt[1]!, hid], 'bf16');
    attn.forward(x, ids.map((seqId, i) => ({ seqId, numTokens: prompt[i]! }))).dispose();
  }
  using graph = attn.captureDecode({ batch: 2, maxSeqLen: 48 });
  t.equal(graph.maxPages, 3);
  const rows = cache.deviceLayer(0).reshape([12 * pageSize, cache.kvLoraRank + cache.ropeDim]);
  for (let k = 0; k < 3; k++) { // b crosses into its third page at k = 1
    using x = DeviceTensor.fromArray(randn(2 * hid, 20 + k, 0.5), [2, hid], 'bf16');
    const step = cache.planStep(ids.map((seqId) => ({ seqId, numTokens: 1 })));
    using eager = attn.forward(x, step);
    s.synchronize();
    const eagerCache = new Uint8Array(rows.toHostSync().buffer);
    for (const slot of step.slotMapping) poison(rows.select(0, slot));
    poison(graph.output);
    const y = graph.step(x, step);
    s.synchronize();
    t.equal(differingBytes(y, eager), 0, `step ${k}: the replayed output equals the eager one bit for bit`);
    const replayCache = new Uint8Array(rows.toHostSync().buffer);
    let diff = 0;
    for (let i = 0; i < eagerCache.length; i++) if (eagerCache[i] !== replayCache[i]) diff++;
    t.equal(diff, 0, `step ${k}: the cache rows it wrote (latent and rope) equal the eager ones`);
  }
  t.same(ids.map((id) => cache.length(id)), [23, 34], 'lengths advanced once per step');

  // The plain form plans the step itself; growing past maxSeqLen is refused with the slots given back.
  using x = DeviceTensor.fromArray(randn(2 * hid, 30, 0.5), [2, hid], 'bf16');
  const y = graph.step(x, ids);
  s.synchronize();
  t.ok(y.toFloat32Sync().every(Number.isFinite), 'a step planned from sequence ids');
  using small = attn.captureDecode({ batch: 2, maxSeqLen: 32 });
  await rejects(t, () => small.step(x, ids), 'ERR_CAPACITY', /needs 3 pages; the graph was captured for maxSeqLen 32/);
  t.same(ids.map((id) => cache.length(id)), [24, 35], 'the refused step gave its slots back');
  await rejects(t, () => graph.step(x, ['a']), 'ERR_SHAPE', /names 1 sequences; the graph was captured for 2/);
  const noStream = MlaAttention.create({ config, weights, cache, layer: 0, backend: 'gpu' });
  await rejects(t, () => noStream.captureDecode({ batch: 2, maxSeqLen: 48 }), 'ERR_ARGUMENT', /needs the layer's `stream`/);
  noStream.dispose();
});

t.test('scripts/host-overhead.mjs: the V3 step eager and as a graph, forward() and DecodeGraph.step (kernels skipped)', { skip: emulatorUnavailable() ?? false }, async (t) => {
  const r = spawnSync(process.execPath, [join(packageRoot, 'scripts', 'host-overhead.mjs')], {
    encoding: 'utf8', timeout: 120_000, env: { ...process.env, MLA_CUDA_DEVICE: 'emulator', MLA_EMU_SKIP_KERNELS: '1' },
  });
  t.equal(r.status, 0, r.stderr);
  t.match(r.stdout, /host cost per call \(median of 2000, µs\) on emulated device, kernels skipped/);
  for (const op of ['q_a_proj', 'append_latent', 'decode', 'o_proj']) t.match(r.stdout, new RegExp(`\\n  ${op} +\\d+\\.\\d\\n`), op);
  t.match(r.stdout, /\n +64 +[\d.]+ +[\d.]+ +[\d.]+ +[\d.]+ +[\d.]+\n/, 'batch 64: eager step, graph launch, forward(), forward({ out }), DecodeGraph.step');
});

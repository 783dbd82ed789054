// decode: argument validation (runs everywhere, on TensorMeta stand-ins) and GPU checks
// against the float64 reference (lib/reference/decode.ts) on the same bf16/f16-rounded inputs.
import t, { type Test } from 'tap';
import { fileURLToPath } from 'node:url';
import { cuda, DeviceTensor } from '../lib/index.js';
import type { TensorMeta } from '../lib/index.js';
import { checkDecodeIndices, decode, decodeConfig, DecodeWorkspace, pdlFromEnv, splitKvCallOptions, validateDecodeArgs } from '../lib/ops/decode.js';
import type { DecodeArgsMeta, DecodeGeometry } from '../lib/ops/decode.js';
import { sparse } from '../lib/ops/sparse.js';
import { SafetensorsFile } from '../lib/safetensors.js';
import { build, checkOutputs, D, decodeKernels, disposeBuilt, DV, runBuilt, type CaseSpec, type TestedDecodeKernel } from './helpers/decode-cases.js';
import { gpuSkip, poison, randn, relError, rng } from './helpers/gpu.js';
import { meta, throwsNaming as expectError } from './helpers/validation.js';


function baseArgs(over: Partial<DecodeArgsMeta> = {}): DecodeArgsMeta {
  return {
    q: meta([4, 16, D], 'bf16'),
    cache: meta([10, 64, D], 'bf16'),
    blockTable: meta([4, 8], 'i32'),
    seqLens: meta([4], 'i32'),
    scale: 0.1352,
    causal: false,
    ...over,
  };
}

t.test('validateDecodeArgs accepts a well-formed call and derives the geometry', (tt) => {
  const g = validateDecodeArgs(baseArgs());
  tt.same(
    { tokens: g.tokens, numHeads: g.numHeads, pageSize: g.pageSize, numPages: g.numPages, batch: g.batch, maxPages: g.maxPages, sQ: g.sQ, dtype: g.dtype },
    { tokens: 4, numHeads: 16, pageSize: 64, numPages: 10, batch: 4, maxPages: 8, sQ: 1, dtype: 'bf16' },
  );
  tt.equal(validateDecodeArgs(baseArgs({ q: meta([8, 128, D], 'f16'), cache: meta([3, 16, D], 'f16') })).sQ, 2);
  tt.equal(validateDecodeArgs(baseArgs({ q: meta([7, 1, D], 'bf16'), qSeqLens: meta([4], 'i32') })).sQ, null);
  tt.equal(validateDecodeArgs(baseArgs({ cache: meta([1, 256, D], 'bf16') })).pageSize, 256);
  tt.end();
});

t.test('validateDecodeArgs rejects bad arguments with a typed error naming them', (tt) => {
  const cases: Array<[string, Partial<DecodeArgsMeta>, string, string]> = [
    ['q dtype f32', { q: meta([4, 16, D], 'f32') }, 'ERR_DTYPE', 'q'],
    ['q not a tensor', { q: 42 }, 'ERR_ARGUMENT', 'q'],
    ['q width 512', { q: meta([4, 16, 512], 'bf16') }, 'ERR_SHAPE', 'q'],
    ['q rank 4', { q: meta([4, 1, 16, D], 'bf16') }, 'ERR_SHAPE', 'q'],
    ['0 heads', { q: meta([4, 0, D], 'bf16') }, 'ERR_RANGE', 'q'],
    ['129 heads', { q: meta([4, 129, D], 'bf16') }, 'ERR_RANGE', 'q'],
    ['q strided last dim', { q: meta([4, 16, D], 'bf16', [16 * D * 2, D * 2, 2]) }, 'ERR_SHAPE', 'q'],
    ['q rows misaligned', { q: meta([4, 16, D], 'bf16', [16 * 580, 580, 1]) }, 'ERR_SHAPE', 'q'],
    ['tokens not B·s_q', { q: meta([5, 16, D], 'bf16') }, 'ERR_SHAPE', 'q'],
    ['q/cache dtype mismatch', { cache: meta([10, 64, D], 'f16') }, 'ERR_DTYPE', 'cache'],
    ['page size 48', { cache: meta([10, 48, D], 'bf16') }, 'ERR_RANGE', 'cache'],
    ['page size 8', { cache: meta([10, 8, D], 'bf16') }, 'ERR_RANGE', 'cache'],
    ['page size 512', { cache: meta([10, 512, D], 'bf16') }, 'ERR_RANGE', 'cache'],
    ['no pages', { cache: meta([0, 64, D], 'bf16') }, 'ERR_SHAPE', 'cache'],
    ['cache width 512', { cache: meta([10, 64, 512], 'bf16') }, 'ERR_SHAPE', 'cache'],
    ['disposed cache', { cache: meta([10, 64, D], 'bf16', undefined, { disposed: true }) }, 'ERR_DISPOSED', 'cache'],
    ['blockTable f32', { blockTable: meta([4, 8], 'f32') }, 'ERR_DTYPE', 'blockTable'],
    ['blockTable rank 1', { blockTable: meta([32], 'i32') }, 'ERR_SHAPE', 'blockTable'],
    ['seqLens i64-ish f32', { seqLens: meta([4], 'f32') }, 'ERR_DTYPE', 'seqLens'],
    ['seqLens wrong batch', { seqLens: meta([3], 'i32') }, 'ERR_SHAPE', 'seqLens'],
    ['disposed seqLens', { seqLens: meta([4], 'i32', undefined, { disposed: true }) }, 'ERR_DISPOSED', 'seqLens'],
    ['qSeqLens wrong batch', { qSeqLens: meta([5], 'i32') }, 'ERR_SHAPE', 'qSeqLens'],
    ['qSeqLens f32', { qSeqLens: meta([4], 'f32') }, 'ERR_DTYPE', 'qSeqLens'],
    ['out wrong width', { out: meta([4, 16, 576], 'bf16') }, 'ERR_SHAPE', 'out'],
    ['out wrong dtype', { out: meta([4, 16, DV], 'f32') }, 'ERR_DTYPE', 'out'],
    ['out disposed', { out: meta([4, 16, DV], 'bf16', undefined, { disposed: true }) }, 'ERR_DISPOSED', 'out'],
    ['lse bf16', { lse: meta([4, 16], 'bf16') }, 'ERR_DTYPE', 'lse'],
    ['lse transposed', { lse: meta([16, 4], 'f32') }, 'ERR_SHAPE', 'lse'],
    ['scale 0', { scale: 0 }, 'ERR_RANGE', 'scale'],
    ['scale NaN', { scale: Number.NaN }, 'ERR_ARGUMENT', 'scale'],
    ['scale missing', { scale: undefined }, 'ERR_ARGUMENT', 'scale'],
    ['causal not boolean', { causal: 1 }, 'ERR_ARGUMENT', 'causal'],
  ];
  for (const [what, over, code, arg] of cases) expectError(tt, () => validateDecodeArgs(baseArgs(over)), code, arg, what);
  tt.end();
});

t.test('checkDecodeIndices: lengths over capacity and bad pages from host arrays', (tt) => {
  const geo: DecodeGeometry = validateDecodeArgs(baseArgs({ q: meta([3, 16, D], 'bf16'), blockTable: meta([3, 4], 'i32'), seqLens: meta([3], 'i32') }));
  const table = Int32Array.from([0, 1, -1, -1, 2, 3, 4, 5, 9, -7, -7, -7]);
  tt.equal(checkDecodeIndices(geo, { seqLens: [100, 256, 1], blockTable: table }), 1, 'unused entries are not checked');
  tt.equal(checkDecodeIndices(geo, { seqLens: [0, 0, 0], blockTable: table }), 1, 'empty requests are fine');
  const usedCols = Int32Array.from([0, 1, 2, 3, 9, -7]);
  tt.equal(checkDecodeIndices(geo, { seqLens: [100, 128, 1], blockTable: usedCols, blockTableCols: 2 }), 1, 'only the used columns');
  expectError(tt, () => checkDecodeIndices(geo, { seqLens: [100, 129, 1], blockTable: usedCols, blockTableCols: 2 }), 'ERR_ARGUMENT', 'blockTable', 'host copy too narrow');
  expectError(tt, () => checkDecodeIndices(geo, { seqLens: [100, 257, 1], blockTable: table }), 'ERR_RANGE', 'seqLens', 'length over capacity');
  expectError(tt, () => checkDecodeIndices(geo, { seqLens: [-1, 0, 1], blockTable: table }), 'ERR_RANGE', 'seqLens', 'negative length');
  expectError(tt, () => checkDecodeIndices(geo, { seqLens: [129, 0, 1], blockTable: table }), 'ERR_RANGE', 'blockTable', 'page -1 in use');
  expectError(tt, () => checkDecodeIndices(geo, { seqLens: [0, 0, 65], blockTable: table }), 'ERR_RANGE', 'blockTable', 'negative page in use');
  const bigPage = Int32Array.from(table);
  bigPage[8] = 10;
  expectError(tt, () => checkDecodeIndices(geo, { seqLens: [0, 0, 1], blockTable: bigPage }), 'ERR_RANGE', 'blockTable', 'page >= numPages');

  const vgeo = validateDecodeArgs(baseArgs({ q: meta([5, 2, D], 'bf16'), blockTable: meta([3, 4], 'i32'), seqLens: meta([3], 'i32'), qSeqLens: meta([3], 'i32') }));
  tt.equal(checkDecodeIndices(vgeo, { seqLens: [5, 5, 5], blockTable: table.map(() => 0), qSeqLens: [1, 4, 0] }), 4, 'max query length');
  expectError(tt, () => checkDecodeIndices(vgeo, { seqLens: [5, 5, 5], blockTable: table.map(() => 0), qSeqLens: [1, 1, 1] }), 'ERR_RANGE', 'qSeqLens', 'sum != tokens');
  expectError(tt, () => checkDecodeIndices(vgeo, { seqLens: [5, 5, 5], blockTable: table.map(() => 0), qSeqLens: [6, -1, 0] }), 'ERR_RANGE', 'qSeqLens', 'negative');
  tt.end();
});

t.test('DecodeWorkspace validates its sizes before touching the device', (tt) => {
  expectError(tt, () => new DecodeWorkspace({ maxBatch: 0, maxHeads: 16 }), 'ERR_RANGE', 'maxBatch', 'maxBatch 0');
  expectError(tt, () => new DecodeWorkspace({ maxBatch: 4, maxHeads: 129 }), 'ERR_RANGE', 'maxHeads', 'maxHeads 129');
  expectError(tt, () => new DecodeWorkspace({ maxBatch: 4, maxHeads: 8, maxQSeqLen: 0 }), 'ERR_RANGE', 'maxQSeqLen', 'maxQSeqLen 0');
  tt.end();
});

function fixturePath(name: string): string {
  return fileURLToPath(new URL(`./fixtures/${name}.safetensors`, import.meta.url));
}

t.test('phases: one launch alone, or a typed error naming the option', (tt) => {
  tt.same(splitKvCallOptions('decode', { phases: 'plan', checkIndices: false }).phases, { runPlan: true, runMain: false, runCombine: false });
  tt.same(splitKvCallOptions('decode', {}).phases, { runPlan: true, runMain: true, runCombine: true });
  expectError(tt, () => splitKvCallOptions('decode', { phases: 'mains' }), 'ERR_ARGUMENT', 'phases', 'unknown phase');
  expectError(tt, () => splitKvCallOptions('sparse', { phases: 3 }), 'ERR_ARGUMENT', 'phases', 'not a string');
  tt.equal(splitKvCallOptions('decode', { pdl: true }).pdl, true);
  if (process.env['MLA_CUDA_PDL'] === undefined) tt.equal(splitKvCallOptions('decode', {}).pdl, false, 'programmatic dependent launch is off by default');
  expectError(tt, () => splitKvCallOptions('decode', { pdl: 1 }), 'ERR_ARGUMENT', 'pdl', 'not a boolean');
  tt.same([pdlFromEnv('decode', undefined), pdlFromEnv('decode', '0'), pdlFromEnv('decode', '1')], [false, false, true]);
  tt.throws(() => pdlFromEnv('sparse', 'yes'), /sparse: MLA_CUDA_PDL must be '0' or '1', got "yes"/, 'a bad MLA_CUDA_PDL names the variable');
  tt.end();
});

t.test('the tiny fixture (kv_lora 32, rope 16) is rejected: only 512 + 64 is supported', (tt) => {
  const f = SafetensorsFile.open(fixturePath('mla-tiny'));
  try {
    const ql = f.info('q_latent.decode.0').shape;
    const qr = f.info('q_rope.decode.0').shape;
    const [B, , H, lora] = ql as [number, number, number, number];
    const width = lora + qr[3]!;
    const cl = f.info('cache.latent').shape;
    const args = baseArgs({
      q: meta([B, H, width], 'bf16'),
      cache: meta([cl[0]! * 1, 16, width], 'bf16'),
      blockTable: meta([B, 1], 'i32'),
      seqLens: meta([B], 'i32'),
    });
    expectError(tt, () => validateDecodeArgs(args), 'ERR_SHAPE', 'q', `q width ${width}`);
    expectError(tt, () => validateDecodeArgs({ ...args, q: meta([B, H, D], 'bf16') }), 'ERR_SHAPE', 'cache', `cache width ${width}`);
  } finally {
    f.close();
  }
  tt.end();
});

// ---- GPU ---------------------------------------------------------------------------------

// Every GPU test below runs each main kernel this device has (decodeKernels: the portable one,
// and the sm_90a one on compute capability 9.0), forced through decode's `kernel` option.
const kernels = gpuSkip ? [] : decodeKernels((m) => t.comment(m));

t.test('decode picks the Hopper kernel where it applies, and refuses to force it elsewhere', { skip: gpuSkip }, (tt) => {
  // What the device offers, whatever MLA_CUDA_DECODE_KERNEL / MLA_TEST_DECODE_KERNELS say.
  const hopper = cuda.deviceInfo(cuda.currentDevice()).computeCapability === '9.0';
  tt.equal(decodeConfig(16, 1, undefined, { kernel: 'auto' }).kernel, hopper ? 'hopper' : 'portable', 'auto');
  tt.equal(decodeConfig(16, 1, undefined, { kernel: 'portable' }).kernel, 'portable', 'forced portable');
  tt.equal(decodeConfig(16, 1, undefined, { kernel: 'auto', fp8Cache: true }).kernel, 'portable', 'an FP8 cache takes the portable kernel');
  if (hopper) {
    const cfg = decodeConfig(128, 1, undefined, { kernel: 'hopper' });
    tt.same([cfg.blockM, cfg.blockN, cfg.rowTiles], [64, 64, 2], 'hopper: 64-row x 64-key tiles, H=128 in two row tiles');
    const rowsOf = (h: number, sq: number, kernel: 'hopper' | 'hopper-wide'): number => decodeConfig(h, sq, undefined, { kernel }).blockM;
    tt.same([rowsOf(16, 1, 'hopper'), rowsOf(3, 5, 'hopper'), rowsOf(16, 2, 'hopper'), rowsOf(32, 1, 'hopper'), rowsOf(33, 1, 'hopper')], [16, 16, 32, 32, 64],
      'hopper: the few-rows kernel (16 or 32 rows) up to s_q·H = 32, the 64-row one above');
    tt.same([rowsOf(16, 1, 'hopper-wide'), rowsOf(1, 1, 'hopper-wide')], [64, 64], "'hopper-wide': the 64-row kernel for any row count");
    expectError(tt, () => decodeConfig(16, 1, undefined, { kernel: 'hopper', fp8Cache: true }), 'ERR_ARGUMENT', 'kernel', 'FP8 cache forced onto the Hopper kernel');
  } else {
    expectError(tt, () => decodeConfig(16, 1, undefined, { kernel: 'hopper' }), 'ERR_ARGUMENT', 'kernel', 'no Hopper kernel here');
  }
  expectError(tt, () => decodeConfig(16, 1, undefined, { kernel: 'fast' as 'auto' }), 'ERR_ARGUMENT', 'kernel', 'unknown kernel name');
  tt.end();
});

t.test('decode matches the float64 reference on a randomized grid', { skip: gpuSkip }, (tt) => {
  for (const kernel of kernels) gridCases(tt, kernel);
  tt.end();
});

function gridCases(tt: Test, kernel: TestedDecodeKernel): void {
  const r = rng(1234);
  const heads = [1, 3, 16, 64, 128];
  const pages = [16, 64, 256];
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(r() * xs.length)]!;
  let caseNo = 0;
  for (const H of heads) {
    for (const dtype of ['bf16', 'f16'] as const) {
      const pageSize = pick(pages);
      const B = 1 + Math.floor(r() * 4);
      const sQ = 1 + Math.floor(r() * 4);
      const causal = r() < 0.5;
      // 0, 1, a page multiple, a non-multiple, and longer ones (split over several parts).
      const pool = [0, 1, pageSize, pageSize + 3, 37, 700 + Math.floor(r() * 900)];
      const seqLens = Array.from({ length: B }, (_, i) => (i === 0 ? pool[(caseNo + 5) % pool.length]! : pick(pool)));
      const spec: CaseSpec = { B, H, pageSize, seqLens, sQ: H >= 64 && sQ > 2 ? 2 : sQ, causal, dtype, seed: 100 + caseNo, kernel };
      const label = `${kernel} #${caseNo} H${H} ${dtype} ps${pageSize} B${B} sq${spec.sQ as number} ${causal ? 'causal' : 'full'} L[${seqLens.join(',')}]`;
      const b = build(spec);
      try {
        checkOutputs(tt, label, runBuilt(b, spec), b.ref);
      } finally {
        disposeBuilt(b);
      }
      caseNo++;
    }
  }
}

t.test('decode: variable query lengths (qSeqLens), causal, one shared workspace', { skip: gpuSkip }, (tt) => {
  const ws = new DecodeWorkspace({ maxBatch: 8, maxHeads: 16, maxQSeqLen: 4 });
  try {
    for (const [i, [causal, kernel]] of kernels.flatMap((k) => [[true, k], [false, k]] as const).entries()) {
      const spec: CaseSpec = { B: 5, H: 16, pageSize: 64, seqLens: [3, 0, 130, 1000, 2], sQ: [1, 2, 4, 3, 4], causal, dtype: 'bf16', seed: 900 + i, kernel };
      const b = build(spec);
      try {
        checkOutputs(tt, `${kernel} varlen ${causal ? 'causal' : 'full'}`, runBuilt(b, spec, ws), b.ref);
      } finally {
        disposeBuilt(b);
      }
    }
    tt.ok(ws.checkErrors().ok, 'no device-side index errors');
  } finally {
    ws.dispose();
  }
  tt.end();
});

t.test("decode plan 'reuse': one plan, several layers, bit for bit; refused for other sizes", { skip: gpuSkip }, (tt) => {
  for (const kernel of kernels) {
    const spec: CaseSpec = { B: 5, H: 16, pageSize: 64, seqLens: [300, 0, 1000, 70, 2], sQ: [1, 2, 1, 3, 1], causal: true, dtype: 'bf16', seed: 1300, kernel };
    const b = build(spec);
    const ws = new DecodeWorkspace({ maxBatch: 8, maxHeads: 16, maxQSeqLen: 4 });
    // Layer 2: another cache of the same shape, read through the same table.
    const cache2 = DeviceTensor.fromArray(randn(b.cache.numel, 1301), b.cache.shape, 'bf16');
    const outs: DeviceTensor[] = [];
    try {
      const call = (cache: DeviceTensor, plan: 'compute' | 'reuse'): { out: Float32Array; lse: Float32Array } => runBuilt(b, spec, ws, { cache, plan });
      expectError(tt, () => call(cache2, 'reuse'), 'ERR_ARGUMENT', 'plan', `${kernel}: reuse before any plan`);
      checkOutputs(tt, `${kernel} layer 1, planned`, call(b.cache, 'compute'), b.ref);
      const planned2 = call(cache2, 'compute');
      call(b.cache, 'compute');
      const reused2 = call(cache2, 'reuse');
      tt.same(Array.from(reused2.out), Array.from(planned2.out), `${kernel}: layer 2 on layer 1's plan = layer 2 planned, bit for bit (out)`);
      tt.same(Array.from(reused2.lse), Array.from(planned2.lse), `${kernel}: ... and lse`);
      // Refusals, each naming the option, before any launch.
      const args = { q: b.q, cache: cache2, blockTable: b.blockTable, seqLens: b.seqLens, qSeqLens: b.qSeqLens, scale: 0.1, causal: true, kernel };
      expectError(tt, () => decode({ ...args, plan: 'reuse' }), 'ERR_ARGUMENT', 'plan', `${kernel}: reuse without a workspace`);
      expectError(tt, () => decode({ ...args, workspace: ws, plan: 'reuse', phases: 'main' }), 'ERR_ARGUMENT', 'plan', `${kernel}: reuse with phases`);
      expectError(tt, () => decode({ ...args, workspace: ws, plan: 'again' as 'reuse' }), 'ERR_ARGUMENT', 'plan', `${kernel}: an unknown plan mode`);
      const q8 = DeviceTensor.empty([b.tokens, 8, D], 'bf16');
      outs.push(q8);
      try {
        decode({ ...args, q: q8, workspace: ws, plan: 'reuse' });
        tt.fail(`${kernel}: reuse with 8 heads on a 16-head plan`);
      } catch (err) {
        tt.match((err as Error).message, /`plan` 'reuse'.*heads 16 → 8/, `${kernel}: a plan for 16 heads is not reused for 8 (${(err as Error).message})`);
      }
      tt.ok(ws.checkErrors().ok, `${kernel}: no device-side index errors`);
      // A sparse call on the workspace replaces the plan with its own.
      const indices = DeviceTensor.fromArray(new Int32Array(b.tokens * 4), [b.tokens, 4], 'i32');
      outs.push(indices);
      const sp = sparse({ q: b.q, cache: cache2, indices, scale: 0.1, workspace: ws });
      outs.push(sp.out, sp.lse);
      expectError(tt, () => call(cache2, 'reuse'), 'ERR_ARGUMENT', 'plan', `${kernel}: reuse after a sparse call planned in the workspace`);
    } finally {
      for (const x of outs) x.dispose();
      cache2.dispose();
      ws.dispose();
      disposeBuilt(b);
    }
  }
  tt.end();
});

t.test('pdl (programmatic dependent launch of main and combine): the same bits as without', { skip: gpuSkip }, (tt) => {
  for (const kernel of kernels) {
    const spec: CaseSpec = { B: 4, H: 16, pageSize: 64, seqLens: [700, 3, 0, 1500], sQ: 2, causal: true, dtype: 'bf16', seed: 1400, kernel };
    const b = build(spec);
    const ws = new DecodeWorkspace({ maxBatch: 8, maxHeads: 16, maxQSeqLen: 2 });  // sparse: a request per token
    const owned: DeviceTensor[] = [];
    try {
      const call = (pdl: boolean, plan: 'compute' | 'reuse'): { out: Float32Array; lse: Float32Array } => runBuilt(b, spec, ws, { plan, pdl });
      const plain = call(false, 'compute');
      checkOutputs(tt, `${kernel} without pdl`, plain, b.ref);
      for (const plan of ['compute', 'reuse'] as const) {
        const withPdl = call(true, plan);
        tt.same(Array.from(withPdl.out), Array.from(plain.out), `${kernel}, plan ${plan}: out with pdl = out without, bit for bit`);
        tt.same(Array.from(withPdl.lse), Array.from(plain.lse), `${kernel}, plan ${plan}: lse too`);
      }
      // Sparse runs the same split-KV launches (its main kernel is always the portable one).
      const indices = DeviceTensor.fromArray(Int32Array.from({ length: b.tokens * 8 }, (_, i) => (i * 37) % 1500), [b.tokens, 8], 'i32');
      owned.push(indices);
      const sp = [false, true].map((pdl) => sparse({ q: b.q, cache: b.cache, indices, scale: 0.1, workspace: ws, pdl }));
      for (const r of sp) owned.push(r.out, r.lse);
      tt.same(Array.from(sp[1]!.out.toFloat32Sync()), Array.from(sp[0]!.out.toFloat32Sync()), `${kernel}: sparse with pdl = without, bit for bit`);
    } finally {
      for (const x of owned) x.dispose();
      ws.dispose();
      disposeBuilt(b);
    }
  }
  tt.end();
});

t.test('decode: a long sequence split over every part, next to short ones', { skip: gpuSkip }, (tt) => {
  const spec: CaseSpec = { B: 3, H: 8, pageSize: 256, seqLens: [40000, 5, 0], sQ: 1, causal: true, dtype: 'bf16', seed: 77 };
  const b = build(spec);
  try {
    for (const kernel of kernels) checkOutputs(tt, `${kernel} long`, runBuilt(b, { ...spec, kernel }), b.ref);
  } finally {
    disposeBuilt(b);
  }
  tt.end();
});

// The split plan alone (phases 'plan'), read back from the workspace and checked against its
// rules rather than against one particular cut: every KV block of every request in exactly one
// part, in order, parts contiguous; one partial slot per piece of a split request, each used
// once, at most 2 per part; no part over its share P = ceil(total / numParts) plus one
// request's overhead. Random batches (empty, short and long requests, ragged query counts), the
// error rules (bad lengths, queries past `tokens`), and a batch past the shared-memory staging.
interface PlanCase {
  label: string;
  H: number;
  pageSize: number;
  seqLens: number[];
  qLens: number[];
  /** Rows of q (default: the sum of qLens). */
  tokens?: number;
  maxParts: number;
  kernel: TestedDecodeKernel;
}

function checkPlan(tt: Test, c: PlanCase): void {
  const B = c.seqLens.length;
  const tokens = c.tokens ?? c.qLens.reduce((a, b) => a + b, 0);
  const maxQ = Math.max(1, ...c.qLens);
  const cfg = decodeConfig(c.H, maxQ, c.maxParts, { kernel: c.kernel });
  // H · maxQ <= 64: the workspace's partial rows never cap the parts below the config's.
  const numParts = cfg.numParts;
  const blockN = cfg.blockN;
  const overhead = Math.ceil(320 / blockN);
  const maxPages = Math.max(1, ...c.seqLens.map((L) => Math.ceil(Math.max(L, 0) / c.pageSize)));
  const numPages = 7;
  const r = rng(B * 31 + c.H);
  const table = Int32Array.from({ length: B * maxPages }, () => Math.floor(r() * numPages));
  const ws = new DecodeWorkspace({ maxBatch: B, maxHeads: c.H, maxQSeqLen: maxQ, maxParts: c.maxParts });
  const tensors = [
    DeviceTensor.empty([tokens, c.H, D], 'bf16'),
    DeviceTensor.empty([numPages, c.pageSize, D], 'bf16'),
    DeviceTensor.fromArray(table, [B, maxPages], 'i32'),
    DeviceTensor.fromArray(Int32Array.from(c.seqLens), [B], 'i32'),
    DeviceTensor.fromArray(Int32Array.from(c.qLens), [B], 'i32'),
  ] as const;
  const [q, cache, blockTable, seqLens, qSeqLens] = tensors;
  try {
    const res = decode({ q, cache, blockTable, seqLens, qSeqLens, scale: 0.1, causal: true, workspace: ws, checkIndices: false, maxQSeqLen: maxQ, phases: 'plan', kernel: c.kernel });
    res.out.dispose();
    res.lse.dispose();
    const { parts, requests } = ws.planSnapshot();
    const errorBits = ws.checkErrors().bits;
    const at = (b: number, f: number): number => requests[b * 8 + f]!;

    // Request fields, with the documented error rules applied in order.
    let qs = 0;
    let expectBits = 0;
    let total = 0;
    const blocks: number[] = [];
    let fieldsOk = true;
    for (let b = 0; b < B; b++) {
      const L = c.seqLens[b]!;
      let bad = L < 0 || L > maxPages * c.pageSize ? 1 : 0;
      const sq = c.qLens[b]!;
      if (sq < 0 || sq > maxQ || qs + sq > tokens) bad |= 4;
      expectBits |= bad;
      const qStart = qs;
      if (!(bad & 4)) qs += sq;
      const qLen = bad & 4 ? 0 : sq;
      const nb = bad || qLen === 0 ? 0 : Math.ceil(L / blockN);
      blocks.push(nb);
      if (nb > 0) total += nb + overhead;
      const want = [nb, qStart, qLen, L];
      const got = [at(b, 0), at(b, 3), at(b, 4), at(b, 5)];
      if (want.some((v, i) => v !== got[i])) {
        fieldsOk = false;
        tt.fail(`${c.label}: request ${b} [blocks, qStart, qLen, seqLen] ${JSON.stringify(got)}, expected ${JSON.stringify(want)}`);
        break;
      }
    }
    tt.ok(fieldsOk, `${c.label}: request fields`);
    tt.equal(errorBits, expectBits, `${c.label}: error bits`);

    const P = Math.max(1, Math.ceil(total / numParts));
    const next = new Array<number>(B).fill(0);
    const pieces = new Array<number>(B).fill(0);
    const slots = new Set<number>();
    const problems: string[] = [];
    let maxUnits = 0;
    for (let p = 0; p < numParts; p++) {
      const m = parts.subarray(p * 8, p * 8 + 5);
      if (p > 0 && (m[0] !== parts[(p - 1) * 8 + 2] || m[1] !== parts[(p - 1) * 8 + 3])) problems.push(`part ${p} does not begin where part ${p - 1} ends`);
      let units = 0;
      let partials = 0;
      for (let b = m[0]!; b <= Math.min(m[2]!, B - 1); b++) {
        const blk0 = b === m[0] ? m[1]! : 0;
        const blk1 = b === m[2] ? m[3]! : blocks[b]!;
        if (blk1 <= blk0) continue;
        if (blk0 !== next[b] || blk1 > blocks[b]!) problems.push(`part ${p}: request ${b} blocks [${blk0}, ${blk1}) after ${next[b]} of ${blocks[b]}`);
        next[b] = blk1;
        pieces[b]!++;
        units += blk1 - blk0 + overhead;
        const ns = at(b, 1);
        if (ns > 1) {
          partials++;
          const slot = at(b, 2) + (b === m[0] ? m[4]! : 0);
          if (slot < at(b, 2) || slot >= at(b, 2) + ns || slots.has(slot)) problems.push(`part ${p}: request ${b} slot ${slot}`);
          slots.add(slot);
        }
      }
      if (partials > 2) problems.push(`part ${p} has ${partials} partial slots`);
      maxUnits = Math.max(maxUnits, units);
    }
    const lastEnd = parts.subarray((numParts - 1) * 8 + 2, (numParts - 1) * 8 + 4);
    if (lastEnd[0] !== B || lastEnd[1] !== 0) problems.push(`the last part ends at (${lastEnd[0]}, ${lastEnd[1]})`);
    for (let b = 0; b < B; b++) {
      if (next[b] !== blocks[b]) problems.push(`request ${b}: ${next[b]} of ${blocks[b]} blocks covered`);
      if (blocks[b]! > 0 && pieces[b] !== at(b, 1)) problems.push(`request ${b}: ${pieces[b]} pieces, plan says ${at(b, 1)} splits`);
    }
    if ([...slots].some((s) => s >= 2 * numParts)) problems.push('a slot past 2 · numParts');
    tt.same(problems.slice(0, 5), [], `${c.label}: ${numParts} parts cover every block once, slots distinct`);
    tt.ok(maxUnits <= P + overhead, `${c.label}: busiest part ${maxUnits} units <= share ${P} + overhead ${overhead}`);
  } finally {
    ws.dispose();
    for (const x of tensors) x.dispose();
  }
}

t.test('decode plan: every block in one part, slots once, parts balanced', { skip: gpuSkip }, (tt) => {
  const r = rng(4242);
  const kernel = kernels[kernels.length - 1]!;
  let n = 0;
  for (const maxParts of [1, 2, 5, 17, 132]) {
    for (let rep = 0; rep < 4; rep++, n++) {
      const B = 1 + Math.floor(r() * (rep === 3 ? 300 : 40));
      const H = [1, 16, 32, 64][rep]!;
      const maxQ = H === 64 ? 1 : 2;
      const pageSize = [16, 64, 256][n % 3]!;
      const seqLens = Array.from({ length: B }, () => (r() < 0.2 ? 0 : r() < 0.2 ? 20000 + Math.floor(r() * 40000) : Math.floor(r() * 3000)));
      // Request 0 has a query: a call without any launches nothing.
      const qLens = Array.from({ length: B }, (_, i) => (i > 0 && r() < 0.1 ? 0 : 1 + Math.floor(r() * maxQ)));
      checkPlan(tt, { label: `#${n} ${kernel} parts ${maxParts} B${B} H${H}`, H, pageSize, seqLens, qLens, maxParts, kernel });
    }
  }
  checkPlan(tt, { label: 'one long request', H: 16, pageSize: 64, seqLens: [100000], qLens: [1], maxParts: 132, kernel });
  checkPlan(tt, { label: 'all empty', H: 16, pageSize: 64, seqLens: [0, 0, 0], qLens: [1, 1, 1], maxParts: 7, kernel });
  checkPlan(tt, { label: 'bad lengths', H: 16, pageSize: 16, seqLens: [50, -1, 70, 1 << 20, 30], qLens: [1, 1, 1, 1, 1], maxParts: 4, kernel });
  // 2 + 2 > 3 rows: request 1 owns none, request 2 (1 query) still fits after request 0.
  checkPlan(tt, { label: 'queries past tokens', H: 8, pageSize: 16, seqLens: [40, 50, 60], qLens: [2, 2, 1], tokens: 3, maxParts: 4, kernel });
  const big = Array.from({ length: 1600 }, (_, i) => (i * 37) % 90);
  checkPlan(tt, { label: 'B 1600 (plan state in global memory)', H: 1, pageSize: 16, seqLens: big, qLens: big.map(() => 1), maxParts: 9, kernel });
  tt.end();
});

// A page's rows past the request's length, and pages no request uses, hold whatever the cache
// allocator left there; NaN there must not reach P·V (0 · NaN is NaN).
t.test('decode: cache rows past each length hold NaN, and the outputs do not see it', { skip: gpuSkip }, (tt) => {
  const spec: CaseSpec = { B: 3, H: 16, pageSize: 64, seqLens: [70, 5, 130], sQ: 2, causal: true, dtype: 'bf16', seed: 4242 };
  const b = build(spec);
  let nanCache: DeviceTensor | undefined;
  try {
    const table = b.blockTable.toHostSync() as Int32Array;
    const maxPages = b.blockTable.shape[1]!;
    const cache = b.cache.toFloat32Sync();
    const used = new Set<number>();
    spec.seqLens.forEach((L, r) => {
      for (let k = 0; k < L; k++) used.add(table[r * maxPages + Math.floor(k / spec.pageSize)]! * spec.pageSize + (k % spec.pageSize));
    });
    for (let row = 0; row < cache.length / D; row++) if (!used.has(row)) cache.fill(NaN, row * D, (row + 1) * D);
    nanCache = DeviceTensor.fromArray(cache, [...b.cache.shape], 'bf16');
    for (const kernel of kernels) checkOutputs(tt, `${kernel} NaN past the lengths`, runBuilt({ ...b, cache: nanCache }, { ...spec, kernel }), b.ref);
  } finally {
    nanCache?.dispose();
    disposeBuilt(b);
  }
  tt.end();
});

// Views, not copies: q with a padded head stride, the cache with 640-value rows (the Hopper
// kernel's tensor map takes the cache's own strides).
t.test('decode: strided q and cache views', { skip: gpuSkip }, (tt) => {
  const spec: CaseSpec = { B: 2, H: 8, pageSize: 32, seqLens: [100, 45], sQ: 1, causal: true, dtype: 'bf16', seed: 515 };
  const b = build(spec);
  const W = 640;
  const owned: DeviceTensor[] = [];
  try {
    const widen = (t: DeviceTensor): DeviceTensor => {
      const [n0, n1] = [t.shape[0]!, t.shape[1]!];
      const src = t.toFloat32Sync(), wide = new Float32Array(n0 * n1 * W);
      for (let r = 0; r < n0 * n1; r++) wide.set(src.subarray(r * D, (r + 1) * D), r * W);
      const big = DeviceTensor.fromArray(wide, [n0, n1, W], spec.dtype);
      owned.push(big);
      return big.slice(2, 0, D);
    };
    const views = { ...b, q: widen(b.q), cache: widen(b.cache) };
    tt.equal(views.cache.strides[1], W, 'the cache view keeps its 640-value rows');
    for (const kernel of kernels) checkOutputs(tt, `${kernel} strided views`, runBuilt(views, { ...spec, kernel }), b.ref);
  } finally {
    for (const t of owned) t.dispose();
    disposeBuilt(b);
  }
  tt.end();
});

t.test('decode: empty sequences give out 0 and lse +inf', { skip: gpuSkip }, (tt) => {
  const spec: CaseSpec = { B: 2, H: 4, pageSize: 16, seqLens: [0, 0], sQ: 2, causal: true, dtype: 'f16', seed: 5 };
  const b = build(spec);
  try {
    for (const kernel of kernels) {
      const got = runBuilt(b, { ...spec, kernel });
      tt.ok(got.lse.every((v) => v === Infinity), `${kernel}: lse +inf`);
      tt.ok(got.out.every((v) => v === 0), `${kernel}: out 0`);
    }
  } finally {
    disposeBuilt(b);
  }
  tt.end();
});

t.test('decode: bad device indices are caught on the host, or guarded on the device', { skip: gpuSkip }, (tt) => {
  const spec: CaseSpec = { B: 3, H: 16, pageSize: 16, seqLens: [40, 70, 20], sQ: 1, causal: false, dtype: 'bf16', seed: 31 };
  const b = build(spec);
  const ws = new DecodeWorkspace({ maxBatch: 4, maxHeads: 16 });
  try {
    const table = b.blockTable.toHostSync() as Int32Array;
    const maxPages = b.blockTable.shape[1]!;
    const badTable = Int32Array.from(table);
    badTable[1 * maxPages + 2] = 1 << 30; // request 1's third page
    const badBt = DeviceTensor.fromArray(badTable, [3, maxPages], 'i32');
    const badLens = DeviceTensor.fromArray(Int32Array.from([40, 70, 1 << 20]), [3], 'i32');
    try {
      const base = { q: b.q, cache: b.cache, scale: 0.1352337788608801, causal: false, workspace: ws };
      expectError(tt, () => decode({ ...base, blockTable: badBt, seqLens: b.seqLens }), 'ERR_RANGE', 'blockTable', 'host check: page');
      expectError(tt, () => decode({ ...base, blockTable: b.blockTable, seqLens: badLens }), 'ERR_RANGE', 'seqLens', 'host check: length');

      for (const [name, bt, lens, bit, badReq, kernel] of kernels.flatMap((k) => [
        [`${k} page`, badBt, b.seqLens, 2, 1, k],
        [`${k} seqLen`, b.blockTable, badLens, 1, 2, k],
      ] as const)) {
        const out = poison(DeviceTensor.empty([3, 16, DV], 'bf16'));
        const lse = poison(DeviceTensor.empty([3, 16], 'f32'));
        try {
          decode({ ...base, blockTable: bt, seqLens: lens, out, lse, checkIndices: false, kernel });
          const o = out.toFloat32Sync();
          const l = lse.toFloat32Sync();
          const rep = ws.checkErrors();
          tt.equal(rep.bits & bit, bit, `${name}: device error bit set`);
          tt.ok(rep.messages.length > 0, `${name}: error message`);
          tt.ok(ws.checkErrors().ok, `${name}: checkErrors clears the flag`);
          const rows = 16 * DV;
          tt.ok(o.subarray(badReq * rows, (badReq + 1) * rows).every((v) => v === 0), `${name}: bad request written as zeros`);
          tt.ok(l.subarray(badReq * 16, (badReq + 1) * 16).every((v) => v === Infinity), `${name}: bad request lse +inf`);
          const okReqs = [0, 1, 2].filter((x) => x !== badReq);
          for (const rq of okReqs) {
            const e = relError(o.subarray(rq * rows, (rq + 1) * rows), b.ref.out.subarray(rq * rows, (rq + 1) * rows));
            tt.ok(e < 1e-2, `${name}: request ${rq} still correct (${e.toExponential(2)})`);
          }
        } finally {
          out.dispose();
          lse.dispose();
        }
      }
    } finally {
      badBt.dispose();
      badLens.dispose();
    }
  } finally {
    ws.dispose();
    disposeBuilt(b);
  }
  tt.end();
});

t.test('decode reproduces the DeepSeek-V3 fixture decode steps (v3slim, paged)', { skip: gpuSkip }, (tt) => {
  const f = SafetensorsFile.open(fixturePath('mla-v3slim'));
  try {
    const cfg = JSON.parse(f.metadata['config'] ?? '{}') as { softmax_scale: number; kv_lora_rank: number; qk_rope_head_dim: number };
    tt.equal(cfg.kv_lora_rank + cfg.qk_rope_head_dim, D, 'fixture is 512 + 64');
    const B = Number(f.metadata['batch']);
    const P = Number(f.metadata['prefill_len']);
    const K = Number(f.metadata['decode_steps']);
    const latent = f.readFloat64('cache.latent');
    const rope = f.readFloat64('cache.rope');
    const S = latent.shape[1]!;
    const pageSize = 16;
    const maxPages = Math.ceil(S / pageSize);
    const numPages = B * maxPages;
    // Request b's logical page i lives in physical page (i * B + b): interleaved, not contiguous.
    const cacheF = new Float32Array(numPages * pageSize * D);
    const table = new Int32Array(B * maxPages);
    for (let b = 0; b < B; b++) {
      for (let i = 0; i < maxPages; i++) table[b * maxPages + i] = i * B + b;
      for (let s = 0; s < S; s++) {
        const row = (table[b * maxPages + Math.floor(s / pageSize)]! * pageSize + (s % pageSize)) * D;
        for (let c = 0; c < 512; c++) cacheF[row + c] = latent.data[(b * S + s) * 512 + c]!;
        for (let c = 0; c < 64; c++) cacheF[row + 512 + c] = rope.data[(b * S + s) * 64 + c]!;
      }
    }
    for (const [dtype, kernel] of kernels.flatMap((k) => [['bf16', k], ['f16', k]] as const)) {
      const cache = DeviceTensor.fromArray(cacheF, [numPages, pageSize, D], dtype);
      const bt = DeviceTensor.fromArray(table, [B, maxPages], 'i32');
      try {
        for (let k = 0; k < K; k++) {
          const ql = f.readFloat64(`q_latent.decode.${k}`);
          const qr = f.readFloat64(`q_rope.decode.${k}`);
          const H = ql.shape[2]!;
          const qF = new Float32Array(B * H * D);
          for (let r = 0; r < B * H; r++) {
            for (let c = 0; c < 512; c++) qF[r * D + c] = ql.data[r * 512 + c]!;
            for (let c = 0; c < 64; c++) qF[r * D + 512 + c] = qr.data[r * 64 + c]!;
          }
          const q = DeviceTensor.fromArray(qF, [B, H, D], dtype);
          const lens = DeviceTensor.fromArray(Int32Array.from({ length: B }, () => P + k + 1), [B], 'i32');
          try {
            const res = decode({ q, cache, blockTable: bt, seqLens: lens, scale: cfg.softmax_scale, causal: true, kernel });
            try {
              const o = res.out.toFloat32Sync();
              const l = res.lse.toFloat32Sync();
              const e = relError(o, f.readFloat64(`o_latent.decode.${k}`).data);
              tt.ok(e < 1e-2, `${kernel} ${dtype} step ${k}: o_latent rel err ${e.toExponential(2)}`);
              const lref = f.readFloat64(`lse.decode.${k}`).data;
              const el = relError(l, lref);
              tt.ok(el < 1e-2, `${kernel} ${dtype} step ${k}: lse rel err ${el.toExponential(2)}`);
            } finally {
              res.out.dispose();
              res.lse.dispose();
            }
          } finally {
            q.dispose();
            lens.dispose();
          }
        }
      } finally {
        cache.dispose();
        bt.dispose();
      }
    }
  } finally {
    f.close();
  }
  tt.end();
});

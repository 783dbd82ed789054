// sparse: the float64 reference against the dense one (everywhere), argument validation on
// TensorMeta stand-ins (everywhere), then the kernel on the device (emulated in CI) against the
// float64 reference on the same rounded inputs: duplicates, -1 holes, out-of-range slots,
// topkLength 0 / partial / full, page sizes 16/64/256, H 1/16/64/128, bf16 and FP8 caches,
// sinks ±inf and finite, a split top-k list, every emulated shared-memory tier.
import { EMULATED_TIERS } from './helpers/emulated-devices.js'; // first: before the addon loads
import t from 'tap';
import { cuda, DeviceTensor, LatentCache, loadMlaConfig, loadMlaWeights, MlaAttention, MlaError, Stream } from '../lib/index.js';
import { join } from 'node:path';
import { packageRoot } from '../lib/native.js';
import type { TensorMeta } from '../lib/index.js';
import { checkSparseIndices, sparse, validateSparseArgs, type SparseArgsMeta } from '../lib/ops/sparse.js';
import { DecodeWorkspace } from '../lib/ops/decode.js';
import { sparseCase, suite } from '../lib/bench/sparse.js';
import { FP8_ROW_BYTES, quantizeFp8Cache } from '../lib/reference/fp8.js';
import { gpuSkip, poison, randn, relError, rng, roundTo } from './helpers/gpu.js';
import { meta, throwsNaming as expectError } from './helpers/validation.js';
import * as reference from '../lib/reference/index.js';

const D = 576, DV = 512;


t.test('reference: contiguous indices = dense decode; holes, duplicates, topkLength and sinks by definition', (t) => {
  const H = 3, pageSize = 4, numPages = 5, L = 11, scale = 0.07;
  const q = Float64Array.from(randn(2 * H * D, 1, 1));
  const cache = Float64Array.from(randn(numPages * pageSize * D, 2, 1));
  const blockTable = Int32Array.from([0, 1, 2, 3, 4, 0, 1, 2, 3, 4]);
  const dense = reference.decode({ q, cache, pageSize, blockTable, seqLens: [L, L], qSeqLens: 1, numHeads: H, dimLatent: DV, scale, causal: false });
  const idx = new Int32Array(2 * 16).fill(-1);
  for (let k = 0; k < L; k++) idx[k] = k;
  // Row 1: the same slots shuffled, with holes of every kind between them.
  const holes = [-1, -7, numPages * pageSize, 0x7fffffff];
  for (let k = 0, h = 0; k < 16; k++) idx[16 + k] = k % 3 === 2 && h < holes.length ? holes[h++]! : -1;
  let next = 0;
  for (let k = 0; k < 16 && next < L; k++) if (idx[16 + k] === -1 && k % 3 !== 2) idx[16 + k] = L - 1 - next++;
  const sp = reference.sparse({ q, cache, indices: idx, topk: 16, numHeads: H, dimLatent: DV, scale });
  t.ok(relError(sp.out, dense.out) < 1e-12, `out = dense decode over the same keys (${relError(sp.out, dense.out)})`);
  t.ok(relError(sp.lse, dense.lse) < 1e-12, 'lse = dense decode');

  // topkLength: 0 keeps nothing (out 0, lse +inf); a length over topk keeps all; sinks.
  const tl = reference.sparse({ q, cache, indices: idx, topk: 16, topkLength: [0, 99], numHeads: H, dimLatent: DV, scale });
  t.ok(tl.out.slice(0, H * DV).every((v) => v === 0) && tl.lse.slice(0, H).every((v) => v === Infinity), 'topkLength 0: out 0, lse +inf');
  t.ok(relError(tl.out.slice(H * DV), dense.out.slice(H * DV)) < 1e-12, 'topkLength > topk: every entry');
  const sink = [Infinity, -Infinity, 0.5];
  const sk = reference.sparse({ q, cache, indices: idx, topk: 16, attnSink: sink, numHeads: H, dimLatent: DV, scale });
  for (let h = 0; h < H; h++) {
    const lse = dense.lse[h]!;
    const f = 1 / (1 + Math.exp(sink[h]! - lse));
    const a = sk.out.slice(h * DV, h * DV + DV), b = dense.out.slice(h * DV, h * DV + DV).map((v) => v * f);
    t.ok(relError(a, b) < 1e-12 || (f === 0 && a.every((v) => v === 0)), `sink ${sink[h]}: out × ${f.toPrecision(4)}`);
    t.equal(sk.lse[h], lse, `sink ${sink[h]}: lse unchanged`);
  }
  // A duplicate counts twice: the same as listing it twice in a dense cache.
  const dup = reference.sparse({ q: q.slice(0, H * D), cache, indices: Int32Array.from([3, 3, 5]), topk: 3, numHeads: H, dimLatent: DV, scale });
  const twice = new Float64Array(3 * D);
  twice.set(cache.subarray(3 * D, 4 * D), 0);
  twice.set(cache.subarray(3 * D, 4 * D), D);
  twice.set(cache.subarray(5 * D, 6 * D), 2 * D);
  const d2 = reference.sparse({ q: q.slice(0, H * D), cache: twice, indices: Int32Array.from([0, 1, 2]), topk: 3, numHeads: H, dimLatent: DV, scale });
  t.ok(relError(dup.out, d2.out) < 1e-12 && relError(dup.lse, d2.lse) < 1e-12, 'duplicates = two keys');
  t.end();
});

function baseArgs(over: Partial<SparseArgsMeta> = {}): SparseArgsMeta {
  return { q: meta([4, 16, D], 'bf16'), cache: meta([10, 64, D], 'bf16'), indices: meta([4, 2048], 'i32'), scale: 0.1352, ...over };
}

t.test('validateSparseArgs accepts well-formed calls and names the argument of a bad one', (t) => {
  const g = validateSparseArgs(baseArgs());
  t.same({ tokens: g.tokens, H: g.numHeads, slots: g.numSlots, topk: g.topk, fp8: g.fp8 }, { tokens: 4, H: 16, slots: 640, topk: 2048, fp8: false });
  t.equal(validateSparseArgs(baseArgs({ cache: meta([1000, 1, D], 'bf16') })).numSlots, 1000, 'page size 1: a flat cache');
  t.equal(validateSparseArgs(baseArgs({ cache: meta([3, 64, FP8_ROW_BYTES], 'u8'), topkLength: meta([4], 'i32'), attnSink: meta([16], 'f32') })).fp8, true);
  t.equal(validateSparseArgs(baseArgs({ indices: meta([4, 0], 'i32') })).topk, 0, 'topk 0: every token empty');
  const cases: Array<[string, Partial<SparseArgsMeta>, string, string]> = [
    ['q f32', { q: meta([4, 16, D], 'f32') }, 'ERR_DTYPE', 'q'],
    ['129 heads', { q: meta([4, 129, D], 'bf16') }, 'ERR_RANGE', 'q'],
    ['q width 512', { q: meta([4, 16, 512], 'bf16') }, 'ERR_SHAPE', 'q'],
    ['cache dtype', { cache: meta([10, 64, D], 'f16') }, 'ERR_DTYPE', 'cache'],
    ['page size 48', { cache: meta([10, 48, D], 'bf16') }, 'ERR_RANGE', 'cache'],
    ['page size 512', { cache: meta([10, 512, D], 'bf16') }, 'ERR_RANGE', 'cache'],
    ['FP8 with f16 q', { q: meta([4, 16, D], 'f16'), cache: meta([3, 64, FP8_ROW_BYTES], 'u8') }, 'ERR_DTYPE', 'q'],
    ['FP8 rows 576', { cache: meta([3, 64, D], 'u8') }, 'ERR_SHAPE', 'cache'],
    ['indices f32', { indices: meta([4, 2048], 'f32') }, 'ERR_DTYPE', 'indices'],
    ['indices i32 but 3-d', { indices: meta([4, 1, 2048], 'i32') }, 'ERR_SHAPE', 'indices'],
    ['indices wrong tokens', { indices: meta([3, 2048], 'i32') }, 'ERR_SHAPE', 'indices'],
    ['indices strided topk', { indices: meta([4, 2048], 'i32', [4096, 2]) }, 'ERR_SHAPE', 'indices'],
    ['indices disposed', { indices: meta([4, 2048], 'i32', undefined, { disposed: true }) }, 'ERR_DISPOSED', 'indices'],
    ['topk over 2^24', { indices: meta([4, (1 << 24) + 1], 'i32') }, 'ERR_RANGE', 'indices'],
    ['topkLength f32', { topkLength: meta([4], 'f32') }, 'ERR_DTYPE', 'topkLength'],
    ['topkLength [4, 1]', { topkLength: meta([4, 1], 'i32') }, 'ERR_SHAPE', 'topkLength'],
    ['attnSink bf16', { attnSink: meta([16], 'bf16') }, 'ERR_DTYPE', 'attnSink'],
    ['attnSink per token', { attnSink: meta([4, 16], 'f32') }, 'ERR_SHAPE', 'attnSink'],
    ['attnSink 8 heads', { attnSink: meta([8], 'f32') }, 'ERR_SHAPE', 'attnSink'],
    ['out width', { out: meta([4, 16, D], 'bf16') }, 'ERR_SHAPE', 'out'],
    ['lse bf16', { lse: meta([4, 16], 'bf16') }, 'ERR_DTYPE', 'lse'],
    ['scale 0', { scale: 0 }, 'ERR_RANGE', 'scale'],
  ];
  for (const [what, over, code, arg] of cases) expectError(t, () => validateSparseArgs(baseArgs(over)), code, arg, what);
  t.end();
});

t.test('checkSparseIndices refuses only the suspicious values (every value is defined)', (t) => {
  const geo = validateSparseArgs(baseArgs({ q: meta([2, 16, D], 'bf16'), indices: meta([2, 3], 'i32') }));
  t.doesNotThrow(() => checkSparseIndices(geo, [0, -1, 639, 640, 1e9, -1], [0, 3]), 'holes, out-of-range padding, topkLength 0 and full');
  expectError(t, () => checkSparseIndices(geo, [0, -2, 1, 1, 1, 1]), 'ERR_RANGE', 'indices', 'slot -2');
  expectError(t, () => checkSparseIndices(geo, [0, 1, 1, 1, 1, 1], [4, 0]), 'ERR_RANGE', 'topkLength', 'topkLength > topk');
  expectError(t, () => checkSparseIndices(geo, [0, 1, 1, 1, 1, 1], [1, -1]), 'ERR_RANGE', 'topkLength', 'negative topkLength');
  t.end();
});

interface Case {
  T: number;
  H: number;
  pageSize: number;
  numPages: number;
  topk: number;
  fp8: boolean;
  /** topkLength per token, or none. */
  topkLength?: number[];
  /** sink per head: a function of h, or none. */
  sink?: (h: number) => number;
  seed: number;
  /** Run on every emulated shared-memory tier. */
  tiers?: boolean;
}

/** Random slots with duplicates, -1 holes, out-of-range values (≥ numSlots, huge, other negatives); row 0 of a T ≥ 3 case has no valid entry. */
function makeIndices(c: Case, r: () => number): Int32Array {
  const slots = c.numPages * c.pageSize;
  const idx = new Int32Array(c.T * c.topk);
  for (let i = 0; i < idx.length; i++) {
    const u = r();
    if (u < 0.08) idx[i] = -1;
    else if (u < 0.11) idx[i] = slots + Math.floor(r() * 5);
    else if (u < 0.12) idx[i] = 0x7fffffff;
    else if (u < 0.13) idx[i] = -1000;
    else if (u < 0.25 && i > 0) idx[i] = idx[i - 1 - Math.floor(r() * Math.min(i, 8))]!; // duplicate (maybe of a hole)
    else idx[i] = Math.floor(r() * slots);
  }
  if (c.T >= 3) for (let k = 0; k < c.topk; k++) idx[k] = k % 2 ? -1 : slots + k;
  return idx;
}

const cases: Case[] = [
  { T: 3, H: 16, pageSize: 16, numPages: 9, topk: 40, fp8: false, topkLength: [40, 17, 0], sink: (h) => (h % 3 === 0 ? 0.3 * h - 2 : h % 3 === 1 ? Infinity : -Infinity), seed: 31, tiers: true },
  { T: 2, H: 1, pageSize: 64, numPages: 3, topk: 70, fp8: false, sink: () => 1.5, seed: 32 },
  { T: 1, H: 64, pageSize: 256, numPages: 2, topk: 300, fp8: true, sink: (h) => (h === 0 ? Infinity : h === 1 ? -Infinity : Math.sin(h) * 3), seed: 33 },
  { T: 2, H: 128, pageSize: 64, numPages: 2, topk: 48, fp8: true, topkLength: [48, 29], seed: 34 },
  { T: 4, H: 5, pageSize: 16, numPages: 6, topk: 24, fp8: true, topkLength: [24, 1, 0, 13], sink: (h) => h - 2, seed: 35, tiers: true },
];

for (const c of cases) {
  t.test(`sparse kernel vs reference: ${JSON.stringify({ ...c, sink: c.sink ? 'yes' : 'no' })}`, { skip: gpuSkip }, (t) => {
    const r = rng(c.seed);
    const slots = c.numPages * c.pageSize;
    const indices = makeIndices(c, r);
    const qF = randn(c.T * c.H * D, c.seed + 1, 0.5);
    const cF = randn(slots * D, c.seed + 2, 1);
    const scale = 0.1352337788608801;
    const q64 = roundTo(qF, 'bf16');
    const c64 = roundTo(cF, 'bf16');
    const attnSink = c.sink ? Float32Array.from({ length: c.H }, (_, h) => c.sink!(h)) : undefined;
    const common = { q: q64, indices, topk: c.topk, topkLength: c.topkLength, attnSink, numHeads: c.H, scale };
    const extra = 1; // FP8 pages one row further apart than pageSize·656: a strided view
    const pageStride = (c.pageSize + extra) * FP8_ROW_BYTES;
    const bytes = c.fp8 ? quantizeFp8Cache(c64, { numPages: c.numPages, pageSize: c.pageSize, pageStride }) : undefined;
    const ref = bytes
      ? reference.sparseFp8({ ...common, cache: bytes, numPages: c.numPages, pageSize: c.pageSize, pageStride })
      : reference.sparse({ ...common, cache: c64, dimLatent: DV });

    const tiers = c.tiers && cuda.buildInfo().emulated ? EMULATED_TIERS.length : 1;
    for (let dev = 0; dev < tiers; dev++) {
      if (tiers > 1) cuda.setDevice(dev);
      const where = tiers > 1 ? `${EMULATED_TIERS[dev]}: ` : '';
      using base = bytes
        ? DeviceTensor.fromArray(bytes, [c.numPages, c.pageSize + extra, FP8_ROW_BYTES], 'u8')
        : DeviceTensor.fromArray(cF, [c.numPages, c.pageSize, D], 'bf16');
      const cache = bytes ? base.slice(1, 0, c.pageSize) : base;
      using q = DeviceTensor.fromArray(qF, [c.T, c.H, D], 'bf16');
      using idx = DeviceTensor.fromArray(indices, [c.T, c.topk], 'i32');
      using tl = c.topkLength ? DeviceTensor.fromArray(Int32Array.from(c.topkLength), [c.T], 'i32') : undefined;
      using sink = attnSink ? DeviceTensor.fromArray(attnSink, [c.H], 'f32') : undefined;
      using out = poison(DeviceTensor.empty([c.T, c.H, DV], 'bf16'));
      using lse = poison(DeviceTensor.empty([c.T, c.H], 'f32'));
      // checkIndices false: the out-of-range values below −1 are deliberate (defined as holes).
      sparse({ q, cache, indices: idx, topkLength: tl, attnSink: sink, scale, out, lse, checkIndices: false });
      const got = out.toFloat32Sync();
      const gotLse = Array.from(lse.toFloat32Sync());
      const e = relError(got, ref.out);
      const finite = (a: ArrayLike<number>): number[] => Array.from(a, (v) => (Number.isFinite(v) ? v : 0));
      const eL = relError(finite(gotLse), finite(ref.lse));
      t.ok(e < 1e-2, `${where}out rel err ${e.toExponential(2)}`);
      t.ok(eL < 1e-3, `${where}lse rel err ${eL.toExponential(2)}`);
      t.same(gotLse.map((v) => v === Infinity), Array.from(ref.lse, (v) => v === Infinity), `${where}lse +inf exactly where a token has no entry`);
      t.ok(got.every((v) => Number.isFinite(v)), `${where}every output written and finite`);
    }
    if (tiers > 1) cuda.setDevice(0);
    t.end();
  });
}

t.test('sparse: a reused workspace, a long list split over parts, checkIndices on by default', { skip: gpuSkip }, (t) => {
  const H = 16, pageSize = 64, numPages = 4, topk = 512, T = 1, scale = 0.1;
  const slots = numPages * pageSize;
  const r = rng(41);
  const indices = Int32Array.from({ length: topk }, () => Math.floor(r() * slots));
  const qF = randn(T * H * D, 42, 0.5), cF = randn(slots * D, 43, 1);
  const ref = reference.sparse({ q: roundTo(qF, 'bf16'), cache: roundTo(cF, 'bf16'), indices, topk, numHeads: H, dimLatent: DV, scale });
  using ws = new DecodeWorkspace({ maxBatch: 4, maxHeads: H, maxParts: 8 });
  using q = DeviceTensor.fromArray(qF, [T, H, D], 'bf16');
  using cache = DeviceTensor.fromArray(cF, [numPages, pageSize, D], 'bf16');
  using idx = DeviceTensor.fromArray(indices, [T, topk], 'i32');
  for (let rep = 0; rep < 2; rep++) {
    using out = poison(DeviceTensor.empty([T, H, DV], 'bf16'));
    using lse = poison(DeviceTensor.empty([T, H], 'f32'));
    sparse({ q, cache, indices: idx, scale, out, lse, workspace: ws });
    const e = relError(out.toFloat32Sync(), ref.out), eL = relError(lse.toFloat32Sync(), ref.lse);
    t.ok(e < 1e-2 && eL < 1e-3, `call ${rep}: out ${e.toExponential(2)}, lse ${eL.toExponential(2)}`);
  }
  t.ok(ws.checkErrors().ok, 'no error bits: every value is defined');
  using bad = DeviceTensor.fromArray(Int32Array.from({ length: topk }, (_, k) => (k === 7 ? -2 : 0)), [T, topk], 'i32');
  expectError(t, () => sparse({ q, cache, indices: bad, scale, workspace: ws }), 'ERR_RANGE', 'indices', 'checkIndices (default) refuses -2');
  using small = new DecodeWorkspace({ maxBatch: 1, maxHeads: 8 });
  expectError(t, () => sparse({ q, cache, indices: idx, scale, workspace: small }), 'ERR_RANGE', 'workspace', 'workspace too small for H');
  t.end();
});

t.test('bench case: FlashMLA sparse formulas, and one tiny instance runs', { skip: gpuSkip }, (t) => {
  const c = sparseCase({ b: 2, h: 16, sQ: 2, sK: 256, topk: 64, cache: 'fp8' });
  const attended = 2 * 2 * 64;
  t.equal(c.flops, 2 * 16 * attended * (576 + 512), 'FLOPs = 2·H·attended·(576+512)');
  const unique = c.params['uniqueTokens'] as number;
  t.ok(unique > 64 * 2 && unique <= attended, `unique tokens ${unique}: each request's two queries overlap partly`);
  t.equal(c.bytes, unique * 656, 'bytes = unique × 656');
  t.equal(sparseCase({ b: 2, h: 16, sQ: 1, sK: 256, topk: 64, cache: 'model' }).bytes, 2 * 64 * 1152, 'bf16: distinct slots × 1,152');
  using stream = new Stream();
  const inst = c.setup();
  try {
    inst.run(stream);
    inst.runMain?.(stream);
    stream.synchronize();
  } finally {
    inst.dispose();
  }
  t.ok(suite.cases({ quick: false }).every((x) => x.params['b'] === 128 && x.params['h'] === 128 && x.params['topk'] === 2048), 'default grid: b 128, h 128, topk 2048');
  t.end();
});

// MlaAttention: the selection is positions in each token's sequence; the layer maps them to slots.
t.test('MlaAttention with a top-k selection: every position = the dense layer; random selections: kernels vs reference', async (t) => {
  const file = join(packageRoot, 'test', 'fixtures', 'mla-v3slim.safetensors');
  const config = loadMlaConfig(file);
  const weights = loadMlaWeights(file, config, { prefix: 'weights.' });
  const hid = config.hiddenSize;
  const prompts = [19, 40];
  const P = prompts[0]! + prompts[1]!;
  const layer = (backend: 'reference' | 'gpu', kvCacheFormat?: 'fp8_e4m3') => {
    const cache = new LatentCache({ config, numLayers: 1, numPages: 8, pageSize: 16, backend, ...(kvCacheFormat ? { kvCacheFormat } : {}) });
    const attn = MlaAttention.create({ config, weights, cache, layer: 0, backend, ...(kvCacheFormat ? { kvCacheFormat } : {}) });
    cache.addSequence('a');
    cache.addSequence('b');
    return { cache, attn };
  };
  const xPrompt = Float64Array.from(randn(P * hid, 41, 0.5));
  const xStep = Float64Array.from(randn(4 * hid, 42, 0.5));
  const promptBatch = [{ seqId: 'a', numTokens: prompts[0]! }, { seqId: 'b', numTokens: prompts[1]! }];
  const stepBatch = [{ seqId: 'a', numTokens: 2 }, { seqId: 'b', numTokens: 2 }];
  // Row t selects positions 0..topk-1 (those after the token's own count as none).
  const everything = (T: number, topk: number): Int32Array => Int32Array.from({ length: T * topk }, (_, i) => i % topk);

  // Reference backend: selecting every earlier position is the dense causal layer (prompt and step).
  const dense = layer('reference');
  const sel = layer('reference');
  const d0 = dense.attn.forward(xPrompt, promptBatch);
  const s0 = sel.attn.forward(xPrompt, promptBatch, { sparse: { indices: everything(P, 64), topk: 64 } });
  t.ok(relError(s0, d0) < 1e-10, `prompts: sparse over every position = dense (${relError(s0, d0).toExponential(2)})`);
  const d1 = dense.attn.forward(xStep, stepBatch);
  const s1 = sel.attn.forward(xStep, stepBatch, { sparse: { indices: everything(4, 64), topk: 64 } });
  t.ok(relError(s1, d1) < 1e-10, `two-token step: sparse over every position = dense (${relError(s1, d1).toExponential(2)})`);

  // A random selection: duplicates, -1 holes, later (masked) positions, a topkLength per token.
  const topk = 24;
  const r = rng(43);
  const indices = Int32Array.from({ length: 4 * topk }, () => Math.floor(r() * 50) - 3);
  const topkLength = Int32Array.from([24, 0, 13, 30]);
  const want = sel.attn.forward(xStep, stepBatch, { sparse: { indices, topk, topkLength } });
  t.ok(want.every(Number.isFinite), 'reference: finite (a token with no entry contributes 0)');
  for (const x of [dense, sel]) {
    x.attn.dispose();
    x.cache.dispose();
  }
  if (gpuSkip) return;
  for (const format of [undefined, 'fp8_e4m3'] as const) {
    const ref = layer('reference', format);
    const gpu = layer('gpu', format);
    try {
      ref.attn.forward(xPrompt, promptBatch);
      ref.attn.forward(xStep, stepBatch, { sparse: { indices, topk, topkLength } });
      const wantAgain = ref.attn.forward(xStep, stepBatch, { sparse: { indices, topk, topkLength } });
      using xp = DeviceTensor.fromArray(xPrompt, [P, hid], 'bf16');
      using xs = DeviceTensor.fromArray(xStep, [4, hid], 'bf16');
      gpu.attn.forward(xp, promptBatch).dispose();
      gpu.attn.forward(xs, stepBatch, { sparse: { indices, topk, topkLength } }).dispose();
      using y = gpu.attn.forward(xs, stepBatch, { sparse: { indices, topk, topkLength } });
      const e = relError(y.toFloat32Sync(), wantAgain);
      t.ok(e < 3e-2, `${format ?? 'bf16'} cache: sparse layer step, kernels vs float64 reference ${e.toExponential(2)}`);
    } finally {
      for (const x of [ref, gpu]) {
        x.attn.dispose();
        x.cache.dispose();
      }
    }
  }
});

t.test('MlaAttention sparse option: bad selections are MlaErrors naming it, before any slot is reserved', async (t) => {
  const file = join(packageRoot, 'test', 'fixtures', 'mla-v3slim.safetensors');
  const config = loadMlaConfig(file);
  const weights = loadMlaWeights(file, config, { prefix: 'weights.' });
  using cache = new LatentCache({ config, numLayers: 1, numPages: 4, pageSize: 16, backend: 'reference' });
  using attn = MlaAttention.create({ config, weights, cache, layer: 0, backend: 'reference' });
  cache.addSequence(0);
  const x = new Float64Array(2 * config.hiddenSize);
  const batch = [{ seqId: 0, numTokens: 2 }];
  for (const [sparseOpt, code, re] of [
    [{ indices: [0, 1], topk: 1 }, 'ERR_ARGUMENT', /`opts.sparse.indices` must be an Int32Array/],
    [{ indices: new Int32Array(3), topk: 1 }, 'ERR_SHAPE', /`opts.sparse.indices` has 3 values; 2 tokens × topk 1 need 2/],
    [{ indices: new Int32Array(2), topk: 0 }, 'ERR_ARGUMENT', /`opts.sparse.topk` must be an integer/],
    [{ indices: new Int32Array(2), topk: 1, topkLength: new Int32Array(1) }, 'ERR_SHAPE', /`opts.sparse.topkLength` has 1 values/],
  ] as const) {
    try {
      attn.forward(x, batch, { sparse: sparseOpt as unknown as { indices: Int32Array; topk: number } });
      t.fail('accepted');
    } catch (e) {
      t.ok(e instanceof MlaError && e.code === code && re.test(e.message), `${code}: ${String(e)}`);
    }
  }
  t.equal(cache.length(0), 0, 'nothing reserved');
});

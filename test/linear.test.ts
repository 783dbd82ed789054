// linear / prepareAbsorbWeights / absorbQuery / absorbOutput: validation on TensorMeta stand-ins
// (CI, no GPU), then the tensor-core kernels against the float64 reference (GPU only).
import t from 'tap';
import type { Test } from 'tap';
import { fileURLToPath } from 'node:url';
import type { DType } from '../lib/dtype.js';
import {
  absorbOutput,
  absorbQuery,
  linear,
  prepareAbsorbWeights,
  validateAbsorbOutput,
  validateAbsorbQuery,
  validateLinear,
  validatePrepareAbsorbWeights,
} from '../lib/ops/linear.js';
import type { AbsorbDims, AbsorbWeights, AbsorbWeightsMeta, MatmulOutputDType } from '../lib/ops/linear.js';
import { rmsNorm } from '../lib/ops/rmsnorm.js';
import { absorbOutput as refAbsorbOutput, absorbQuery as refAbsorbQuery, splitKvBProj } from '../lib/reference/absorb.js';
import { linear as refLinear } from '../lib/reference/linear.js';
import { DeviceTensor } from '../lib/runtime/tensor.js';
import type { TensorMeta } from '../lib/runtime/tensor.js';
import { SafetensorsFile } from '../lib/safetensors.js';
import { emulated, gpuSkip, poison, randn, relError, roundTo } from './helpers/gpu.js';
import { meta, throwsNaming } from './helpers/validation.js';
import * as reference from '../lib/reference/index.js';

// ---- validation (no GPU) -----------------------------------------------------------------

const asTensor = (m: TensorMeta): DeviceTensor => m as unknown as DeviceTensor;

t.test('validateLinear', async (t) => {
  const x = meta([5, 64]);
  const w = meta([96, 64]);
  t.same(validateLinear(x, w), { M: 5, N: 96, K: 64, batch: 1, outShape: [5, 96], outDtype: 'bf16' });
  t.equal(validateLinear(x, w, { outDtype: 'f32' }).outDtype, 'f32');
  t.equal(validateLinear(x, w, { out: meta([5, 96], 'f16') }).outDtype, 'f16');
  // A column slice of a wider buffer (row stride 576, offset 0) and a strided out are fine.
  t.equal(validateLinear(meta([5, 512], 'bf16', [576, 1]), meta([64, 512])).K, 512);
  t.equal(validateLinear(x, w, { out: meta([5, 96], 'bf16', [200, 1], { offset: 8 }) }).N, 96);

  throwsNaming(t, () => validateLinear(x, meta([96, 72])), 'ERR_SHAPE', 'weight', 'K mismatch');
  throwsNaming(t, () => validateLinear(x, meta([100, 64])), 'ERR_SHAPE', 'weight', 'N not a multiple of 8');
  throwsNaming(t, () => validateLinear(meta([5, 60]), meta([96, 60])), 'ERR_SHAPE', 'x', 'K not a multiple of 8');
  throwsNaming(t, () => validateLinear(meta([5, 64], 'bf16', [1, 5]), w), 'ERR_SHAPE', 'x', 'non-contiguous last dim');
  throwsNaming(t, () => validateLinear(x, meta([96, 64], 'bf16', [1, 96])), 'ERR_SHAPE', 'weight', 'transposed weight');
  throwsNaming(t, () => validateLinear(meta([5, 64], 'bf16', [68, 1]), w), 'ERR_SHAPE', 'x', 'row stride not a multiple of 8');
  throwsNaming(t, () => validateLinear(meta([5, 64], 'bf16', [64, 1], { offset: 4 }), w), 'ERR_SHAPE', 'x', 'misaligned offset');
  throwsNaming(t, () => validateLinear(x, meta([96, 64], 'f16')), 'ERR_DTYPE', 'weight', 'dtype mismatch');
  throwsNaming(t, () => validateLinear(meta([5, 64], 'f32'), meta([96, 64], 'f32')), 'ERR_DTYPE', 'x', 'f32 inputs');
  throwsNaming(t, () => validateLinear(meta([5, 64], 'bf16', undefined, { disposed: true }), w), 'ERR_DISPOSED', 'x', 'disposed x');
  throwsNaming(t, () => validateLinear(x, meta([96, 64], 'bf16', undefined, { disposed: true })), 'ERR_DISPOSED', 'weight', 'disposed weight');
  throwsNaming(t, () => validateLinear(meta([5, 1, 64]), w), 'ERR_SHAPE', 'x', 'rank 3 x');
  throwsNaming(t, () => validateLinear(x, w, { out: meta([5, 88]) }), 'ERR_SHAPE', 'out', 'out shape');
  throwsNaming(t, () => validateLinear(x, w, { out: meta([5, 96], 'i32') }), 'ERR_DTYPE', 'out', 'out dtype');
  throwsNaming(t, () => validateLinear(x, w, { out: meta([5, 96], 'bf16', [1, 5]) }), 'ERR_SHAPE', 'out', 'out not row-major');
  throwsNaming(t, () => validateLinear(x, w, { out: meta([5, 96], 'bf16', undefined, { disposed: true }) }), 'ERR_DISPOSED', 'out', 'disposed out');
  throwsNaming(t, () => validateLinear(x, w, { out: meta([5, 96], 'f32'), outDtype: 'bf16' }), 'ERR_DTYPE', 'out', 'out vs outDtype');
  throwsNaming(t, () => validateLinear(x, w, { outDtype: 'fp8e4m3' }), 'ERR_DTYPE', 'outDtype', 'bad outDtype');
  throwsNaming(t, () => validateLinear({} as TensorMeta, w), 'ERR_ARGUMENT', 'x', 'not a tensor');

  // The public function validates before it touches the addon.
  throwsNaming(t, () => linear(asTensor(x), asTensor(meta([96, 72]))), 'ERR_SHAPE', 'weight', 'linear(): K mismatch');
  throwsNaming(t, () => linear(asTensor(meta([5, 64], 'bf16', undefined, { disposed: true })), asTensor(w)), 'ERR_DISPOSED', 'x', 'linear(): disposed');
});

const DIMS: AbsorbDims = { numHeads: 4, qkNopeHeadDim: 128, vHeadDim: 128, kvLoraRank: 512 };

function weightsMeta(dims = DIMS, dtype: DType = 'bf16', disposed = false): AbsorbWeightsMeta {
  return {
    ...dims,
    wUK: meta([dims.numHeads, dims.kvLoraRank, dims.qkNopeHeadDim], dtype, undefined, { disposed }),
    wUV: meta([dims.numHeads, dims.vHeadDim, dims.kvLoraRank], dtype, undefined, { disposed }),
  };
}

t.test('validatePrepareAbsorbWeights', async (t) => {
  t.same(validatePrepareAbsorbWeights(meta([4 * 256, 512]), DIMS), DIMS);
  throwsNaming(t, () => validatePrepareAbsorbWeights(meta([4 * 192, 512]), DIMS), 'ERR_SHAPE', 'kvBProj', 'wrong rows');
  throwsNaming(t, () => validatePrepareAbsorbWeights(meta([1024, 512], 'bf16', [1, 1024]), DIMS), 'ERR_SHAPE', 'kvBProj', 'non-contiguous');
  throwsNaming(t, () => validatePrepareAbsorbWeights(meta([1024, 512], 'f32'), DIMS), 'ERR_DTYPE', 'kvBProj', 'f32');
  throwsNaming(t, () => validatePrepareAbsorbWeights(meta([1024, 512]), { ...DIMS, qkNopeHeadDim: 100 }), 'ERR_SHAPE', 'qkNopeHeadDim', 'nope % 8');
  throwsNaming(t, () => validatePrepareAbsorbWeights(meta([1024, 512]), { ...DIMS, numHeads: 0 }), 'ERR_RANGE', 'numHeads', 'no heads');
  throwsNaming(t, () => prepareAbsorbWeights(asTensor(meta([1024, 512], 'bf16', undefined, { disposed: true })), DIMS), 'ERR_DISPOSED', 'kvBProj', 'public: disposed');
});

t.test('validateAbsorbQuery / validateAbsorbOutput', async (t) => {
  const H = DIMS.numHeads;
  const w = weightsMeta();
  // q_nope as the strided nope slice of the query projection [T, H, 192] ...
  const qNope = meta([3, H, 128], 'bf16', [H * 192, 192, 1]);
  // ... written into the first 512 columns of the decode query [T, H, 576].
  const qOut = meta([3, H, 512], 'bf16', [H * 576, 576, 1]);
  t.same(validateAbsorbQuery(qNope, w, { out: qOut }), { M: 3, N: 512, K: 128, batch: H, outShape: [3, H, 512], outDtype: 'bf16' });
  t.same(validateAbsorbOutput(meta([3, H, 512]), w), { M: 3, N: 128, K: 512, batch: H, outShape: [3, H, 128], outDtype: 'bf16' });

  throwsNaming(t, () => validateAbsorbQuery(meta([3, H + 1, 128]), w), 'ERR_SHAPE', 'qNope', 'head count');
  throwsNaming(t, () => validateAbsorbQuery(meta([3, H, 192]), w), 'ERR_SHAPE', 'qNope', 'nope width');
  throwsNaming(t, () => validateAbsorbQuery(meta([3, H, 128], 'bf16', [H * 192, 196, 1]), w), 'ERR_SHAPE', 'qNope', 'head stride % 8');
  throwsNaming(t, () => validateAbsorbQuery(meta([3, H, 128], 'f16'), w), 'ERR_DTYPE', 'weights.wUK', 'dtype mismatch');
  throwsNaming(t, () => validateAbsorbQuery(qNope, w, { out: meta([3, H, 576]) }), 'ERR_SHAPE', 'out', 'out width');
  throwsNaming(t, () => validateAbsorbQuery(qNope, weightsMeta(DIMS, 'bf16', true)), 'ERR_DISPOSED', 'weights.wUK', 'disposed weights');
  throwsNaming(t, () => validateAbsorbOutput(meta([3, H, 512], 'bf16', [H * 512, 512, 2]), w), 'ERR_SHAPE', 'oLatent', 'strided last dim');
  throwsNaming(t, () => validateAbsorbOutput(meta([3, H, 256]), w), 'ERR_SHAPE', 'oLatent', 'latent width');
  throwsNaming(t, () => validateAbsorbOutput(meta([3, H, 512], 'bf16', undefined, { disposed: true }), w), 'ERR_DISPOSED', 'oLatent', 'disposed');
  throwsNaming(t, () => validateAbsorbOutput(meta([3, H, 512]), w, { out: meta([3, H, 128], 'u8') }), 'ERR_DTYPE', 'out', 'out dtype');
  const wrongUV = { ...w, wUV: meta([H, 128, 256]) };
  throwsNaming(t, () => validateAbsorbOutput(meta([3, H, 512]), wrongUV), 'ERR_SHAPE', 'weights.wUV', 'wUV shape');

  const weights = w as unknown as AbsorbWeights;
  throwsNaming(t, () => absorbQuery(asTensor(meta([3, H + 1, 128])), weights), 'ERR_SHAPE', 'qNope', 'public absorbQuery');
  throwsNaming(t, () => absorbOutput(asTensor(meta([3, H, 256])), weights), 'ERR_SHAPE', 'oLatent', 'public absorbOutput');
});

// ---- GPU: against the float64 reference --------------------------------------------------

/** bf16 bits of float32 values, round-to-nearest-even (what fromArray does on upload). */
function bf16Bits(v: Float32Array): Uint16Array {
  const u = new Uint32Array(v.buffer, v.byteOffset, v.length);
  const out = new Uint16Array(v.length);
  for (let i = 0; i < v.length; i++) {
    const x = u[i]!;
    out[i] = (x + 0x7fff + ((x >>> 16) & 1)) >>> 16;
  }
  return out;
}

function bf16RowsToF64(bits: Uint16Array, rows: readonly number[], cols: number): Float64Array {
  const out = new Float64Array(rows.length * cols);
  const f = new Float32Array(1);
  const u = new Uint32Array(f.buffer);
  rows.forEach((r, i) => {
    for (let c = 0; c < cols; c++) {
      u[0] = bits[r * cols + c]! << 16;
      out[i * cols + c] = f[0]!;
    }
  });
  return out;
}

/**
 * A random [rows, cols] bf16 weight generated in chunks (V3's o_proj is 117M elements: a float32
 * plus float64 copy would not be reasonable), scaled so x·Wᵀ has unit variance.
 */
let lastWeight: { key: string; bits: Uint16Array } | undefined;
function randomBf16Weight(rows: number, cols: number, seed: number): Uint16Array {
  // The layer-shape tests run several T per weight: generate each weight once.
  const key = `${rows}x${cols}:${seed}`;
  if (lastWeight?.key === key) return lastWeight.bits;
  const bits = new Uint16Array(rows * cols);
  const chunk = 1 << 22;
  for (let off = 0, i = 0; off < bits.length; off += chunk, i++) {
    const n = Math.min(chunk, bits.length - off);
    bits.set(bf16Bits(randn(n, seed * 7919 + i, 1 / Math.sqrt(cols))), off);
  }
  lastWeight = { key, bits };
  return bits;
}

/** Output columns the reference recomputes: all of them when cheap, else a spread sample. */
function sampleCols(N: number, max: number): number[] {
  if (N <= max) return Array.from({ length: N }, (_, i) => i);
  const cols = new Set<number>([0, 1, N - 2, N - 1]);
  for (let i = 0; cols.size < max; i++) cols.add(Math.floor(((i * 0.6180339887) % 1) * N));
  return [...cols].sort((a, b) => a - b);
}

function tolFor(dtype: MatmulOutputDType, K: number): number {
  if (dtype === 'f32') return 1e-5 * Math.max(1, K / 512);
  return dtype === 'bf16' ? 1e-2 : 2e-3;
}

interface LinearCase {
  T: number;
  N: number;
  K: number;
  dtype?: 'bf16' | 'f16';
  outDtype?: MatmulOutputDType;
  /** Row stride of x (x is a column slice at offset 8 of a wider buffer) */
  xStride?: number;
  /** Row stride of out (out is a column slice of a wider, poisoned buffer) */
  outStride?: number;
  /** Reference on at most this many output columns (every row is checked, and every element for NaN). */
  maxCols?: number;
  seed: number;
  /** Seed of the weight (default seed + 1); equal seeds share one generated weight. */
  wSeed?: number;
}

function checkLinear(tt: Test, c: LinearCase, label: string): void {
  const { T, N, K, seed } = c;
  const dtype = c.dtype ?? 'bf16';
  const outDtype = c.outDtype ?? dtype;
  const xs = c.xStride ?? K;
  const xHost = randn(T * xs, seed);
  const xBuf = DeviceTensor.fromArray(xHost, [T, xs], dtype);
  const x = xs === K ? xBuf : xBuf.slice(1, 8, 8 + K);
  let wT: DeviceTensor;
  let wRef: (rows: number[]) => Float64Array;
  if (dtype === 'bf16') {
    const bits = randomBf16Weight(N, K, c.wSeed ?? seed + 1);
    wT = DeviceTensor.fromArray(bits, [N, K], 'bf16');
    wRef = (rows) => bf16RowsToF64(bits, rows, K);
  } else {
    const wHost = randn(N * K, seed + 1, 1 / Math.sqrt(K));
    wT = DeviceTensor.fromArray(wHost, [N, K], dtype);
    const r = roundTo(wHost, dtype);
    wRef = (rows) => {
      const out = new Float64Array(rows.length * K);
      rows.forEach((n, i) => out.set(r.subarray(n * K, (n + 1) * K), i * K));
      return out;
    };
  }
  const os = c.outStride ?? N;
  const outBuf = poison(DeviceTensor.empty([T, os], outDtype));
  const out = os === N ? outBuf : outBuf.slice(1, 0, N);
  try {
    const y = linear(x, wT, { out });
    tt.equal(y, out, `${label}: returns out`);
    const got = outBuf.toFloat32Sync();
    // x as the GPU saw it: rounded, the used columns only.
    const xr = roundTo(xHost, dtype);
    const x64 = new Float64Array(T * K);
    for (let r = 0; r < T; r++) x64.set(xr.subarray(r * xs + (xs === K ? 0 : 8), r * xs + (xs === K ? 0 : 8) + K), r * K);
    const cols = sampleCols(N, c.maxCols ?? N);
    const ref = refLinear(x64, T, K, wRef(cols), cols.length);
    const mine = new Float64Array(T * cols.length);
    let nan = 0;
    for (let r = 0; r < T; r++) {
      for (let n = 0; n < N; n++) if (Number.isNaN(got[r * os + n]!)) nan++;
      cols.forEach((n, i) => (mine[r * cols.length + i] = got[r * os + n]!));
    }
    tt.equal(nan, 0, `${label}: every output element written`);
    if (os !== N) {
      let untouched = true;
      for (let r = 0; r < T; r++) for (let n = N; n < os; n++) untouched &&= Number.isNaN(got[r * os + n]!);
      tt.ok(untouched, `${label}: columns past N of the out buffer untouched`);
    }
    const err = relError(mine, ref);
    tt.ok(err < tolFor(outDtype, K), `${label}: rel err ${err.toExponential(2)} < ${tolFor(outDtype, K).toExponential(0)}`);
  } finally {
    xBuf.dispose();
    wT.dispose();
    outBuf.dispose();
  }
}

t.test('linear: odd sizes, tails, both paths, dtypes (GPU)', { skip: gpuSkip }, async (t) => {
  // N = 264 and K = 520 are multiples of 8 but of no tile size: every edge predicate is used.
  for (const T of [1, 3, 16, 17, 1000]) checkLinear(t, { T, N: 264, K: 520, seed: T }, `T=${T} N=264 K=520`);
  checkLinear(t, { T: 5, N: 8, K: 8, seed: 2 }, 'smallest 8x8');
  checkLinear(t, { T: 33, N: 8, K: 8, seed: 3 }, 'tiled smallest');
  checkLinear(t, { T: 4096, N: 1024, K: 64, seed: 4 }, '128-row tiles, K shorter than the pipeline');
  checkLinear(t, { T: 100, N: 512, K: 4096, seed: 5 }, 'tiled split-K');
  checkLinear(t, { T: 9, N: 576, K: 7168, seed: 6, outDtype: 'f32' }, 'skinny split-K, f32 out');
  checkLinear(t, { T: 200, N: 136, K: 1032, seed: 7, outDtype: 'f32' }, 'tiled, f32 out');
  checkLinear(t, { T: 7, N: 264, K: 520, dtype: 'f16', seed: 8 }, 'f16 skinny');
  checkLinear(t, { T: 300, N: 264, K: 520, dtype: 'f16', seed: 9 }, 'f16 tiled');
  checkLinear(t, { T: 300, N: 264, K: 520, dtype: 'f16', outDtype: 'bf16', seed: 10 }, 'f16 in, bf16 out');
  checkLinear(t, { T: 3, N: 256, K: 512, xStride: 576, outStride: 272, seed: 11 }, 'strided x and out, skinny');
  checkLinear(t, { T: 257, N: 256, K: 512, xStride: 576, outStride: 272, seed: 12 }, 'strided x and out, tiled');
});

const V3 = { hidden: 7168, qLora: 1536, H: 128 };
const V2LITE = { hidden: 2048, H: 16 };

t.test('linear: DeepSeek-V3 layer shapes (GPU)', { skip: gpuSkip }, async (t) => {
  const shapes: [string, number, number][] = [
    ['q_a_proj', V3.qLora, V3.hidden],
    ['q_b_proj', V3.H * 192, V3.qLora],
    ['kv_a_proj_with_mqa', 576, V3.hidden],
    ['o_proj', V3.hidden, V3.H * 128],
    ['kv_b_proj (prefill K/V)', V3.H * 256, 512],
  ];
  // The emulated device does ~0.1 G multiply-adds/s: it keeps every path (skinny T=1/4, tiled
  // T=17 and the 128-row tiles) but runs the tiled ones only where N·K is small enough, and the
  // prefill-sized case with fewer rows.
  const prefillT = emulated ? 260 : 700;
  let seed = 100;
  for (const [name, N, K] of shapes) {
    const wSeed = seed;
    seed += 5;
    const rows = emulated && N * K > 20e6 ? [1, 4] : [1, 4, 17];
    for (const [i, T] of rows.entries()) {
      await t.test(`V3 ${name} [${N}, ${K}] T=${T}`, async (tt) => checkLinear(tt, { T, N, K, maxCols: 1024, seed: wSeed + 1 + i, wSeed }, `T=${T}`));
    }
    if (N === V3.H * 256) {
      await t.test(`V3 ${name} [${N}, ${K}] T=${prefillT}`, async (tt) => checkLinear(tt, { T: prefillT, N, K, maxCols: 256, seed: wSeed + 4, wSeed }, `T=${prefillT}`));
    }
  }
});

t.test('linear: DeepSeek-V2-Lite layer shapes (GPU)', { skip: gpuSkip }, async (t) => {
  const shapes: [string, number, number][] = [
    ['q_proj', V2LITE.H * 192, V2LITE.hidden],
    ['kv_a_proj_with_mqa', 576, V2LITE.hidden],
    ['o_proj', V2LITE.hidden, V2LITE.H * 128],
    ['kv_b_proj (prefill K/V)', V2LITE.H * 256, 512],
  ];
  let seed = 200;
  for (const [name, N, K] of shapes) {
    const wSeed = seed;
    seed += 5;
    await t.test(`V2-Lite ${name} [${N}, ${K}]`, async (tt) => {
      for (const [i, T] of [1, 3, 17, 130].entries()) checkLinear(tt, { T, N, K, maxCols: 512, seed: wSeed + 1 + i, wSeed }, `T=${T}`);
    });
  }
});

function uploadKvB(dims: AbsorbDims, seed: number): { kvB: DeviceTensor; ref: Float64Array } {
  const rows = dims.numHeads * (dims.qkNopeHeadDim + dims.vHeadDim);
  const host = randn(rows * dims.kvLoraRank, seed, 0.05);
  return { kvB: DeviceTensor.fromArray(host, [rows, dims.kvLoraRank], 'bf16'), ref: roundTo(host, 'bf16') };
}

t.test('prepareAbsorbWeights layout (GPU)', { skip: gpuSkip }, async (t) => {
  const dims: AbsorbDims = { numHeads: 3, qkNopeHeadDim: 16, vHeadDim: 24, kvLoraRank: 32 };
  const { kvB, ref } = uploadKvB(dims, 300);
  const w = prepareAbsorbWeights(kvB, dims);
  const split = splitKvBProj(ref, dims);
  const uk = w.wUK.toFloat32Sync();
  const uv = w.wUV.toFloat32Sync();
  let ukOk = true;
  for (let h = 0; h < 3; h++)
    for (let c = 0; c < 32; c++) for (let n = 0; n < 16; n++) ukOk &&= uk[(h * 32 + c) * 16 + n] === split.wUK[(h * 16 + n) * 32 + c];
  t.ok(ukOk, 'wUK[h, c, n] = W_UK[h, n, c]');
  t.same(Array.from(uv), Array.from(split.wUV), 'wUV = W_UV');
  t.notOk(w.disposed);
  w.dispose();
  t.ok(w.disposed && w.wUK.disposed && w.wUV.disposed, 'dispose frees both');
  kvB.dispose();
});

function checkAbsorb(tt: Test, dims: AbsorbDims, T: number, seed: number, outDtype: MatmulOutputDType = 'bf16'): void {
  const { numHeads: H, qkNopeHeadDim: nope, kvLoraRank: C, vHeadDim: V } = dims;
  const label = `H=${H} T=${T} ${outDtype}`;
  const { kvB, ref: kvRef } = uploadKvB(dims, seed);
  const w = prepareAbsorbWeights(kvB, dims);
  const aw = splitKvBProj(kvRef, dims);
  // Query projection output [T, H, nope + 64]; q_nope is its strided nope slice.
  const qHost = randn(T * H * (nope + 64), seed + 1);
  const qFull = DeviceTensor.fromArray(qHost, [T, H, nope + 64], 'bf16');
  // Decode query buffer [T, H, C + 64]: absorbQuery fills the first C columns in place.
  const qBuf = poison(DeviceTensor.empty([T, H, C + 64], outDtype));
  const oHost = randn(T * H * C, seed + 2);
  const oLat = DeviceTensor.fromArray(oHost, [T, H, C], 'bf16');
  try {
    absorbQuery(qFull.slice(2, 0, nope), w, { out: qBuf.slice(2, 0, C) });
    const got = qBuf.toFloat32Sync();
    const ref = refAbsorbQuery(roundTo(qHost, 'bf16'), T, aw, { stride: nope + 64 });
    const mine = new Float64Array(T * H * C);
    let tailUntouched = true;
    for (let r = 0; r < T * H; r++) {
      for (let c = 0; c < C; c++) mine[r * C + c] = got[r * (C + 64) + c]!;
      for (let c = C; c < C + 64; c++) tailUntouched &&= Number.isNaN(got[r * (C + 64) + c]!);
    }
    const e1 = relError(mine, ref);
    tt.ok(e1 < tolFor(outDtype, nope), `absorbQuery ${label}: rel err ${e1.toExponential(2)}`);
    tt.ok(tailUntouched, `absorbQuery ${label}: the last 64 (rope) columns are untouched`);

    const o = absorbOutput(oLat, w, { outDtype });
    tt.same(o.shape, [T, H, V], 'absorbOutput shape');
    const e2 = relError(o.toFloat32Sync(), refAbsorbOutput(roundTo(oHost, 'bf16'), T, aw));
    tt.ok(e2 < tolFor(outDtype, C), `absorbOutput ${label}: rel err ${e2.toExponential(2)}`);
    tt.same(o.reshape([T, H * V]).shape, [T, H * V], 'absorbOutput reshapes to o_proj input without a copy');
    o.dispose();
  } finally {
    w.dispose();
    kvB.dispose();
    qFull.dispose();
    qBuf.dispose();
    oLat.dispose();
  }
}

t.test('absorbQuery / absorbOutput vs reference (GPU)', { skip: gpuSkip }, async (t) => {
  const v2lite: AbsorbDims = { numHeads: V2LITE.H, qkNopeHeadDim: 128, vHeadDim: 128, kvLoraRank: 512 };
  const v3: AbsorbDims = { numHeads: V3.H, qkNopeHeadDim: 128, vHeadDim: 128, kvLoraRank: 512 };
  await t.test('V2-Lite heads', async (tt) => {
    for (const [i, T] of [1, 3, 17, 40, 300].entries()) checkAbsorb(tt, v2lite, T, 400 + i);
    checkAbsorb(tt, v2lite, 5, 405, 'f32');
  });
  for (const [i, T] of (emulated ? [1, 17] : [1, 4, 17]).entries()) await t.test(`V3 heads T=${T}`, async (tt) => checkAbsorb(tt, v3, T, 406 + i));
  await t.test('V3 heads T=2, f32 out', async (tt) => checkAbsorb(tt, v3, 2, 409, 'f32'));
});

t.test('DeepSeek fixture: x -> q_a_proj -> rmsNorm -> q_b_proj -> absorbQuery = q_latent (GPU)', { skip: gpuSkip }, async (t) => {
  const f = SafetensorsFile.open(fileURLToPath(new URL('./fixtures/mla-v3slim.safetensors', import.meta.url)));
  t.teardown(() => f.close());
  const cfg = JSON.parse(f.metadata['config'] ?? '{}') as Record<string, number>;
  const H = cfg['num_attention_heads']!;
  const nope = cfg['qk_nope_head_dim']!;
  const rope = cfg['qk_rope_head_dim']!;
  const C = cfg['kv_lora_rank']!;
  const V = cfg['v_head_dim']!;
  const eps = cfg['rms_norm_eps']!;
  const load = (name: string): DeviceTensor => {
    const w = f.readFloat64(name);
    return DeviceTensor.fromArray(Float32Array.from(w.data), w.shape, 'bf16');
  };
  const qa = load('weights.q_a_proj.weight');
  const qaNorm = load('weights.q_a_layernorm.weight');
  const qb = load('weights.q_b_proj.weight');
  const kvB = load('weights.kv_b_proj.weight');
  const weights = prepareAbsorbWeights(kvB, { numHeads: H, qkNopeHeadDim: nope, vHeadDim: V, kvLoraRank: C });
  const steps = Number(f.metadata['decode_steps'] ?? '1');
  try {
    for (let k = 0; k < steps; k++) {
      const x = f.readFloat64(`x.decode.${k}`);
      const tokens = x.data.length / x.shape[x.shape.length - 1]!;
      const xd = DeviceTensor.fromArray(Float32Array.from(x.data), [tokens, x.shape[x.shape.length - 1]!], 'bf16');
      const lat = linear(xd, qa, { outDtype: 'f32' });
      const latN = rmsNorm(lat, qaNorm, eps, { out: DeviceTensor.empty(lat.shape, 'bf16') });
      const q = linear(latN, qb);
      const qNope = q.reshape([tokens, H, nope + rope]).slice(2, 0, nope);
      const qLat = absorbQuery(qNope, weights, { outDtype: 'f32' });
      const want = f.readFloat64(`q_latent.decode.${k}`).data;
      const err = relError(qLat.toFloat32Sync(), want);
      t.ok(err < 1e-2, `q_latent.decode.${k}: rel err ${err.toExponential(2)} (bf16 weights and activations)`);
      // The reference chain on the same bf16-rounded input pins the kernels tighter.
      const x64 = roundTo(Float32Array.from(x.data), 'bf16');
      const latRef = refLinear(x64, tokens, x.shape[x.shape.length - 1]!, f.readFloat64('weights.q_a_proj.weight').data, lat.shape[1]!);
      const errLat = relError(lat.toFloat32Sync(), latRef);
      t.ok(errLat < 1e-5, `q_a_proj (f32 out) vs reference: ${errLat.toExponential(2)}`);
      const normRef = reference.rmsNorm(latRef, tokens, lat.shape[1]!, f.readFloat64('weights.q_a_layernorm.weight').data, eps);
      const errNorm = relError(latN.toFloat32Sync(), normRef);
      t.ok(errNorm < 1e-2, `rmsNorm (bf16 out) vs reference: ${errNorm.toExponential(2)}`);
      for (const d of [xd, lat, latN, q, qLat]) d.dispose();
    }
  } finally {
    weights.dispose();
    for (const d of [qa, qaNorm, qb, kvB]) d.dispose();
  }
});

t.test('bench suite "linear": cases and formulas (no GPU)', async (t) => {
  const { suite } = await import('../lib/bench/linear.js');
  t.equal(suite.name, 'linear');
  const cases = suite.cases({ quick: false });
  t.equal(cases.length, 6 * 6, 'T x (4 projections + 2 absorbed products)');
  const qb = cases.find((c) => c.params['shape'] === 'q_b_proj' && c.params['T'] === 64)!;
  t.equal(qb.flops, 2 * 64 * 24576 * 1536);
  t.equal(qb.bytes, (64 * 1536 + 24576 * 1536 + 64 * 24576) * 2);
  const aq = cases.find((c) => c.params['op'] === 'absorbQuery' && c.params['T'] === 1)!;
  t.equal(aq.flops, 128 * 2 * 1 * 512 * 128);
  t.same(suite.cases({ quick: false, grid: { t: [3], shape: ['o_proj'] } }).map((c) => c.name), ['o_proj T3 [7168x16384] bf16']);
  t.throws(() => suite.cases({ quick: false, grid: { shape: ['nope'] } }), RangeError);
});

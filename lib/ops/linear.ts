// Tensor-core matrix products (csrc/kernels/linear.cu): y = x·Wᵀ with checkpoint-layout
// weights, and the absorbed MLA per-head products, which are the same kernel batched over heads.
import type { DType } from '../dtype.js';
import { MlaError } from '../errors.js';
import { nativeStream } from '../runtime/stream.js';
import { nativeOp } from '../native.js';
import { disposeAll, disposeUnlessGiven } from '../runtime/dispose.js';
import { DeviceTensor } from '../runtime/tensor.js';
import type { StreamOption, TensorMeta } from '../runtime/tensor.js';
import { checkInt, checkRowAlignment, checkSameDType, checkTensor } from './validate.js';

/** Input dtypes of the matrix kernels (x and the weight share one). */
export type MatmulInputDType = 'bf16' | 'f16';
/** Output dtypes (fp32 accumulation, rounded once on store). */
export type MatmulOutputDType = 'bf16' | 'f16' | 'f32';

const IN_DTYPES: readonly DType[] = ['bf16', 'f16'];
const OUT_DTYPES: readonly DType[] = ['bf16', 'f16', 'f32'];

export interface LinearOptions extends StreamOption {
  /** Written in place; may be a strided view (last dim contiguous). */
  out?: DeviceTensor | undefined;
  /** Dtype of a freshly allocated output (default: x's dtype; must match `out` if both given). */
  outDtype?: MatmulOutputDType | undefined;
}

/** What validation needs of the options (DeviceTensors, or plain TensorMeta in tests). */
export interface MatmulOptionsMeta {
  out?: TensorMeta | undefined;
  outDtype?: unknown;
}

/** Sizes of a validated product: out[m, (b,) n] = Σ_k x[m, (b,) k]·W[(b,) n, k]. */
export interface MatmulPlan {
  M: number;
  N: number;
  K: number;
  /** 1 for linear, heads for the absorbed products. */
  batch: number;
  outShape: number[];
  outDtype: MatmulOutputDType;
}

/**
 * The kernels read rows with 16-byte vector loads / cp.async: every stride but the last must be
 * a non-negative multiple of 8 elements, and so must a DeviceTensor's element offset.
 */
function checkOperand(op: string, name: string, t: unknown, shape: readonly (number | null)[], dtype: readonly DType[]): TensorMeta {
  const m = checkTensor(op, name, t, { dtype, shape, innerContiguous: true });
  checkRowAlignment(op, name, m, 8, '16-byte rows', { offset: true });
  return m;
}

function checkMultipleOf8(op: string, what: string, v: number): void {
  if (!(v > 0) || v % 8 !== 0) throw new MlaError('ERR_SHAPE', `${op}: ${what} must be a positive multiple of 8, got ${v}`);
}

function resolveOutDtype(op: string, x: TensorMeta, opts: MatmulOptionsMeta): MatmulOutputDType {
  if (opts.outDtype !== undefined && !(typeof opts.outDtype === 'string' && OUT_DTYPES.includes(opts.outDtype as DType))) {
    throw new MlaError('ERR_DTYPE', `${op}: \`outDtype\` must be ${OUT_DTYPES.join(' or ')}, got ${String(opts.outDtype)}`);
  }
  const requested = opts.outDtype as MatmulOutputDType | undefined;
  if (opts.out !== undefined && opts.out !== null) {
    const o = checkTensor(op, 'out', opts.out, { dtype: OUT_DTYPES });
    if (requested !== undefined && requested !== o.dtype) {
      throw new MlaError('ERR_DTYPE', `${op}: \`out\` is ${o.dtype} but \`outDtype\` is ${requested}`);
    }
    return o.dtype as MatmulOutputDType;
  }
  return requested ?? (x.dtype as MatmulOutputDType);
}

function finishPlan(op: string, x: TensorMeta, opts: MatmulOptionsMeta, plan: Omit<MatmulPlan, 'outDtype'>): MatmulPlan {
  const outDtype = resolveOutDtype(op, x, opts);
  if (opts.out !== undefined && opts.out !== null) checkOperand(op, 'out', opts.out, plan.outShape, OUT_DTYPES);
  return Object.assign(plan, { outDtype }); // not a spread: V8's object spread costs ~1 µs
}

/**
 * Checks linear's arguments: x [T, K] (bf16/f16, rows may be strided), weight [N, K] (same
 * dtype), N and K multiples of 8, optional out [T, N]. Throws MlaError naming the argument.
 */
export function validateLinear(x: TensorMeta, weight: TensorMeta, opts: MatmulOptionsMeta = {}): MatmulPlan {
  const op = 'linear';
  const xm = checkOperand(op, 'x', x, [null, null], IN_DTYPES);
  const wm = checkTensor(op, 'weight', weight, { shape: [null, null], innerContiguous: true });
  checkSameDType(op, 'weight', wm, 'x', xm.dtype);
  checkRowAlignment(op, 'weight', wm, 8, '16-byte rows', { offset: true });
  const [M, K] = xm.shape as [number, number];
  const [N, WK] = wm.shape as [number, number];
  if (WK !== K) throw new MlaError('ERR_SHAPE', `${op}: \`weight\` must have shape [N, ${K}] (K of \`x\`), got [${wm.shape.join(', ')}]`);
  checkMultipleOf8(op, '`x` K (last dim)', K);
  checkMultipleOf8(op, '`weight` N (dim 0)', N);
  return finishPlan(op, xm, opts, { M, N, K, batch: 1, outShape: [M, N] });
}

function runMatmul(x: DeviceTensor, weight: DeviceTensor, plan: MatmulPlan, out: DeviceTensor | undefined, opts: StreamOption): DeviceTensor {
  const y = out ?? DeviceTensor.empty(plan.outShape, plan.outDtype);
  try {
    nativeOp('linear')({
      x: x.nativeRef('linear: `x`'),
      weight: weight.nativeRef('linear: `weight`'),
      out: y.nativeRef('linear: `out`'),
      stream: nativeStream('linear', opts.stream),
    });
  } catch (err) {
    disposeUnlessGiven({ out: y }, { out });
    throw err;
  }
  return y;
}

/**
 * y = x·weightᵀ on tensor cores (fp32 accumulation). x [T, K] bf16/f16 (may be a row-strided
 * view), weight [N, K] as stored in checkpoints, same dtype; N, K multiples of 8.
 * Returns `opts.out` (written in place, may be strided) or a new [T, N] tensor of `opts.outDtype`
 * (default x's dtype).
 */
export function linear(x: DeviceTensor, weight: DeviceTensor, opts: LinearOptions = {}): DeviceTensor {
  const plan = validateLinear(x, weight, opts);
  return runMatmul(x, weight, plan, opts.out, opts);
}

// ---- absorbed MLA products -------------------------------------------------------------

export interface AbsorbDims {
  numHeads: number;
  /** 128 for DeepSeek V2/V3. */
  qkNopeHeadDim: number;
  /** 128 for DeepSeek V2/V3. */
  vHeadDim: number;
  /** 512 for DeepSeek V2/V3. */
  kvLoraRank: number;
}

/** Per-head absorbed weights, laid out so both products are "x·Wᵀ per head". */
export interface AbsorbWeights extends AbsorbDims {
  /** W_UKᵀ: [H, kvLora, nope] (wUK[h, c, n] = kv_b_proj[h·(nope+v) + n, c]). */
  readonly wUK: DeviceTensor;
  /** W_UV: [H, v, kvLora] (wUV[h, d, c] = kv_b_proj[h·(nope+v) + nope + d, c]). */
  readonly wUV: DeviceTensor;
  readonly disposed: boolean;
  /** Frees wUK and wUV. */
  dispose(): void;
}

/** What validation needs of absorbed weights. */
export interface AbsorbWeightsMeta extends AbsorbDims {
  readonly wUK: TensorMeta;
  readonly wUV: TensorMeta;
}

export function validateAbsorbDims(op: string, dims: unknown): AbsorbDims {
  if (typeof dims !== 'object' || dims === null) throw new MlaError('ERR_ARGUMENT', `${op}: \`dims\` must be an object`);
  const d = dims as Partial<AbsorbDims>;
  const numHeads = checkInt(op, 'numHeads', d.numHeads, 1, 65535);
  const qkNopeHeadDim = checkInt(op, 'qkNopeHeadDim', d.qkNopeHeadDim, 1);
  const vHeadDim = checkInt(op, 'vHeadDim', d.vHeadDim, 1);
  const kvLoraRank = checkInt(op, 'kvLoraRank', d.kvLoraRank, 1);
  checkMultipleOf8(op, '`qkNopeHeadDim`', qkNopeHeadDim);
  checkMultipleOf8(op, '`vHeadDim`', vHeadDim);
  checkMultipleOf8(op, '`kvLoraRank`', kvLoraRank);
  return { numHeads, qkNopeHeadDim, vHeadDim, kvLoraRank };
}

/** Checks kv_b_proj [H·(nope+v), kvLora] (bf16/f16, contiguous) against the dims. */
export function validatePrepareAbsorbWeights(kvBProj: TensorMeta, dims: AbsorbDims): AbsorbDims {
  const op = 'prepareAbsorbWeights';
  const d = validateAbsorbDims(op, dims);
  checkTensor(op, 'kvBProj', kvBProj, {
    dtype: IN_DTYPES,
    shape: [d.numHeads * (d.qkNopeHeadDim + d.vHeadDim), d.kvLoraRank],
    contiguous: true,
  });
  return d;
}

/**
 * Splits kv_b_proj [H·(nope+v), kvLora] (per head: nope rows of W_UK, then v rows of W_UV)
 * into W_UKᵀ [H, kvLora, nope] and W_UV [H, v, kvLora], once at load time (device copies).
 */
export function prepareAbsorbWeights(kvBProj: DeviceTensor, dims: AbsorbDims, opts: StreamOption = {}): AbsorbWeights {
  const d = validatePrepareAbsorbWeights(kvBProj, dims);
  const { numHeads: H, qkNopeHeadDim: nope, vHeadDim: v, kvLoraRank: C } = d;
  const perHead = kvBProj.reshape([H, nope + v, C]);
  const wUK = DeviceTensor.empty([H, C, nope], kvBProj.dtype);
  let wUV: DeviceTensor | undefined;
  try {
    wUK.copyFrom(perHead.slice(1, 0, nope).permute([0, 2, 1]), opts);
    wUV = DeviceTensor.empty([H, v, C], kvBProj.dtype);
    wUV.copyFrom(perHead.slice(1, nope, nope + v), opts);
  } catch (err) {
    disposeAll([wUK, wUV]);
    throw err;
  }
  const uv = wUV;
  return {
    ...d,
    wUK,
    wUV: uv,
    get disposed(): boolean {
      return wUK.disposed || uv.disposed;
    },
    dispose(): void {
      wUK.dispose();
      uv.dispose();
    },
  };
}

function checkAbsorbWeights(op: string, w: unknown): AbsorbWeightsMeta {
  if (typeof w !== 'object' || w === null) throw new MlaError('ERR_ARGUMENT', `${op}: \`weights\` must come from prepareAbsorbWeights()`);
  const m = w as AbsorbWeightsMeta;
  const d = validateAbsorbDims(op, m);
  checkTensor(op, 'weights.wUK', m.wUK, { dtype: IN_DTYPES, shape: [d.numHeads, d.kvLoraRank, d.qkNopeHeadDim], contiguous: true });
  checkTensor(op, 'weights.wUV', m.wUV, { dtype: IN_DTYPES, shape: [d.numHeads, d.vHeadDim, d.kvLoraRank], contiguous: true });
  return m;
}

/**
 * Checks absorbQuery: qNope [T, H, nope] (may be the nope slice of the query projection
 * [T, H, nope + rope]), weights' dtype, optional out [T, H, kvLora] (may be the first kvLora
 * columns of the decode query buffer [T, H, kvLora + rope]).
 */
export function validateAbsorbQuery(qNope: TensorMeta, weights: AbsorbWeightsMeta, opts: MatmulOptionsMeta = {}): MatmulPlan {
  const op = 'absorbQuery';
  const w = checkAbsorbWeights(op, weights);
  const q = checkOperand(op, 'qNope', qNope, [null, w.numHeads, w.qkNopeHeadDim], IN_DTYPES);
  checkSameDType(op, 'weights.wUK', w.wUK, 'qNope', q.dtype);
  const T = q.shape[0]!;
  return finishPlan(op, q, opts, { M: T, N: w.kvLoraRank, K: w.qkNopeHeadDim, batch: w.numHeads, outShape: [T, w.numHeads, w.kvLoraRank] });
}

/** Checks absorbOutput: oLatent [T, H, kvLora], optional out [T, H, v]. */
export function validateAbsorbOutput(oLatent: TensorMeta, weights: AbsorbWeightsMeta, opts: MatmulOptionsMeta = {}): MatmulPlan {
  const op = 'absorbOutput';
  const w = checkAbsorbWeights(op, weights);
  const o = checkOperand(op, 'oLatent', oLatent, [null, w.numHeads, w.kvLoraRank], IN_DTYPES);
  checkSameDType(op, 'weights.wUV', w.wUV, 'oLatent', o.dtype);
  const T = o.shape[0]!;
  return finishPlan(op, o, opts, { M: T, N: w.vHeadDim, K: w.kvLoraRank, batch: w.numHeads, outShape: [T, w.numHeads, w.vHeadDim] });
}

/**
 * q_latent[t, h, :] = q_nope[t, h, :]·W_UK[h] (absorbs W_UK into the query).
 * qNope [T, H, nope] (a strided view of the query projection is fine); returns `opts.out`
 * (e.g. `decodeQuery.slice(2, 0, kvLora)` of a [T, H, kvLora + rope] buffer, written in place)
 * or a new contiguous [T, H, kvLora].
 */
export function absorbQuery(qNope: DeviceTensor, weights: AbsorbWeights, opts: LinearOptions = {}): DeviceTensor {
  const plan = validateAbsorbQuery(qNope, weights, opts);
  return runMatmul(qNope, weights.wUK, plan, opts.out, opts);
}

/**
 * o[t, h, :] = o_latent[t, h, :]·W_UVᵀ[h] (absorbs W_UV into the attention output).
 * oLatent [T, H, kvLora]; returns `opts.out` or a new contiguous [T, H, v], which
 * `reshape([T, H·v])` turns into o_proj's input without a copy.
 */
export function absorbOutput(oLatent: DeviceTensor, weights: AbsorbWeights, opts: LinearOptions = {}): DeviceTensor {
  const plan = validateAbsorbOutput(oLatent, weights, opts);
  return runMatmul(oLatent, weights.wUV, plan, opts.out, opts);
}

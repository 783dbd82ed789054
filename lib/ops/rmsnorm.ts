// RMSNorm (csrc/kernels/rmsnorm.cu), DeepSeek style: y = x · rsqrt(mean(x²) + eps) · w per row,
// in fp32. Used for q_a_layernorm on the query latent.
import type { DType } from '../dtype.js';
import { MlaError } from '../errors.js';
import { nativeStream } from '../runtime/stream.js';
import { nativeOp } from '../native.js';
import { disposeUnlessGiven } from '../runtime/dispose.js';
import { DeviceTensor } from '../runtime/tensor.js';
import type { StreamOption, TensorMeta } from '../runtime/tensor.js';
import { checkNumber, checkTensor } from './validate.js';

const FLOAT_DTYPES: readonly DType[] = ['bf16', 'f16', 'f32'];

export interface RmsNormOptions extends StreamOption {
  /** [rows, dim], any float dtype, rows may be strided; may be `x` itself (in place). */
  out?: DeviceTensor | undefined;
}

export interface RmsNormPlan {
  rows: number;
  dim: number;
  outDtype: DType;
}

/**
 * Checks rmsNorm's arguments: x [rows, dim] (bf16/f16/f32, last dim contiguous), weight [dim]
 * (bf16/f16/f32, contiguous), eps finite and >= 0, optional out [rows, dim].
 */
export function validateRmsNorm(x: TensorMeta, weight: TensorMeta, eps: unknown, opts: { out?: TensorMeta | undefined } = {}): RmsNormPlan {
  const op = 'rmsNorm';
  const xm = checkTensor(op, 'x', x, { dtype: FLOAT_DTYPES, shape: [null, null], innerContiguous: true });
  const [rows, dim] = xm.shape as [number, number];
  if (dim < 1) throw new MlaError('ERR_SHAPE', `${op}: \`x\` must have dim >= 1, got [${xm.shape.join(', ')}]`);
  // Any float weight: a checkpoint's bf16 norm weight may meet f32 activations.
  checkTensor(op, 'weight', weight, { dtype: FLOAT_DTYPES, shape: [dim], contiguous: true });
  const e = checkNumber(op, 'eps', eps);
  if (e < 0) throw new MlaError('ERR_RANGE', `${op}: \`eps\` must be >= 0, got ${e}`);
  if (xm.strides[0]! < 0) throw new MlaError('ERR_SHAPE', `${op}: \`x\` must have a non-negative row stride`);
  let outDtype = xm.dtype;
  if (opts.out !== undefined && opts.out !== null) {
    const o = checkTensor(op, 'out', opts.out, { dtype: FLOAT_DTYPES, shape: [rows, dim], innerContiguous: true });
    if (o.strides[0]! < 0) throw new MlaError('ERR_SHAPE', `${op}: \`out\` must have a non-negative row stride`);
    outDtype = o.dtype;
  }
  return { rows, dim, outDtype };
}

/**
 * y = x · rsqrt(mean(x²) + eps) · weight over the last dim of x [rows, dim].
 * Returns `opts.out` (written in place; may alias x) or a new [rows, dim] tensor of x's dtype.
 */
export function rmsNorm(x: DeviceTensor, weight: DeviceTensor, eps: number, opts: RmsNormOptions = {}): DeviceTensor {
  const plan = validateRmsNorm(x, weight, eps, opts);
  const out = opts.out ?? DeviceTensor.empty([plan.rows, plan.dim], plan.outDtype);
  try {
    nativeOp('rmsNorm')({
      x: x.nativeRef('rmsNorm: `x`'),
      weight: weight.nativeRef('rmsNorm: `weight`'),
      out: out.nativeRef('rmsNorm: `out`'),
      eps,
      stream: nativeStream('rmsNorm', opts.stream),
    });
  } catch (err) {
    disposeUnlessGiven({ out }, opts);
    throw err;
  }
  return out;
}

// RMSNorm, DeepSeek style: y = x · rsqrt(mean(x²) + eps) · w, per row.

import { checkAtLeast, checkLength, checkNonNegInt, checkPosInt } from './util.js';

export interface RmsnormStrides {
  /** Elements between consecutive input rows (default dim). */
  inStride?: number;
  inOffset?: number;
  /** Elements between consecutive output rows (default dim). */
  outStride?: number;
  outOffset?: number;
  /** Written in place when given; a fresh [rows, dim] buffer otherwise. */
  out?: Float64Array;
}

// y[r, i] = x[r, i] / sqrt(Σ_j x[r, j]² / dim + eps) · w[i]
export function rmsnorm(
  x: Float64Array,
  rows: number,
  dim: number,
  weight: Float64Array,
  eps: number,
  strides: RmsnormStrides = {},
): Float64Array {
  checkNonNegInt('rmsnorm rows', rows);
  checkPosInt('rmsnorm dim', dim);
  checkLength('rmsnorm weight', weight, dim);
  const inStride = strides.inStride ?? dim;
  const inOffset = strides.inOffset ?? 0;
  const outStride = strides.outStride ?? dim;
  const outOffset = strides.outOffset ?? 0;
  const out = strides.out ?? new Float64Array(rows * dim);
  if (rows > 0) {
    checkAtLeast('rmsnorm x', x, inOffset + (rows - 1) * inStride + dim);
    checkAtLeast('rmsnorm out', out, outOffset + (rows - 1) * outStride + dim);
  }
  for (let r = 0; r < rows; r++) {
    const xi = inOffset + r * inStride;
    let ss = 0;
    for (let i = 0; i < dim; i++) ss += x[xi + i]! * x[xi + i]!;
    const inv = 1 / Math.sqrt(ss / dim + eps);
    const yo = outOffset + r * outStride;
    for (let i = 0; i < dim; i++) out[yo + i] = x[xi + i]! * inv * weight[i]!;
  }
  return out;
}

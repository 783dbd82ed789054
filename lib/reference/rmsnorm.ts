// RMSNorm, DeepSeek style: y = x · rsqrt(mean(x²) + eps) · w, per row.

import { allocHost, checkAtLeast, checkFiniteNumber, checkLength, checkNonNegInt, checkObject, checkPosInt, sizeProduct } from '../check.js';

export interface RmsNormStrides {
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
export function rmsNorm(
  x: Float64Array,
  rows: number,
  dim: number,
  weight: Float64Array,
  eps: number,
  strides: RmsNormStrides = {},
): Float64Array {
  const fn = 'rmsnorm';
  checkNonNegInt(fn, 'rows', rows);
  checkPosInt(fn, 'dim', dim);
  checkLength(fn, 'weight', weight, dim);
  checkFiniteNumber(fn, 'eps', eps);
  checkObject(fn, 'strides', strides);
  const inStride = checkNonNegInt(fn, 'strides.inStride', strides.inStride ?? dim);
  const inOffset = checkNonNegInt(fn, 'strides.inOffset', strides.inOffset ?? 0);
  const outStride = checkNonNegInt(fn, 'strides.outStride', strides.outStride ?? dim);
  const outOffset = checkNonNegInt(fn, 'strides.outOffset', strides.outOffset ?? 0);
  // Sizes are checked before the output is allocated, so a huge `rows` names itself.
  if (rows > 0) checkAtLeast(fn, 'x', x, sizeProduct(fn, 'rows', rows - 1, inStride) + inOffset + dim);
  const out = strides.out ?? allocHost(fn, 'rows', Float64Array, sizeProduct(fn, 'rows', rows, dim));
  if (rows > 0) checkAtLeast(fn, 'strides.out', out, outOffset + (rows - 1) * outStride + dim, { f64: true });
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

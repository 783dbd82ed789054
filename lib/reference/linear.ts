// Linear layer without bias, weights stored [out, in] as in checkpoints.

import { allocHost, checkLength, checkNonNegInt, checkPosInt, sizeProduct } from '../check.js';

// y[r, n] = Σ_k x[r, k] · W[n, k]   (y = x·Wᵀ; both operands walk contiguous rows)
export function linear(
  x: Float64Array,
  rows: number,
  inFeatures: number,
  weight: Float64Array,
  outFeatures: number,
): Float64Array {
  checkNonNegInt('linear', 'rows', rows);
  checkPosInt('linear', 'inFeatures', inFeatures);
  checkPosInt('linear', 'outFeatures', outFeatures);
  checkLength('linear', 'x', x, sizeProduct('linear', 'rows', rows, inFeatures));
  checkLength('linear', 'weight', weight, sizeProduct('linear', 'outFeatures', outFeatures, inFeatures));
  const y = allocHost('linear', 'rows', Float64Array, sizeProduct('linear', 'rows', rows, outFeatures));
  const K = inFeatures;
  const K4 = K - (K % 4);
  for (let r = 0; r < rows; r++) {
    const xo = r * K;
    for (let n = 0; n < outFeatures; n++) {
      const wo = n * K;
      // Four partial sums let V8 pipeline the multiply-adds.
      let s0 = 0;
      let s1 = 0;
      let s2 = 0;
      let s3 = 0;
      let k = 0;
      for (; k < K4; k += 4) {
        s0 += x[xo + k]! * weight[wo + k]!;
        s1 += x[xo + k + 1]! * weight[wo + k + 1]!;
        s2 += x[xo + k + 2]! * weight[wo + k + 2]!;
        s3 += x[xo + k + 3]! * weight[wo + k + 3]!;
      }
      for (; k < K; k++) s0 += x[xo + k]! * weight[wo + k]!;
      y[r * outFeatures + n] = s0 + s1 + (s2 + s3);
    }
  }
  return y;
}

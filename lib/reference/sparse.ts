// Sparse MLA (DeepSeek-V3.2, FlashMLA's `flash_mla_sparse_fwd` / sparse decode): every query
// token attends only to the cache slots its indexer picked. From the definition: gather the
// named rows, then dense absorbed attention over them (576-wide keys, 512-wide values).
//
//   valid(t, k) = k < topkLength[t]  and  0 ≤ indices[t, k] < numSlots
//   s_k   = scale · q[t, h] · cache[indices[t, k]],  valid(t, k)
//   lse   = ln Σ_k exp(s_k)                          (+∞ when no k is valid; then out = 0)
//   out   = Σ_k exp(s_k − lse) · cache[indices[t, k]][:512] · 1 / (1 + exp(sink[h] − lse))
//
// A slot is global: page · pageSize + offsetInPage. -1, any other negative value, and any value
// ≥ numSlots mean "no entry". A slot named twice counts twice (FlashMLA's reference gathers with
// index_select, so a duplicate is a second key with the same score). topkLength n keeps the
// entries k < n: n ≤ 0 keeps none, n ≥ topk all. The sink does not change the returned LSE; +∞
// gives a zero output, −∞ no change. No causal mask: the indices are the mask.

import { attendRows, type AttentionResult } from './decode.js';
import { allocHost, argError, checkArray, checkFiniteNumber, checkLength, checkObject, checkPosInt, sizeProduct } from '../check.js';
import { dequantizeFp8Cache, FP8_LATENT_DIM, FP8_ROPE_DIM, type Fp8CacheGeometry } from './fp8.js';

export interface SparseReferenceArgs {
  /** [tokens, H, D]: per head the absorbed latent query then the rotated rope query. */
  q: Float64Array;
  /** [numSlots, D]: the cache's rows in slot order (a paged cache [numPages, pageSize, D] flattened). */
  cache: Float64Array;
  /** i32 [tokens, topk]: global slots. */
  indices: Int32Array;
  topk: number;
  /** [tokens]: entries of each row that count (all when omitted). */
  topkLength?: ArrayLike<number> | undefined;
  /** [H]: attention sink logit per head (none when omitted). */
  attnSink?: ArrayLike<number> | undefined;
  numHeads: number;
  /** V is the first dimLatent columns of each cache row. */
  dimLatent: number;
  /** D; derived from the cache and dimLatent-independent: default 576. */
  headDim?: number | undefined;
  scale: number;
}

export function sparse(args: SparseReferenceArgs): AttentionResult {
  const fn = 'sparse';
  checkObject(fn, 'args', args);
  const { q, cache, indices, numHeads: H, dimLatent, scale } = args;
  checkPosInt(fn, 'numHeads', H);
  checkFiniteNumber(fn, 'scale', scale);
  checkArray(fn, 'q', q);
  checkArray(fn, 'cache', cache);
  if (!(indices instanceof Int32Array)) throw argError('ERR_ARGUMENT', fn, 'indices', 'must be an Int32Array');
  const topk = checkPosInt(fn, 'topk', args.topk);
  if (indices.length % topk !== 0) throw argError('ERR_SHAPE', fn, 'indices', `length ${indices.length} is not a multiple of topk ${topk}`);
  const tokens = indices.length / topk;
  const D = args.headDim === undefined ? FP8_LATENT_DIM + FP8_ROPE_DIM : checkPosInt(fn, 'headDim', args.headDim);
  checkPosInt(fn, 'dimLatent', dimLatent);
  if (dimLatent > D) throw argError('ERR_SHAPE', fn, 'dimLatent', `= ${dimLatent} exceeds the head dim ${D}`);
  checkLength(fn, 'q', q, sizeProduct(fn, 'indices', tokens, H, D));
  if (cache.length % D !== 0) throw argError('ERR_SHAPE', fn, 'cache', `length ${cache.length} is not a multiple of D = ${D}`);
  const numSlots = cache.length / D;
  if (args.topkLength !== undefined) checkLength(fn, 'topkLength', args.topkLength, tokens);
  if (args.attnSink !== undefined) checkLength(fn, 'attnSink', args.attnSink, H);

  const out = allocHost(fn, 'indices', Float64Array, tokens * H * dimLatent);
  const lse = allocHost(fn, 'indices', Float64Array, tokens * H);
  const rows = new Int32Array(topk);
  const p = new Float64Array(topk);
  for (let t = 0; t < tokens; t++) {
    const n = args.topkLength === undefined ? topk : Math.max(0, Math.min(topk, args.topkLength[t]!));
    let count = 0;
    for (let k = 0; k < n; k++) {
      const slot = indices[t * topk + k]!;
      if (slot >= 0 && slot < numSlots) rows[count++] = slot * D;
    }
    for (let h = 0; h < H; h++) {
      const qo = (t * H + h) * D;
      const oo = (t * H + h) * dimLatent;
      // 1 / (1 + exp(sink − lse)) = exp(lse) / (exp(lse) + exp(sink)), finite for any lse.
      const sink = args.attnSink === undefined ? -Infinity : args.attnSink[h]!;
      lse[t * H + h] = attendRows(q, qo, cache, rows, count, D, dimLatent, scale, p, out, oo, (L) => 1 / (1 + Math.exp(sink - L)));
    }
  }
  return { out, lse };
}

export interface SparseFp8ReferenceArgs extends Omit<SparseReferenceArgs, 'cache' | 'dimLatent' | 'headDim'>, Fp8CacheGeometry {
  /** The FP8 cache bytes (656-byte rows, lib/reference/fp8.ts). */
  cache: Uint8Array;
}

/** Sparse attention over an FP8 cache = sparse on the dequantized cache. */
export function sparseFp8(args: SparseFp8ReferenceArgs): AttentionResult {
  const cache = dequantizeFp8Cache(args.cache, args);
  return sparse({ ...args, cache, dimLatent: FP8_LATENT_DIM, headDim: FP8_LATENT_DIM + FP8_ROPE_DIM });
}

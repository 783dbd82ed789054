// Paged latent KV cache: one row of width D = kvLora + rope per token, shared
// by all heads. Row [page, offset] lives at cache[(page·pageSize + offset)·D].
// The latent part is stored normalised and the rope part rotated, so attention
// reads the cache as is.

import { applyRope, type RopeLayout, type RopeTable } from './rope.js';
import { rmsNorm } from './rmsnorm.js';
import { allocHost, argError, checkArray, checkAtLeast, checkFiniteNumber, checkLength, checkNonNegInt, checkObject, checkPosInt, sizeProduct } from '../check.js';

export interface AppendLatentReferenceArgs {
  /** [T, kvLora + rope]: kv_a_proj output, latent not normalised, rope key not rotated. */
  kvDown: Float64Array;
  /** [kvLora]: kv_a_layernorm weight; its length fixes kvLora. */
  normWeight: Float64Array;
  eps: number;
  /** [T] RoPE positions. */
  positions: ArrayLike<number>;
  /** [T] slot = page·pageSize + offset; −1 skips the token (padding). */
  slotMapping: ArrayLike<number>;
  /** [numPages, pageSize, kvLora + rope], written in place. */
  cache: Float64Array;
  pageSize: number;
  ropeTable: RopeTable;
  layout: RopeLayout;
}

// cache[slot, :kvLora] = RMSNorm(kvDown[t, :kvLora]) · w
// cache[slot, kvLora:] = RoPE(kvDown[t, kvLora:], positions[t])
export function appendLatent(args: AppendLatentReferenceArgs): void {
  const fn = 'appendLatent';
  checkObject(fn, 'args', args);
  const { kvDown, normWeight, eps, positions, slotMapping, cache, pageSize, ropeTable, layout } = args;
  const kvLora = checkArray(fn, 'normWeight', normWeight).length;
  if (kvLora === 0) throw argError('ERR_SHAPE', fn, 'normWeight', 'is empty; its length fixes kvLora');
  checkPosInt(fn, 'pageSize', pageSize);
  checkFiniteNumber(fn, 'eps', eps);
  checkObject(fn, 'ropeTable', ropeTable);
  const rope = checkPosInt(fn, 'ropeTable.dim', ropeTable.dim);
  const D = kvLora + rope;
  const T = checkArray(fn, 'slotMapping', slotMapping).length;
  checkLength(fn, 'kvDown', kvDown, sizeProduct(fn, 'slotMapping', T, D), { f64: true });
  checkLength(fn, 'positions', positions, T);
  checkArray(fn, 'cache', cache, { f64: true });
  if (cache.length % sizeProduct(fn, 'pageSize', pageSize, D) !== 0) {
    throw argError('ERR_SHAPE', fn, 'cache', `length ${cache.length} is not a multiple of pageSize·D = ${pageSize * D}`);
  }
  const numSlots = cache.length / D;
  const row = new Float64Array(D);
  for (let t = 0; t < T; t++) {
    const slot = slotMapping[t]!;
    if (slot === -1) continue;
    if (!Number.isInteger(slot) || slot < 0 || slot >= numSlots) {
      throw argError('ERR_RANGE', fn, `slotMapping[${t}]`, `= ${slot} is outside the cache's slots [0, ${numSlots})`);
    }
    row.set(kvDown.subarray(t * D, (t + 1) * D));
    applyRope(row, 1, D, kvLora, rope, [positions[t]!], ropeTable, layout);
    rmsNorm(row, 1, kvLora, normWeight, eps, { out: row });
    cache.set(row, slot * D);
  }
}

export interface PagedCacheView {
  /** [numPages, pageSize, D] */
  cache: Float64Array;
  pageSize: number;
  /** Row width D. */
  dim: number;
  /** [B, maxPages]: physical page of each logical page. */
  blockTable: Int32Array;
  maxPages: number;
}

// Physical row index of logical token t of request b.
// `fn` names the caller in errors (decode, gatherPagedCache, ...).
export function pagedSlot(view: PagedCacheView, b: number, t: number, fn = 'pagedSlot'): number {
  const lp = Math.floor(t / view.pageSize);
  if (!(lp < view.maxPages)) {
    throw argError('ERR_RANGE', fn, 'blockTable', `is too short: token ${t} of request ${b} needs logical page ${lp}, the block table has ${view.maxPages}`);
  }
  const page = view.blockTable[b * view.maxPages + lp]!;
  const slot = page * view.pageSize + (t % view.pageSize);
  if (!(page >= 0) || !((slot + 1) * view.dim <= view.cache.length)) {
    throw argError('ERR_RANGE', fn, 'blockTable', `maps logical page ${lp} of request ${b} to invalid page ${page}`);
  }
  return slot;
}

// Packs the first seqLens[b] rows of every request into [Σ seqLens, D], in
// request order: the contiguous ("ragged") form the naive prefill reads.
export function gatherPagedCache(view: PagedCacheView, seqLens: ArrayLike<number>): Float64Array {
  const fn = 'gatherPagedCache';
  checkObject(fn, 'view', view);
  checkPosInt(fn, 'view.pageSize', view.pageSize);
  checkPosInt(fn, 'view.dim', view.dim);
  checkNonNegInt(fn, 'view.maxPages', view.maxPages);
  checkArray(fn, 'view.cache', view.cache, { f64: true });
  checkArray(fn, 'seqLens', seqLens);
  checkAtLeast(fn, 'view.blockTable', view.blockTable, sizeProduct(fn, 'seqLens', seqLens.length, view.maxPages));
  let total = 0;
  for (let b = 0; b < seqLens.length; b++) total += checkNonNegInt(fn, `seqLens[${b}]`, seqLens[b]);
  const out = allocHost(fn, 'seqLens', Float64Array, sizeProduct(fn, 'seqLens', total, view.dim));
  let r = 0;
  for (let b = 0; b < seqLens.length; b++) {
    for (let t = 0; t < seqLens[b]!; t++, r++) {
      const s = pagedSlot(view, b, t, fn);
      out.set(view.cache.subarray(s * view.dim, (s + 1) * view.dim), r * view.dim);
    }
  }
  return out;
}

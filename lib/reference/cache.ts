// Paged latent KV cache: one row of width D = kvLora + rope per token, shared
// by all heads. Row [page, offset] lives at cache[(page·pageSize + offset)·D].
// The latent part is stored normalised and the rope part rotated, so attention
// reads the cache as is.

import { applyRope, type RopeLayout, type RopeTable } from './rope.js';
import { rmsnorm } from './rmsnorm.js';
import { checkAtLeast, checkLength, checkNonNegInt, checkPosInt } from './util.js';

export interface AppendLatentArgs {
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
export function appendLatentReference(args: AppendLatentArgs): void {
  const { kvDown, normWeight, eps, positions, slotMapping, cache, pageSize, ropeTable, layout } = args;
  const kvLora = normWeight.length;
  checkPosInt('appendLatent kvLora', kvLora);
  checkPosInt('appendLatent pageSize', pageSize);
  const rope = ropeTable.dim;
  const D = kvLora + rope;
  const T = slotMapping.length;
  checkLength('appendLatent kvDown', kvDown, T * D);
  checkLength('appendLatent positions', positions, T);
  if (cache.length % (pageSize * D) !== 0) {
    throw new RangeError(`appendLatent: cache length ${cache.length} is not a multiple of pageSize·D = ${pageSize * D}`);
  }
  const numSlots = cache.length / D;
  const row = new Float64Array(D);
  for (let t = 0; t < T; t++) {
    const slot = slotMapping[t]!;
    if (slot === -1) continue;
    if (!Number.isInteger(slot) || slot < 0 || slot >= numSlots) {
      throw new RangeError(`appendLatent: slot ${slot} of token ${t} outside [0, ${numSlots})`);
    }
    row.set(kvDown.subarray(t * D, (t + 1) * D));
    applyRope(row, 1, D, kvLora, rope, [positions[t]!], ropeTable, layout);
    rmsnorm(row, 1, kvLora, normWeight, eps, { out: row });
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
export function pagedSlot(view: PagedCacheView, b: number, t: number): number {
  const lp = Math.floor(t / view.pageSize);
  if (lp >= view.maxPages) {
    throw new RangeError(`paged cache: token ${t} of request ${b} needs logical page ${lp}, block table has ${view.maxPages}`);
  }
  const page = view.blockTable[b * view.maxPages + lp]!;
  const slot = page * view.pageSize + (t % view.pageSize);
  if (page < 0 || (slot + 1) * view.dim > view.cache.length) {
    throw new RangeError(`paged cache: request ${b} logical page ${lp} maps to invalid page ${page}`);
  }
  return slot;
}

// Packs the first seqLens[b] rows of every request into [Σ seqLens, D], in
// request order: the contiguous ("ragged") form the naive prefill reads.
export function gatherPagedCache(view: PagedCacheView, seqLens: ArrayLike<number>): Float64Array {
  checkPosInt('gatherPagedCache pageSize', view.pageSize);
  checkPosInt('gatherPagedCache dim', view.dim);
  checkAtLeast('gatherPagedCache blockTable', view.blockTable, seqLens.length * view.maxPages);
  let total = 0;
  for (let b = 0; b < seqLens.length; b++) {
    checkNonNegInt(`gatherPagedCache seqLens[${b}]`, seqLens[b]!);
    total += seqLens[b]!;
  }
  const out = new Float64Array(total * view.dim);
  let r = 0;
  for (let b = 0; b < seqLens.length; b++) {
    for (let t = 0; t < seqLens[b]!; t++, r++) {
      const s = pagedSlot(view, b, t);
      out.set(view.cache.subarray(s * view.dim, (s + 1) * view.dim), r * view.dim);
    }
  }
  return out;
}

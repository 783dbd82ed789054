// Absorbed MLA attention over the paged latent cache (FlashMLA's decode
// problem): every head's query is [q_latent ; q_rope] of width D = kvLora + rope,
// there is one KV head, keys are the cache rows and values their first dimLatent
// columns.

import { type PagedCacheView, pagedSlot } from './cache.js';
import { allocHost, argError, checkArray, checkFiniteNumber, checkLength, checkObject, checkPosInt, sizeProduct } from '../check.js';
import { perRequest } from './util.js';

export interface DecodeReferenceArgs {
  /** [tokens, H, D]: per head the absorbed latent query then the rotated rope query. */
  q: Float64Array;
  /** [numPages, pageSize, D] */
  cache: Float64Array;
  pageSize: number;
  /** [B, maxPages] physical page per logical page. */
  blockTable: Int32Array;
  /** [B] keys per request (cached tokens, including this step's). */
  seqLens: ArrayLike<number>;
  /** Queries per request (uniform s_q as a number); a request's queries are consecutive in q. */
  qSeqLens: number | ArrayLike<number>;
  numHeads: number;
  /** kvLora: V is the first dimLatent columns of each cache row. */
  dimLatent: number;
  /** D; derived from q when omitted. */
  headDim?: number;
  scale: number;
  causal: boolean;
}

export interface AttentionResult {
  /** [tokens, H, dV] */
  out: Float64Array;
  /** [tokens, H], natural log; +Infinity where no key is visible. */
  lse: Float64Array;
}

// For query j of request b with s_q queries and L keys (bottom-right causal):
//   visible = causal ? L − s_q + j + 1 : L
//   s_t   = scale · q·K_t,  t < visible
//   lse   = m + ln Σ_t exp(s_t − m),  m = max_t s_t
//   out   = Σ_t exp(s_t − lse) · V_t
// A query that sees no key gets out = 0 and lse = +∞ (FlashMLA's convention).
export function decode(args: DecodeReferenceArgs): AttentionResult {
  const fn = 'decode';
  checkObject(fn, 'args', args);
  const { q, cache, pageSize, blockTable, numHeads: H, dimLatent, scale, causal } = args;
  const B = checkArray(fn, 'seqLens', args.seqLens).length;
  const seqLens = perRequest(fn, 'seqLens', args.seqLens, B);
  const qSeqLens = perRequest(fn, 'qSeqLens', args.qSeqLens, B);
  checkPosInt(fn, 'numHeads', H);
  checkPosInt(fn, 'pageSize', pageSize);
  checkFiniteNumber(fn, 'scale', scale);
  if (typeof causal !== 'boolean') throw argError('ERR_ARGUMENT', fn, 'causal', `must be a boolean, got ${String(causal)}`);
  checkArray(fn, 'q', q);
  checkArray(fn, 'cache', cache);
  if (!(blockTable instanceof Int32Array)) throw argError('ERR_ARGUMENT', fn, 'blockTable', 'must be an Int32Array');
  let tokens = 0;
  for (let b = 0; b < B; b++) tokens += qSeqLens[b]!;
  let D: number;
  if (args.headDim !== undefined) {
    D = checkPosInt(fn, 'headDim', args.headDim);
  } else if (tokens > 0) {
    D = q.length / (tokens * H);
    if (!Number.isSafeInteger(D) || D <= 0) throw argError('ERR_SHAPE', fn, 'q', `has ${q.length} elements, not a positive multiple of tokens·numHeads = ${tokens}·${H}`);
  } else {
    return { out: new Float64Array(0), lse: new Float64Array(0) };
  }
  checkPosInt(fn, 'dimLatent', dimLatent);
  if (dimLatent > D) throw argError('ERR_SHAPE', fn, 'dimLatent', `= ${dimLatent} exceeds the head dim ${D}`);
  checkLength(fn, 'q', q, sizeProduct(fn, 'qSeqLens', tokens, H, D));
  if (B > 0 && blockTable.length % B !== 0) {
    throw argError('ERR_SHAPE', fn, 'blockTable', `length ${blockTable.length} is not a multiple of batch ${B}`);
  }
  const maxPages = B === 0 ? 0 : blockTable.length / B;
  if (cache.length % sizeProduct(fn, 'pageSize', pageSize, D) !== 0) {
    throw argError('ERR_SHAPE', fn, 'cache', `length ${cache.length} is not a multiple of pageSize·D = ${pageSize * D}`);
  }
  const view: PagedCacheView = { cache, pageSize, dim: D, blockTable, maxPages };

  const out = allocHost(fn, 'qSeqLens', Float64Array, tokens * H * dimLatent);
  const lse = allocHost(fn, 'qSeqLens', Float64Array, tokens * H);
  let maxLen = 0;
  for (let b = 0; b < B; b++) maxLen = Math.max(maxLen, seqLens[b]!);
  const rowOf = allocHost(fn, 'seqLens', Int32Array, maxLen);
  const p = allocHost(fn, 'seqLens', Float64Array, maxLen);
  let tok0 = 0;
  for (let b = 0; b < B; b++) {
    const L = seqLens[b]!;
    const sq = qSeqLens[b]!;
    // Resolve the page walk once per request: row offsets into cache.
    for (let t = 0; t < L; t++) rowOf[t] = pagedSlot(view, b, t, fn) * D;
    for (let j = 0; j < sq; j++) {
      let visible = causal ? L - sq + j + 1 : L;
      if (visible > L) visible = L;
      const tok = tok0 + j;
      for (let h = 0; h < H; h++) {
        const qo = (tok * H + h) * D;
        const oo = (tok * H + h) * dimLatent;
        lse[tok * H + h] = attendRows(q, qo, cache, rowOf, visible, D, dimLatent, scale, p, out, oo);
      }
    }
    tok0 += sq;
  }
  return { out, lse };
}

/**
 * One query row over `count` cache rows (offsets `rows`, width D): s = scale·q·k, softmax,
 * out[oo..oo + dimLatent) += Σ p·k[:dimLatent], times `outScale(lse)` (sparse's sink; 1 by default).
 * Returns the natural-log LSE, +inf (out untouched) with no rows. `p` is scratch of ≥ count.
 */
export function attendRows(q: ArrayLike<number>, qo: number, cache: ArrayLike<number>, rows: ArrayLike<number>, count: number, D: number,
  dimLatent: number, scale: number, p: Float64Array, out: Float64Array, oo: number, outScale: (lse: number) => number = () => 1): number {
  if (count <= 0) return Infinity;
  let m = -Infinity;
  for (let i = 0; i < count; i++) {
    const ko = rows[i]!;
    let s = 0;
    for (let d = 0; d < D; d++) s += q[qo + d]! * cache[ko + d]!;
    s *= scale;
    p[i] = s;
    if (s > m) m = s;
  }
  let l = 0;
  for (let i = 0; i < count; i++) {
    const e = Math.exp(p[i]! - m);
    p[i] = e;
    l += e;
  }
  const lse = m + Math.log(l);
  const inv = outScale(lse) / l;
  for (let i = 0; i < count; i++) {
    const w = p[i]! * inv;
    const ko = rows[i]!;
    for (let c = 0; c < dimLatent; c++) out[oo + c] += w * cache[ko + c]!;
  }
  return lse;
}

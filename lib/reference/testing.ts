// Test helpers, also for kernel tests: random paged caches with shuffled pages,
// and a dense attention oracle written independently of decode.ts/prefill.ts
// (full score row, −∞ mask, then softmax) to cross-check them.

import { allocHost, argError, checkArray, checkAtLeast, checkFiniteNumber, checkInteger, checkNonNegInt, checkPosInt, sizeProduct } from '../check.js';
import { mulberry32, randnArray } from './util.js';
import type { MlaConfig } from '../config.js';
import type { MlaLayerWeights } from './layer.js';

function checkRng(fn: string, rng: unknown): void {
  if (typeof rng !== 'function') throw argError('ERR_ARGUMENT', fn, 'rng', 'must be a function returning numbers in [0, 1)');
}

export interface PagedCache {
  cache: Float64Array;
  blockTable: Int32Array;
  maxPages: number;
  pageSize: number;
}

// Scatters each request's rows [L_b, D] into pages handed out in a shuffled
// order; unused slots hold random garbage so a wrong page walk shows.
export function makePagedCache(rows: Float64Array[], D: number, pageSize: number, rng: () => number): PagedCache {
  const fn = 'makePagedCache';
  if (!Array.isArray(rows)) throw argError('ERR_ARGUMENT', fn, 'rows', 'must be an array of Float64Array');
  checkPosInt(fn, 'D', D);
  checkPosInt(fn, 'pageSize', pageSize);
  checkRng(fn, rng);
  rows.forEach((r, b) => {
    checkArray(fn, `rows[${b}]`, r, { f64: true });
    if (r.length % D !== 0) throw argError('ERR_SHAPE', fn, `rows[${b}]`, `has ${r.length} values, not a multiple of D = ${D}`);
  });
  const lens = rows.map((r) => r.length / D);
  const maxPages = Math.max(1, ...lens.map((l) => Math.ceil(l / pageSize)));
  const numPages = rows.length * maxPages + 2;
  const order = Array.from({ length: numPages }, (_, i) => i);
  for (let i = numPages - 1; i > 0; i--) {
    const j = Math.floor(rng() * (i + 1));
    [order[i], order[j]] = [order[j]!, order[i]!];
  }
  const cache = randnArray(sizeProduct(fn, 'rows', numPages, pageSize, D), rng, 100);
  const blockTable = allocHost(fn, 'rows', Int32Array, rows.length * maxPages).fill(-1);
  let next = 0;
  rows.forEach((r, b) => {
    const pages = Math.ceil(lens[b]! / pageSize);
    for (let p = 0; p < pages; p++) blockTable[b * maxPages + p] = order[next++]!;
    for (let t = 0; t < lens[b]!; t++) {
      const page = blockTable[b * maxPages + Math.floor(t / pageSize)]!;
      cache.set(r.subarray(t * D, (t + 1) * D), (page * pageSize + (t % pageSize)) * D);
    }
  });
  return { cache, blockTable, maxPages, pageSize };
}

/**
 * A block table over shuffled pages for requests of `seqLens` keys: each request's pages in a
 * random order, unused entries -1, one spare column and three spare pages (so a walk past the
 * end or onto the wrong page reads someone else's data).
 */
export function shuffledBlockTable(seqLens: readonly number[], pageSize: number, rng: () => number): { table: Int32Array; maxPages: number; numPages: number } {
  const fn = 'shuffledBlockTable';
  if (!Array.isArray(seqLens)) throw argError('ERR_ARGUMENT', fn, 'seqLens', 'must be an array of sequence lengths');
  seqLens.forEach((L, b) => checkInteger(fn, `seqLens[${b}]`, L, 0, 0x7fffffff));
  checkPosInt(fn, 'pageSize', pageSize);
  checkRng(fn, rng);
  const pagesOf = seqLens.map((L) => Math.ceil(L / pageSize));
  const maxPages = Math.max(1, ...pagesOf) + 1;
  const numPages = pagesOf.reduce((a, b) => a + b, 0) + 3;
  const perm = Array.from({ length: numPages }, (_, i) => i);
  for (let i = numPages - 1; i > 0; i--) {
    const j = Math.floor(rng() * (i + 1));
    [perm[i], perm[j]] = [perm[j]!, perm[i]!];
  }
  const table = allocHost(fn, 'seqLens', Int32Array, sizeProduct(fn, 'seqLens', seqLens.length, maxPages)).fill(-1);
  let next = 0;
  pagesOf.forEach((n, b) => {
    for (let i = 0; i < n; i++) table[b * maxPages + i] = perm[next++]!;
  });
  return { table, maxPages, numPages };
}

// softmax(scale·q·Kᵀ + mask)·V for one query row, written the textbook way:
// full score vector, −∞ for masked keys, then normalise.
export function denseAttendOne(
  q: ArrayLike<number>,
  keys: ArrayLike<number>,
  values: ArrayLike<number>,
  L: number,
  dQk: number,
  dV: number,
  scale: number,
  visible: number,
): { out: Float64Array; lse: number } {
  const fn = 'denseAttendOne';
  checkNonNegInt(fn, 'L', L);
  checkPosInt(fn, 'dQk', dQk);
  checkPosInt(fn, 'dV', dV);
  checkFiniteNumber(fn, 'scale', scale);
  checkInteger(fn, 'visible', visible, Number.MIN_SAFE_INTEGER);
  checkAtLeast(fn, 'q', q, dQk);
  checkAtLeast(fn, 'keys', keys, sizeProduct(fn, 'L', L, dQk));
  checkAtLeast(fn, 'values', values, sizeProduct(fn, 'L', L, dV));
  const scores: number[] = [];
  for (let t = 0; t < L; t++) {
    if (t >= visible) {
      scores.push(-Infinity);
      continue;
    }
    let s = 0;
    for (let d = 0; d < dQk; d++) s += q[d]! * keys[t * dQk + d]!;
    scores.push(s * scale);
  }
  const out = new Float64Array(dV);
  const m = Math.max(...scores, -Infinity);
  if (m === -Infinity) return { out, lse: Infinity };
  const e = scores.map((s) => Math.exp(s - m));
  const z = e.reduce((a, b) => a + b, 0);
  for (let t = 0; t < L; t++) {
    for (let d = 0; d < dV; d++) out[d]! += (e[t]! / z) * values[t * dV + d]!;
  }
  return { out, lse: m + Math.log(z) };
}

/** Random float64 weights of one layer for `cfg` (unit-variance rows; norm weights near 1). */
export function randomLayerWeights(cfg: MlaConfig, seed: number): MlaLayerWeights {
  const rng = mulberry32(seed);
  const { hiddenSize: hid, numHeads: H, kvLoraRank: C, qkNopeHeadDim: N, qkRopeHeadDim: R, vHeadDim: V, qLoraRank: q } = cfg;
  const mat = (rows: number, cols: number): Float64Array => randnArray(rows * cols, rng, 1 / Math.sqrt(cols));
  const norm = (n: number): Float64Array => Float64Array.from(randnArray(n, rng, 0.1), (v) => 1 + v);
  return {
    qAProj: q === null ? null : mat(q, hid),
    qALayernorm: q === null ? null : norm(q),
    qBProj: q === null ? null : mat(H * (N + R), q),
    qProj: q === null ? mat(H * (N + R), hid) : null,
    kvAProjWithMqa: mat(C + R, hid),
    kvALayernorm: norm(C),
    kvBProj: mat(H * (N + V), C),
    oProj: mat(hid, H * V),
  };
}

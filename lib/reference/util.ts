// Helpers shared by the reference ops and their tests.

import { allocHost, argError, checkArray, checkFiniteNumber, checkInteger, checkLength } from '../check.js';

// ‖a − b‖_F / ‖b‖_F; when b is all zeros, returns ‖a‖_F (0 when both are zero).
export function relError(a: ArrayLike<number>, b: ArrayLike<number>): number {
  sameLength('relError', a, b);
  let num = 0;
  let den = 0;
  for (let i = 0; i < a.length; i++) {
    const d = a[i]! - b[i]!;
    num += d * d;
    den += b[i]! * b[i]!;
  }
  return den === 0 ? Math.sqrt(num) : Math.sqrt(num / den);
}

function sameLength(fn: string, a: ArrayLike<number>, b: ArrayLike<number>): void {
  checkArray(fn, 'a', a);
  checkArray(fn, 'b', b);
  if (a.length !== b.length) throw argError('ERR_SHAPE', fn, 'b', `has ${b.length} elements; lengths differ from \`a\` (${a.length})`);
}

export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  sameLength('maxAbsDiff', a, b);
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i]! - b[i]!);
    if (d > m || Number.isNaN(d)) m = d;
  }
  return m;
}

// mulberry32: a tiny 32-bit seeded PRNG, uniform in [0, 1). Reproducible across
// platforms, which Math.random is not.
export function mulberry32(seed: number): () => number {
  checkFiniteNumber('mulberry32', 'seed', seed);
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function checkRng(fn: string, rng: unknown): void {
  if (typeof rng !== 'function') throw argError('ERR_ARGUMENT', fn, 'rng', 'must be a function returning numbers in [0, 1)');
}

// Standard normal by Box–Muller; 1 − u keeps the log argument in (0, 1].
export function randn(rng: () => number): number {
  checkRng('randn', rng);
  const u = 1 - rng();
  const v = rng();
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
}

export function randnArray(n: number, rng: () => number, std = 1): Float64Array {
  checkInteger('randnArray', 'n', n);
  checkRng('randnArray', rng);
  const out = allocHost('randnArray', 'n', Float64Array, n);
  for (let i = 0; i < n; i++) out[i] = randn(rng) * std;
  return out;
}

// Per-request counts given as a uniform number or one entry per request.
export function perRequest(fn: string, name: string, v: number | ArrayLike<number>, batch: number): Int32Array {
  const out = new Int32Array(batch);
  if (typeof v === 'number') {
    out.fill(checkInteger(fn, name, v, 0, 0x7fffffff));
    return out;
  }
  checkLength(fn, name, v, batch);
  for (let b = 0; b < batch; b++) out[b] = checkInteger(fn, `${name}[${b}]`, v[b], 0, 0x7fffffff);
  return out;
}

// Helpers shared by the reference ops and their tests.

// ‖a − b‖_F / ‖b‖_F; when b is all zeros, returns ‖a‖_F (0 when both are zero).
export function relError(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new RangeError(`relError: lengths differ (${a.length} vs ${b.length})`);
  let num = 0;
  let den = 0;
  for (let i = 0; i < a.length; i++) {
    const d = a[i]! - b[i]!;
    num += d * d;
    den += b[i]! * b[i]!;
  }
  return den === 0 ? Math.sqrt(num) : Math.sqrt(num / den);
}

export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new RangeError(`maxAbsDiff: lengths differ (${a.length} vs ${b.length})`);
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
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

// Standard normal by Box–Muller; 1 − u keeps the log argument in (0, 1].
export function randn(rng: () => number): number {
  const u = 1 - rng();
  const v = rng();
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
}

export function randnArray(n: number, rng: () => number, std = 1): Float64Array {
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) out[i] = randn(rng) * std;
  return out;
}

export function checkLength(what: string, arr: ArrayLike<number>, expected: number): void {
  if (arr.length !== expected) {
    throw new RangeError(`${what}: expected ${expected} elements, got ${arr.length}`);
  }
}

export function checkAtLeast(what: string, arr: ArrayLike<number>, expected: number): void {
  if (arr.length < expected) {
    throw new RangeError(`${what}: expected at least ${expected} elements, got ${arr.length}`);
  }
}

export function checkPosInt(what: string, v: number): void {
  if (!Number.isSafeInteger(v) || v <= 0) throw new RangeError(`${what}: expected a positive integer, got ${v}`);
}

export function checkNonNegInt(what: string, v: number): void {
  if (!Number.isSafeInteger(v) || v < 0) throw new RangeError(`${what}: expected a non-negative integer, got ${v}`);
}

// Per-request counts given as a uniform number or one entry per request.
export function perRequest(what: string, v: number | ArrayLike<number>, batch: number): Int32Array {
  const out = new Int32Array(batch);
  if (typeof v === 'number') {
    checkNonNegInt(what, v);
    out.fill(v);
    return out;
  }
  checkLength(what, v, batch);
  for (let b = 0; b < batch; b++) {
    checkNonNegInt(`${what}[${b}]`, v[b]!);
    out[b] = v[b]!;
  }
  return out;
}

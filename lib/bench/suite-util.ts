// Helpers every benchmark suite shares: random device data without giant host arrays,
// grid parsing (a case's buffers are freed by runtime/dispose.ts's disposeAll).
import type { DType } from '../dtype.js';
import { mulberry32, randnArray } from '../reference/util.js';
import { DeviceTensor } from '../runtime/tensor.js';
import { disposeAll, type Disposable } from '../runtime/dispose.js';
import type { BenchInstance, BenchSuiteOptions } from './types.js';

export type HalfDType = 'bf16' | 'f16';

const TILE = 1 << 20;

/** N(0, std²) values in a contiguous tensor: one random tile uploaded, then tiled by device copies. */
export function fillRandom(t: DeviceTensor, seed: number, std = 1): void {
  const flat = t.reshape([t.numel]);
  const n = Math.min(TILE, t.numel);
  const tile = DeviceTensor.fromArray(randnArray(n, mulberry32(seed), std), [n], t.dtype);
  try {
    for (let off = 0; off < t.numel; off += n) {
      const len = Math.min(n, t.numel - off);
      flat.slice(0, off, off + len).copyFrom(len === n ? tile : tile.slice(0, 0, len));
    }
  } finally {
    tile.dispose();
  }
}

/** A new tensor of random values (freed again if filling fails). */
export function randomTensor(shape: readonly number[], dtype: DType, seed: number, std = 1): DeviceTensor {
  const t = DeviceTensor.empty(shape, dtype);
  try {
    fillRandom(t, seed, std);
  } catch (err) {
    t.dispose();
    throw err;
  }
  return t;
}

/** Positive integers of grid key `key` (or the fallback). */
export function gridNumbers(suite: string, opts: BenchSuiteOptions, key: string, fallback: readonly number[]): number[] {
  const v = opts.grid?.[key]?.map(Number) ?? [...fallback];
  for (const n of v) if (!Number.isSafeInteger(n) || n < 1) throw new RangeError(`${suite}: grid ${key} must hold positive integers, got ${String(n)}`);
  return v;
}

/** Values of grid key `key`, each one of `allowed` (or the fallback). */
export function gridChoices<T extends string>(suite: string, opts: BenchSuiteOptions, key: string, allowed: readonly T[], fallback: readonly T[]): T[] {
  return (opts.grid?.[key] ?? fallback).map((x): T => {
    const v = String(x);
    if (!(allowed as readonly string[]).includes(v)) throw new RangeError(`${suite}: ${key} must be ${allowed.join(' or ')}, got ${v}`);
    return v as T;
  });
}

/** The `dtype` grid key: bf16 (default) and/or f16. */
export function gridDTypes(suite: string, opts: BenchSuiteOptions): HalfDType[] {
  return gridChoices(suite, opts, 'dtype', ['bf16', 'f16'], ['bf16']);
}

/** Booleans of grid key `key` (true/false, 1/0). */
export function gridBooleans(suite: string, opts: BenchSuiteOptions, key: string, fallback: readonly boolean[]): boolean[] {
  return (opts.grid?.[key] ?? fallback).map((v) => {
    if (typeof v === 'boolean') return v;
    if (v === 'true' || v === 1 || v === '1') return true;
    if (v === 'false' || v === 0 || v === '0') return false;
    throw new RangeError(`${suite}: grid ${key} must hold booleans, got ${String(v)}`);
  });
}

/**
 * Bytes of a DecodeWorkspace's split-KV partials for `rows` = H·s_q query rows: as
 * DecodeWorkspace sizes them, max(2 · SMs · min(64, rows), 2 · rows) rows of (512 + 1) f32.
 * Without a device (smCount undefined) only the SM-independent floor is counted.
 */
export function splitKvWorkspaceBytes(smCount: number | undefined, rows: number, dv: number): number {
  const r = Math.max(rows, 1);
  const partialRows = Math.max(2 * (smCount ?? 0) * Math.min(64, r), 2 * r);
  return partialRows * (dv + 1) * 4;
}

/** Pages 0..n-1 in a shuffled order, as a long-running server's allocator hands them out. */
export function shuffledPages(numPages: number, seed: number): Int32Array {
  const rand = mulberry32(seed);
  const perm = Int32Array.from({ length: numPages }, (_, i) => i);
  for (let i = numPages - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [perm[i], perm[j]] = [perm[j]!, perm[i]!];
  }
  return perm;
}

/**
 * A case's setup: `build` allocates into `owned` and returns the instance's functions; what it
 * allocated is freed by the instance's dispose(), or at once if `build` throws halfway.
 */
export function withOwned(build: (owned: Disposable[]) => Omit<BenchInstance, 'dispose'>): BenchInstance {
  const owned: Disposable[] = [];
  try {
    return { ...build(owned), dispose: () => disposeAll(owned) };
  } catch (err) {
    disposeAll(owned);
    throw err;
  }
}

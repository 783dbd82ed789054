// Helpers every benchmark suite shares: random device data without giant host arrays,
// grid parsing, and disposal of a case's buffers.
import type { DType } from '../dtype.js';
import { mulberry32, randnArray } from '../reference/util.js';
import { DeviceTensor } from '../runtime/tensor.js';
import type { BenchSuiteOptions } from './types.js';

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

/** Frees a case's buffers, newest first. */
export function disposeAll(list: ReadonlyArray<{ dispose(): void } | undefined>): void {
  for (let i = list.length - 1; i >= 0; i--) list[i]?.dispose();
}

/** Positive integers of grid key `key` (or the fallback). */
export function gridNumbers(suite: string, opts: BenchSuiteOptions, key: string, fallback: readonly number[]): number[] {
  const v = opts.grid?.[key]?.map(Number) ?? [...fallback];
  for (const n of v) if (!Number.isSafeInteger(n) || n < 1) throw new RangeError(`${suite}: grid ${key} must hold positive integers, got ${String(n)}`);
  return v;
}

/** The `dtype` grid key: bf16 (default) and/or f16. */
export function gridDTypes(suite: string, opts: BenchSuiteOptions): HalfDType[] {
  return (opts.grid?.['dtype'] ?? ['bf16']).map((x): HalfDType => {
    const d = String(x);
    if (d !== 'bf16' && d !== 'f16') throw new RangeError(`${suite}: dtype must be bf16 or f16, got ${d}`);
    return d;
  });
}

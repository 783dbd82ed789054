// What MlaAttention hands a backend: one planned step and the path of each request.
import type { DeviceTensor } from '../runtime/tensor.js';
import type { CacheStep } from '../latent-cache.js';

/** 'prefill': naive MHA on up-projected K/V; 'decode': absorbed attention on the latent. */
export type AttentionPath = 'prefill' | 'decode';

export interface AttentionBackend {
  /** hidden is [T, hidden_size]; returns [T, hidden_size]. Writes the step's cache rows. */
  forward(hidden: Float64Array | DeviceTensor, step: CacheStep, paths: readonly AttentionPath[]): Float64Array | DeviceTensor;
  dispose(): void;
}

/** Token rows of the requests picked by `idx`, packed back to back. */
export function tokenRows(step: CacheStep, idx: readonly number[]): Int32Array {
  let n = 0;
  for (const b of idx) n += step.entries[b]!.numTokens;
  const rows = new Int32Array(n);
  let r = 0;
  for (const b of idx) {
    const e = step.entries[b]!;
    for (let i = 0; i < e.numTokens; i++) rows[r++] = e.tokenStart + i;
  }
  return rows;
}

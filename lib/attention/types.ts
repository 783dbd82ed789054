// What MlaAttention hands a backend: one planned step and the path of each request.
import type { DeviceTensor } from '../runtime/tensor.js';
import type { CacheStep } from '../latent-cache.js';

/** 'prefill': naive MHA on up-projected K/V; 'decode': absorbed attention on the latent. */
export type AttentionPath = 'prefill' | 'decode';

/**
 * Top-k attention for a step (DeepSeek-V3.2's sparse MLA): token t attends only to the
 * positions its indexer picked. Validated by MlaAttention.forward.
 */
export interface SparseSelection {
  /**
   * [T, topk], row t for the step's token t: positions in that token's own sequence (0 = its
   * first cached token). -1, or a position after the token's own, is no entry (the mask is
   * causal); duplicates count twice.
   */
  indices: Int32Array;
  topk: number;
  /** [T]: only the first topkLength[t] entries of row t count (clamped to [0, topk]). */
  topkLength?: Int32Array | undefined;
}

export interface AttentionBackend {
  /**
   * hidden is [T, hidden_size]; returns [T, hidden_size]. Writes the step's cache rows. With
   * `sparse`, every token takes the absorbed path over its selected positions (paths unused).
   */
  forward(hidden: Float64Array | DeviceTensor, step: CacheStep, paths: readonly AttentionPath[], sparse?: SparseSelection, out?: DeviceTensor): Float64Array | DeviceTensor;
  dispose(): void;
}

/**
 * The selection as global cache slots (page · pageSize + offset) through the step's block
 * table, -1 where a row names no entry; what the sparse kernel and its reference take.
 */
export function sparseSlots(step: CacheStep, sel: SparseSelection, pageSize: number): Int32Array {
  const slots = new Int32Array(step.numTokens * sel.topk).fill(-1);
  step.entries.forEach((e, b) => {
    for (let i = 0; i < e.numTokens; i++) {
      const t = e.tokenStart + i;
      const own = e.contextLen + i; // the token's position in its sequence
      for (let k = 0; k < sel.topk; k++) {
        const p = sel.indices[t * sel.topk + k]!;
        if (p < 0 || p > own) continue;
        slots[t * sel.topk + k] = step.blockTable[b * step.maxPages + Math.floor(p / pageSize)]! * pageSize + (p % pageSize);
      }
    }
  });
  return slots;
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

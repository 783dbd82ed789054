// mla.sparse: sparse MLA (DeepSeek-V3.2) — every query token attends only to the cache slots its
// indexer picked (FlashMLA's flash_mla_sparse_fwd and sparse decode). Same kernels as decode
// with a per-token slot list (csrc/kernels/sparse.cu, docs/sparse-mla.md); float64 oracle:
// lib/reference/sparse.ts.
import { MlaError } from '../errors.js';
import { nativeOp } from '../native.js';
import { DeviceTensor } from '../runtime/tensor.js';
import type { StreamOption } from '../runtime/tensor.js';
import { checkInt, checkNumber, checkTensor } from './validate.js';
import { checkSplitKvOutputs, checkSplitKvQueryCache, DECODE_DIM_QK, DECODE_DIM_V, DECODE_MAX_HEADS, DecodeWorkspace, launchSplitKv, splitKvCallOptions } from './decode.js';
import type { SplitKvPhases } from './decode.js';

const OP = 'sparse';

/** Largest page size of a sparse cache (any power of two from 1: a flat [slots, 576] cache is [slots, 1, 576]). */
export const SPARSE_MAX_PAGE_SIZE = 256;
/** Largest top-k list per token. */
export const SPARSE_MAX_TOPK = 1 << 24;

/** What `validateSparseArgs` needs: metadata only, so it runs (and is tested) without a GPU. */
export interface SparseArgsMeta {
  q: unknown;
  cache: unknown;
  indices: unknown;
  topkLength?: unknown;
  attnSink?: unknown;
  out?: unknown;
  lse?: unknown;
  scale: unknown;
}

export interface SparseGeometry {
  dtype: 'bf16' | 'f16';
  tokens: number;
  numHeads: number;
  numPages: number;
  pageSize: number;
  /** numPages · pageSize: slots at or above it are "no entry". */
  numSlots: number;
  topk: number;
  fp8: boolean;
  scale: number;
}

/**
 * Checks every argument of sparse() that metadata can show; throws a typed MlaError naming the
 * argument. The index values are checked by `checkSparseIndices` (host copies) when asked; the
 * kernel guards every slot anyway.
 */
export function validateSparseArgs(args: SparseArgsMeta): SparseGeometry {
  const { dtype, tokens, numHeads, numPages, pageSize, fp8 } = checkSplitKvQueryCache(OP, args, 1, SPARSE_MAX_PAGE_SIZE);

  const indices = checkTensor(OP, 'indices', args.indices, { dtype: 'i32', shape: [tokens, null], innerContiguous: true });
  const topk = indices.shape[1]!;
  if (topk > SPARSE_MAX_TOPK) throw new MlaError('ERR_RANGE', `${OP}: \`indices\` has topk = ${topk}; at most ${SPARSE_MAX_TOPK}`);
  if (args.topkLength !== undefined && args.topkLength !== null) checkTensor(OP, 'topkLength', args.topkLength, { dtype: 'i32', shape: [tokens] });
  if (args.attnSink !== undefined && args.attnSink !== null) checkTensor(OP, 'attnSink', args.attnSink, { dtype: 'f32', shape: [numHeads] });
  checkSplitKvOutputs(OP, args, tokens, numHeads, dtype);
  const scale = checkNumber(OP, 'scale', args.scale, { positive: true });
  return { dtype, tokens, numHeads, numPages, pageSize, numSlots: numPages * pageSize, topk, fp8, scale };
}

/**
 * The host check `checkIndices` runs. Every int32 value is *defined* (a negative slot or one ≥
 * numSlots is "no entry"; topkLength n keeps the entries k < n, clamped to [0, topk]), so this
 * only refuses what is defined but almost surely a bug upstream: a slot below −1 (−1 is the
 * documented hole; other negatives look like an overflow) and a topkLength outside [0, topk].
 * Slots ≥ numSlots are allowed: engines use them as padding, as FlashMLA's tests do. Pure: the
 * tests call it with plain arrays.
 */
export function checkSparseIndices(geo: SparseGeometry, indices: ArrayLike<number>, topkLength?: ArrayLike<number>): void {
  const { tokens, topk } = geo;
  for (let t = 0; t < tokens; t++) {
    for (let k = 0; k < topk; k++) {
      const v = indices[t * topk + k]!;
      if (v < -1) throw new MlaError('ERR_RANGE', `${OP}: \`indices\`[${t}][${k}] = ${v}; a hole is −1 (slots ≥ ${geo.numSlots} also mean "no entry")`);
    }
    if (topkLength !== undefined) {
      const n = topkLength[t]!;
      if (n < 0 || n > topk) throw new MlaError('ERR_RANGE', `${OP}: \`topkLength\`[${t}] = ${n} is outside [0, ${topk}]`);
    }
  }
}

export interface SparseOptions extends StreamOption {
  /** [tokens, H, 576] bf16/f16: per head q_nope·W_UK (512) then the rotated RoPE query (64). */
  q: DeviceTensor;
  /**
   * [numPages, pageSize, 576], q's dtype, or the FP8 layout u8 [numPages, pageSize, 656] with a
   * bf16 q. pageSize is any power of two ≤ 256 (a flat [slots, 576] buffer is [slots, 1, 576]).
   */
  cache: DeviceTensor;
  /** i32 [tokens, topk]: global slots page · pageSize + offset; −1 or ≥ numPages·pageSize = no entry. */
  indices: DeviceTensor;
  /** i32 [tokens]: only the first topkLength[t] entries of row t count. */
  topkLength?: DeviceTensor | undefined;
  /** f32 [H]: out · exp(lse) / (exp(lse) + exp(sink)); lse unchanged. */
  attnSink?: DeviceTensor | undefined;
  /** Softmax scale (DeepSeek: 192^-0.5 · mscale²). */
  scale: number;
  /** [tokens, H, 512], q's dtype; written in place. */
  out?: DeviceTensor | undefined;
  /** f32 [tokens, H], natural log; written in place. */
  lse?: DeviceTensor | undefined;
  /** A DecodeWorkspace with maxBatch ≥ tokens and maxHeads ≥ H (maxQSeqLen 1); a temporary one when omitted. */
  workspace?: DecodeWorkspace | undefined;
  /**
   * Copy indices / topkLength to the host and refuse a slot below −1 or a topkLength outside
   * [0, topk] (ERR_RANGE) before launching (default true, like decode; blocking). false for graph
   * capture and serving loops: every value has a defined meaning and the kernel guards every slot.
   */
  checkIndices?: boolean | undefined;
  /** @internal Benchmarks and tests: one kernel alone, as decode's `phases`. */
  phases?: SplitKvPhases | undefined;
  /** @internal Benchmarks and tests: as decode's `pdl`. */
  pdl?: boolean | undefined;
}

export interface SparseResult {
  out: DeviceTensor;
  lse: DeviceTensor;
}

/**
 * Sparse MLA: out[t, h] = softmax(scale · q[t, h] · Kᵀ) · V over the cache rows indices[t, :n]
 * (n = topkLength[t], default topk; holes skipped; duplicates count twice), times the sink
 * factor; lse natural log. A token with no valid entry gets out 0 and lse +inf.
 */
export function sparse(opts: SparseOptions): SparseResult {
  if (typeof opts !== 'object' || opts === null) throw new MlaError('ERR_ARGUMENT', `${OP}: expected an options object`);
  const geo = validateSparseArgs(opts);
  const { checkIndices, phases, ws, pdl } = splitKvCallOptions(OP, opts);
  if (ws && !ws.fits(geo.tokens, geo.numHeads, 1)) {
    throw new MlaError('ERR_RANGE', `${OP}: \`workspace\` (maxBatch ${ws.maxBatch}, ${ws.maxRows} rows) is too small for ${geo.tokens} tokens × ${geo.numHeads} heads`);
  }
  if (checkIndices && geo.tokens > 0) {
    const indices = geo.topk > 0 ? (opts.indices.toHostSync(opts) as Int32Array) : new Int32Array(0);
    const topkLength = opts.topkLength ? (opts.topkLength.toHostSync(opts) as Int32Array) : undefined;
    checkSparseIndices(geo, indices, topkLength);
  }

  if (phases.runPlan) ws?.notePlan(undefined);  // its plan is not decode's
  return launchSplitKv(OP, opts, geo, ws, () => new DecodeWorkspace({ maxBatch: geo.tokens, maxHeads: geo.numHeads }), (io) => {
    nativeOp(OP)(Object.assign(io, {
      indices: opts.indices.nativeRef(`${OP}: \`indices\``),
      topkLength: opts.topkLength?.nativeRef(`${OP}: \`topkLength\``),
      attnSink: opts.attnSink?.nativeRef(`${OP}: \`attnSink\``),
      runPlan: phases.runPlan,
      runMain: phases.runMain,
      runCombine: phases.runCombine,
      pdl,
    }));
  });
}

/** FlashMLA's sparse byte / FLOP counts for one call (bench and docs). */
export function sparseCost(opts: { numHeads: number; attended: number; uniqueTokens: number; fp8: boolean }): { bytes: number; flops: number } {
  const h = checkInt(OP, 'numHeads', opts.numHeads, 1, DECODE_MAX_HEADS);
  return {
    bytes: opts.uniqueTokens * (opts.fp8 ? 656 : 2 * DECODE_DIM_QK),
    flops: 2 * h * opts.attended * (DECODE_DIM_QK + DECODE_DIM_V),
  };
}

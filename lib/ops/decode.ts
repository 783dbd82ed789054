// mla.decode: absorbed MLA attention of s_q new query tokens per request over a paged
// latent cache (FlashMLA's problem), split-KV with a device-side plan. Kernel design:
// docs/decode-kernel.md; float64 oracle: lib/reference/decode.ts.
import { MlaError } from '../errors.js';
import { nativeStream } from '../runtime/stream.js';
import { native, nativeLimits, nativeOp } from '../native.js';
import { FALLBACK_LIMITS } from '../native-contract.js';
import type { NativeDecodeConfig, NativeDecodeWorkspaceArgs, NativeDecodeWorkspaceLayout, NativePhaseArgs, NativeStreamArg } from '../native-contract.js';
import type { NativeTensorRef } from '../native.js';
import type { DType } from '../dtype.js';
import type { Stream } from '../runtime/stream.js';
import { disposeUnlessGiven } from '../runtime/dispose.js';
import { DeviceTensor } from '../runtime/tensor.js';
import type { StreamOption } from '../runtime/tensor.js';
import { checkInt, checkNumber, checkRowAlignment, checkSameDType, checkTensor, isPowerOfTwo, refuseIndexCheckDuringCapture } from './validate.js';
import { checkFp8Cache } from './fp8-cache.js';

const OP = 'decode';

// The limits below come from csrc/kernels/decode.h through the addon's limits() (nativeLimits());
// these exported copies are the fallback for where no addon loads, and equal the addon's
// (test/native-contract.test.ts). Validation reads nativeLimits() at call time.
/** Width of a query / cache row: latent (kv_lora 512) then rotated RoPE key (64). */
export const DECODE_DIM_QK = FALLBACK_LIMITS.decode.dimQK;
/** Width of V and of the output: the first 512 columns of a cache row. */
export const DECODE_DIM_V = FALLBACK_LIMITS.decode.dimV;
export const DECODE_MAX_HEADS = FALLBACK_LIMITS.decode.maxHeads;
export const DECODE_MIN_PAGE_SIZE = FALLBACK_LIMITS.decode.minPageSize;
export const DECODE_MAX_PAGE_SIZE = FALLBACK_LIMITS.decode.maxPageSize;

/** Error bits the kernels OR into the workspace (sticky until `checkErrors()`). */
export const DECODE_ERROR_BITS = FALLBACK_LIMITS.decode.errorBits;

/** What `validateDecodeArgs` needs: metadata only, so it runs (and is tested) without a GPU. */
export interface DecodeArgsMeta {
  q: unknown;
  cache: unknown;
  blockTable: unknown;
  seqLens: unknown;
  qSeqLens?: unknown;
  out?: unknown;
  lse?: unknown;
  scale: unknown;
  causal: unknown;
}

/** The geometry validation derives. */
export interface DecodeGeometry {
  dtype: 'bf16' | 'f16';
  tokens: number;
  numHeads: number;
  numPages: number;
  pageSize: number;
  batch: number;
  maxPages: number;
  /** Uniform queries per request, or null when `qSeqLens` gives them per request. */
  sQ: number | null;
  scale: number;
  causal: boolean;
}

/**
 * Checks every argument of decode() that metadata can show; throws a typed MlaError naming
 * the argument. Device-resident indices (blockTable entries, seqLens, qSeqLens values) are
 * checked by `checkDecodeIndices` (host copies) and always by the kernels.
 */
/** What checkSplitKvQueryCache derives from `q` and `cache`. */
export interface SplitKvQueryCache {
  dtype: 'bf16' | 'f16';
  tokens: number;
  numHeads: number;
  numPages: number;
  pageSize: number;
  fp8: boolean;
}

/**
 * The `q` and `cache` checks decode and sparse share (both run the split-KV kernels): q
 * [tokens, H, 576] bf16/f16 with 1..maxHeads heads, the cache as q's dtype [pages, pageSize, 576]
 * or the FP8 layout (656-byte rows, lib/ops/fp8-cache.ts; bf16 q), a power-of-two page size in
 * [minPageSize, maxPageSize], 1 .. 2^31 − 1 pages, rows 16-byte aligned.
 */
export function checkSplitKvQueryCache(op: string, args: { q: unknown; cache: unknown }, minPageSize: number, maxPageSize: number): SplitKvQueryCache {
  const q = checkTensor(op, 'q', args.q, { dtype: ['bf16', 'f16'], shape: [null, null, DECODE_DIM_QK], innerContiguous: true });
  const dtype = q.dtype as 'bf16' | 'f16';
  const [tokens, numHeads] = q.shape as [number, number, number];
  const maxHeads = nativeLimits().decode.maxHeads;
  if (numHeads < 1 || numHeads > maxHeads) {
    throw new MlaError('ERR_RANGE', `${op}: \`q\` has ${numHeads} heads; the head count must be in [1, ${maxHeads}]`);
  }
  checkRowAlignment(op, 'q', q, 8, 'rows are loaded 16 bytes at a time');
  const fp8 = checkTensor(op, 'cache', args.cache).dtype === 'u8';
  let numPages: number, pageSize: number;
  if (fp8) {
    if (dtype !== 'bf16') throw new MlaError('ERR_DTYPE', `${op}: an FP8 \`cache\` (u8, 656-byte rows) is read with a bf16 \`q\`, got ${dtype}`);
    ({ numPages, pageSize } = checkFp8Cache(op, 'cache', args.cache));
  } else {
    const cache = checkTensor(op, 'cache', args.cache, { shape: [null, null, DECODE_DIM_QK], innerContiguous: true });
    checkSameDType(op, 'cache', cache, 'q', dtype);
    [numPages, pageSize] = cache.shape as [number, number, number];
    checkRowAlignment(op, 'cache', cache, 8, 'rows are gathered 16 bytes at a time');
  }
  if (!isPowerOfTwo(pageSize) || pageSize < minPageSize || pageSize > maxPageSize) {
    throw new MlaError('ERR_RANGE', `${op}: \`cache\` page size ${pageSize} must be a power of two in [${minPageSize}, ${maxPageSize}]`);
  }
  if (numPages < 1) throw new MlaError('ERR_SHAPE', `${op}: \`cache\` must hold at least one page`);
  if (numPages > 0x7fffffff) throw new MlaError('ERR_SHAPE', `${op}: \`cache\` has more than 2^31 − 1 pages`);
  return { dtype, tokens, numHeads, numPages, pageSize, fp8 };
}

/** The optional `out` [tokens, H, 512] (q's dtype, stored in pairs) and `lse` [tokens, H] f32. */
export function checkSplitKvOutputs(op: string, args: { out?: unknown; lse?: unknown }, tokens: number, numHeads: number, dtype: 'bf16' | 'f16'): void {
  if (args.out !== undefined && args.out !== null) {
    const out = checkTensor(op, 'out', args.out, { shape: [tokens, numHeads, DECODE_DIM_V], innerContiguous: true });
    checkSameDType(op, 'out', out, 'q', dtype);
    checkRowAlignment(op, 'out', out, 2, 'outputs are stored in pairs');
  }
  if (args.lse !== undefined && args.lse !== null) checkTensor(op, 'lse', args.lse, { dtype: 'f32', shape: [tokens, numHeads] });
}

export function validateDecodeArgs(args: DecodeArgsMeta): DecodeGeometry {
  const lim = nativeLimits().decode;
  const { dtype, tokens, numHeads, numPages, pageSize } = checkSplitKvQueryCache(OP, args, lim.minPageSize, lim.maxPageSize);

  const blockTable = checkTensor(OP, 'blockTable', args.blockTable, { dtype: 'i32', shape: [null, null], innerContiguous: true });
  const [batch, maxPages] = blockTable.shape as [number, number];
  checkTensor(OP, 'seqLens', args.seqLens, { dtype: 'i32', shape: [batch] });
  let sQ: number | null;
  if (args.qSeqLens !== undefined && args.qSeqLens !== null) {
    checkTensor(OP, 'qSeqLens', args.qSeqLens, { dtype: 'i32', shape: [batch] });
    sQ = null;
  } else if (batch === 0) {
    if (tokens !== 0) throw new MlaError('ERR_SHAPE', `${OP}: \`q\` has ${tokens} tokens but the batch (\`blockTable\` rows) is empty`);
    sQ = 0;
  } else {
    if (tokens % batch !== 0) {
      throw new MlaError('ERR_SHAPE', `${OP}: \`q\` has ${tokens} tokens, not batch (${batch}) × s_q; pass \`qSeqLens\` for variable query lengths`);
    }
    sQ = tokens / batch;
  }
  checkSplitKvOutputs(OP, args, tokens, numHeads, dtype);
  const scale = checkNumber(OP, 'scale', args.scale, { positive: true });
  if (typeof args.causal !== 'boolean') throw new MlaError('ERR_ARGUMENT', `${OP}: \`causal\` must be a boolean, got ${String(args.causal)}`);
  return { dtype, tokens, numHeads, numPages, pageSize, batch, maxPages, sQ, scale, causal: args.causal };
}

/** Host copies of the device-resident indices, as `checkDecodeIndices` reads them. */
export interface DecodeIndices {
  seqLens: ArrayLike<number>;
  /** Row-major [batch, blockTableCols]: at least the used columns of each row. */
  blockTable: ArrayLike<number>;
  /** Columns per row of `blockTable` (default maxPages). */
  blockTableCols?: number | undefined;
  qSeqLens?: ArrayLike<number> | undefined;
}

/**
 * Throws ERR_RANGE naming `seqLens`, `blockTable` or `qSeqLens` (and the request) when a
 * value would make the kernels skip a request: a length outside [0, maxPages·pageSize], a
 * used page outside [0, numPages), query lengths that do not add up to `tokens`. Pure: the
 * tests call it with plain arrays. Returns the largest query length.
 */
export function checkDecodeIndices(geo: DecodeGeometry, idx: DecodeIndices): number {
  const { batch, maxPages, pageSize, numPages, tokens } = geo;
  const capacity = maxPages * pageSize;
  const cols = idx.blockTableCols ?? maxPages;
  for (let b = 0; b < batch; b++) {
    const L = idx.seqLens[b]!;
    if (!Number.isInteger(L) || L < 0 || L > capacity) {
      throw new MlaError('ERR_RANGE', `${OP}: \`seqLens\`[${b}] = ${L} is outside [0, ${capacity}] (maxPages ${maxPages} × pageSize ${pageSize})`);
    }
    const used = Math.ceil(L / pageSize);
    if (used > cols) throw new MlaError('ERR_ARGUMENT', `${OP}: host copy of \`blockTable\` has ${cols} columns, request ${b} uses ${used}`);
    for (let i = 0; i < used; i++) {
      const p = idx.blockTable[b * cols + i]!;
      if (!Number.isInteger(p) || p < 0 || p >= numPages) {
        throw new MlaError('ERR_RANGE', `${OP}: \`blockTable\`[${b}][${i}] = ${p} is outside [0, ${numPages}) (request ${b} uses ${used} pages)`);
      }
    }
  }
  if (geo.sQ !== null) return geo.sQ;
  if (!idx.qSeqLens) throw new MlaError('ERR_ARGUMENT', `${OP}: \`qSeqLens\` values are needed to check variable query lengths`);
  let sum = 0;
  let max = 0;
  for (let b = 0; b < batch; b++) {
    const s = idx.qSeqLens[b]!;
    if (!Number.isInteger(s) || s < 0) throw new MlaError('ERR_RANGE', `${OP}: \`qSeqLens\`[${b}] = ${s} must be a non-negative integer`);
    sum += s;
    max = Math.max(max, s);
  }
  if (sum !== tokens) throw new MlaError('ERR_RANGE', `${OP}: \`qSeqLens\` sums to ${sum} but \`q\` has ${tokens} tokens`);
  return max;
}

/** Sizes a workspace is created for; a call fits if batch, heads·maxQSeqLen stay within. */
export interface DecodeWorkspaceOptions {
  /** Largest batch (requests) per call. */
  maxBatch: number;
  /** Largest head count per call (1..128). */
  maxHeads: number;
  /** Largest query length of one request (s_q; MTP / speculative tokens). Default 1. */
  maxQSeqLen?: number | undefined;
  /** Split-KV parts (≈ CTAs per wave); default the device's SM count. */
  maxParts?: number | undefined;
}

export interface DecodeErrorReport {
  ok: boolean;
  /** Raw sticky bits (see DECODE_ERROR_BITS). */
  bits: number;
  /** One line per bit set, naming the argument. */
  messages: string[];
}

/**
 * Device buffer holding the split plan, the fp32 partial outputs / LSEs of split requests and
 * a sticky error word. Create one per (max) geometry and reuse it across layers and calls
 * (calls on one stream run in order; don't share one between concurrent streams). Its size
 * and addresses never change, so calls using it can be captured in a CUDA graph.
 */
export class DecodeWorkspace {
  readonly maxBatch: number;
  readonly maxHeads: number;
  readonly maxQSeqLen: number;
  readonly maxParts: number;
  /** Packed query rows per request (maxHeads · maxQSeqLen). */
  readonly maxRows: number;
  /** fp32 partial rows (of 512) for split requests: 2 · maxParts · min(64, maxRows), ≥ 2 · maxRows. */
  readonly partialRows: number;
  readonly bytes: number;
  #buffer: DeviceTensor;
  #layout: NativeDecodeWorkspaceLayout;
  #args: NativeDecodeWorkspaceArgs | undefined;
  /** The sizes of the plan the last planning call queued (decode's `plan: 'reuse'`). */
  #planKey: PlanKey | undefined;

  constructor(opts: DecodeWorkspaceOptions) {
    const where = 'DecodeWorkspace';
    this.maxBatch = checkInt(where, 'maxBatch', opts.maxBatch, 1, 0x7fffffff);
    const lim = nativeLimits().decode;
    this.maxHeads = checkInt(where, 'maxHeads', opts.maxHeads, 1, lim.maxHeads);
    this.maxQSeqLen = checkInt(where, 'maxQSeqLen', opts.maxQSeqLen ?? 1, 1, 1 << 20);
    const addon = native();
    const parts = opts.maxParts ?? addon.deviceInfo(addon.currentDevice()).smCount;
    this.maxParts = checkInt(where, 'maxParts', parts, 1, lim.maxParts);
    this.maxRows = this.maxHeads * this.maxQSeqLen;
    // A call uses ~SMs / ceil(rows / BM) parts (BM ≤ 64) with ≤ 2 slots of `rows` each.
    this.partialRows = Math.max(2 * this.maxParts * Math.min(64, this.maxRows), 2 * this.maxRows);
    this.#layout = nativeOp('decodeWorkspaceBytes')({ maxBatch: this.maxBatch, partialRows: this.partialRows, maxParts: this.maxParts });
    this.bytes = this.#layout.totalBytes;
    this.#buffer = DeviceTensor.empty([this.bytes], 'u8');
    // Only the error word needs a value; every call rewrites the plan before reading it and
    // reads only the partial rows it wrote.
    try {
      this.#buffer.slice(0, 0, 256).fill(0);
    } catch (err) {
      this.#buffer.dispose();
      throw err;
    }
  }

  get disposed(): boolean {
    return this.#buffer.disposed;
  }

  /** Whether a call with this geometry fits (see decode()). */
  fits(batch: number, numHeads: number, maxQSeqLen: number): boolean {
    return batch <= this.maxBatch && numHeads * maxQSeqLen <= this.maxRows;
  }

  /** @internal A planning call queued a plan for these sizes (undefined: no usable plan). */
  notePlan(key: PlanKey | undefined): void {
    this.#planKey = key;
  }

  /** @internal Throws unless the workspace holds a plan cut for exactly these sizes. */
  checkPlan(op: string, key: PlanKey): void {
    const held = this.#planKey;
    if (held === undefined) throw new MlaError('ERR_ARGUMENT', `${op}: \`plan\` 'reuse': \`workspace\` holds no decode plan (plan it with a call of \`plan\` 'compute' first)`);
    const diff = key.flatMap((v, i) => (v === held[i] ? [] : [`${PLAN_KEY_NAMES[i]} ${held[i]} → ${v}`]));
    if (diff.length > 0) throw new MlaError('ERR_ARGUMENT', `${op}: \`plan\` 'reuse': \`workspace\`'s plan was cut for other sizes (${diff.join(', ')})`);
  }

  /** @internal Arguments the native op reads. */
  nativeArgs(): NativeDecodeWorkspaceArgs {
    this.#buffer.assertAlive('decode: `workspace`');
    // Made once: the buffer and its sizes never change, and decode runs per layer per step.
    return (this.#args ??= {
      workspace: this.#buffer.nativeRef(),
      wsMaxBatch: this.maxBatch,
      wsPartialRows: this.partialRows,
      wsMaxParts: this.maxParts,
    });
  }

  /**
   * Reads (and clears) the sticky error word the kernels set when a device-resident index was
   * out of range; the affected requests got out 0 and lse +inf. Synchronises with `stream`'s
   * prior work via a blocking copy.
   */
  checkErrors(opts: StreamOption = {}): DecodeErrorReport {
    const head = this.#buffer.slice(0, 0, 4);
    const raw = head.toHostSync(opts) as Uint8Array;
    const bits = (raw[0]! | (raw[1]! << 8) | (raw[2]! << 16) | (raw[3]! << 24)) >>> 0;
    if (bits !== 0) head.fill(0, opts);
    const messages: string[] = [];
    const bit = nativeLimits().decode.errorBits;
    if (bits & bit.seqLens) messages.push('decode: `seqLens` had a value outside [0, maxPages · pageSize]');
    if (bits & bit.blockTable) messages.push('decode: `blockTable` had a used page index outside [0, numPages)');
    if (bits & bit.qSeqLens) messages.push('decode: `qSeqLens` had a negative value, one above maxQSeqLen, or more queries than `q` holds');
    return { ok: bits === 0, bits, messages };
  }

  /**
   * @internal Tests: the split plan the last call wrote, int32 [maxParts][8] per part (begin
   * request, begin block, end request, end block, first split) and [maxBatch][8] per request
   * (blocks, splits, first slot, query start, queries, keys, error bits). Blocking.
   */
  planSnapshot(opts: StreamOption = {}): { parts: Int32Array; requests: Int32Array } {
    const read = (offset: number, count: number): Int32Array => {
      const bytes = this.#buffer.slice(0, offset, offset + 4 * count).toHostSync(opts) as Uint8Array;
      return new Int32Array(Uint8Array.from(bytes).buffer);
    };
    return { parts: read(this.#layout.partMetaOffset, 8 * this.maxParts), requests: read(this.#layout.reqInfoOffset, 8 * this.maxBatch) };
  }

  /** Like checkErrors() but throws ERR_RANGE with the messages. */
  throwIfErrors(opts: StreamOption = {}): void {
    const r = this.checkErrors(opts);
    if (!r.ok) throw new MlaError('ERR_RANGE', r.messages.join('; '));
  }

  dispose(): void {
    this.#buffer.dispose();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}

export interface DecodeOptions extends StreamOption {
  /** [tokens, H, 576] bf16/f16: per head q_nope·W_UK (512) then the rotated RoPE query (64). */
  q: DeviceTensor;
  /**
   * [numPages, pageSize, 576], q's dtype: normalised latent (512) then rotated RoPE key (64); or
   * the FP8 layout u8 [numPages, pageSize, 656] with a bf16 q (lib/ops/fp8-cache.ts).
   */
  cache: DeviceTensor;
  /** i32 [B, maxPages]: physical page of each logical page. */
  blockTable: DeviceTensor;
  /** i32 [B]: keys per request (0 allowed). */
  seqLens: DeviceTensor;
  /** Softmax scale (DeepSeek: 192^-0.5 · mscale², not 576^-0.5). */
  scale: number;
  /** Query j of a request with s_q queries sees keys 0 .. seqLen − s_q + j. */
  causal: boolean;
  /** i32 [B]: queries per request (consecutive in q); uniform tokens / B when omitted. */
  qSeqLens?: DeviceTensor | undefined;
  /** Upper bound of qSeqLens (sizes the grid) when checkIndices is false. */
  maxQSeqLen?: number | undefined;
  /** [tokens, H, 512], q's dtype; written in place. */
  out?: DeviceTensor | undefined;
  /** f32 [tokens, H], natural log; written in place. */
  lse?: DeviceTensor | undefined;
  /** Reusable plan / partials buffer; a temporary one is made (and freed) when omitted. */
  workspace?: DecodeWorkspace | undefined;
  /**
   * Copy seqLens / qSeqLens and the used blockTable rows to the host and throw ERR_RANGE
   * before launching (default true; blocking). false for graph capture and benchmarks: the
   * kernels still guard every index and report through workspace.checkErrors().
   */
  checkIndices?: boolean | undefined;
  /**
   * @internal Benchmarks and tests: launch one of the three kernels alone ('main' and
   * 'combine' need the plan of an earlier call with the same arguments in the workspace).
   */
  phases?: SplitKvPhases | undefined;
  /** @internal Benchmarks and tests: as MLA_CUDA_PDL (splitKvCallOptions). */
  pdl?: boolean | undefined;
  /**
   * 'reuse': skip the split plan and run on the one an earlier decode() left in `workspace`: plan
   * once per step, reuse it in every layer (FlashMLA's get_mla_metadata, FlashInfer's plan/run).
   * The planning call must have had this call's geometry (batch, tokens, heads, query lengths,
   * blockTable and cache shapes, kernel; checked, ERR_ARGUMENT) and the same seqLens, qSeqLens
   * and used blockTable entries (not re-read: a change gives wrong outputs, never an access out
   * of bounds, as the kernels guard every page). A plan captured into a CUDA graph exists once
   * the graph runs: capture the planning call and the reusing ones together. Default 'compute'.
   */
  plan?: 'compute' | 'reuse' | undefined;
  /**
   * The main kernel: 'hopper' (sm_90a: wgmma + TMA; compute capability 9.0, 16-bit cache),
   * 'portable' (mma.sync, every GPU), or 'auto' (default; MLA_CUDA_DECODE_KERNEL overrides):
   * Hopper wherever it applies. Forcing 'hopper' where it cannot run throws ERR_ARGUMENT.
   * The Hopper path takes its few-rows kernel when s_q·H <= 32; 'hopper-wide' forces its
   * 64-row kernel for any row count (for benchmarks).
   */
  kernel?: DecodeKernelChoice | undefined;
}

export type SplitKvPhases = 'all' | 'plan' | 'main' | 'combine';
const PHASES: Readonly<Record<SplitKvPhases, NativePhaseArgs>> = {
  all: { runPlan: true, runMain: true, runCombine: true },
  plan: { runPlan: true, runMain: false, runCombine: false },
  main: { runPlan: false, runMain: true, runCombine: false },
  combine: { runPlan: false, runMain: false, runCombine: true },
};
const PHASES_REUSE: NativePhaseArgs = { runPlan: false, runMain: true, runCombine: true };

/** The sizes a split plan was cut for (decode's `plan: 'reuse'` compares them). */
type PlanKey = readonly [batch: number, tokens: number, heads: number, sQ: number, maxQSeqLen: number, maxPages: number, pageSize: number, numPages: number, fp8: number, kernel: number];
const PLAN_KEY_NAMES = ['batch', 'tokens', 'heads', 's_q (-1: qSeqLens)', 'maxQSeqLen', 'maxPages', 'pageSize', 'numPages', 'fp8 cache', 'kernel'] as const;

export type DecodeKernelChoice = 'auto' | 'portable' | 'hopper' | 'hopper-wide';
// csrc/kernels/decode.h DecodeKernel.
const KERNEL_CODE: Readonly<Record<DecodeKernelChoice, number>> = { auto: 0, portable: 1, hopper: 2, 'hopper-wide': 3 };

// Read once: decode runs per layer per step, and the variables are process-wide settings.
const ENV_KERNEL = process.env['MLA_CUDA_DECODE_KERNEL'];
const ENV_PDL = process.env['MLA_CUDA_PDL'];

/** The `kernel` option checked, with its default (MLA_CUDA_DECODE_KERNEL at load, else 'auto'). */
export function checkDecodeKernel(op: string, kernel: unknown): DecodeKernelChoice {
  const fromEnv = kernel === undefined;
  const v = kernel ?? ENV_KERNEL ?? 'auto';
  if (typeof v !== 'string' || !Object.hasOwn(KERNEL_CODE, v)) {
    const name = fromEnv ? 'MLA_CUDA_DECODE_KERNEL' : '`kernel`';
    throw new MlaError('ERR_ARGUMENT', `${op}: ${name} must be 'auto', 'portable', 'hopper' or 'hopper-wide', got ${JSON.stringify(v)}`);
  }
  return v as DecodeKernelChoice;
}

export interface DecodeResult {
  out: DeviceTensor;
  lse: DeviceTensor;
}

/**
 * Absorbed MLA decode: out[t, h] = softmax(scale · q[t, h] · Kᵀ) · V over the request's
 * paged cache rows (K = the 576-wide row, V = its first 512 columns), lse natural log.
 * A query that sees no key gets out 0 and lse +inf.
 */
/**
 * The options decode and sparse share (both run the split-KV kernels): checkIndices (refused
 * during a graph capture), phases, the workspace and pdl, checked and with their defaults. pdl:
 * programmatic dependent launch of the main and combine kernels (each waits for its predecessor
 * before its first memory access, so only their launch overlaps; sm_90+), from MLA_CUDA_PDL=1;
 * off by default until a GPU run has measured it.
 */
export function splitKvCallOptions(op: string, opts: { checkIndices?: unknown; phases?: unknown; workspace?: unknown; pdl?: unknown }): { checkIndices: boolean; phases: NativePhaseArgs; ws: DecodeWorkspace | undefined; pdl: boolean } {
  const checkIndices = opts.checkIndices ?? true;
  if (typeof checkIndices !== 'boolean') throw new MlaError('ERR_ARGUMENT', `${op}: \`checkIndices\` must be a boolean`);
  refuseIndexCheckDuringCapture(op, checkIndices);
  const phases = opts.phases ?? 'all';
  if (typeof phases !== 'string' || !Object.hasOwn(PHASES, phases)) throw new MlaError('ERR_ARGUMENT', `${op}: \`phases\` must be 'all', 'plan', 'main' or 'combine'`);
  const ws = opts.workspace;
  if (ws !== undefined && !(ws instanceof DecodeWorkspace)) throw new MlaError('ERR_ARGUMENT', `${op}: \`workspace\` must be a DecodeWorkspace`);
  if (ws?.disposed) throw new MlaError('ERR_DISPOSED', `${op}: \`workspace\` was disposed`);
  let pdl: boolean;
  if (opts.pdl === undefined) pdl = pdlFromEnv(op, ENV_PDL);
  else if (typeof opts.pdl === 'boolean') pdl = opts.pdl;
  else throw new MlaError('ERR_ARGUMENT', `${op}: \`pdl\` must be a boolean`);
  return { checkIndices, phases: PHASES[phases as SplitKvPhases], ws, pdl };
}

/** MLA_CUDA_PDL's value as the `pdl` default: '1' on; '0' or unset off; anything else refused. */
export function pdlFromEnv(op: string, value: string | undefined): boolean {
  if (value !== undefined && value !== '0' && value !== '1') throw new MlaError('ERR_ARGUMENT', `${op}: MLA_CUDA_PDL must be '0' or '1', got ${JSON.stringify(value)}`);
  return value === '1';
}

export function decode(opts: DecodeOptions): DecodeResult {
  if (typeof opts !== 'object' || opts === null) throw new MlaError('ERR_ARGUMENT', `${OP}: expected an options object`);
  const geo = validateDecodeArgs(opts);
  const split = splitKvCallOptions(OP, opts);
  const { checkIndices, ws, pdl } = split;
  let phases = split.phases;
  const kernel = checkDecodeKernel(OP, opts.kernel);
  const planMode = opts.plan ?? 'compute';
  if (planMode !== 'compute' && planMode !== 'reuse') throw new MlaError('ERR_ARGUMENT', `${OP}: \`plan\` must be 'compute' or 'reuse'`);
  if (planMode === 'reuse') {
    if (!ws) throw new MlaError('ERR_ARGUMENT', `${OP}: \`plan\` 'reuse' needs the \`workspace\` an earlier call planned in`);
    if (phases !== PHASES.all) throw new MlaError('ERR_ARGUMENT', `${OP}: \`plan\` 'reuse' runs every kernel but the plan; leave \`phases\` unset`);
    phases = PHASES_REUSE;
  }

  let maxQ: number;
  if (checkIndices) {
    // Blocking, after the work already queued on the caller's stream (which may write them).
    const downloadInts = (t: DeviceTensor): Int32Array => t.toHostSync(opts) as Int32Array;
    const seqLens = downloadInts(opts.seqLens);
    // Only the columns some request uses travel (lengths over capacity throw below anyway).
    let cols = 0;
    for (const L of seqLens) cols = Math.max(cols, Math.min(geo.maxPages, Math.ceil(Math.max(L, 0) / geo.pageSize)));
    const blockTable = geo.batch > 0 && cols > 0 ? downloadInts(opts.blockTable.slice(1, 0, cols)) : new Int32Array(0);
    const qSeqLens = opts.qSeqLens ? downloadInts(opts.qSeqLens) : undefined;
    maxQ = checkDecodeIndices(geo, { seqLens, blockTable, blockTableCols: cols, qSeqLens });
  } else if (geo.sQ !== null) {
    maxQ = geo.sQ;
  } else {
    maxQ = opts.maxQSeqLen ?? ws?.maxQSeqLen ?? geo.tokens;
  }
  maxQ = checkInt(OP, 'maxQSeqLen', maxQ, 0, 1 << 20);
  if (opts.maxQSeqLen !== undefined && geo.sQ === null) {
    const bound = checkInt(OP, 'maxQSeqLen', opts.maxQSeqLen, 0, 1 << 20);
    if (bound < maxQ) throw new MlaError('ERR_RANGE', `${OP}: \`qSeqLens\` has a request with ${maxQ} queries, above \`maxQSeqLen\` ${bound}`);
    maxQ = Math.max(maxQ, bound);
  }
  const rowsQ = Math.max(1, maxQ);
  if (ws && !ws.fits(geo.batch, geo.numHeads, rowsQ)) {
    throw new MlaError('ERR_RANGE', `${OP}: \`workspace\` (maxBatch ${ws.maxBatch}, ${ws.maxRows} rows) is too small for batch ${geo.batch} × ${geo.numHeads} heads × s_q ${rowsQ}`);
  }

  // What the plan depends on besides the index values: the sizes it was cut for (kept only in a
  // caller's workspace: a temporary one is gone after the call).
  const planKey: PlanKey | undefined = ws && [geo.batch, geo.tokens, geo.numHeads, geo.sQ ?? -1, rowsQ, geo.maxPages, geo.pageSize, geo.numPages, opts.cache.dtype === 'u8' ? 1 : 0, KERNEL_CODE[kernel]];
  if (planMode === 'reuse') ws!.checkPlan(OP, planKey!);
  else if (phases.runPlan) ws?.notePlan(undefined);  // until this launch has queued a new one

  return launchSplitKv(OP, opts, geo, ws, () => new DecodeWorkspace({ maxBatch: Math.max(1, geo.batch), maxHeads: geo.numHeads, maxQSeqLen: rowsQ }), (io) => {
    nativeOp(OP)(Object.assign(io, {
      blockTable: opts.blockTable.nativeRef(`${OP}: \`blockTable\``),
      seqLens: opts.seqLens.nativeRef(`${OP}: \`seqLens\``),
      qSeqLens: opts.qSeqLens?.nativeRef(`${OP}: \`qSeqLens\``),
      causal: geo.causal,
      uniformQSeqLen: geo.sQ ?? 0,
      maxQSeqLen: rowsQ,
      runPlan: phases.runPlan,
      runMain: phases.runMain,
      runCombine: phases.runCombine,
      pdl,
      kernel: KERNEL_CODE[kernel],
    }));
    if (phases.runPlan) ws?.notePlan(planKey);
  });
}

/** The native arguments decode and sparse read alike (csrc/binding/split_kv_args.h). */
export type SplitKvIo = NativeStreamArg & NativeDecodeWorkspaceArgs & { q: NativeTensorRef; cache: NativeTensorRef; out: NativeTensorRef; lse: NativeTensorRef; scale: number };

/**
 * The tail decode and sparse share once their arguments are checked: out and lse (made when
 * not given), a temporary workspace when none was given, the launch with the native arguments
 * both ops read alike (`io`); outputs made here are freed if the launch fails.
 */
export function launchSplitKv(
  op: string,
  opts: { q: DeviceTensor; cache: DeviceTensor; out?: DeviceTensor | undefined; lse?: DeviceTensor | undefined; stream?: Stream | undefined },
  geo: { tokens: number; numHeads: number; dtype: DType; scale: number },
  ws: DecodeWorkspace | undefined,
  makeWorkspace: () => DecodeWorkspace,
  launch: (io: SplitKvIo) => void,
): DecodeResult {
  const out = opts.out ?? DeviceTensor.empty([geo.tokens, geo.numHeads, DECODE_DIM_V], geo.dtype);
  let lse: DeviceTensor | undefined;
  let temp: DecodeWorkspace | undefined;
  try {
    lse = opts.lse ?? DeviceTensor.empty([geo.tokens, geo.numHeads], 'f32');
    if (geo.tokens === 0) return { out, lse };
    const w = (ws ?? (temp = makeWorkspace())).nativeArgs();
    // One literal of fixed shape, which the op's launch completes with Object.assign: an object
    // spread here cost V8 a new hidden class on every call (more than the native call itself).
    launch({
      q: opts.q.nativeRef(`${op}: \`q\``),
      cache: opts.cache.nativeRef(`${op}: \`cache\``),
      out: out.nativeRef(`${op}: \`out\``),
      lse: lse.nativeRef(`${op}: \`lse\``),
      workspace: w.workspace,
      wsMaxBatch: w.wsMaxBatch,
      wsPartialRows: w.wsPartialRows,
      wsMaxParts: w.wsMaxParts,
      scale: geo.scale,
      stream: nativeStream(op, opts.stream),
    });
    return { out, lse };
  } catch (err) {
    disposeUnlessGiven({ out, lse }, opts);
    throw err;
  } finally {
    // cudaFree waits for the device, so freeing the temporary right away is safe.
    temp?.dispose();
  }
}

/** Tile config a call with this geometry would use on the current device (for reports). */
export type DecodeConfig = NativeDecodeConfig;

export interface DecodeConfigOptions {
  /** As decode's `kernel` option. */
  kernel?: DecodeKernelChoice | undefined;
  /** The cache is the FP8 layout (which only the portable kernel reads). */
  fp8Cache?: boolean | undefined;
}

export function decodeConfig(numHeads: number, maxQSeqLen = 1, maxParts?: number, opts: DecodeConfigOptions = {}): DecodeConfig {
  const where = 'decodeConfig';
  const lim = nativeLimits().decode;
  const addon = native();
  const parts = maxParts ?? addon.deviceInfo(addon.currentDevice()).smCount;
  const fp8Cache = opts.fp8Cache ?? false;
  if (typeof fp8Cache !== 'boolean') throw new MlaError('ERR_ARGUMENT', `${where}: \`fp8Cache\` must be a boolean`);
  return nativeOp('decodeConfig')({
    numHeads: checkInt(where, 'numHeads', numHeads, 1, lim.maxHeads),
    maxQSeqLen: checkInt(where, 'maxQSeqLen', maxQSeqLen, 1, 1 << 20),
    maxParts: checkInt(where, 'maxParts', parts, 1, lim.maxParts),
    kernel: KERNEL_CODE[checkDecodeKernel(where, opts.kernel)],
    fp8Cache,
  });
}


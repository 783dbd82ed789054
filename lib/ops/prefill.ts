// Prefill in the non-absorbed MLA form (what vLLM / SGLang run for prompts): per-head keys and
// values are recomputed from the cached latent (K_nope = c·W_UKᵀ, V = c·W_UVᵀ), the shared
// rotary key is concatenated inside the attention kernel, and causal flash attention runs with
// 192-wide keys and 128-wide values. Long contexts go through in chunks of `chunkTokens`
// context tokens whose partial results are merged by log-sum-exp, so scratch memory stays
// bounded (see docs/prefill-kernel.md).
import type { DType } from '../dtype.js';
import { MlaError } from '../errors.js';
import { nativeStream } from '../runtime/stream.js';
import { nativeOp } from '../native.js';
import { disposeAll, disposeUnlessGiven } from '../runtime/dispose.js';
import { DeviceTensor } from '../runtime/tensor.js';
import type { StreamOption, TensorMeta } from '../runtime/tensor.js';
import { linear } from './linear.js';
import { checkInt, checkNumber, checkRowAlignment, checkSameDType, checkTensor } from './validate.js';
import { checkFp8Cache } from './fp8-cache.js';

/** DeepSeek MLA head sizes the kernels are built for. */
export const PREFILL_NOPE_DIM = 128;
export const PREFILL_ROPE_DIM = 64;
export const PREFILL_V_DIM = 128;
export const PREFILL_KV_LORA = 512;
export const PREFILL_CACHE_DIM = PREFILL_KV_LORA + PREFILL_ROPE_DIM; // 576
export const PREFILL_QK_DIM = PREFILL_NOPE_DIM + PREFILL_ROPE_DIM; // 192
export const PREFILL_MAX_HEADS = 128;
export const PREFILL_DEFAULT_CHUNK_TOKENS = 8192;

const HALF: readonly DType[] = ['bf16', 'f16'];
const I32_MAX = 2 ** 31 - 1;
const MAX_GRID_Z = 65535;

/**
 * Up-projection weights. `kvBProj` is the checkpoint's kv_b_proj [H·(128 + 128), 512] (per
 * head 128 K rows then 128 V rows) and needs one GEMM per chunk; `wUK` / `wUV` are its K rows
 * and V rows gathered per head ([H·128, 512] each, see preparePrefillWeights), two GEMMs.
 */
export type PrefillWeights<T extends TensorMeta = DeviceTensor> = { kvBProj: T } | { wUK: T; wUV: T };

/** Per-request counts: a device i32 [B] tensor (copied to the host), or host integers. */
export type PrefillIndexInput<T extends TensorMeta = DeviceTensor> = T | Int32Array | readonly number[];

export interface PrefillOptions extends StreamOption {
  /** [Tq, H, 192] bf16/f16: the new tokens' queries (nope, then the rotated rope part), requests back to back. */
  q: DeviceTensor;
  /**
   * [numPages, pageSize, 576] paged latent cache, q's dtype; the new tokens are already in it. Or
   * the FP8 layout u8 [numPages, pageSize, 656] with a bf16 q (dequantized by the gather).
   */
  cache: DeviceTensor;
  /** [B, maxPages] i32 device tensor. */
  blockTable: DeviceTensor;
  /** [B] keys per request: cached prefix + new tokens. */
  seqLens: PrefillIndexInput;
  /** [B] new tokens (queries) per request; Σ = Tq. Query j of request b sees keys 0 .. seqLens[b] − qSeqLens[b] + j. */
  qSeqLens: PrefillIndexInput;
  weights: PrefillWeights;
  /** Softmax scale (DeepSeek-V3: 192^-0.5 · mscale², 0.1352…). */
  scale: number;
  /** [Tq, H, 128] q's dtype; written in place when given. */
  out?: DeviceTensor | undefined;
  /** [Tq, H] f32, natural log; written in place when given. */
  lse?: DeviceTensor | undefined;
  /** Context tokens per chunk (all requests' keys counted together); default 8192. */
  chunkTokens?: number | undefined;
  /**
   * Host copy of `blockTable` ([B·maxPages] i32) that the caller guarantees equals the device
   * tensor: skips the blocking download (benchmarks, engines that keep the table on the host).
   */
  blockTableHost?: Int32Array | undefined;
  /**
   * Scratch kept between calls (gather, K/V and merge buffers, grown on demand) instead of
   * allocating and freeing them in every call. Use one workspace per stream: calls on the same
   * stream are ordered, calls on different streams would race on it.
   */
  workspace?: PrefillWorkspace | undefined;
}

/** Reusable device scratch for prefill (see PrefillOptions.workspace). */
export class PrefillWorkspace {
  #buffers = new Map<string, DeviceTensor>();

  /** A contiguous view of `shape` over buffer `name`, reallocated only when too small. */
  buffer(name: string, shape: readonly number[], dtype: DType): DeviceTensor {
    const n = shape.reduce((a, b) => a * b, 1);
    let b = this.#buffers.get(name);
    if (!b || b.disposed || b.dtype !== dtype || b.numel < n) {
      b?.dispose();
      this.#buffers.delete(name);
      b = DeviceTensor.empty([Math.max(1, n)], dtype);
      this.#buffers.set(name, b);
    }
    return b.slice(0, 0, n).reshape(shape);
  }

  /** Device bytes held. */
  get bytes(): number {
    let total = 0;
    for (const b of this.#buffers.values()) total += b.disposed ? 0 : b.byteLength;
    return total;
  }

  dispose(): void {
    for (const b of this.#buffers.values()) b.dispose();
    this.#buffers.clear();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}

export interface PrefillResult {
  out: DeviceTensor;
  lse: DeviceTensor;
}

/** prefill's tensors as metadata: what validatePrefillArgs checks (plain objects in tests). */
export interface PrefillArgsMeta {
  q: TensorMeta;
  cache: TensorMeta;
  blockTable: TensorMeta;
  seqLens: PrefillIndexInput<TensorMeta>;
  qSeqLens: PrefillIndexInput<TensorMeta>;
  weights: PrefillWeights<TensorMeta>;
  scale: number;
  out?: TensorMeta | undefined;
  lse?: TensorMeta | undefined;
  chunkTokens?: number | undefined;
  blockTableHost?: Int32Array | undefined;
}

export interface PrefillDims {
  batch: number;
  heads: number;
  /** Σ qSeqLens (q rows). */
  tokens: number;
  numPages: number;
  pageSize: number;
  maxPages: number;
  dtype: DType;
  fused: boolean;
  chunkTokens: number;
  scale: number;
}

function isTensorMeta(v: unknown): v is TensorMeta {
  return typeof v === 'object' && v !== null && Array.isArray((v as TensorMeta).shape) && !ArrayBuffer.isView(v);
}

function checkIndexInput(op: string, name: string, v: unknown, batch: number): void {
  if (isTensorMeta(v)) {
    checkTensor(op, name, v, { dtype: 'i32', shape: [batch] });
    return;
  }
  if (!(v instanceof Int32Array) && !Array.isArray(v)) {
    throw new MlaError('ERR_ARGUMENT', `${op}: \`${name}\` must be an i32 DeviceTensor, an Int32Array or an array of integers`);
  }
  const arr = v as ArrayLike<unknown>;
  if (arr.length !== batch) throw new MlaError('ERR_SHAPE', `${op}: \`${name}\` must have ${batch} entries (one per request), got ${arr.length}`);
}

/**
 * Checks every tensor argument of prefill (metadata only, no GPU needed) and returns the
 * problem sizes. Index values (block table, lengths) are checked by checkPrefillIndices.
 */
export function validatePrefillArgs(args: PrefillArgsMeta, op = 'prefill'): PrefillDims {
  if (typeof args !== 'object' || args === null) throw new MlaError('ERR_ARGUMENT', `${op}: options must be an object`);
  const q = checkTensor(op, 'q', args.q, { dtype: HALF, shape: [null, null, PREFILL_QK_DIM], innerContiguous: true });
  const [tokens, heads] = q.shape as [number, number, number];
  if (heads < 1 || heads > PREFILL_MAX_HEADS) {
    throw new MlaError('ERR_SHAPE', `${op}: \`q\` must have 1 .. ${PREFILL_MAX_HEADS} heads (dim 1), got ${heads}`);
  }
  checkRowAlignment(op, 'q', q, 8, '16-byte cp.async rows', { offset: true });
  let numPages: number, pageSize: number;
  if (checkTensor(op, 'cache', args.cache).dtype === 'u8') {
    // The FP8 layout (656-byte rows, lib/ops/fp8-cache.ts): the gather expands it to bf16.
    if (q.dtype !== 'bf16') throw new MlaError('ERR_DTYPE', `${op}: an FP8 \`cache\` (u8, 656-byte rows) is read with a bf16 \`q\`, got ${q.dtype}`);
    ({ numPages, pageSize } = checkFp8Cache(op, 'cache', args.cache));
  } else {
    const cache = checkTensor(op, 'cache', args.cache, { shape: [null, null, PREFILL_CACHE_DIM], innerContiguous: true });
    checkSameDType(op, 'cache', cache, 'q', q.dtype);
    checkRowAlignment(op, 'cache', cache, 8, '16-byte cp.async rows', { offset: true });
    [numPages, pageSize] = cache.shape as [number, number, number];
  }
  if (pageSize < 1) throw new MlaError('ERR_SHAPE', `${op}: \`cache\` page size (dim 1) must be >= 1`);
  const bt = checkTensor(op, 'blockTable', args.blockTable, { dtype: 'i32', shape: [null, null] });
  const [batch, maxPages] = bt.shape as [number, number];
  if (args.blockTableHost !== undefined && (!(args.blockTableHost instanceof Int32Array) || args.blockTableHost.length !== batch * maxPages)) {
    throw new MlaError('ERR_SHAPE', `${op}: \`blockTableHost\` must be an Int32Array of ${batch}·${maxPages} entries (blockTable's shape)`);
  }
  checkIndexInput(op, 'seqLens', args.seqLens, batch);
  checkIndexInput(op, 'qSeqLens', args.qSeqLens, batch);

  const w = args.weights as Partial<Record<'kvBProj' | 'wUK' | 'wUV', unknown>> | null;
  if (typeof w !== 'object' || w === null) throw new MlaError('ERR_ARGUMENT', `${op}: \`weights\` must be { kvBProj } or { wUK, wUV }`);
  let fused: boolean;
  if (w.kvBProj !== undefined) {
    if (w.wUK !== undefined || w.wUV !== undefined) {
      throw new MlaError('ERR_ARGUMENT', `${op}: \`weights\` must have either kvBProj or wUK + wUV, not both`);
    }
    const k = checkTensor(op, 'weights.kvBProj', w.kvBProj, { shape: [heads * (PREFILL_NOPE_DIM + PREFILL_V_DIM), PREFILL_KV_LORA], innerContiguous: true });
    checkSameDType(op, 'weights.kvBProj', k, 'q', q.dtype);
    fused = true;
  } else {
    const uk = checkTensor(op, 'weights.wUK', w.wUK, { shape: [heads * PREFILL_NOPE_DIM, PREFILL_KV_LORA], innerContiguous: true });
    checkSameDType(op, 'weights.wUK', uk, 'q', q.dtype);
    const uv = checkTensor(op, 'weights.wUV', w.wUV, { shape: [heads * PREFILL_V_DIM, PREFILL_KV_LORA], innerContiguous: true });
    checkSameDType(op, 'weights.wUV', uv, 'q', q.dtype);
    fused = false;
  }
  const scale = checkNumber(op, 'scale', args.scale, { positive: true });
  if (args.out !== undefined) {
    const o = checkTensor(op, 'out', args.out, { shape: [tokens, heads, PREFILL_V_DIM], innerContiguous: true });
    checkSameDType(op, 'out', o, 'q', q.dtype);
    for (let d = 0; d < 2; d++) {
      if (o.shape[d]! > 1 && o.strides[d]! % 2 !== 0) throw new MlaError('ERR_SHAPE', `${op}: \`out\` strides must be even (pairs of elements are stored at once)`);
    }
    const offset = (o as { offset?: unknown }).offset;
    if (typeof offset === 'number' && offset % 2 !== 0) throw new MlaError('ERR_SHAPE', `${op}: \`out\` must start at an even element offset`);
  }
  if (args.lse !== undefined) checkTensor(op, 'lse', args.lse, { dtype: 'f32', shape: [tokens, heads] });
  const chunkTokens = args.chunkTokens === undefined ? PREFILL_DEFAULT_CHUNK_TOKENS : checkInt(op, 'chunkTokens', args.chunkTokens, 1, 1 << 24);
  return { batch, heads, tokens, numPages, pageSize, maxPages, dtype: q.dtype, fused, chunkTokens, scale };
}

/** One chunk: the context-stream rows [g0, g1) and the requests whose keys it holds. */
export interface PrefillChunk {
  g0: number;
  g1: number;
  /** Requests [reqBegin, reqEnd) have keys in the chunk. */
  reqBegin: number;
  reqEnd: number;
  /** reqBegin started in an earlier chunk: its result goes to scratch and is merged. */
  split: boolean;
  /** Largest qLen among the requests written straight to `out` (reqBegin + split .. reqEnd). */
  maxQLen: number;
}

export interface PrefillPlan {
  /** [B, 4] rows { qStart, qLen, seqLen (0 when qLen = 0), kvStart }: see csrc/kernels/prefill.h. */
  plan: Int32Array;
  chunks: PrefillChunk[];
  /** Context rows of all requests with queries. */
  totalKv: number;
  /** Largest qLen of a request that spans several chunks (scratch rows). */
  maxSplitQLen: number;
  /** Largest chunk (rows of the gather / up-projection buffers). */
  maxChunkRows: number;
}

/**
 * Checks the index values (host copies) and builds the launch plan. ERR_RANGE names the
 * argument: qSeqLens[b] > seqLens[b], a sequence longer than the block table holds, a page
 * index outside the cache; ERR_SHAPE if Σ qSeqLens ≠ q rows.
 */
export function checkPrefillIndices(
  dims: PrefillDims,
  host: { blockTable: Int32Array; seqLens: ArrayLike<number>; qSeqLens: ArrayLike<number> },
  op = 'prefill',
): PrefillPlan {
  const { batch: B, pageSize, maxPages, numPages } = dims;
  if (host.blockTable.length !== B * maxPages) throw new MlaError('ERR_SHAPE', `${op}: \`blockTable\` must hold ${B}·${maxPages} entries`);
  const plan = new Int32Array(B * 4);
  let qStart = 0;
  let kv = 0;
  for (let b = 0; b < B; b++) {
    const s = host.seqLens[b];
    const n = host.qSeqLens[b];
    if (typeof s !== 'number' || !Number.isInteger(s) || s < 0 || s > I32_MAX) {
      throw new MlaError('ERR_RANGE', `${op}: \`seqLens\`[${b}] = ${String(s)} must be a non-negative integer`);
    }
    if (typeof n !== 'number' || !Number.isInteger(n) || n < 0) {
      throw new MlaError('ERR_RANGE', `${op}: \`qSeqLens\`[${b}] = ${String(n)} must be a non-negative integer`);
    }
    if (n > s) throw new MlaError('ERR_RANGE', `${op}: \`qSeqLens\`[${b}] = ${n} exceeds \`seqLens\`[${b}] = ${s} (the new tokens must already be in the cache)`);
    if (s > maxPages * pageSize) {
      throw new MlaError('ERR_RANGE', `${op}: \`seqLens\`[${b}] = ${s} exceeds the block table's capacity ${maxPages}·${pageSize} = ${maxPages * pageSize}`);
    }
    const eff = n > 0 ? s : 0; // keys nobody queries are never gathered
    for (let p = 0; p < Math.ceil(eff / pageSize); p++) {
      const page = host.blockTable[b * maxPages + p]!;
      if (page < 0 || page >= numPages) {
        throw new MlaError('ERR_RANGE', `${op}: \`blockTable\`[${b}, ${p}] = ${page} is outside the cache's ${numPages} pages`);
      }
    }
    if (kv + eff > I32_MAX) throw new MlaError('ERR_RANGE', `${op}: \`seqLens\` sum to more than 2^31 − 1 context tokens`);
    plan.set([qStart, n, eff, kv], b * 4);
    qStart += n;
    kv += eff;
  }
  if (qStart !== dims.tokens) {
    throw new MlaError('ERR_SHAPE', `${op}: \`q\` has ${dims.tokens} rows but \`qSeqLens\` sum to ${qStart}`);
  }

  const chunks: PrefillChunk[] = [];
  let maxSplitQLen = 0;
  let maxChunkRows = 0;
  let first = 0; // first request that may still have keys at g0
  for (let g0 = 0; g0 < kv; g0 += dims.chunkTokens) {
    const g1 = Math.min(kv, g0 + dims.chunkTokens);
    while (first < B && plan[first * 4 + 3]! + plan[first * 4 + 2]! <= g0) first++;
    let end = first;
    while (end < B && plan[end * 4 + 3]! < g1) end++;
    const split = plan[first * 4 + 3]! < g0;
    if (split) maxSplitQLen = Math.max(maxSplitQLen, plan[first * 4 + 1]!);
    let maxQLen = 0;
    for (let b = first + (split ? 1 : 0); b < end; b++) maxQLen = Math.max(maxQLen, plan[b * 4 + 1]!);
    chunks.push({ g0, g1, reqBegin: first, reqEnd: end, split, maxQLen });
    maxChunkRows = Math.max(maxChunkRows, g1 - g0);
  }
  return { plan, chunks, totalKv: kv, maxSplitQLen, maxChunkRows };
}

/** Host values of an index argument: blocking, after the work queued on `stream`. */
function hostIndex(v: PrefillIndexInput, opts: StreamOption): ArrayLike<number> {
  return v instanceof DeviceTensor ? (v.toHostSync(opts) as Int32Array) : v;
}

/**
 * Causal MLA prefill over a batch of requests with cached prefixes (chunked prefill / prefix
 * caching). Returns out [Tq, H, 128] (q's dtype) and lse [Tq, H] f32 (natural log).
 *
 * Index tensors are copied to the host (blocking) to validate them and size the chunks; the
 * call enqueues its kernels on `stream`, then frees its per-call buffers (the plan, and the
 * scratch unless `workspace` holds it); cudaFree waits for the device, so that is safe.
 */
export function prefill(opts: PrefillOptions): PrefillResult {
  const op = 'prefill';
  const dims = validatePrefillArgs(opts, op);
  if (opts.workspace !== undefined && !(opts.workspace instanceof PrefillWorkspace)) {
    throw new MlaError('ERR_ARGUMENT', `${op}: \`workspace\` must be a PrefillWorkspace`);
  }
  const { heads: H, tokens: Tq, dtype, fused } = dims;
  const host = {
    blockTable: opts.blockTableHost ?? (opts.blockTable.toHostSync(opts) as Int32Array),
    seqLens: hostIndex(opts.seqLens, opts),
    qSeqLens: hostIndex(opts.qSeqLens, opts),
  };
  const pl = checkPrefillIndices(dims, host, op);
  const out = opts.out ?? DeviceTensor.empty([Tq, H, PREFILL_V_DIM], dtype);
  let lse: DeviceTensor | undefined;
  const temps: (DeviceTensor | undefined)[] = [];
  try {
    lse = opts.lse ?? DeviceTensor.empty([Tq, H], 'f32');
    if (Tq === 0 || pl.chunks.length === 0) return { out, lse };
    const stream = opts.stream;
    const streamHandle = nativeStream(op, stream);
    const plan = DeviceTensor.fromArray(pl.plan, [dims.batch, 4], 'i32');
    temps.push(plan);
    const rowsMax = pl.maxChunkRows;
    // Scratch from the caller's workspace (kept for the next call) or allocated for this call.
    const ws = opts.workspace;
    const alloc = (name: string, shape: number[], dt: DType): DeviceTensor => {
      if (ws) return ws.buffer(name, shape, dt);
      const x = DeviceTensor.empty(shape, dt);
      temps.push(x);
      return x;
    };
    const gathered = alloc('gathered', [rowsMax, PREFILL_CACHE_DIM], dtype);
    const up = fused
      ? [alloc('kv', [rowsMax, H * (PREFILL_NOPE_DIM + PREFILL_V_DIM)], dtype)]
      : [alloc('k', [rowsMax, H * PREFILL_NOPE_DIM], dtype), alloc('v', [rowsMax, H * PREFILL_V_DIM], dtype)];
    const scratch = pl.maxSplitQLen > 0 ? alloc('part', [pl.maxSplitQLen, H, PREFILL_V_DIM], dtype) : undefined;
    const scratchLse = pl.maxSplitQLen > 0 ? alloc('partLse', [pl.maxSplitQLen, H], 'f32') : undefined;

    const gatherOp = nativeOp('prefillGather');
    const attnOp = nativeOp('prefillAttention');
    const mergeOp = nativeOp('mergeAttnStates');
    const cacheRef = opts.cache.nativeRef('prefill: `cache`');
    const btRef = opts.blockTable.nativeRef('prefill: `blockTable`');
    const planRef = plan.nativeRef('prefill: plan');
    const qRef = opts.q.nativeRef('prefill: `q`');
    const w = opts.weights;
    const outRef = out.nativeRef('prefill: `out`');
    const lseRef = lse.nativeRef('prefill: `lse`');

    for (const c of pl.chunks) {
      const rows = c.g1 - c.g0;
      const buf = gathered.slice(0, 0, rows);
      gatherOp({ cache: cacheRef, blockTable: btRef, plan: planRef, dst: buf.nativeRef(), g0: c.g0, g1: c.g1, stream: streamHandle });
      const latent = buf.slice(1, 0, PREFILL_KV_LORA);
      const kRope = buf.slice(1, PREFILL_KV_LORA, PREFILL_CACHE_DIM);
      let kNope: DeviceTensor;
      let v: DeviceTensor;
      if ('kvBProj' in w) {
        const y = up[0]!.slice(0, 0, rows);
        linear(latent, w.kvBProj, { out: y, stream });
        const y3 = y.reshape([rows, H, PREFILL_NOPE_DIM + PREFILL_V_DIM]);
        kNope = y3.slice(2, 0, PREFILL_NOPE_DIM);
        v = y3.slice(2, PREFILL_NOPE_DIM, PREFILL_NOPE_DIM + PREFILL_V_DIM);
      } else {
        const yk = up[0]!.slice(0, 0, rows);
        const yv = up[1]!.slice(0, 0, rows);
        linear(latent, w.wUK, { out: yk, stream });
        linear(latent, w.wUV, { out: yv, stream });
        kNope = yk.reshape([rows, H, PREFILL_NOPE_DIM]);
        v = yv.reshape([rows, H, PREFILL_V_DIM]);
      }
      const common = {
        q: qRef, kNope: kNope.nativeRef(), kRope: kRope.nativeRef(), v: v.nativeRef(), plan: planRef,
        g0: c.g0, g1: c.g1, scale: dims.scale, stream: streamHandle,
      };
      if (c.split) {
        // The first request continues from an earlier chunk: partial result to scratch, then
        // folded into out/lse by LSE. Only reqBegin can have started before g0.
        const b = c.reqBegin;
        const qStart = pl.plan[b * 4]!;
        const qLen = pl.plan[b * 4 + 1]!;
        const part = scratch!.slice(0, 0, qLen);
        const partLse = scratchLse!.slice(0, 0, qLen);
        attnOp(Object.assign({ out: part.nativeRef(), lse: partLse.nativeRef(), reqBegin: b, reqCount: 1, outRowBase: qStart, maxQLen: qLen }, common));
        mergeOp({
          out: out.slice(0, qStart, qStart + qLen).nativeRef(), lse: lse.slice(0, qStart, qStart + qLen).nativeRef(),
          part: part.nativeRef(), partLse: partLse.nativeRef(), stream: streamHandle,
        });
      }
      const rb = c.reqBegin + (c.split ? 1 : 0);
      // Requests are grid z (at most 65535 per launch).
      for (let r0 = rb; r0 < c.reqEnd && c.maxQLen > 0; r0 += MAX_GRID_Z) {
        const r1 = Math.min(c.reqEnd, r0 + MAX_GRID_Z);
        attnOp(Object.assign({ out: outRef, lse: lseRef, reqBegin: r0, reqCount: r1 - r0, outRowBase: 0, maxQLen: c.maxQLen }, common));
      }
    }
    return { out, lse };
  } catch (err) {
    disposeUnlessGiven({ out, lse }, opts);
    throw err;
  } finally {
    disposeAll(temps);
  }
}

/**
 * kv_b_proj [H·(128 + 128), 512] -> { wUK: [H·128, 512], wUV: [H·128, 512] } (per head the
 * first 128 rows are W_UK, the next 128 W_UV). A one-time strided copy; prefill also accepts
 * kv_b_proj itself ({ kvBProj }), which needs one GEMM per chunk instead of two.
 */
export function preparePrefillWeights(kvBProj: DeviceTensor, dims: { numHeads: number }, opts: StreamOption = {}): { wUK: DeviceTensor; wUV: DeviceTensor } {
  const op = 'preparePrefillWeights';
  const H = checkInt(op, 'dims.numHeads', dims?.numHeads, 1, PREFILL_MAX_HEADS);
  checkTensor(op, 'kvBProj', kvBProj, { dtype: HALF, shape: [H * (PREFILL_NOPE_DIM + PREFILL_V_DIM), PREFILL_KV_LORA], contiguous: true });
  const w3 = kvBProj.reshape([H, PREFILL_NOPE_DIM + PREFILL_V_DIM, PREFILL_KV_LORA]);
  const wUK = DeviceTensor.empty([H * PREFILL_NOPE_DIM, PREFILL_KV_LORA], kvBProj.dtype);
  let wUV: DeviceTensor | undefined;
  try {
    wUV = DeviceTensor.empty([H * PREFILL_V_DIM, PREFILL_KV_LORA], kvBProj.dtype);
    wUK.reshape([H, PREFILL_NOPE_DIM, PREFILL_KV_LORA]).copyFrom(w3.slice(1, 0, PREFILL_NOPE_DIM), opts);
    wUV.reshape([H, PREFILL_V_DIM, PREFILL_KV_LORA]).copyFrom(w3.slice(1, PREFILL_NOPE_DIM, PREFILL_NOPE_DIM + PREFILL_V_DIM), opts);
    return { wUK, wUV };
  } catch (err) {
    disposeAll([wUK, wUV]);
    throw err;
  }
}

// ---- the attention kernel alone ---------------------------------------------------------------

export interface PrefillAttentionOptions extends StreamOption {
  /** [Tq, H, 192] bf16/f16, requests back to back. */
  q: DeviceTensor;
  /** [Tk, H, 128] per-head nope keys, requests back to back (rows of each request: positions 0 .. kvSeqLens[b] − 1). */
  kNope: DeviceTensor;
  /** [Tk, 64] rotary key shared by all heads. */
  kRope: DeviceTensor;
  /** [Tk, H, 128] */
  v: DeviceTensor;
  qSeqLens: PrefillIndexInput;
  kvSeqLens: PrefillIndexInput;
  scale: number;
  out?: DeviceTensor | undefined;
  lse?: DeviceTensor | undefined;
}

export interface PrefillAttentionMeta {
  q: TensorMeta;
  kNope: TensorMeta;
  kRope: TensorMeta;
  v: TensorMeta;
  qSeqLens: PrefillIndexInput<TensorMeta>;
  kvSeqLens: PrefillIndexInput<TensorMeta>;
  scale: number;
  out?: TensorMeta | undefined;
  lse?: TensorMeta | undefined;
}

/** Checks prefillAttention's tensors; returns { batch, heads, tokens (q rows), keys (Tk) }. */
export function validatePrefillAttentionArgs(args: PrefillAttentionMeta, op = 'prefillAttention'): { batch: number; heads: number; tokens: number; keys: number } {
  if (typeof args !== 'object' || args === null) throw new MlaError('ERR_ARGUMENT', `${op}: options must be an object`);
  const q = checkTensor(op, 'q', args.q, { dtype: HALF, shape: [null, null, PREFILL_QK_DIM], innerContiguous: true });
  const [tokens, heads] = q.shape as [number, number, number];
  if (heads < 1 || heads > PREFILL_MAX_HEADS) throw new MlaError('ERR_SHAPE', `${op}: \`q\` must have 1 .. ${PREFILL_MAX_HEADS} heads (dim 1), got ${heads}`);
  checkRowAlignment(op, 'q', q, 8, '16-byte cp.async rows', { offset: true });
  const kn = checkTensor(op, 'kNope', args.kNope, { shape: [null, heads, PREFILL_NOPE_DIM], innerContiguous: true });
  checkSameDType(op, 'kNope', kn, 'q', q.dtype);
  checkRowAlignment(op, 'kNope', kn, 8, '16-byte cp.async rows', { offset: true });
  const keys = kn.shape[0]!;
  const kr = checkTensor(op, 'kRope', args.kRope, { shape: [keys, PREFILL_ROPE_DIM], innerContiguous: true });
  checkSameDType(op, 'kRope', kr, 'q', q.dtype);
  checkRowAlignment(op, 'kRope', kr, 8, '16-byte cp.async rows', { offset: true });
  const v = checkTensor(op, 'v', args.v, { shape: [keys, heads, PREFILL_V_DIM], innerContiguous: true });
  checkSameDType(op, 'v', v, 'q', q.dtype);
  checkRowAlignment(op, 'v', v, 8, '16-byte cp.async rows', { offset: true });
  const batch = isTensorMeta(args.qSeqLens) ? args.qSeqLens.shape[0] ?? 0 : (args.qSeqLens as ArrayLike<number>).length;
  checkIndexInput(op, 'qSeqLens', args.qSeqLens, batch);
  checkIndexInput(op, 'kvSeqLens', args.kvSeqLens, batch);
  checkNumber(op, 'scale', args.scale, { positive: true });
  if (args.out !== undefined) {
    const o = checkTensor(op, 'out', args.out, { shape: [tokens, heads, PREFILL_V_DIM], innerContiguous: true });
    checkSameDType(op, 'out', o, 'q', q.dtype);
  }
  if (args.lse !== undefined) checkTensor(op, 'lse', args.lse, { dtype: 'f32', shape: [tokens, heads] });
  return { batch, heads, tokens, keys };
}

/**
 * The causal attention kernel alone on already up-projected keys/values (packed varlen, keys of
 * each request back to back, queries aligned to the end of each request's keys). One launch,
 * no chunking: scratch is the caller's. Same out / lse conventions as prefill.
 */
export function prefillAttention(opts: PrefillAttentionOptions): PrefillResult {
  const op = 'prefillAttention';
  const { batch: B, heads: H, tokens: Tq, keys: Tk } = validatePrefillAttentionArgs(opts, op);
  const qLens = hostIndex(opts.qSeqLens, opts);
  const kLens = hostIndex(opts.kvSeqLens, opts);
  const plan = new Int32Array(B * 4);
  let qs = 0;
  let ks = 0;
  let maxQ = 0;
  for (let b = 0; b < B; b++) {
    const n = qLens[b]!;
    const s = kLens[b]!;
    if (!Number.isInteger(s) || s < 0) throw new MlaError('ERR_RANGE', `${op}: \`kvSeqLens\`[${b}] = ${s} must be a non-negative integer`);
    if (!Number.isInteger(n) || n < 0 || n > s) throw new MlaError('ERR_RANGE', `${op}: \`qSeqLens\`[${b}] = ${n} must be an integer in [0, kvSeqLens[${b}] = ${s}]`);
    plan.set([qs, n, s, ks], b * 4);
    qs += n;
    ks += s;
    maxQ = Math.max(maxQ, n);
  }
  if (qs !== Tq) throw new MlaError('ERR_SHAPE', `${op}: \`q\` has ${Tq} rows but \`qSeqLens\` sum to ${qs}`);
  if (ks !== Tk) throw new MlaError('ERR_SHAPE', `${op}: \`kNope\` has ${Tk} rows but \`kvSeqLens\` sum to ${ks}`);
  if (ks > I32_MAX) throw new MlaError('ERR_RANGE', `${op}: \`kvSeqLens\` sum to more than 2^31 − 1`);
  const out = opts.out ?? DeviceTensor.empty([Tq, H, PREFILL_V_DIM], opts.q.dtype);
  let lse: DeviceTensor | undefined;
  let planT: DeviceTensor | undefined;
  try {
    lse = opts.lse ?? DeviceTensor.empty([Tq, H], 'f32');
    if (Tq === 0 || B === 0) return { out, lse };
    planT = DeviceTensor.fromArray(plan, [B, 4], 'i32');
    const args = {
      q: opts.q.nativeRef('prefillAttention: `q`'), kNope: opts.kNope.nativeRef('prefillAttention: `kNope`'),
      kRope: opts.kRope.nativeRef('prefillAttention: `kRope`'), v: opts.v.nativeRef('prefillAttention: `v`'),
      out: out.nativeRef('prefillAttention: `out`'), lse: lse.nativeRef('prefillAttention: `lse`'), plan: planT.nativeRef(),
      g0: 0, g1: Tk, outRowBase: 0, maxQLen: maxQ, scale: opts.scale, stream: nativeStream('prefillAttention', opts.stream),
    };
    for (let r0 = 0; r0 < B && maxQ > 0; r0 += MAX_GRID_Z) nativeOp('prefillAttention')(Object.assign({ reqBegin: r0, reqCount: Math.min(B, r0 + MAX_GRID_Z) - r0 }, args));
    return { out, lse };
  } catch (err) {
    disposeUnlessGiven({ out, lse }, opts);
    throw err;
  } finally {
    planT?.dispose();
  }
}

// ---- LSE merge -------------------------------------------------------------------------------

export interface MergeAttnStatesOptions extends StreamOption {
  /** [R, H, D] bf16/f16 running result, updated in place. */
  out: DeviceTensor;
  /** [R, H] f32 natural-log LSE of `out`, updated in place (±inf = no keys yet). */
  lse: DeviceTensor;
  /** [R, H, D] partial result over other keys, out's dtype. */
  part: DeviceTensor;
  /** [R, H] f32 natural-log LSE of `part` (±inf = no keys: decode's and sparse's +inf merge as empty). */
  partLse: DeviceTensor;
}

export interface MergeAttnStatesMeta {
  out: TensorMeta;
  lse: TensorMeta;
  part: TensorMeta;
  partLse: TensorMeta;
}

export function validateMergeAttnStatesArgs(args: MergeAttnStatesMeta, op = 'mergeAttnStates'): void {
  if (typeof args !== 'object' || args === null) throw new MlaError('ERR_ARGUMENT', `${op}: options must be an object`);
  const o = checkTensor(op, 'out', args.out, { dtype: HALF, shape: [null, null, null], innerContiguous: true });
  const [R, H, D] = o.shape as [number, number, number];
  const p = checkTensor(op, 'part', args.part, { shape: [R, H, D], innerContiguous: true });
  checkSameDType(op, 'part', p, 'out', o.dtype);
  checkTensor(op, 'lse', args.lse, { dtype: 'f32', shape: [R, H] });
  checkTensor(op, 'partLse', args.partLse, { dtype: 'f32', shape: [R, H] });
}

/**
 * Folds a partial attention result into a running one: with m = max(lse, partLse),
 * out = (out·e^{lse−m} + part·e^{partLse−m}) / (e^{lse−m} + e^{partLse−m}), lse = m + ln(Σ).
 * An LSE of −inf or +inf marks a side with no keys (prefill writes −inf, decode and sparse
 * +inf with a zero output): it has weight 0 and its output is not read, so partials of any op
 * merge correctly. Both sides empty: out = 0, lse = −inf. A NaN LSE propagates to out and lse.
 */
export function mergeAttnStates(opts: MergeAttnStatesOptions): void {
  validateMergeAttnStatesArgs(opts);
  nativeOp('mergeAttnStates')({
    out: opts.out.nativeRef('mergeAttnStates: `out`'), lse: opts.lse.nativeRef('mergeAttnStates: `lse`'),
    part: opts.part.nativeRef('mergeAttnStates: `part`'), partLse: opts.partLse.nativeRef('mergeAttnStates: `partLse`'),
    stream: nativeStream('mergeAttnStates', opts.stream),
  });
}

// Paged latent KV cache for MLA: every token of every layer is one row of
// kvLora + rope values (normalised latent, rotated rope key), shared by all heads.
// Pages of `pageSize` rows are handed out from a free list; a page index is the
// same in every layer, so one block table serves the whole model. Forked
// sequences share their full prefix pages (refcounted); a partially filled page
// is copied, so two sequences never write each other's slots.
//
// Every mutating call validates and counts pages first and throws before
// changing anything: a failed call leaves the cache exactly as it was.

import type { MlaConfig } from './config.js';
import type { DType } from './dtype.js';
import { allocHost, checkObject } from './check.js';
import { MlaError } from './errors.js';
import { FP8_CACHE_KV_LORA, FP8_CACHE_ROPE, FP8_CACHE_ROW_BYTES, type KvCacheFormat } from './ops/fp8-cache.js';
import { DeviceTensor } from './runtime/tensor.js';
import type { StreamOption } from './runtime/tensor.js';

export type SequenceId = number | string;
export type CacheBackend = 'reference' | 'gpu';
export type CacheDType = 'bf16' | 'f16';
export type { KvCacheFormat };

export interface LatentCacheOptions {
  config: Pick<MlaConfig, 'kvLoraRank' | 'qkRopeHeadDim'>;
  numLayers: number;
  /** Physical pages (shared by all layers). */
  numPages: number;
  /** Tokens per page; default 64 (FlashMLA's block size). */
  pageSize?: number;
  /** 'reference': a host Float64Array per layer; 'gpu': a DeviceTensor per layer. */
  backend: CacheBackend;
  /** Element type of the GPU storage; default bf16. */
  dtype?: CacheDType;
  /**
   * 'model' (default): rows of kvLora + rope values in `dtype`. 'fp8_e4m3': DeepSeek-V3.2's
   * 656-byte rows (e4m3 latent, 4 power-of-two scales, bf16 rope; FlashMLA's V32_FP8Sparse,
   * docs/fp8-cache.md), for kvLora 512 + rope 64 and dtype bf16. The GPU backend stores u8
   * [numPages, pageSize, 656] per layer; the reference backend stores the float64 values the
   * FP8 rows stand for (every written row quantized and dequantized).
   */
  kvCacheFormat?: KvCacheFormat;
}

/** One request of a step: `numTokens` new tokens of sequence `seqId`. */
export interface BatchEntry {
  seqId: SequenceId;
  numTokens: number;
}

export interface StepEntry extends BatchEntry {
  /** Tokens cached before this step (the prefix the new tokens attend to). */
  contextLen: number;
  /** Tokens after this step. */
  seqLen: number;
  /** Index of the entry's first token in the step's token order. */
  tokenStart: number;
}

/** What attention needs to run one step; host arrays, in batch order. */
export interface CacheStep {
  entries: readonly StepEntry[];
  numTokens: number;
  /** [T] RoPE position of every token. */
  positions: Int32Array;
  /** [T] cache row (page·pageSize + offset) of every new token. */
  slotMapping: Int32Array;
  /** [B] tokens per sequence after the step (keys visible to its last token). */
  seqLens: Int32Array;
  /** [B] tokens per sequence before the step. */
  contextLens: Int32Array;
  /** [B] new tokens per sequence. */
  qSeqLens: Int32Array;
  /** [B + 1] prefix sums of qSeqLens. */
  cuSeqLens: Int32Array;
  /** [B, maxPages] physical page of each logical page; unused entries hold 0. */
  blockTable: Int32Array;
  maxPages: number;
}

/** The step's index arrays as device i32 tensors (GPU backend). */
export interface DeviceCacheStep {
  positions: DeviceTensor;
  slotMapping: DeviceTensor;
  seqLens: DeviceTensor;
  contextLens: DeviceTensor;
  qSeqLens: DeviceTensor;
  cuSeqLens: DeviceTensor;
  blockTable: DeviceTensor;
}

/**
 * Where a step's index arrays sit in one packed i32 buffer, in DeviceCacheStep's order, each part
 * 16-byte aligned as its own allocation would be: a step's indices travel to the device in one
 * copy (each synchronous upload waits for the kernels still reading the previous step's).
 * `cols` is the block table's width (at least the step's maxPages; extra columns are 0).
 */
export interface StepIndexLayout {
  tokens: number;
  batch: number;
  cols: number;
  at: Readonly<Record<keyof DeviceCacheStep, number>>;
  size: Readonly<Record<keyof DeviceCacheStep, number>>;
  total: number;
}

export function stepIndexLayout(tokens: number, batch: number, cols: number): StepIndexLayout {
  const size: Record<keyof DeviceCacheStep, number> = {
    positions: tokens, slotMapping: tokens, seqLens: batch, contextLens: batch, qSeqLens: batch, cuSeqLens: batch + 1, blockTable: batch * cols,
  };
  const at = {} as Record<keyof DeviceCacheStep, number>;
  let total = 0;
  for (const k of Object.keys(size) as (keyof DeviceCacheStep)[]) {
    at[k] = total;
    total += Math.ceil(size[k] / 4) * 4;
  }
  return { tokens, batch, cols, at, size, total };
}

/** Writes `step`'s indices into `host` (at least layout.total long) at the layout's places. */
export function packStepIndices(step: CacheStep, layout: StepIndexLayout, host: Int32Array): void {
  const { at, cols } = layout;
  host.set(step.positions, at.positions);
  host.set(step.slotMapping, at.slotMapping);
  host.set(step.seqLens, at.seqLens);
  host.set(step.contextLens, at.contextLens);
  host.set(step.qSeqLens, at.qSeqLens);
  host.set(step.cuSeqLens, at.cuSeqLens);
  if (cols === step.maxPages) host.set(step.blockTable, at.blockTable);
  else {
    const B = step.entries.length;
    host.fill(0, at.blockTable, at.blockTable + B * cols);
    for (let b = 0; b < B; b++) host.set(step.blockTable.subarray(b * step.maxPages, (b + 1) * step.maxPages), at.blockTable + b * cols);
  }
}

/** DeviceCacheStep views of a buffer packed by `layout`. */
export function stepIndexViews(buf: DeviceTensor, layout: StepIndexLayout): DeviceCacheStep {
  const { tokens: T, batch: B, cols, at, size } = layout;
  const v = (k: keyof DeviceCacheStep, shape: readonly number[]): DeviceTensor => buf.slice(0, at[k], at[k] + size[k]).reshape(shape);
  return {
    positions: v('positions', [T]), slotMapping: v('slotMapping', [T]), seqLens: v('seqLens', [B]), contextLens: v('contextLens', [B]),
    qSeqLens: v('qSeqLens', [B]), cuSeqLens: v('cuSeqLens', [B + 1]), blockTable: v('blockTable', [B, cols]),
  };
}

interface UndoRecord {
  length: number;
  pageCount: number;
  lastPage: number; // -1: the sequence had no page
}

/** A comparable picture of the allocator state (for tests and debugging). */
export interface CacheState {
  pagesFree: number;
  pagesInUse: number;
  sequences: { id: SequenceId; length: number; positionOffset: number; pages: number[] }[];
  refcounts: number[];
}

interface Seq {
  pages: number[];
  length: number;
  positionOffset: number;
}

const ELEMENT_BYTES: Readonly<Record<CacheDType | 'f64', number>> = { bf16: 2, f16: 2, f64: 8 };

function isSeqId(id: unknown): id is SequenceId {
  return (typeof id === 'number' && Number.isSafeInteger(id)) || (typeof id === 'string' && id.length > 0);
}

function fmtId(id: SequenceId): string {
  return typeof id === 'string' ? `'${id}'` : String(id);
}

function posInt(what: string, v: unknown): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v <= 0) throw new MlaError('ERR_ARGUMENT', `LatentCache: \`${what}\` must be a positive integer, got ${String(v)}`);
  return v;
}

export class LatentCache implements Disposable {
  readonly numLayers: number;
  readonly numPages: number;
  readonly pageSize: number;
  /** Row width kvLora + rope. */
  readonly rowWidth: number;
  readonly kvLoraRank: number;
  readonly ropeDim: number;
  readonly backend: CacheBackend;
  /** Storage element type ('f64' on the reference backend); the compute dtype with 'fp8_e4m3'. */
  readonly dtype: CacheDType | 'f64';
  /** How a token is stored (see LatentCacheOptions.kvCacheFormat). */
  readonly kvCacheFormat: KvCacheFormat;
  readonly #host: Float64Array[] = [];
  readonly #device: DeviceTensor[] = [];
  readonly #refs: Int32Array;
  // Popped from the end: the lowest free page goes out first.
  readonly #free: number[];
  readonly #seqs = new Map<SequenceId, Seq>();
  #deviceStep: DeviceCacheStep | null = null;
  #deviceStepOf: CacheStep | null = null;
  #stepBuffer: DeviceTensor | null = null; // the packed indices #deviceStep views
  #lastStep: CacheStep | null = null;
  // What the latest plan changed per sequence, so a step refused after planning can be undone
  // exactly (truncate() would keep a copy-on-write page): its length, page count and last page
  // before a copy-on-write replaced it (a plan only appends pages and may replace that one), so
  // the record does not grow with the context.
  #lastUndo: Map<SequenceId, UndoRecord> | null = null;
  #disposed = false;

  constructor(opts: LatentCacheOptions) {
    checkObject('LatentCache', 'opts', opts);
    this.numLayers = posInt('numLayers', opts.numLayers);
    this.numPages = posInt('numPages', opts.numPages);
    this.pageSize = posInt('pageSize', opts.pageSize ?? 64);
    // Slots (page·pageSize + offset) travel as int32 in slot mappings and block tables.
    if (this.numPages * this.pageSize > 0x7fffffff) {
      throw new MlaError('ERR_RANGE', `LatentCache: \`numPages\` × pageSize = ${this.numPages} × ${this.pageSize} slots exceed the int32 slot indices (at most ${0x7fffffff})`);
    }
    checkObject('LatentCache', 'config', opts.config);
    this.kvLoraRank = posInt('config.kvLoraRank', opts.config.kvLoraRank);
    this.ropeDim = posInt('config.qkRopeHeadDim', opts.config.qkRopeHeadDim);
    this.rowWidth = this.kvLoraRank + this.ropeDim;
    if (opts.backend !== 'reference' && opts.backend !== 'gpu') throw new MlaError('ERR_ARGUMENT', `LatentCache: \`backend\` must be 'reference' or 'gpu', got ${String(opts.backend)}`);
    this.backend = opts.backend;
    const dtype = opts.dtype ?? 'bf16';
    if (dtype !== 'bf16' && dtype !== 'f16') throw new MlaError('ERR_DTYPE', `LatentCache: \`dtype\` must be bf16 or f16, got ${String(dtype)}`);
    this.dtype = this.backend === 'reference' ? 'f64' : dtype;
    const format = opts.kvCacheFormat ?? 'model';
    if (format !== 'model' && format !== 'fp8_e4m3') throw new MlaError('ERR_ARGUMENT', `LatentCache: \`kvCacheFormat\` must be 'model' or 'fp8_e4m3', got ${String(format)}`);
    if (format === 'fp8_e4m3') {
      if (this.kvLoraRank !== FP8_CACHE_KV_LORA || this.ropeDim !== FP8_CACHE_ROPE) {
        throw new MlaError('ERR_SHAPE', `LatentCache: \`kvCacheFormat\` 'fp8_e4m3' stores kvLora ${FP8_CACHE_KV_LORA} + rope ${FP8_CACHE_ROPE}; the config has ${this.kvLoraRank} + ${this.ropeDim}`);
      }
      if (dtype !== 'bf16') throw new MlaError('ERR_DTYPE', `LatentCache: \`kvCacheFormat\` 'fp8_e4m3' is read with bf16 queries; \`dtype\` must be bf16, got ${dtype}`);
    }
    this.kvCacheFormat = format;
    const rows = this.numPages * this.pageSize;
    if (this.backend === 'reference') {
      for (let l = 0; l < this.numLayers; l++) this.#host.push(allocHost('LatentCache', 'numPages', Float64Array, rows * this.rowWidth));
    } else {
      try {
        for (let l = 0; l < this.numLayers; l++) {
          this.#device.push(format === 'fp8_e4m3'
            ? DeviceTensor.zeros([this.numPages, this.pageSize, FP8_CACHE_ROW_BYTES], 'u8')
            : DeviceTensor.zeros([this.numPages, this.pageSize, this.rowWidth], dtype as DType));
        }
      } catch (e) {
        for (const t of this.#device) t.dispose();
        throw e;
      }
    }
    this.#refs = allocHost('LatentCache', 'numPages', Int32Array, this.numPages);
    this.#free = Array.from({ length: this.numPages }, (_, i) => this.numPages - 1 - i);
  }

  /** Bytes of cache one token takes: in one layer and in all layers. */
  get bytesPerToken(): { perLayer: number; total: number } {
    this.#alive('bytesPerToken');
    // The reference backend counts what the GPU would store (it holds float64 for exactness).
    const perLayer = this.kvCacheFormat === 'fp8_e4m3' ? FP8_CACHE_ROW_BYTES : this.rowWidth * ELEMENT_BYTES[this.dtype];
    return { perLayer, total: perLayer * this.numLayers };
  }

  get pagesFree(): number {
    this.#alive('pagesFree');
    return this.#free.length;
  }

  get pagesInUse(): number {
    this.#alive('pagesInUse');
    return this.numPages - this.#free.length;
  }

  get disposed(): boolean {
    return this.#disposed;
  }

  // Every public member that reads or changes state calls this first: after dispose() the
  // sequences and storage are gone, and a stale answer would hide a use-after-dispose bug.
  #alive(member: string): void {
    if (this.#disposed) throw new MlaError('ERR_DISPOSED', `LatentCache.${member}: this LatentCache was disposed`);
  }

  #seq(id: unknown, what: string): Seq {
    const s = isSeqId(id) ? this.#seqs.get(id) : undefined;
    if (s === undefined) throw new MlaError('ERR_ARGUMENT', `${what}: unknown sequence id ${isSeqId(id) ? fmtId(id) : String(id)}`);
    return s;
  }

  hasSequence(id: SequenceId): boolean {
    this.#alive('hasSequence()');
    return this.#seqs.has(id);
  }

  sequenceIds(): SequenceId[] {
    this.#alive('sequenceIds()');
    return [...this.#seqs.keys()];
  }

  /** Tokens cached (or reserved) for a sequence. */
  length(id: SequenceId): number {
    this.#alive('length()');
    return this.#seq(id, 'LatentCache.length').length;
  }

  /** RoPE position of the sequence's first cached token. */
  positionOffset(id: SequenceId): number {
    this.#alive('positionOffset()');
    return this.#seq(id, 'LatentCache.positionOffset').positionOffset;
  }

  /** Physical pages of a sequence, in logical order. */
  pages(id: SequenceId): readonly number[] {
    this.#alive('pages()');
    return [...this.#seq(id, 'LatentCache.pages').pages];
  }

  /** Starts an empty sequence; its first token gets RoPE position `positionOffset` (default 0). */
  addSequence(id: SequenceId, opts: { positionOffset?: number } = {}): void {
    this.#alive('addSequence()');
    checkObject('LatentCache.addSequence', 'opts', opts);
    if (!isSeqId(id)) throw new MlaError('ERR_ARGUMENT', `LatentCache.addSequence: a sequence id must be a safe integer or a non-empty string, got ${String(id)}`);
    if (this.#seqs.has(id)) throw new MlaError('ERR_ARGUMENT', `LatentCache.addSequence: sequence ${fmtId(id)} already exists`);
    const off = opts.positionOffset ?? 0;
    if (!Number.isSafeInteger(off) || off < 0) throw new MlaError('ERR_ARGUMENT', `LatentCache.addSequence: \`positionOffset\` must be a non-negative integer, got ${String(off)}`);
    this.#seqs.set(id, { pages: [], length: 0, positionOffset: off });
  }

  // Pages to take from the free list for n more tokens, including a private copy
  // of a shared, partially filled last page (possible only after truncate()).
  #pagesNeeded(s: Seq, n: number): number {
    const fresh = Math.ceil((s.length + n) / this.pageSize) - s.pages.length;
    const cow = n > 0 && this.#lastPageShared(s) ? 1 : 0;
    return Math.max(0, fresh) + cow;
  }

  #lastPageShared(s: Seq): boolean {
    return s.length % this.pageSize !== 0 && s.pages.length > 0 && this.#refs[s.pages[s.pages.length - 1]!]! > 1;
  }

  #alloc(): number {
    const p = this.#free.pop();
    /* c8 ignore next */
    if (p === undefined) throw new MlaError('ERR_CAPACITY', 'LatentCache: internal error, free list empty after the capacity check');
    this.#refs[p] = 1;
    return p;
  }

  #release(p: number): void {
    this.#refs[p]!--;
    if (this.#refs[p] === 0) this.#free.push(p);
  }

  #copyPage(dst: number, src: number, opts: StreamOption = {}): void {
    const span = this.pageSize * this.rowWidth;
    for (const h of this.#host) h.copyWithin(dst * span, src * span, (src + 1) * span);
    for (const d of this.#device) d.select(0, dst).copyFrom(d.select(0, src), opts);
  }

  // Mutates: assumes #pagesNeeded(s, n) pages are free.
  #extend(s: Seq, n: number): Int32Array {
    if (n > 0 && this.#lastPageShared(s)) {
      const last = s.pages.length - 1;
      const own = this.#alloc();
      this.#copyPage(own, s.pages[last]!);
      this.#release(s.pages[last]!);
      s.pages[last] = own;
    }
    while (s.pages.length * this.pageSize < s.length + n) s.pages.push(this.#alloc());
    const slots = new Int32Array(n);
    for (let i = 0; i < n; i++) {
      const t = s.length + i;
      slots[i] = s.pages[Math.floor(t / this.pageSize)]! * this.pageSize + (t % this.pageSize);
    }
    s.length += n;
    return slots;
  }

  #capacityError(what: string, id: SequenceId, need: number, total: number): MlaError {
    const detail = need === total ? '' : ` (${total} for the whole step)`;
    return new MlaError('ERR_CAPACITY', `${what}: sequence ${fmtId(id)} needs ${need} more page(s)${detail} but only ${this.pagesFree} of ${this.numPages} are free`);
  }

  /** Extends a sequence by n tokens and returns their cache slots (page·pageSize + offset). */
  reserve(id: SequenceId, n: number): Int32Array {
    this.#alive('reserve()');
    const s = this.#seq(id, 'LatentCache.reserve');
    if (!Number.isSafeInteger(n) || n < 0) throw new MlaError('ERR_ARGUMENT', `LatentCache.reserve: \`n\` must be a non-negative integer, got ${String(n)}`);
    const need = this.#pagesNeeded(s, n);
    if (need > this.pagesFree) throw this.#capacityError('LatentCache.reserve', id, need, need);
    return this.#extend(s, n);
  }

  /**
   * Reserves the new tokens of every request of a step, all or nothing, and returns
   * positions, slot mapping, sequence lengths and the block table in batch order.
   */
  planStep(batch: readonly BatchEntry[]): CacheStep {
    this.#alive('planStep()');
    if (!Array.isArray(batch) || batch.length === 0) throw new MlaError('ERR_ARGUMENT', 'LatentCache.planStep: `batch` must be a non-empty array of { seqId, numTokens }');
    const seen = new Set<SequenceId>();
    const seqs: Seq[] = [];
    let total = 0;
    for (let i = 0; i < batch.length; i++) {
      const e = batch[i]!;
      const s = this.#seq(e?.seqId, `LatentCache.planStep: batch[${i}]`);
      if (seen.has(e.seqId)) throw new MlaError('ERR_ARGUMENT', `LatentCache.planStep: sequence ${fmtId(e.seqId)} appears twice in the batch`);
      seen.add(e.seqId);
      if (!Number.isSafeInteger(e.numTokens) || e.numTokens <= 0) throw new MlaError('ERR_ARGUMENT', `LatentCache.planStep: batch[${i}].numTokens must be a positive integer, got ${String(e.numTokens)}`);
      const need = this.#pagesNeeded(s, e.numTokens);
      total += need;
      if (total > this.pagesFree) {
        let all = total;
        for (let j = i + 1; j < batch.length; j++) {
          const sj = isSeqId(batch[j]?.seqId) ? this.#seqs.get(batch[j]!.seqId) : undefined;
          if (sj !== undefined && Number.isSafeInteger(batch[j]!.numTokens) && batch[j]!.numTokens > 0) all += this.#pagesNeeded(sj, batch[j]!.numTokens);
        }
        throw this.#capacityError('LatentCache.planStep', e.seqId, need, all);
      }
      seqs.push(s);
    }
    const undo = new Map<SequenceId, UndoRecord>();
    batch.forEach((e, b) => {
      const s = seqs[b]!;
      undo.set(e.seqId, { length: s.length, pageCount: s.pages.length, lastPage: s.pages[s.pages.length - 1] ?? -1 });
    });
    const B = batch.length;
    const entries: StepEntry[] = [];
    let T = 0;
    for (const e of batch) T += e.numTokens;
    const positions = new Int32Array(T);
    const slotMapping = new Int32Array(T);
    const seqLens = new Int32Array(B);
    const contextLens = new Int32Array(B);
    const qSeqLens = new Int32Array(B);
    const cuSeqLens = new Int32Array(B + 1);
    let t0 = 0;
    for (let b = 0; b < B; b++) {
      const s = seqs[b]!;
      const n = batch[b]!.numTokens;
      const ctx = s.length;
      slotMapping.set(this.#extend(s, n), t0);
      for (let i = 0; i < n; i++) positions[t0 + i] = s.positionOffset + ctx + i;
      entries.push({ seqId: batch[b]!.seqId, numTokens: n, contextLen: ctx, seqLen: s.length, tokenStart: t0 });
      contextLens[b] = ctx;
      seqLens[b] = s.length;
      qSeqLens[b] = n;
      t0 += n;
      cuSeqLens[b + 1] = t0;
    }
    const { table, maxPages } = this.blockTable(batch.map((e) => e.seqId));
    const step: CacheStep = { entries, numTokens: T, positions, slotMapping, seqLens, contextLens, qSeqLens, cuSeqLens, blockTable: table, maxPages };
    this.#lastStep = step;
    this.#lastUndo = undo;
    return step;
  }

  /**
   * @internal Gives back exactly what planStep() took for `step` (the latest plan, its
   * sequences untouched since): fresh pages, and a private copy of a shared last page becomes
   * the shared page again. MlaAttention and DecodeGraph call it when a step fails after planning.
   */
  undoStep(step: CacheStep): void {
    this.#alive('undoStep()');
    if (!this.isCurrentStep(step) || this.#lastUndo === null) throw new MlaError('ERR_ARGUMENT', 'LatentCache.undoStep: `step` is not the latest plan (or its sequences changed since)');
    for (const e of step.entries) {
      const s = this.#seqs.get(e.seqId)!;
      const old: UndoRecord = this.#lastUndo.get(e.seqId)!;
      // Newest first, so the free list ends as it was before the plan popped from it.
      for (let i = s.pages.length - 1; i >= old.pageCount; i--) this.#release(s.pages[i]!);
      const last = old.pageCount - 1;
      if (last >= 0 && s.pages[last] !== old.lastPage) {
        this.#release(s.pages[last]!);
        this.#refs[old.lastPage]!++; // the copy-on-write source: still shared, never freed
        s.pages[last] = old.lastPage;
      }
      s.pages.length = old.pageCount;
      s.length = old.length;
    }
    this.#lastStep = null;
    this.#lastUndo = null;
  }

  /**
   * True while `step` is the latest planStep() result and no sequence it names has changed
   * since (a stale plan would point at slots that may now belong to someone else).
   */
  isCurrentStep(step: CacheStep): boolean {
    this.#alive('isCurrentStep()');
    if (step !== this.#lastStep) return false;
    return step.entries.every((e) => this.#seqs.get(e.seqId)?.length === e.seqLen);
  }

  /** Undoes the last `n` tokens of a sequence (a failed step, rejected speculative tokens). */
  truncate(id: SequenceId, length: number): void {
    this.#alive('truncate()');
    const s = this.#seq(id, 'LatentCache.truncate');
    if (!Number.isSafeInteger(length) || length < 0 || length > s.length) throw new MlaError('ERR_ARGUMENT', `LatentCache.truncate: \`length\` must be in [0, ${s.length}] for sequence ${fmtId(id)}, got ${String(length)}`);
    const keep = Math.ceil(length / this.pageSize);
    while (s.pages.length > keep) this.#release(s.pages.pop()!);
    s.length = length;
  }

  /**
   * A new sequence with the same cached tokens: full pages are shared, the partially
   * filled last page is copied into a page of its own.
   */
  fork(srcId: SequenceId, newId: SequenceId, opts: StreamOption = {}): void {
    this.#alive('fork()');
    checkObject('LatentCache.fork', 'opts', opts);
    const src = this.#seq(srcId, 'LatentCache.fork');
    if (!isSeqId(newId)) throw new MlaError('ERR_ARGUMENT', `LatentCache.fork: a sequence id must be a safe integer or a non-empty string, got ${String(newId)}`);
    if (this.#seqs.has(newId)) throw new MlaError('ERR_ARGUMENT', `LatentCache.fork: sequence ${fmtId(newId)} already exists`);
    const full = Math.floor(src.length / this.pageSize);
    const partial = src.length % this.pageSize !== 0;
    const need = partial ? 1 : 0;
    if (need > this.pagesFree) throw this.#capacityError('LatentCache.fork', newId, need, need);
    const pages = src.pages.slice(0, full);
    for (const p of pages) this.#refs[p]!++;
    if (partial) {
      const own = this.#alloc();
      this.#copyPage(own, src.pages[full]!, opts);
      pages.push(own);
    }
    this.#seqs.set(newId, { pages, length: src.length, positionOffset: src.positionOffset });
  }

  /** Forgets a sequence; its pages return to the free list once no fork shares them. */
  freeSequence(id: SequenceId): void {
    this.#alive('freeSequence()');
    const s = this.#seq(id, 'LatentCache.freeSequence');
    for (const p of s.pages) this.#release(p);
    this.#seqs.delete(id);
  }

  /** [B, maxPages] block table of the given sequences; unused entries hold `pad`. */
  blockTable(ids: readonly SequenceId[], pad = 0): { table: Int32Array; maxPages: number } {
    this.#alive('blockTable()');
    if (!Array.isArray(ids)) throw new MlaError('ERR_ARGUMENT', 'LatentCache.blockTable: `ids` must be an array of sequence ids');
    if (typeof pad !== 'number' || !Number.isInteger(pad) || pad < -0x80000000 || pad > 0x7fffffff) throw new MlaError('ERR_ARGUMENT', `LatentCache.blockTable: \`pad\` must be an int32, got ${String(pad)}`);
    const seqs = ids.map((id) => this.#seq(id, 'LatentCache.blockTable'));
    const maxPages = Math.max(1, ...seqs.map((s) => s.pages.length));
    const table = new Int32Array(ids.length * maxPages).fill(pad);
    seqs.forEach((s, b) => table.set(s.pages, b * maxPages));
    return { table, maxPages };
  }

  /** Layer storage of the reference backend: [numPages, pageSize, rowWidth] float64. */
  hostLayer(layer: number): Float64Array {
    this.#alive('hostLayer()');
    const h = this.#host[this.#layerIndex(layer)];
    if (h === undefined) throw new MlaError('ERR_ARGUMENT', 'LatentCache.hostLayer: this cache uses the gpu backend; use deviceLayer()');
    return h;
  }

  /** Layer storage of the GPU backend: DeviceTensor [numPages, pageSize, rowWidth] (u8 [.., 656] for 'fp8_e4m3'). */
  deviceLayer(layer: number): DeviceTensor {
    this.#alive('deviceLayer()');
    const d = this.#device[this.#layerIndex(layer)];
    if (d === undefined) throw new MlaError('ERR_ARGUMENT', 'LatentCache.deviceLayer: this cache uses the reference backend; use hostLayer()');
    return d;
  }

  #layerIndex(layer: number): number {
    if (!Number.isSafeInteger(layer) || layer < 0 || layer >= this.numLayers) throw new MlaError('ERR_ARGUMENT', `LatentCache: \`layer\` must be an integer in [0, ${this.numLayers}), got ${String(layer)}`);
    return layer;
  }

  /**
   * Uploads a step's index arrays as i32 device tensors, once per step (every layer of a
   * model reuses them). They replace the previous step's, which are overwritten in place when
   * the shapes match, else freed: a DeviceCacheStep is valid until the next uploadStep().
   */
  uploadStep(step: CacheStep): DeviceCacheStep {
    this.#alive('uploadStep()');
    checkObject('LatentCache.uploadStep', 'step', step);
    if (!Array.isArray(step.entries)) throw new MlaError('ERR_ARGUMENT', 'LatentCache.uploadStep: `step` must be a CacheStep from planStep()');
    if (this.#deviceStepOf === step && this.#deviceStep !== null) return this.#deviceStep;
    const layout = stepIndexLayout(step.numTokens, step.entries.length, step.maxPages);
    const host = new Int32Array(layout.total);
    packStepIndices(step, layout, host);
    this.#deviceStepOf = null;
    this.#deviceStep = null;
    // The previous step's buffer is overwritten in place when it is large enough (a decode loop
    // then allocates and frees nothing); the legacy-stream upload waits for the kernels reading it.
    let buf = this.#stepBuffer;
    const have = buf?.shape[0] ?? 0;
    if (buf === null || have < layout.total) {
      buf?.dispose();
      this.#stepBuffer = null;
      buf = this.#stepBuffer = DeviceTensor.empty([Math.max(layout.total, 2 * have, 256)], 'i32');
    }
    buf.slice(0, 0, layout.total).write(host);
    this.#deviceStep = stepIndexViews(buf, layout);
    this.#deviceStepOf = step;
    return this.#deviceStep;
  }

  #disposeStep(): void {
    this.#stepBuffer?.dispose();
    this.#stepBuffer = null;
    this.#deviceStep = null;
    this.#deviceStepOf = null;
  }

  state(): CacheState {
    this.#alive('state()');
    return {
      pagesFree: this.pagesFree,
      pagesInUse: this.pagesInUse,
      sequences: [...this.#seqs.entries()].map(([id, s]) => ({ id, length: s.length, positionOffset: s.positionOffset, pages: [...s.pages] })),
      refcounts: [...this.#refs],
    };
  }

  /** Frees the device storage; idempotent. */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    this.#disposeStep();
    for (const d of this.#device) d.dispose();
    this.#device.length = 0;
    this.#host.length = 0;
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}

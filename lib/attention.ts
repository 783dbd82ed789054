// One MLA attention layer over a paged LatentCache: projections, RMSNorms, RoPE,
// cache append, then the naive (MHA on up-projected K/V) path for prompts and the
// absorbed (attention on the latent) path for decodes, W_UV and o_proj. Batches mix
// prefills, continued prefills and decodes of sequences at different lengths.
//
// Everything is checked, and the step's cache slots reserved, before anything is
// written: a bad call throws a typed MlaError and leaves the cache as it was.

import { checkFinite } from './check.js';
import { ConfigError, validateMlaConfig, type MlaConfig } from './config.js';
import { MlaError } from './errors.js';
import { LatentCache, type BatchEntry, type CacheDType, type CacheStep, type KvCacheFormat, type SequenceId } from './latent-cache.js';
import type { MlaLayerWeights } from './reference/layer.js';
import { DeviceTensor } from './runtime/tensor.js';
import type { Stream } from './runtime/stream.js';
import { checkWeightsFit, isHostWeights, toReferenceWeights, type MlaWeights } from './weights.js';
import { DecodeGraph, type DecodeGraphOptions } from './attention/decode-graph.js';
import { SPARSE_MAX_TOPK } from './ops/sparse.js';
import { GpuBackend } from './attention/gpu-backend.js';
import { ReferenceBackend } from './attention/reference-backend.js';
import type { AttentionBackend, AttentionPath, SparseSelection } from './attention/types.js';

export type { AttentionPath, SparseSelection } from './attention/types.js';
export { DecodeGraph, type DecodeGraphOptions } from './attention/decode-graph.js';
export type AttentionBackendName = 'reference' | 'gpu';

/** Decides per request which attention path runs it. */
export type PathRule = (request: { seqId: SequenceId; numTokens: number; contextLen: number }) => AttentionPath;

/** Prompts (more than `threshold` new tokens) and requests with nothing cached yet take the prefill path. */
export function defaultPathRule(threshold = 4): PathRule {
  return ({ numTokens, contextLen }) => (numTokens > threshold || contextLen === 0 ? 'prefill' : 'decode');
}

export interface MlaAttentionOptions {
  config: MlaConfig;
  /** From loadMlaWeights (float32 host tensors) or float64 reference weights. */
  weights: MlaWeights | MlaLayerWeights;
  cache: LatentCache;
  /** This layer's index in the cache. */
  layer: number;
  backend: AttentionBackendName;
  /** GPU compute / activation dtype; default bf16. */
  dtype?: CacheDType;
  /**
   * The cache format this layer expects ('model' or 'fp8_e4m3'); default: the cache's own
   * (`new LatentCache({ ..., kvCacheFormat: 'fp8_e4m3' })`). A mismatch is an ERR_ARGUMENT.
   */
  kvCacheFormat?: KvCacheFormat;
  /** Requests with more new tokens than this take the prefill path (default 4). */
  prefillThreshold?: number;
  /** Overrides prefillThreshold. */
  pathRule?: PathRule;
  /** GPU stream for every launch (default stream when omitted). */
  stream?: Stream;
}

function fail(code: 'ERR_ARGUMENT' | 'ERR_SHAPE' | 'ERR_DTYPE', msg: string): never {
  throw new MlaError(code, `MlaAttention: ${msg}`);
}

export interface ForwardOptions {
  /**
   * Scan `hidden` for NaN / ±Infinity first and throw ERR_RANGE naming `hidden`, the first bad
   * flat and [token, channel] index and the value (before any cache slot is reserved). Off by
   * default. A host input costs one pass: 1–2 ms per million float32 / float64 values measured
   * (Node 20, a shared 2-core x86-64 VM), i.e. ~15 µs for one decode token of DeepSeek-V3's 7168
   * channels. A DeviceTensor input is downloaded first (a synchronous device-to-host copy that
   * waits for the layer's stream) and its raw bf16 / f16 bits scanned at the same rate, plus the
   * copy: acceptable for an opt-in debugging check, not for every step of a serving loop.
   */
  checkFinite?: boolean;
  /**
   * Top-k attention (DeepSeek-V3.2): each token attends only to the positions of its own
   * sequence in `sparse.indices` ([T, topk] Int32Array, -1 or a later position = none), through
   * the sparse kernel on the absorbed path, prompts included (the path rule is not consulted).
   * The positions become cache slots on the host through the step's block table.
   */
  sparse?: SparseSelection;
  /**
   * GPU backend: [T, hidden_size] in the layer's dtype, contiguous; the output is written there
   * and returned. Without it each call allocates the output, and disposing it frees device
   * memory (cudaFree, which waits for the GPU): a serving loop passes one buffer per layer.
   */
  out?: DeviceTensor | undefined;
}

function checkSparseSelection(sel: SparseSelection, T: number): void {
  if (typeof sel !== 'object' || sel === null) fail('ERR_ARGUMENT', '`opts.sparse` must be { indices, topk, topkLength? }');
  if (!Number.isSafeInteger(sel.topk) || sel.topk < 1 || sel.topk > SPARSE_MAX_TOPK) fail('ERR_ARGUMENT', `\`opts.sparse.topk\` must be an integer in [1, ${SPARSE_MAX_TOPK}], got ${String(sel.topk)}`);
  if (!(sel.indices instanceof Int32Array)) fail('ERR_ARGUMENT', '`opts.sparse.indices` must be an Int32Array');
  if (sel.indices.length !== T * sel.topk) fail('ERR_SHAPE', `\`opts.sparse.indices\` has ${sel.indices.length} values; ${T} tokens × topk ${sel.topk} need ${T * sel.topk}`);
  if (sel.topkLength !== undefined) {
    if (!(sel.topkLength instanceof Int32Array)) fail('ERR_ARGUMENT', '`opts.sparse.topkLength` must be an Int32Array');
    if (sel.topkLength.length !== T) fail('ERR_SHAPE', `\`opts.sparse.topkLength\` has ${sel.topkLength.length} values; the step has ${T} tokens`);
  }
}

function isStep(b: readonly BatchEntry[] | CacheStep): b is CacheStep {
  return !Array.isArray(b);
}

export class MlaAttention implements Disposable {
  readonly config: MlaConfig;
  readonly cache: LatentCache;
  readonly layer: number;
  readonly backend: AttentionBackendName;
  readonly dtype: CacheDType;
  readonly #rule: PathRule;
  // The input check downloads on this stream, so it sees the writes queued there before it.
  readonly #stream: Stream | undefined;
  #impl: AttentionBackend | null;

  private constructor(opts: MlaAttentionOptions, impl: AttentionBackend, rule: PathRule, dtype: CacheDType) {
    this.config = opts.config;
    this.cache = opts.cache;
    this.layer = opts.layer;
    this.backend = opts.backend;
    this.dtype = dtype;
    this.#rule = rule;
    this.#stream = opts.stream;
    this.#impl = impl;
  }

  static create(opts: MlaAttentionOptions): MlaAttention {
    if (typeof opts !== 'object' || opts === null) fail('ERR_ARGUMENT', '`opts` must be an object');
    try {
      validateMlaConfig(opts.config);
    } catch (e) {
      if (e instanceof ConfigError) fail('ERR_ARGUMENT', `\`config\`: ${e.message}`);
      throw e;
    }
    const cfg = opts.config;
    if (opts.backend !== 'reference' && opts.backend !== 'gpu') fail('ERR_ARGUMENT', `\`backend\` must be 'reference' or 'gpu', got ${String(opts.backend)}`);
    const cache = opts.cache;
    if (!(cache instanceof LatentCache)) fail('ERR_ARGUMENT', '`cache` must be a LatentCache');
    if (cache.disposed) throw new MlaError('ERR_DISPOSED', 'MlaAttention: `cache` was disposed');
    if (cache.backend !== opts.backend) fail('ERR_ARGUMENT', `\`cache\` uses the ${cache.backend} backend, the layer the ${opts.backend} backend`);
    if (cache.kvLoraRank !== cfg.kvLoraRank || cache.ropeDim !== cfg.qkRopeHeadDim) {
      fail('ERR_SHAPE', `\`cache\` rows are ${cache.kvLoraRank} + ${cache.ropeDim} wide, the config needs kvLora ${cfg.kvLoraRank} + rope ${cfg.qkRopeHeadDim}`);
    }
    if (!Number.isSafeInteger(opts.layer) || opts.layer < 0 || opts.layer >= cache.numLayers) {
      fail('ERR_ARGUMENT', `\`layer\` must be an integer in [0, ${cache.numLayers}), got ${String(opts.layer)}`);
    }
    const dtype = opts.dtype ?? (cache.dtype === 'f64' ? 'bf16' : cache.dtype);
    if (dtype !== 'bf16' && dtype !== 'f16') fail('ERR_DTYPE', `\`dtype\` must be bf16 or f16, got ${String(dtype)}`);
    if (opts.backend === 'gpu' && cache.dtype !== dtype) fail('ERR_DTYPE', `\`cache\` stores ${cache.dtype}, the layer computes in ${dtype}`);
    if (opts.kvCacheFormat !== undefined && opts.kvCacheFormat !== cache.kvCacheFormat) {
      fail('ERR_ARGUMENT', `\`kvCacheFormat\` is ${String(opts.kvCacheFormat)}, the \`cache\` stores ${cache.kvCacheFormat}; create the LatentCache with kvCacheFormat: ${JSON.stringify(opts.kvCacheFormat)}`);
    }
    const threshold = opts.prefillThreshold ?? 4;
    if (!Number.isSafeInteger(threshold) || threshold < 0) fail('ERR_ARGUMENT', `\`prefillThreshold\` must be a non-negative integer, got ${String(threshold)}`);
    if (opts.pathRule !== undefined && typeof opts.pathRule !== 'function') fail('ERR_ARGUMENT', '`pathRule` must be a function');
    const rule = opts.pathRule ?? defaultPathRule(threshold);
    if (typeof opts.weights !== 'object' || opts.weights === null) fail('ERR_ARGUMENT', '`weights` must be the object loadMlaWeights returns');
    checkWeightsFit(cfg, opts.weights);
    // The GPU backend uploads float32 host weights as they are: no float64 copy of a 700 MB layer.
    const impl: AttentionBackend =
      opts.backend === 'reference'
        ? new ReferenceBackend(cfg, isHostWeights(opts.weights) ? toReferenceWeights(opts.weights) : opts.weights, cache, opts.layer)
        : GpuBackend.create({ config: cfg, weights: opts.weights, cache, layer: opts.layer, dtype, stream: opts.stream });
    return new MlaAttention(opts, impl, rule, dtype);
  }

  get disposed(): boolean {
    return this.#impl === null;
  }

  /**
   * hidden: [T, hidden_size], the requests' tokens back to back in batch order
   * (Float64Array / Float32Array on the reference backend, a DeviceTensor on the GPU one).
   * batch: the requests ({ seqId, numTokens }), whose slots this call reserves, or a
   * step already planned with cache.planStep() (every layer of a model shares one).
   * Returns [T, hidden_size].
   */
  forward(hidden: Float64Array | Float32Array, batch: readonly BatchEntry[] | CacheStep, opts?: ForwardOptions): Float64Array;
  forward(hidden: DeviceTensor, batch: readonly BatchEntry[] | CacheStep, opts?: ForwardOptions): DeviceTensor;
  forward(hidden: Float64Array | Float32Array | DeviceTensor, batch: readonly BatchEntry[] | CacheStep, opts: ForwardOptions = {}): Float64Array | DeviceTensor {
    const impl = this.#impl;
    if (impl === null) throw new MlaError('ERR_DISPOSED', 'MlaAttention.forward: this MlaAttention was disposed');
    if (this.cache.disposed) throw new MlaError('ERR_DISPOSED', 'MlaAttention.forward: its `cache` (LatentCache) was disposed');
    if (typeof opts !== 'object' || opts === null) fail('ERR_ARGUMENT', '`opts` must be an object');
    const finite = opts.checkFinite ?? false;
    if (typeof finite !== 'boolean') fail('ERR_ARGUMENT', `\`opts.checkFinite\` must be a boolean, got ${String(finite)}`);
    const hid = this.config.hiddenSize;
    const T = this.#countTokens(batch);
    let x: Float64Array | DeviceTensor;
    if (this.backend === 'reference') {
      if (!(hidden instanceof Float64Array) && !(hidden instanceof Float32Array)) fail('ERR_ARGUMENT', '`hidden` must be a Float64Array or Float32Array on the reference backend');
      if (hidden.length !== T * hid) fail('ERR_SHAPE', `\`hidden\` has ${hidden.length} values; ${T} tokens × hidden_size ${hid} need ${T * hid}`);
      if (finite) checkFinite('MlaAttention.forward', '`hidden`', hidden, [T, hid]);
      x = hidden instanceof Float64Array ? hidden : Float64Array.from(hidden);
    } else {
      if (!(hidden instanceof DeviceTensor)) fail('ERR_ARGUMENT', '`hidden` must be a DeviceTensor on the gpu backend');
      hidden.assertAlive('MlaAttention.forward: `hidden`');
      if (hidden.shape.length !== 2 || hidden.shape[0] !== T || hidden.shape[1] !== hid) fail('ERR_SHAPE', `\`hidden\` must have shape [${T}, ${hid}], got [${hidden.shape.join(', ')}]`);
      if (hidden.dtype !== this.dtype) fail('ERR_DTYPE', `\`hidden\` must be ${this.dtype}, got ${hidden.dtype}`);
      // Raw bf16 / f16 bits: checked without decoding them.
      if (finite) checkFinite('MlaAttention.forward', '`hidden`', hidden.toHostSync({ stream: this.#stream }), [T, hid], this.dtype);
      x = hidden;
    }
    const out = opts.out;
    if (out !== undefined) {
      if (this.backend === 'reference') fail('ERR_ARGUMENT', '`opts.out` is for the gpu backend (the reference backend returns a new Float64Array)');
      if (!(out instanceof DeviceTensor)) fail('ERR_ARGUMENT', '`opts.out` must be a DeviceTensor');
      out.assertAlive('MlaAttention.forward: `opts.out`');
      if (out.shape.length !== 2 || out.shape[0] !== T || out.shape[1] !== hid) fail('ERR_SHAPE', `\`opts.out\` must have shape [${T}, ${hid}], got [${out.shape.join(', ')}]`);
      if (out.dtype !== this.dtype) fail('ERR_DTYPE', `\`opts.out\` must be ${this.dtype}, got ${out.dtype}`);
      if (!out.isContiguous) fail('ERR_SHAPE', '`opts.out` must be contiguous');
    }
    const sparse = opts.sparse;
    if (sparse !== undefined) checkSparseSelection(sparse, T);
    if (isStep(batch) && !this.cache.isCurrentStep(batch)) fail('ERR_ARGUMENT', '`batch` is a CacheStep that is not the cache\'s latest plan (or its sequences changed since); call cache.planStep() for every step');
    const planned = !isStep(batch);
    const step = isStep(batch) ? batch : this.cache.planStep(batch);
    try {
      const paths = step.entries.map((e) => {
        const p = this.#rule({ seqId: e.seqId, numTokens: e.numTokens, contextLen: e.contextLen });
        if (p !== 'prefill' && p !== 'decode') fail('ERR_ARGUMENT', `\`pathRule\` returned ${String(p)} for sequence ${String(e.seqId)}; expected 'prefill' or 'decode'`);
        return p;
      });
      return impl.forward(x, step, paths, sparse, out);
    } catch (e) {
      // Give back exactly what this call reserved (state() as before, a copy-on-write page
      // included); the rows it may have written lie past the lengths.
      if (planned && !this.cache.disposed) {
        if (this.cache.isCurrentStep(step)) this.cache.undoStep(step);
        else for (const en of step.entries) if (this.cache.hasSequence(en.seqId)) this.cache.truncate(en.seqId, en.contextLen);
      }
      throw e;
    }
  }

  #countTokens(batch: readonly BatchEntry[] | CacheStep): number {
    if (isStep(batch)) {
      if (typeof batch !== 'object' || batch === null || !Array.isArray(batch.entries)) fail('ERR_ARGUMENT', '`batch` must be an array of { seqId, numTokens } or a CacheStep');
      return batch.numTokens;
    }
    if (batch.length === 0) fail('ERR_ARGUMENT', '`batch` is empty');
    let T = 0;
    batch.forEach((e, i) => {
      if (typeof e !== 'object' || e === null) fail('ERR_ARGUMENT', `batch[${i}] must be { seqId, numTokens }`);
      if (!Number.isSafeInteger(e.numTokens) || e.numTokens <= 0) fail('ERR_ARGUMENT', `batch[${i}].numTokens must be a positive integer, got ${String(e.numTokens)}`);
      if (!this.cache.hasSequence(e.seqId)) fail('ERR_ARGUMENT', `batch[${i}]: unknown sequence id ${typeof e.seqId === 'string' ? `'${e.seqId}'` : String(e.seqId)}`);
      T += e.numTokens;
    });
    return T;
  }

  /**
   * Captures this layer's decode step (one new token for each of `batch` sequences) as a CUDA
   * graph: DecodeGraph.step() then replays it with one launch, bit for bit what forward() would
   * compute for the same step. GPU backend only, on the layer's own `stream` (the legacy
   * default stream cannot capture). Dispose the graph before the layer.
   */
  captureDecode(opts: DecodeGraphOptions): DecodeGraph {
    const impl = this.#impl;
    if (impl === null) throw new MlaError('ERR_DISPOSED', 'MlaAttention.captureDecode: this MlaAttention was disposed');
    if (!(impl instanceof GpuBackend)) fail('ERR_ARGUMENT', 'captureDecode needs the gpu backend');
    if (this.#stream === undefined) fail('ERR_ARGUMENT', 'captureDecode needs the layer\'s `stream` (MlaAttention.create({ stream })): the default stream cannot be captured');
    if (typeof opts !== 'object' || opts === null) fail('ERR_ARGUMENT', 'captureDecode: `opts` must be { batch, maxSeqLen }');
    return new DecodeGraph({ config: this.config, cache: this.cache, dtype: this.dtype, stream: this.#stream, backend: impl }, opts);
  }

  /** Frees the layer's device weights and workspaces; idempotent. The cache is not touched. */
  dispose(): void {
    this.#impl?.dispose();
    this.#impl = null;
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}

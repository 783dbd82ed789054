// One MLA attention layer, forward only, float64, with its own paged latent
// cache: the composition of the reference ops, mirroring DeepSeek-V3's
// inference/model.py class MLA.

import type { MlaConfig } from '../config.js';
import type { SafetensorsFile } from '../safetensors.js';
import { absorbOutput, absorbQuery, splitKvBProj, type AbsorbedWeights } from './absorb.js';
import { appendLatent, gatherPagedCache, pagedSlot, type PagedCacheView } from './cache.js';
import { decode } from './decode.js';
import { linear } from './linear.js';
import { prefill } from './prefill.js';
import { rmsNorm } from './rmsnorm.js';
import { applyRope, ropeLayoutOf, ropeTable, type RopeTable } from './rope.js';
import { allocHost, argError, checkArray, checkFinite, checkLength, checkNonNegInt, checkObject, checkPosInt, sizeProduct } from '../check.js';
import { validateMlaConfig } from '../config.js';

/** Weights as stored in checkpoints ([out, in]), converted to float64. */
export interface MlaLayerWeights {
  /** [qLora, hidden], null without query compression. */
  qAProj: Float64Array | null;
  /** [qLora] */
  qALayernorm: Float64Array | null;
  /** [H·(nope + rope), qLora] */
  qBProj: Float64Array | null;
  /** [H·(nope + rope), hidden], only without query compression. */
  qProj: Float64Array | null;
  /** [kvLora + rope, hidden] */
  kvAProjWithMqa: Float64Array;
  /** [kvLora] */
  kvALayernorm: Float64Array;
  /** [H·(nope + v), kvLora] */
  kvBProj: Float64Array;
  /** [hidden, H·v] */
  oProj: Float64Array;
}

/**
 * The query projection, before RoPE: q = W_qb·RMSNorm(W_qa·x) on the q_lora path, or W_q·x
 * without query compression (V2-Lite). Returns [T, H·(nope+rope)].
 */
export function projectQuery(cfg: MlaConfig, w: MlaLayerWeights, x: Float64Array, T: number): Float64Array {
  const out = cfg.numHeads * (cfg.qkNopeHeadDim + cfg.qkRopeHeadDim);
  if (cfg.qLoraRank === null) return linear(x, T, cfg.hiddenSize, w.qProj!, out);
  const qa = linear(x, T, cfg.hiddenSize, w.qAProj!, cfg.qLoraRank);
  rmsNorm(qa, T, cfg.qLoraRank, w.qALayernorm!, cfg.rmsNormEps, { out: qa });
  return linear(qa, T, cfg.qLoraRank, w.qBProj!, out);
}

/**
 * Reads one layer's weights by Hugging Face names under prefix: 'weights.' for
 * the fixtures, 'model.layers.N.self_attn.' for a checkpoint shard. The query
 * path is taken from what the file holds (q_a_proj... or q_proj). `checkFinite`
 * (default true) rejects NaN / ±Infinity with ERR_RANGE naming the tensor and index.
 */
/**
 * The naive (prefill) attention of a layer on the float64 reference: K_nope and V recomputed from
 * the gathered latent rows with kv_b_proj, causal, the config's heads and softmax scale.
 * q: [tokens, H, nope + rope] of the requests back to back; kv: their gathered cache rows.
 */
export function naiveAttention(cfg: MlaConfig, kvBProj: Float64Array, q: Float64Array, kv: Float64Array, qSeqLens: Int32Array, kvSeqLens: Int32Array): { out: Float64Array; lse: Float64Array } {
  return prefill({
    q,
    kv,
    kvBProj,
    qSeqLens,
    kvSeqLens,
    numHeads: cfg.numHeads,
    qkNopeHeadDim: cfg.qkNopeHeadDim,
    qkRopeHeadDim: cfg.qkRopeHeadDim,
    vHeadDim: cfg.vHeadDim,
    kvLoraRank: cfg.kvLoraRank,
    scale: cfg.softmaxScale,
    causal: true,
  });
}

export function loadLayerWeights(file: SafetensorsFile, prefix = 'weights.', opts: { checkFinite?: boolean } = {}): MlaLayerWeights {
  const fn = 'loadLayerWeights';
  checkObject(fn, 'file', file);
  if (typeof file.readFloat64 !== 'function' || typeof file.has !== 'function') throw argError('ERR_ARGUMENT', fn, 'file', 'must be an open SafetensorsFile');
  if (typeof prefix !== 'string') throw argError('ERR_ARGUMENT', fn, 'prefix', `must be a string, got ${String(prefix)}`);
  checkObject(fn, 'opts', opts);
  // On by default, as for loadMlaWeights: a NaN weight would otherwise surface as NaN outputs.
  const finite = opts.checkFinite ?? true;
  const get = (n: string): Float64Array => {
    const t = file.readFloat64(prefix + n);
    if (finite) checkFinite(fn, `weights "${prefix + n}"`, t.data, t.shape);
    return t.data;
  };
  const opt = (n: string): Float64Array | null => (file.has(prefix + n) ? get(n) : null);
  return {
    qAProj: opt('q_a_proj.weight'),
    qALayernorm: opt('q_a_layernorm.weight'),
    qBProj: opt('q_b_proj.weight'),
    qProj: opt('q_proj.weight'),
    kvAProjWithMqa: get('kv_a_proj_with_mqa.weight'),
    kvALayernorm: get('kv_a_layernorm.weight'),
    kvBProj: get('kv_b_proj.weight'),
    oProj: get('o_proj.weight'),
  };
}

/** Throws MlaError (ERR_SHAPE) naming the weight whose size does not fit cfg (ERR_ARGUMENT for a bad cfg). */
export function validateLayerWeights(cfg: MlaConfig, w: MlaLayerWeights): void {
  const fn = 'validateLayerWeights';
  checkObject(fn, 'cfg', cfg);
  validateMlaConfig(cfg);
  checkObject(fn, 'weights', w);
  const H = cfg.numHeads;
  const qk = cfg.qkNopeHeadDim + cfg.qkRopeHeadDim;
  const need = (name: string, a: Float64Array | null | undefined, n: number): void => {
    if (a === null || a === undefined) throw argError('ERR_SHAPE', fn, `weights ${name}`, `is missing (layer weight ${name} is missing)`);
    checkLength(fn, `weights ${name}`, a, n, { f64: true });
  };
  if (cfg.qLoraRank !== null) {
    need('q_a_proj', w.qAProj, cfg.qLoraRank * cfg.hiddenSize);
    need('q_a_layernorm', w.qALayernorm, cfg.qLoraRank);
    need('q_b_proj', w.qBProj, H * qk * cfg.qLoraRank);
  } else {
    need('q_proj', w.qProj, H * qk * cfg.hiddenSize);
  }
  need('kv_a_proj_with_mqa', w.kvAProjWithMqa, (cfg.kvLoraRank + cfg.qkRopeHeadDim) * cfg.hiddenSize);
  need('kv_a_layernorm', w.kvALayernorm, cfg.kvLoraRank);
  need('kv_b_proj', w.kvBProj, H * (cfg.qkNopeHeadDim + cfg.vHeadDim) * cfg.kvLoraRank);
  need('o_proj', w.oProj, cfg.hiddenSize * H * cfg.vHeadDim);
}

export type AttentionMode = 'absorb' | 'naive';

export interface ReferenceLayerOptions {
  /** Sequences in the batch (all advance together, as in DeepSeek's reference). */
  batch: number;
  /** Cache capacity per sequence, in tokens. */
  maxSeqLen: number;
  /** Default 16. */
  pageSize?: number;
  /** Default attention for forward(); 'absorb' unless set. */
  mode?: AttentionMode;
  /** Rope table size; default covers startPos + maxSeqLen up to cfg.maxPositionEmbeddings. */
  ropeTable?: RopeTable;
  /** cos/sin magnitude (1 in DeepSeek's reference). */
  attentionFactor?: number;
}

export interface LayerForwardResult {
  /** [B, S, hidden] */
  y: Float64Array;
  /** [B, S, H, kvLora]: q_nope·W_UK (absorb mode; null in naive mode). */
  qLatent: Float64Array | null;
  /** [B, S, H, rope]: rotated query rope part. */
  qRope: Float64Array;
  /** [B, S, H, kvLora]: attention output before W_UV (absorb mode; null in naive mode). */
  oLatent: Float64Array | null;
  /** [B, S, H]: natural-log LSE of the scaled scores. */
  lse: Float64Array;
  /** [S] RoPE positions used. */
  positions: Int32Array;
}

export class ReferenceMlaLayer {
  readonly cfg: MlaConfig;
  readonly weights: MlaLayerWeights;
  readonly absorbed: AbsorbedWeights;
  readonly batch: number;
  readonly maxSeqLen: number;
  readonly pageSize: number;
  readonly maxPages: number;
  readonly numPages: number;
  /** [numPages, pageSize, kvLora + rope] */
  readonly cache: Float64Array;
  /** [batch, maxPages] */
  readonly blockTable: Int32Array;
  readonly mode: AttentionMode;
  private table: RopeTable | null;
  private readonly attentionFactor: number;
  private length = 0;
  private firstPos: number | null = null;

  constructor(cfg: MlaConfig, weights: MlaLayerWeights, opts: ReferenceLayerOptions) {
    const fn = 'ReferenceMlaLayer';
    validateLayerWeights(cfg, weights);
    checkObject(fn, 'opts', opts);
    checkPosInt(fn, 'opts.batch', opts.batch);
    checkPosInt(fn, 'opts.maxSeqLen', opts.maxSeqLen);
    this.cfg = cfg;
    this.weights = weights;
    this.absorbed = splitKvBProj(weights.kvBProj, cfg);
    this.batch = opts.batch;
    this.maxSeqLen = opts.maxSeqLen;
    this.pageSize = opts.pageSize ?? 16;
    checkPosInt(fn, 'opts.pageSize', this.pageSize);
    this.maxPages = Math.ceil(this.maxSeqLen / this.pageSize);
    this.numPages = this.maxPages * this.batch;
    // Slots and pages are int32 in the block table and slot mappings.
    if (sizeProduct(fn, 'opts.maxSeqLen', this.numPages, this.pageSize) > 0x7fffffff) {
      throw argError('ERR_RANGE', fn, 'opts.maxSeqLen', `× batch gives ${this.numPages * this.pageSize} cache slots; slot indices are int32 (at most ${0x7fffffff})`);
    }
    this.cache = allocHost(fn, 'opts.maxSeqLen', Float64Array, sizeProduct(fn, 'opts.maxSeqLen', this.numPages, this.pageSize, cfg.kvLoraRank + cfg.qkRopeHeadDim));
    // Interleave sequences across physical pages so a kernel that ignored the
    // block table (assuming contiguous pages) would read another sequence's rows.
    this.blockTable = new Int32Array(this.batch * this.maxPages);
    for (let b = 0; b < this.batch; b++) {
      for (let p = 0; p < this.maxPages; p++) this.blockTable[b * this.maxPages + p] = (this.maxPages - 1 - p) * this.batch + b;
    }
    this.mode = opts.mode ?? 'absorb';
    if (this.mode !== 'absorb' && this.mode !== 'naive') throw argError('ERR_ARGUMENT', fn, 'opts.mode', `must be 'absorb' or 'naive', got ${String(this.mode)}`);
    this.table = opts.ropeTable ?? null;
    this.attentionFactor = opts.attentionFactor ?? 1;
  }

  /** Tokens cached per sequence. */
  get cachedTokens(): number {
    return this.length;
  }

  /** Position of cache slot 0, once the first forward has run. */
  get startPosition(): number | null {
    return this.firstPos;
  }

  reset(): void {
    this.length = 0;
    this.firstPos = null;
    this.cache.fill(0);
  }

  private view(): PagedCacheView {
    const D = this.cfg.kvLoraRank + this.cfg.qkRopeHeadDim;
    return { cache: this.cache, pageSize: this.pageSize, dim: D, blockTable: this.blockTable, maxPages: this.maxPages };
  }

  // One table for the whole cache span, grown only if positions run past it.
  private ropeFor(startPos: number, S: number): RopeTable {
    const needed = startPos + S;
    if (this.table === null || this.table.maxPos < needed) {
      const base = this.firstPos ?? startPos;
      const size = Math.max(needed, Math.min(this.cfg.maxPositionEmbeddings, base + this.maxSeqLen));
      this.table = ropeTable(this.cfg, size, { attentionFactor: this.attentionFactor });
    }
    return this.table;
  }

  /** Cache contents so far: latent [B, len, kvLora] and rope key [B, len, rope]. */
  readCache(): { latent: Float64Array; rope: Float64Array; length: number } {
    const { kvLoraRank: C, qkRopeHeadDim: R } = this.cfg;
    const D = C + R;
    const view = this.view();
    const L = this.length;
    const latent = new Float64Array(this.batch * L * C);
    const rope = new Float64Array(this.batch * L * R);
    for (let b = 0; b < this.batch; b++) {
      for (let t = 0; t < L; t++) {
        const s = pagedSlot(view, b, t) * D;
        latent.set(this.cache.subarray(s, s + C), (b * L + t) * C);
        rope.set(this.cache.subarray(s + C, s + D), (b * L + t) * R);
      }
    }
    return { latent, rope, length: L };
  }

  /**
   * x: [B, S, hidden] for the tokens at positions startPos .. startPos + S − 1
   * (a prefill when S > 1, a decode step when S = 1). The cache holds the
   * sequence from the first call's startPos on, so later calls must continue it.
   */
  forward(x: Float64Array, startPos: number, opts: { mode?: AttentionMode } = {}): LayerForwardResult {
    const cfg = this.cfg;
    const w = this.weights;
    const B = this.batch;
    const { hiddenSize: hid, numHeads: H, kvLoraRank: C, qkNopeHeadDim: N, qkRopeHeadDim: R, vHeadDim: V } = cfg;
    const QK = N + R;
    const D = C + R;
    const fn = 'ReferenceMlaLayer.forward';
    checkObject(fn, 'opts', opts);
    const mode = opts.mode ?? this.mode;
    if (mode !== 'absorb' && mode !== 'naive') throw argError('ERR_ARGUMENT', fn, 'opts.mode', `must be 'absorb' or 'naive' (unknown mode '${String(mode)}')`);
    checkNonNegInt(fn, 'startPos', startPos);
    checkArray(fn, 'x', x);
    if (x.length % (B * hid) !== 0 || x.length === 0) {
      throw argError('ERR_SHAPE', fn, 'x', `length ${x.length} is not a positive multiple of batch·hidden = ${B * hid}`);
    }
    const S = x.length / (B * hid);
    if (this.firstPos !== null && startPos !== this.firstPos + this.length) {
      throw argError('ERR_RANGE', fn, 'startPos', `= ${startPos} does not continue the cached sequence (next position ${this.firstPos + this.length})`);
    }
    if (this.length + S > this.maxSeqLen) {
      throw argError('ERR_CAPACITY', fn, 'x', `brings ${S} new tokens; ${this.length} cached + ${S} exceed maxSeqLen ${this.maxSeqLen}`);
    }
    const T = B * S;
    const positions = Int32Array.from({ length: S }, (_, s) => startPos + s);
    const table = this.ropeFor(startPos, S);
    const layout = ropeLayoutOf(cfg);

    // Query: q = W_qb·RMSNorm(W_qa·x) (or W_q·x), then rotate its rope part.
    const q = projectQuery(cfg, w, x, T);
    const rowPos = new Int32Array(T * H);
    for (let t = 0; t < T; t++) rowPos.fill(positions[t % S]!, t * H, (t + 1) * H);
    applyRope(q, T * H, QK, N, R, rowPos, table, layout);
    const qRope = new Float64Array(T * H * R);
    for (let r = 0; r < T * H; r++) qRope.set(q.subarray(r * QK + N, (r + 1) * QK), r * R);

    // Latent: [c ; k_rope] = W_kva·x, cached as [RMSNorm(c) ; RoPE(k_rope)].
    const kvDown = linear(x, T, hid, w.kvAProjWithMqa, D);
    const view = this.view();
    const slots = new Int32Array(T);
    const tokPos = new Int32Array(T);
    for (let b = 0; b < B; b++) {
      for (let s = 0; s < S; s++) {
        slots[b * S + s] = pagedSlot(view, b, this.length + s);
        tokPos[b * S + s] = positions[s]!;
      }
    }
    appendLatent({
      kvDown,
      normWeight: w.kvALayernorm,
      eps: cfg.rmsNormEps,
      positions: tokPos,
      slotMapping: slots,
      cache: this.cache,
      pageSize: this.pageSize,
      ropeTable: table,
      layout,
    });
    if (this.firstPos === null) this.firstPos = startPos;
    this.length += S;
    const seqLens = new Int32Array(B).fill(this.length);

    let o: Float64Array;
    let qLatent: Float64Array | null = null;
    let oLatent: Float64Array | null = null;
    let lse: Float64Array;
    if (mode === 'absorb') {
      // Attention in latent space: [q_nope·W_UK ; q_rope] against [c ; k_rope], V = c.
      qLatent = absorbQuery(q, T, this.absorbed, { stride: QK });
      const qAbs = new Float64Array(T * H * D);
      for (let r = 0; r < T * H; r++) {
        qAbs.set(qLatent.subarray(r * C, (r + 1) * C), r * D);
        qAbs.set(qRope.subarray(r * R, (r + 1) * R), r * D + C);
      }
      const att = decode({
        q: qAbs,
        cache: this.cache,
        pageSize: this.pageSize,
        blockTable: this.blockTable,
        seqLens,
        qSeqLens: S,
        numHeads: H,
        dimLatent: C,
        headDim: D,
        scale: cfg.softmaxScale,
        causal: true,
      });
      oLatent = att.out;
      lse = att.lse;
      o = absorbOutput(oLatent, T, this.absorbed);
    } else if (mode === 'naive') {
      const att = naiveAttention(cfg, w.kvBProj, q, gatherPagedCache(view, seqLens), new Int32Array(B).fill(S), seqLens);
      o = att.out;
      lse = att.lse;
    } else {
      /* c8 ignore next */
      throw argError('ERR_ARGUMENT', fn, 'opts.mode', `unknown mode '${String(mode)}'`);
    }
    const y = linear(o, T, H * V, w.oProj, hid);
    return { y, qLatent, qRope, oLatent, lse, positions };
  }
}

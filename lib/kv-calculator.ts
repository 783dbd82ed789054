// KV-cache size of a model under MHA, GQA, MQA and MLA.
//
// Convention: a key head has qk_nope + qk_rope values (192 for DeepSeek-V3) and a
// value head v_head_dim (128), i.e. what the naive (non-absorbed) MLA would cache
// per head; with equal k and v dims this is the textbook 2·heads·d_head. MLA caches
// one shared row of kv_lora + qk_rope values (576) per token per layer.

import type { MlaConfig } from './config.js';
import { checkObject } from './check.js';
import { MlaError } from './errors.js';

export type AttentionKind = 'mha' | 'gqa' | 'mqa' | 'mla';
/**
 * 'fp8': one byte per value, no scales. 'fp8_e4m3': the tile-scaled FP8 cache this package
 * implements: for MLA DeepSeek-V3.2's layout (kvLora e4m3 + one f32 scale per 128 latent values
 * + rope bf16: 656 B per token per layer for V3), for the other kinds one byte per value plus
 * one f32 scale per 128 values.
 */
export type KvDType = 'f32' | 'bf16' | 'f16' | 'fp8' | 'fp8_e4m3';

export const KV_DTYPE_BYTES: Readonly<Record<KvDType, number>> = { f32: 4, bf16: 2, f16: 2, fp8: 1, fp8_e4m3: 1 };

export interface KvGeometry {
  /** Query heads (MHA caches one K/V head per query head). */
  numHeads: number;
  /** Key head dim (nope + rope under MLA). */
  headDimK: number;
  headDimV: number;
  kvLoraRank: number;
  ropeDim: number;
}

/** The cache geometry of an MLA model, and its MHA/GQA/MQA counterparts. */
export function kvGeometry(cfg: MlaConfig): KvGeometry {
  checkObject('kvGeometry', 'cfg', cfg);
  return {
    numHeads: cfg.numHeads,
    headDimK: cfg.qkNopeHeadDim + cfg.qkRopeHeadDim,
    headDimV: cfg.vHeadDim,
    kvLoraRank: cfg.kvLoraRank,
    ropeDim: cfg.qkRopeHeadDim,
  };
}

/**
 * Values cached per token per layer:
 *   MHA  H·(dk + dv)       GQA  groups·(dk + dv)       MQA  dk + dv       MLA  kvLora + rope
 */
export function kvValuesPerToken(kind: AttentionKind, g: KvGeometry, groups?: number): number {
  checkObject('kvValuesPerToken', 'g', g);
  switch (kind) {
    case 'mha':
      return g.numHeads * (g.headDimK + g.headDimV);
    case 'gqa': {
      if (groups === undefined || !Number.isSafeInteger(groups) || groups <= 0 || g.numHeads % groups !== 0) {
        throw new MlaError('ERR_ARGUMENT', `kvValuesPerToken: GQA needs \`groups\` dividing ${g.numHeads} heads, got ${String(groups)}`);
      }
      return groups * (g.headDimK + g.headDimV);
    }
    case 'mqa':
      return g.headDimK + g.headDimV;
    case 'mla':
      return g.kvLoraRank + g.ropeDim;
    default:
      throw new MlaError('ERR_ARGUMENT', `kvValuesPerToken: unknown attention kind ${String(kind)}`);
  }
}

export interface KvEstimateOptions {
  dtype: KvDType;
  numLayers: number;
  /** Tokens per sequence (default 1). */
  contextLength?: number;
  /** Sequences (default 1). */
  batch?: number;
  /** KV heads for GQA. */
  groups?: number;
}

export interface KvEstimate {
  kind: AttentionKind;
  dtype: KvDType;
  valuesPerTokenPerLayer: number;
  bytesPerTokenPerLayer: number;
  /** All layers. */
  bytesPerToken: number;
  /** bytesPerToken · contextLength · batch. */
  totalBytes: number;
}

function count(what: string, v: number): number {
  if (!Number.isSafeInteger(v) || v <= 0) throw new MlaError('ERR_ARGUMENT', `kvCacheEstimate: \`${what}\` must be a positive integer, got ${String(v)}`);
  return v;
}

export function kvCacheEstimate(kind: AttentionKind, g: KvGeometry, opts: KvEstimateOptions): KvEstimate {
  checkObject('kvCacheEstimate', 'opts', opts);
  // hasOwn: 'toString' and friends are not dtypes.
  const elem = Object.prototype.hasOwnProperty.call(KV_DTYPE_BYTES, opts.dtype) ? KV_DTYPE_BYTES[opts.dtype] : undefined;
  if (elem === undefined) throw new MlaError('ERR_DTYPE', `kvCacheEstimate: \`opts.dtype\` must be one of ${Object.keys(KV_DTYPE_BYTES).join(', ')}, got ${String(opts.dtype)}`);
  const layers = count('numLayers', opts.numLayers);
  const ctx = count('contextLength', opts.contextLength ?? 1);
  const batch = count('batch', opts.batch ?? 1);
  const values = kvValuesPerToken(kind, g, opts.groups);
  const tiles = (n: number): number => 4 * Math.ceil(n / 128);
  const perLayer = opts.dtype !== 'fp8_e4m3'
    ? values * elem
    : kind === 'mla'
      ? g.kvLoraRank + tiles(g.kvLoraRank) + 2 * g.ropeDim
      : values + tiles(values);
  return {
    kind,
    dtype: opts.dtype,
    valuesPerTokenPerLayer: values,
    bytesPerTokenPerLayer: perLayer,
    bytesPerToken: perLayer * layers,
    totalBytes: perLayer * layers * ctx * batch,
  };
}

/** MLA against MHA (and MQA, and GQA when `groups` is given) for one model. */
export function compareKvCaches(cfg: MlaConfig, opts: KvEstimateOptions): KvEstimate[] {
  checkObject('compareKvCaches', 'opts', opts);
  const g = kvGeometry(cfg);
  const kinds: AttentionKind[] = opts.groups === undefined ? ['mha', 'mqa', 'mla'] : ['mha', 'gqa', 'mqa', 'mla'];
  return kinds.map((k) => kvCacheEstimate(k, g, opts));
}

/** 70272 → "68.6 KiB". */
export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${n} B` : `${v.toFixed(1)} ${units[u]}`;
}

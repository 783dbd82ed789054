import { MlaError } from './errors.js';
// MLA layer geometry and RoPE/softmax settings, parsed from a Hugging Face
// DeepSeek-V2 / V2-Lite / V3 / R1 config.json.

export interface YarnScaling {
  type: 'yarn';
  factor: number;
  originalMaxPositionEmbeddings: number;
  betaFast: number;
  betaSlow: number;
  mscale: number;
  mscaleAllDim: number;
}

export interface MlaConfig {
  hiddenSize: number;
  numHeads: number;
  /** null: no query compression (V2-Lite), the query weight is q_proj. */
  qLoraRank: number | null;
  kvLoraRank: number;
  qkNopeHeadDim: number;
  qkRopeHeadDim: number;
  vHeadDim: number;
  rmsNormEps: number;
  ropeTheta: number;
  /** true: RoPE rotates adjacent pairs (x[2i], x[2i+1]), as DeepSeek checkpoints expect. */
  ropeInterleaved: boolean;
  ropeScaling: YarnScaling | null;
  maxPositionEmbeddings: number;
  softmaxScale: number;
}

export class ConfigError extends MlaError {
  override name = 'ConfigError';
  readonly field: string;
  constructor(field: string, message: string) {
    super('ERR_ARGUMENT', `config field '${field}': ${message}`);
    this.field = field;
  }
}

// YaRN's magnitude correction: 0.1·m·ln(f) + 1 for f > 1, else 1.
export function yarnGetMscale(factor: number, mscale = 1): number {
  if (factor <= 1) return 1;
  return 0.1 * mscale * Math.log(factor) + 1;
}

// scale = (nope + rope)^-0.5, times mscale(factor, mscale_all_dim)^2 under YaRN
// (HF convention; DeepSeek's reference gives the same with its mscale). The head
// dim is the pre-absorption 192, not the absorbed 576.
export function softmaxScale(cfg: Pick<MlaConfig, 'qkNopeHeadDim' | 'qkRopeHeadDim' | 'ropeScaling'>): number {
  if (!isRecord(cfg)) throw new ConfigError('<root>', 'softmaxScale needs a config object');
  let scale = (cfg.qkNopeHeadDim + cfg.qkRopeHeadDim) ** -0.5;
  const rs = cfg.ropeScaling;
  if (rs !== null && rs.mscaleAllDim) {
    const m = yarnGetMscale(rs.factor, rs.mscaleAllDim);
    scale *= m * m;
  }
  return scale;
}

// HF's cos/sin "attention factor": mscale(f, mscale) / mscale(f, mscale_all_dim).
// It is 1 for every released DeepSeek config; DeepSeek's own reference has none.
export function yarnAttentionFactor(rs: YarnScaling | null): number {
  if (rs === null) return 1;
  if (!isRecord(rs)) throw new ConfigError('ropeScaling', `must be an object or null, got ${String(rs)}`);
  return yarnGetMscale(rs.factor, rs.mscale) / yarnGetMscale(rs.factor, rs.mscaleAllDim);
}

type Json = Record<string, unknown>;

function isRecord(v: unknown): v is Json {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function posInt(obj: Json, field: string, prefix = ''): number {
  const v = obj[field];
  if (v === undefined || v === null) throw new ConfigError(prefix + field, 'missing');
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v <= 0) {
    throw new ConfigError(prefix + field, `must be a positive integer, got ${JSON.stringify(v)}`);
  }
  return v;
}

function posNum(obj: Json, field: string, fallback: number | undefined, prefix = ''): number {
  const v = obj[field];
  if (v === undefined || v === null) {
    if (fallback === undefined) throw new ConfigError(prefix + field, 'missing');
    return fallback;
  }
  if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) {
    throw new ConfigError(prefix + field, `must be a positive finite number, got ${JSON.stringify(v)}`);
  }
  return v;
}

function nonNegNum(obj: Json, field: string, fallback: number, prefix = ''): number {
  const v = obj[field];
  if (v === undefined || v === null) return fallback;
  if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) {
    throw new ConfigError(prefix + field, `must be a non-negative finite number, got ${JSON.stringify(v)}`);
  }
  return v;
}

function parseRopeScaling(v: unknown): YarnScaling | null {
  if (v === undefined || v === null) return null;
  if (!isRecord(v)) throw new ConfigError('rope_scaling', `must be an object or null, got ${JSON.stringify(v)}`);
  const type = v['type'] ?? v['rope_type'];
  if (type === 'default') return null;
  if (type !== 'yarn') {
    throw new ConfigError('rope_scaling.type', `only 'yarn' is supported, got ${JSON.stringify(type)}`);
  }
  const p = 'rope_scaling.';
  const factor = posNum(v, 'factor', undefined, p);
  const originalMaxPositionEmbeddings = posInt(v, 'original_max_position_embeddings', p);
  const betaFast = posNum(v, 'beta_fast', 32, p);
  const betaSlow = posNum(v, 'beta_slow', 1, p);
  if (betaFast <= betaSlow) {
    throw new ConfigError('rope_scaling.beta_fast', `must exceed beta_slow (${betaSlow}), got ${betaFast}`);
  }
  return {
    type: 'yarn',
    factor,
    originalMaxPositionEmbeddings,
    betaFast,
    betaSlow,
    // HF treats a missing mscale / mscale_all_dim as 1 / 0 (0: no softmax correction).
    mscale: nonNegNum(v, 'mscale', 1, p),
    mscaleAllDim: nonNegNum(v, 'mscale_all_dim', 0, p),
  };
}

/**
 * Builds an MlaConfig from a Hugging Face DeepSeek config.json object. Extra
 * fields accepted: rope_interleaved / rope_interleave (default true) and
 * softmax_scale (overrides the derived scale; the fixtures carry it).
 */
export function mlaConfigFromHuggingFace(json: unknown): MlaConfig {
  if (!isRecord(json)) throw new ConfigError('<root>', 'config must be a JSON object');
  const hiddenSize = posInt(json, 'hidden_size');
  const numHeads = posInt(json, 'num_attention_heads');
  const qRaw = json['q_lora_rank'];
  // DeepSeek's own ModelArgs spell "no compression" as 0; HF uses null.
  const qLoraRank = qRaw === null || qRaw === undefined || qRaw === 0 ? null : posInt(json, 'q_lora_rank');
  const kvLoraRank = posInt(json, 'kv_lora_rank');
  const qkNopeHeadDim = posInt(json, 'qk_nope_head_dim');
  const qkRopeHeadDim = posInt(json, 'qk_rope_head_dim');
  if (qkRopeHeadDim % 2 !== 0) throw new ConfigError('qk_rope_head_dim', `must be even, got ${qkRopeHeadDim}`);
  const vHeadDim = posInt(json, 'v_head_dim');
  const rmsNormEps = posNum(json, 'rms_norm_eps', 1e-6);
  const ropeTheta = posNum(json, 'rope_theta', 10000);
  const ropeScaling = parseRopeScaling(json['rope_scaling']);
  const interleaved = json['rope_interleaved'] ?? json['rope_interleave'] ?? true;
  if (typeof interleaved !== 'boolean') {
    throw new ConfigError('rope_interleaved', `must be a boolean, got ${JSON.stringify(interleaved)}`);
  }
  // Absent in the fixtures' configs; under YaRN the natural default is the
  // extended length original × factor.
  const defaultMaxPos =
    ropeScaling === null ? 4096 : Math.round(ropeScaling.originalMaxPositionEmbeddings * ropeScaling.factor);
  const maxPositionEmbeddings =
    json['max_position_embeddings'] === undefined || json['max_position_embeddings'] === null
      ? defaultMaxPos
      : posInt(json, 'max_position_embeddings');
  const derived = softmaxScale({ qkNopeHeadDim, qkRopeHeadDim, ropeScaling });
  const scale = json['softmax_scale'] === undefined ? derived : posNum(json, 'softmax_scale', derived);
  return {
    hiddenSize,
    numHeads,
    qLoraRank,
    kvLoraRank,
    qkNopeHeadDim,
    qkRopeHeadDim,
    vHeadDim,
    rmsNormEps,
    ropeTheta,
    ropeInterleaved: interleaved,
    ropeScaling,
    maxPositionEmbeddings,
    softmaxScale: scale,
  };
}

/** Checks an MlaConfig built by hand; throws ConfigError naming the field. */
export function validateMlaConfig(cfg: MlaConfig): MlaConfig {
  if (!isRecord(cfg)) throw new ConfigError('<root>', `config must be an object, got ${cfg === null ? 'null' : typeof cfg}`);
  const ints: Array<keyof MlaConfig> = ['hiddenSize', 'numHeads', 'kvLoraRank', 'qkNopeHeadDim', 'qkRopeHeadDim', 'vHeadDim', 'maxPositionEmbeddings'];
  for (const k of ints) {
    const v = cfg[k];
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v <= 0) {
      throw new ConfigError(k, `must be a positive integer, got ${JSON.stringify(v)}`);
    }
  }
  if (cfg.qLoraRank !== null && (!Number.isSafeInteger(cfg.qLoraRank) || cfg.qLoraRank <= 0)) {
    throw new ConfigError('qLoraRank', `must be a positive integer or null, got ${JSON.stringify(cfg.qLoraRank)}`);
  }
  if (cfg.qkRopeHeadDim % 2 !== 0) throw new ConfigError('qkRopeHeadDim', `must be even, got ${cfg.qkRopeHeadDim}`);
  for (const k of ['rmsNormEps', 'ropeTheta', 'softmaxScale'] as const) {
    if (!Number.isFinite(cfg[k]) || cfg[k] <= 0) throw new ConfigError(k, `must be a positive finite number, got ${cfg[k]}`);
  }
  // The rope table reads these fields; a missing ropeScaling would surface as a TypeError there.
  const rs: unknown = cfg.ropeScaling;
  if (rs !== null) {
    if (!isRecord(rs)) throw new ConfigError('ropeScaling', `must be an object or null, got ${JSON.stringify(rs)}`);
    for (const k of ['factor', 'originalMaxPositionEmbeddings', 'betaFast', 'betaSlow'] as const) {
      if (typeof rs[k] !== 'number' || !Number.isFinite(rs[k])) throw new ConfigError(`ropeScaling.${k}`, `must be a finite number, got ${JSON.stringify(rs[k])}`);
    }
  }
  return cfg;
}

const V3_HF = {
  hidden_size: 7168,
  num_attention_heads: 128,
  q_lora_rank: 1536,
  kv_lora_rank: 512,
  qk_nope_head_dim: 128,
  qk_rope_head_dim: 64,
  v_head_dim: 128,
  rope_theta: 10000,
  rms_norm_eps: 1e-6,
  max_position_embeddings: 163840,
  rope_scaling: {
    type: 'yarn',
    factor: 40,
    original_max_position_embeddings: 4096,
    beta_fast: 32,
    beta_slow: 1,
    mscale: 1.0,
    mscale_all_dim: 1.0,
  },
};

const V2_LITE_HF = {
  ...V3_HF,
  hidden_size: 2048,
  num_attention_heads: 16,
  q_lora_rank: null,
  rope_scaling: { ...V3_HF.rope_scaling, mscale: 0.707, mscale_all_dim: 0.707 },
};

function frozen(cfg: MlaConfig): MlaConfig {
  if (cfg.ropeScaling !== null) Object.freeze(cfg.ropeScaling);
  return Object.freeze(cfg);
}

export type MlaPresetName = 'deepseek-v3' | 'deepseek-v2-lite';

/** Attention geometry of released models (V3 also covers R1 and V3.1). */
export const MLA_PRESETS: Readonly<Record<MlaPresetName, MlaConfig>> = Object.freeze({
  'deepseek-v3': frozen(mlaConfigFromHuggingFace(V3_HF)),
  'deepseek-v2-lite': frozen(mlaConfigFromHuggingFace(V2_LITE_HF)),
});

// One MLA layer's attention weights from Hugging Face safetensors checkpoints
// (a single file, or a directory of shards with model.safetensors.index.json),
// plus the layer geometry from config.json. Only the tensors of the requested
// layer are read, each by offset, so a 700 GB checkpoint costs one layer's bytes.

import * as fs from 'node:fs';
import * as path from 'node:path';
import { allocHost, argError, checkArray, checkFinite, checkObject, checkPosInt, sizeProduct } from './check.js';
import { ConfigError, mlaConfigFromHuggingFace, validateMlaConfig, type MlaConfig } from './config.js';
import { MlaError } from './errors.js';
import type { MlaLayerWeights } from './reference/layer.js';
import {
  e4m3ToFloat,
  f16ToFloat,
  SafetensorsFile,
  type SafetensorsDtype,
  type TensorInfo,
} from './safetensors.js';

/** A weight as float32 on the host (bf16/f16/f32 exactly; FP8 dequantized in float32). */
export interface HostWeight {
  /** Full tensor name in the checkpoint. */
  name: string;
  /** Shard it came from. */
  file: string;
  shape: readonly number[];
  /** Dtype as stored (F8_E4M3 for a dequantized FP8 weight). */
  storedDtype: SafetensorsDtype;
  data: Float32Array;
}

/** One layer's attention weights ([out, in] like the checkpoints). */
export interface MlaWeights {
  qAProj: HostWeight | null;
  qALayernorm: HostWeight | null;
  qBProj: HostWeight | null;
  /** Only without query compression (q_lora_rank null, e.g. DeepSeek-V2-Lite). */
  qProj: HostWeight | null;
  kvAProjWithMqa: HostWeight;
  kvALayernorm: HostWeight;
  kvBProj: HostWeight;
  oProj: HostWeight;
}

export interface LoadWeightsOptions {
  /** Decoder layer index; the prefix is then `model.layers.N.self_attn.` (default layer 0). */
  layer?: number;
  /** Name prefix overriding `layer` (the fixtures use `weights.`). */
  prefix?: string;
  /**
   * Reject a weight holding NaN or ±Infinity (ERR_RANGE naming the tensor, the first bad flat
   * and multi-dimensional index and the value). Default true: a corrupt shard otherwise yields
   * NaN outputs far from their cause. The scan of the decoded float32 data measured 1–2 ms per
   * million elements (Node 20, a shared 2-core x86-64 VM), ~0.3 s for a DeepSeek-V3 layer's
   * 187M attention weights, next to 3–5 ms per million to read and decode BF16 ones from the
   * page cache; `false` skips it.
   */
  checkFinite?: boolean;
}

/** FP8 block size of DeepSeek-V3 checkpoints (weight_block_size [128, 128]). */
export const FP8_BLOCK = 128;

/** Hugging Face name prefix of a decoder layer's attention module. */
export function layerPrefix(layer: number): string {
  if (!Number.isSafeInteger(layer) || layer < 0) throw new MlaError('ERR_ARGUMENT', `weights: \`layer\` must be a non-negative integer, got ${String(layer)}`);
  return `model.layers.${layer}.self_attn.`;
}

/**
 * The MlaConfig of a model: `pathOrDir` is a config.json, a directory holding one,
 * or a .safetensors file whose metadata carries a `config` JSON (the fixtures).
 */
export function loadMlaConfig(pathOrDir: string): MlaConfig {
  if (typeof pathOrDir !== 'string') throw argError('ERR_ARGUMENT', 'loadMlaConfig', 'pathOrDir', `must be a path string, got ${String(pathOrDir)}`);
  let file = pathOrDir;
  let text: string;
  try {
    if (fs.statSync(pathOrDir).isDirectory()) file = path.join(pathOrDir, 'config.json');
    if (file.endsWith('.safetensors')) {
      using f = SafetensorsFile.open(file);
      const cfg = f.metadata['config'];
      if (cfg === undefined) throw new MlaError('ERR_ARGUMENT', `loadMlaConfig: ${file} has no \`config\` in its metadata`);
      text = cfg;
    } else {
      text = fs.readFileSync(file, 'utf8');
    }
  } catch (e) {
    if (e instanceof MlaError) throw e;
    throw new MlaError('ERR_ARGUMENT', `loadMlaConfig: cannot read ${file}: ${(e as Error).message}`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new MlaError('ERR_FORMAT', `loadMlaConfig: ${file} is not valid JSON: ${(e as Error).message}`);
  }
  try {
    return mlaConfigFromHuggingFace(json);
  } catch (e) {
    if (e instanceof ConfigError) throw new MlaError('ERR_FORMAT', `loadMlaConfig: ${file}: ${e.message}`);
    throw e;
  }
}

// Which shard holds which tensor, opening each shard at most once.
class ShardSet implements Disposable {
  readonly #where: Map<string, string> | null;
  readonly #files: string[];
  readonly #open = new Map<string, SafetensorsFile>();
  readonly root: string;

  constructor(pathOrDir: string) {
    this.root = pathOrDir;
    let stat: fs.Stats;
    try {
      stat = fs.statSync(pathOrDir);
    } catch (e) {
      throw new MlaError('ERR_ARGUMENT', `weights: cannot read ${pathOrDir}: ${(e as Error).message}`);
    }
    if (!stat.isDirectory()) {
      this.#where = null;
      this.#files = [pathOrDir];
      return;
    }
    const index = path.join(pathOrDir, 'model.safetensors.index.json');
    if (fs.existsSync(index)) {
      this.#where = parseIndex(index, pathOrDir);
      this.#files = [...new Set(this.#where.values())];
      return;
    }
    // No index: look through every shard's header (headers only, still cheap).
    this.#where = null;
    this.#files = fs.readdirSync(pathOrDir).filter((f) => f.endsWith('.safetensors')).sort().map((f) => path.join(pathOrDir, f));
    if (this.#files.length === 0) throw new MlaError('ERR_ARGUMENT', `weights: ${pathOrDir} holds no .safetensors file and no model.safetensors.index.json`);
  }

  #file(p: string): SafetensorsFile {
    let f = this.#open.get(p);
    if (f === undefined) {
      try {
        f = SafetensorsFile.open(p);
      } catch (e) {
        throw asMlaError(e);
      }
      this.#open.set(p, f);
    }
    return f;
  }

  /** The shard holding `name`, or null. */
  find(name: string): SafetensorsFile | null {
    if (this.#where !== null) {
      const p = this.#where.get(name);
      return p === undefined ? null : this.#file(p);
    }
    for (const p of this.#files) {
      const f = this.#file(p);
      if (f.has(name)) return f;
    }
    return null;
  }

  get openedFiles(): number {
    return this.#open.size;
  }

  [Symbol.dispose](): void {
    for (const f of this.#open.values()) f.close();
    this.#open.clear();
  }
}

function parseIndex(index: string, dir: string): Map<string, string> {
  let json: unknown;
  try {
    json = JSON.parse(fs.readFileSync(index, 'utf8'));
  } catch (e) {
    throw new MlaError('ERR_FORMAT', `weights: cannot parse ${index}: ${(e as Error).message}`);
  }
  const map = typeof json === 'object' && json !== null ? (json as Record<string, unknown>)['weight_map'] : undefined;
  if (typeof map !== 'object' || map === null || Array.isArray(map)) throw new MlaError('ERR_FORMAT', `weights: ${index} has no \`weight_map\` object`);
  const out = new Map<string, string>();
  for (const [name, file] of Object.entries(map)) {
    // A shard name with a path separator could point outside the checkpoint directory.
    if (typeof file !== 'string' || file !== path.basename(file)) throw new MlaError('ERR_FORMAT', `weights: ${index}: weight_map['${name}'] is not a shard file name`);
    out.set(name, path.join(dir, file));
  }
  return out;
}

// Safetensors errors are already MlaErrors (ERR_FORMAT, naming file and tensor).
function asMlaError(e: unknown): MlaError {
  if (e instanceof MlaError) return e;
  return new MlaError('ERR_ARGUMENT', `weights: ${(e as Error).message}`);
}

const E4M3 = Float32Array.from({ length: 256 }, (_, i) => e4m3ToFloat(i));
let F16: Float32Array | null = null;

// Raw little-endian elements -> float32, without a float64 detour (an o_proj of
// DeepSeek-V3 has 117M elements).
function decodeToF32(bytes: Uint8Array, dtype: SafetensorsDtype, what: string): Float32Array {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  switch (dtype) {
    case 'F32': {
      const out = new Float32Array(bytes.length / 4);
      for (let i = 0; i < out.length; i++) out[i] = dv.getFloat32(4 * i, true);
      return out;
    }
    case 'BF16': {
      const bits = new Uint32Array(bytes.length / 2);
      for (let i = 0; i < bits.length; i++) bits[i] = dv.getUint16(2 * i, true) << 16;
      return new Float32Array(bits.buffer);
    }
    case 'F16': {
      F16 ??= Float32Array.from({ length: 65536 }, (_, i) => f16ToFloat(i));
      const out = new Float32Array(bytes.length / 2);
      for (let i = 0; i < out.length; i++) out[i] = F16[dv.getUint16(2 * i, true)]!;
      return out;
    }
    case 'F8_E4M3': {
      const out = new Float32Array(bytes.length);
      for (let i = 0; i < out.length; i++) out[i] = E4M3[bytes[i]!]!;
      return out;
    }
    default:
      throw new MlaError('ERR_ARGUMENT', `${what} has dtype ${dtype}; attention weights must be BF16, F16, F32 or F8_E4M3 (with a _scale_inv)`);
  }
}

/**
 * w[n, k] = fp8[n, k] · scaleInv[⌊n/block⌋, ⌊k/block⌋] in float32, DeepSeek-V3's
 * weight_dequant. `fp8` holds decoded e4m3 values [rows, cols].
 */
export function dequantizeBlocks(fp8: Float32Array, rows: number, cols: number, scaleInv: Float32Array, block = FP8_BLOCK): Float32Array {
  const fn = 'dequantizeBlocks';
  checkArray(fn, 'fp8', fp8);
  checkArray(fn, 'scaleInv', scaleInv);
  checkPosInt(fn, 'rows', rows);
  checkPosInt(fn, 'cols', cols);
  checkPosInt(fn, 'block', block);
  sizeProduct(fn, 'rows', rows, cols);
  const sCols = Math.ceil(cols / block);
  if (fp8.length !== rows * cols || scaleInv.length !== Math.ceil(rows / block) * sCols) {
    throw new MlaError('ERR_SHAPE', `dequantizeBlocks: [${rows}, ${cols}] needs ${rows * cols} values and ${Math.ceil(rows / block) * sCols} scales, got ${fp8.length} and ${scaleInv.length}`);
  }
  const out = allocHost(fn, 'rows', Float32Array, rows * cols);
  for (let n = 0; n < rows; n++) {
    const srow = Math.floor(n / block) * sCols;
    for (let k = 0; k < cols; k++) out[n * cols + k] = fp8[n * cols + k]! * scaleInv[srow + Math.floor(k / block)]!;
  }
  return out;
}

function shapeStr(s: readonly number[]): string {
  return `[${s.join(', ')}]`;
}

function readWeight(shards: ShardSet, name: string, shape: readonly number[], finite: boolean): HostWeight {
  const f = shards.find(name);
  if (f === null) throw new MlaError('ERR_ARGUMENT', `weights: tensor '${name}' is missing from ${shards.root}`);
  const info: TensorInfo = f.info(name);
  const where = `weights: tensor '${name}' in ${f.path}`;
  if (info.shape.length !== shape.length || info.shape.some((d, i) => d !== shape[i])) {
    throw new MlaError('ERR_SHAPE', `${where} has shape ${shapeStr(info.shape)}, the config needs ${shapeStr(shape)}`);
  }
  let raw: Uint8Array;
  try {
    raw = f.read(name).data;
  } catch (e) {
    throw asMlaError(e);
  }
  let data = decodeToF32(raw, info.dtype, where);
  if (info.dtype === 'F8_E4M3') {
    const sName = `${name}_scale_inv`;
    const sf = shards.find(sName);
    if (sf === null) throw new MlaError('ERR_ARGUMENT', `${where} is F8_E4M3 but its block scales '${sName}' are missing`);
    const sInfo = sf.info(sName);
    const rows = shape[0]!;
    const cols = shape.length > 1 ? shape[1]! : 1;
    const sShape = shape.length > 1 ? [Math.ceil(rows / FP8_BLOCK), Math.ceil(cols / FP8_BLOCK)] : [Math.ceil(rows / FP8_BLOCK)];
    if (sInfo.shape.length !== sShape.length || sInfo.shape.some((d, i) => d !== sShape[i])) {
      throw new MlaError('ERR_SHAPE', `weights: tensor '${sName}' in ${sf.path} has shape ${shapeStr(sInfo.shape)}, FP8 ${shapeStr(shape)} in ${FP8_BLOCK}×${FP8_BLOCK} blocks needs ${shapeStr(sShape)}`);
    }
    let sRaw: Uint8Array;
    try {
      sRaw = sf.read(sName).data;
    } catch (e) {
      throw asMlaError(e);
    }
    const scales = decodeToF32(sRaw, sInfo.dtype, `weights: tensor '${sName}' in ${sf.path}`);
    data = dequantizeBlocks(data, rows, cols, scales);
  }
  if (finite) checkFinite('loadMlaWeights', `weights "${name}" (in ${f.path})`, data, shape);
  return { name, file: f.path, shape: [...shape], storedDtype: info.dtype, data };
}

/**
 * Reads one layer's attention weights, checking every shape against `config`.
 * Missing tensor → ERR_ARGUMENT, wrong shape → ERR_SHAPE; both name the tensor and file.
 */
export function loadMlaWeights(pathOrDir: string, config: MlaConfig, opts: LoadWeightsOptions = {}): MlaWeights {
  const fn = 'loadMlaWeights';
  if (typeof pathOrDir !== 'string') throw argError('ERR_ARGUMENT', fn, 'pathOrDir', `must be a path string, got ${String(pathOrDir)}`);
  checkConfig(fn, config);
  checkObject(fn, 'opts', opts);
  if (opts.prefix !== undefined && typeof opts.prefix !== 'string') throw argError('ERR_ARGUMENT', fn, 'opts.prefix', `must be a string, got ${String(opts.prefix)}`);
  const finite = opts.checkFinite ?? true;
  if (typeof finite !== 'boolean') throw argError('ERR_ARGUMENT', fn, 'opts.checkFinite', `must be a boolean, got ${String(finite)}`);
  const prefix = opts.prefix ?? layerPrefix(opts.layer ?? 0);
  const { hiddenSize: hid, numHeads: H, qLoraRank: qr, kvLoraRank: C, qkNopeHeadDim: N, qkRopeHeadDim: R, vHeadDim: V } = config;
  using shards = new ShardSet(pathOrDir);
  const get = (short: string, shape: readonly number[]): HostWeight => readWeight(shards, `${prefix}${short}.weight`, shape, finite);
  return {
    qAProj: qr === null ? null : get('q_a_proj', [qr, hid]),
    qALayernorm: qr === null ? null : get('q_a_layernorm', [qr]),
    qBProj: qr === null ? null : get('q_b_proj', [H * (N + R), qr]),
    qProj: qr === null ? get('q_proj', [H * (N + R), hid]) : null,
    kvAProjWithMqa: get('kv_a_proj_with_mqa', [C + R, hid]),
    kvALayernorm: get('kv_a_layernorm', [C]),
    kvBProj: get('kv_b_proj', [H * (N + V), C]),
    oProj: get('o_proj', [hid, H * V]),
  };
}

// A ConfigError is already an MlaError naming the field; this adds which call it came from.
function checkConfig(fn: string, config: MlaConfig): void {
  checkObject(fn, 'config', config);
  try {
    validateMlaConfig(config);
  } catch (e) {
    if (e instanceof ConfigError) throw argError('ERR_ARGUMENT', fn, 'config', `is invalid: ${e.message}`);
    throw e;
  }
}

/** The float64 weights lib/reference works on. */
export function toReferenceWeights(w: MlaWeights): MlaLayerWeights {
  const fn = 'toReferenceWeights';
  checkObject(fn, 'weights', w);
  const f64 = (k: keyof MlaWeights, required: boolean): Float64Array | null => {
    const x = w[k];
    if (x === null || x === undefined) {
      if (required) throw argError('ERR_ARGUMENT', fn, `weights.${k}`, 'is missing');
      return null;
    }
    return Float64Array.from(checkArray(fn, `weights.${k}.data`, x.data));
  };
  return {
    qAProj: f64('qAProj', false),
    qALayernorm: f64('qALayernorm', false),
    qBProj: f64('qBProj', false),
    qProj: f64('qProj', false),
    kvAProjWithMqa: f64('kvAProjWithMqa', true)!,
    kvALayernorm: f64('kvALayernorm', true)!,
    kvBProj: f64('kvBProj', true)!,
    oProj: f64('oProj', true)!,
  };
}

/** True for weights from loadMlaWeights (as opposed to float64 reference weights). */
export function isHostWeights(w: MlaWeights | MlaLayerWeights): w is MlaWeights {
  checkObject('isHostWeights', 'weights', w);
  return !(w.kvBProj instanceof Float64Array);
}

/**
 * Throws ERR_SHAPE naming the first weight whose size does not fit `config` (or that is
 * missing for its query path). Works on both weight forms without converting them.
 */
export function checkWeightsFit(config: MlaConfig, w: MlaWeights | MlaLayerWeights): void {
  checkConfig('checkWeightsFit', config);
  checkObject('checkWeightsFit', 'weights', w);
  const { hiddenSize: hid, numHeads: H, qLoraRank: qr, kvLoraRank: C, qkNopeHeadDim: N, qkRopeHeadDim: R, vHeadDim: V } = config;
  const host = isHostWeights(w);
  const len = (k: keyof MlaWeights): number | null => {
    const v = host ? w[k]?.data : (w as MlaLayerWeights)[k];
    return v === null || v === undefined ? null : v.length;
  };
  const need: [keyof MlaWeights, string, number][] = [
    ...(qr === null
      ? ([['qProj', 'q_proj', H * (N + R) * hid]] as [keyof MlaWeights, string, number][])
      : ([['qAProj', 'q_a_proj', qr * hid], ['qALayernorm', 'q_a_layernorm', qr], ['qBProj', 'q_b_proj', H * (N + R) * qr]] as [keyof MlaWeights, string, number][])),
    ['kvAProjWithMqa', 'kv_a_proj_with_mqa', (C + R) * hid],
    ['kvALayernorm', 'kv_a_layernorm', C],
    ['kvBProj', 'kv_b_proj', H * (N + V) * C],
    ['oProj', 'o_proj', hid * H * V],
  ];
  for (const [k, name, n] of need) {
    const got = len(k);
    if (got === null) throw new MlaError('ERR_SHAPE', `weights: ${name} is missing; the config (q_lora_rank ${qr ?? 'null'}) needs it`);
    if (got !== n) throw new MlaError('ERR_SHAPE', `weights: ${name} has ${got} values, the config needs ${n}`);
  }
}

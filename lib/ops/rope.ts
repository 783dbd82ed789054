// Decoupled RoPE for MLA (DeepSeek-V2/V3): the cos/sin table on the device, in-place
// rotation of the rope slice of a query or key, and the fused latent-cache writer
// (RMSNorm of the KV latent + RoPE of the shared key, written into the paged cache).
import type { MlaConfig, YarnScaling } from '../config.js';
import type { DType } from '../dtype.js';
import { MlaError } from '../errors.js';
import { nativeStream } from '../runtime/stream.js';
import { nativeOp } from '../native.js';
import type { NativeRopeLayout } from '../native-contract.js';
import { ropeInvFreq, ropeLayoutOf } from '../reference/rope.js';
import type { RopeLayout } from '../reference/rope.js';
import { DeviceTensor } from '../runtime/tensor.js';
import type { StreamOption, TensorMeta } from '../runtime/tensor.js';
import { checkFp8Cache, FP8_CACHE_KV_LORA, FP8_CACHE_ROPE } from './fp8-cache.js';
import { checkInt, checkNumber, checkTensor, refuseIndexCheckDuringCapture } from './validate.js';

export type { RopeLayout };

/** How the rotary frequencies are built (DeepSeek's precompute_freqs_cis). */
export interface RopeConfig {
  /** Rotated width per head (qk_rope_head_dim, 64 for DeepSeek); even. */
  rotaryDim: number;
  ropeTheta: number;
  /** YaRN parameters, or null for plain RoPE. */
  scaling: YarnScaling | null;
  /** Magnitude m of the cos/sin table (HF's "attention factor"); default 1 as in DeepSeek's reference. */
  attentionFactor?: number | undefined;
  /** Default pairing of the ops using the table; default 'interleaved' (DeepSeek checkpoints). */
  layout?: RopeLayout | undefined;
}

/** What validation needs to know about a table (a RopeTable, or a plain object in tests). */
export interface RopeTableMeta {
  readonly rotaryDim: number;
  readonly maxPositions: number;
  readonly layout: RopeLayout;
  readonly disposed: boolean;
}

/** Largest table: positions must be exact in float32 (the angle is f32(p · invFreq)). */
export const ROPE_MAX_POSITIONS = 2 ** 24;
/** appendLatent keeps a latent row in one warp's registers. */
export const APPEND_LATENT_MAX_KV_LORA = 1024;
export const APPEND_LATENT_MAX_ROTARY_DIM = 256;

const FLOAT_DTYPES: readonly DType[] = ['bf16', 'f16', 'f32'];
const LAYOUTS: readonly RopeLayout[] = ['interleaved', 'neox'];

/** The RoPE part of an MlaConfig; `attentionFactor` defaults to 1 (DeepSeek's reference). */
export function ropeConfigFrom(cfg: MlaConfig, opts: { attentionFactor?: number } = {}): RopeConfig {
  return {
    rotaryDim: cfg.qkRopeHeadDim,
    ropeTheta: cfg.ropeTheta,
    scaling: cfg.ropeScaling,
    attentionFactor: opts.attentionFactor ?? 1,
    layout: ropeLayoutOf(cfg),
  };
}

function checkLayout(op: string, layout: unknown): RopeLayout {
  if (typeof layout !== 'string' || !(LAYOUTS as readonly string[]).includes(layout)) {
    throw new MlaError('ERR_ARGUMENT', `${op}: \`layout\` must be 'interleaved' or 'neox', got ${String(layout)}`);
  }
  return layout as RopeLayout;
}

/** Checks a RopeConfig; every failure is an MlaError naming `cfg.<field>`. */
export function validateRopeConfig(cfg: RopeConfig, op = 'RopeTable.create'): RopeConfig {
  if (typeof cfg !== 'object' || cfg === null) throw new MlaError('ERR_ARGUMENT', `${op}: \`cfg\` must be a RopeConfig object`);
  const dim = checkInt(op, 'cfg.rotaryDim', cfg.rotaryDim, 2, 1 << 16);
  if (dim % 2 !== 0) throw new MlaError('ERR_SHAPE', `${op}: \`cfg.rotaryDim\` must be even, got ${dim}`);
  const theta = checkNumber(op, 'cfg.ropeTheta', cfg.ropeTheta, { positive: true });
  // ln θ divides YaRN's correction dims and θ^(2i/d) must decrease with i.
  if (!(theta > 1)) throw new MlaError('ERR_RANGE', `${op}: \`cfg.ropeTheta\` must be > 1, got ${theta}`);
  if (cfg.attentionFactor !== undefined) checkNumber(op, 'cfg.attentionFactor', cfg.attentionFactor, { positive: true });
  if (cfg.layout !== undefined) checkLayout(op, cfg.layout);
  const s = cfg.scaling;
  if (s !== null) {
    if (typeof s !== 'object' || s === undefined) throw new MlaError('ERR_ARGUMENT', `${op}: \`cfg.scaling\` must be a YaRN object or null`);
    checkNumber(op, 'cfg.scaling.factor', s.factor, { positive: true });
    checkInt(op, 'cfg.scaling.originalMaxPositionEmbeddings', s.originalMaxPositionEmbeddings, 1);
    checkNumber(op, 'cfg.scaling.betaSlow', s.betaSlow, { positive: true });
    checkNumber(op, 'cfg.scaling.betaFast', s.betaFast, { positive: true });
    if (!(s.betaFast > s.betaSlow)) {
      throw new MlaError('ERR_RANGE', `${op}: \`cfg.scaling.betaFast\` (${s.betaFast}) must exceed betaSlow (${s.betaSlow})`);
    }
  }
  return cfg;
}

/**
 * Inverse frequencies in float32, exactly as DeepSeek's precompute_freqs_cis (and the float64
 * reference, whose code this reuses): 1/θ^(2i/d), YaRN-blended over the correction range.
 */
export function ropeInverseFrequencies(cfg: RopeConfig): Float32Array {
  validateRopeConfig(cfg, 'ropeInverseFrequencies');
  return Float32Array.from(ropeInvFreq(cfg.rotaryDim, cfg.ropeTheta, cfg.scaling));
}

/**
 * The cos/sin table on the device: f32 [maxPositions, rotaryDim/2, 2] holding
 * (m·cos(f32(p·invFreq_i)), m·sin(…)), cos/sin taken in double precision of the f32 angle as
 * the float64 reference does. Positions ≥ maxPositions are rejected (ERR_RANGE) by the ops.
 */
export class RopeTable implements RopeTableMeta, Disposable {
  readonly config: Readonly<RopeConfig>;
  readonly rotaryDim: number;
  readonly maxPositions: number;
  readonly attentionFactor: number;
  readonly layout: RopeLayout;
  /** Host copy of the float32 inverse frequencies [rotaryDim / 2]. */
  readonly invFreq: Float32Array;
  #table: DeviceTensor;
  #invFreq: DeviceTensor;

  private constructor(cfg: RopeConfig, maxPositions: number, invFreq: Float32Array, table: DeviceTensor, invFreqDev: DeviceTensor) {
    this.config = Object.freeze({ ...cfg });
    this.rotaryDim = cfg.rotaryDim;
    this.maxPositions = maxPositions;
    this.attentionFactor = cfg.attentionFactor ?? 1;
    this.layout = cfg.layout ?? 'interleaved';
    this.invFreq = invFreq;
    this.#table = table;
    this.#invFreq = invFreqDev;
  }

  /** Builds the table for positions [0, maxPositions) on `opts.stream` (asynchronous). */
  static create(cfg: RopeConfig, maxPositions: number, opts: StreamOption = {}): RopeTable {
    const op = 'RopeTable.create';
    validateRopeConfig(cfg, op);
    checkInt(op, 'maxPositions', maxPositions, 1, ROPE_MAX_POSITIONS);
    const invFreq = Float32Array.from(ropeInvFreq(cfg.rotaryDim, cfg.ropeTheta, cfg.scaling));
    const half = cfg.rotaryDim / 2;
    // Kept alive with the table: the kernel may still be reading it after create() returns.
    const invFreqDev = DeviceTensor.fromArray(invFreq, [half], 'f32');
    let table: DeviceTensor | undefined;
    try {
      table = DeviceTensor.empty([maxPositions, half, 2], 'f32');
      nativeOp('ropeTable')({
        table: table.nativeRef(`${op}: \`table\``),
        invFreq: invFreqDev.nativeRef(`${op}: \`invFreq\``),
        attentionFactor: cfg.attentionFactor ?? 1,
        stream: nativeStream(op, opts.stream),
      });
    } catch (err) {
      table?.dispose();
      invFreqDev.dispose();
      throw err;
    }
    return new RopeTable(cfg, maxPositions, invFreq, table, invFreqDev);
  }

  /** f32 [maxPositions, rotaryDim / 2, 2]: (cos, sin) pairs. */
  get table(): DeviceTensor {
    if (this.disposed) throw new MlaError('ERR_DISPOSED', 'RopeTable was disposed');
    return this.#table;
  }

  get disposed(): boolean {
    return this.#table.disposed;
  }

  dispose(): void {
    this.#table.dispose();
    this.#invFreq.dispose();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}

// ---- validation (pure: TensorMeta / RopeTableMeta / host arrays) -----------------------------

export interface RopeOptions extends StreamOption {
  /** Pairing: 'interleaved' (x[2i], x[2i+1]) or 'neox' (x[i], x[i + d/2]); default the table's. */
  layout?: RopeLayout | undefined;
  /**
   * Copy the device indices to the host and range-check them before launching (default true;
   * a synchronisation). Pass false under CUDA graph capture: the kernels then skip, never
   * clamp, a token whose index is out of range.
   */
  checkIndices?: boolean | undefined;
}

export interface RopeQueryOptions extends RopeOptions {
  /** Width of the unrotated prefix of each head; default width − rotaryDim (rope last). */
  nopeDim?: number | undefined;
}

function checkTable(op: string, table: unknown): RopeTableMeta {
  const t = table as Partial<RopeTableMeta> | null;
  if (typeof t !== 'object' || t === null || typeof t.rotaryDim !== 'number' || typeof t.maxPositions !== 'number') {
    throw new MlaError('ERR_ARGUMENT', `${op}: \`table\` must be a RopeTable`);
  }
  if (t.disposed) throw new MlaError('ERR_DISPOSED', `${op}: \`table\` was disposed`);
  return t as RopeTableMeta;
}

/**
 * Rejects views whose (token, head, ...) rows overlap: the kernels write each row once, in
 * parallel, so an overlap would be a race. `inner` is the contiguous extent of one row.
 */
function checkNoOverlap(op: string, name: string, t: TensorMeta, outerDims: number, inner: number): void {
  const dims: Array<[number, number]> = [];
  for (let d = 0; d < outerDims; d++) if (t.shape[d]! > 1) dims.push([t.strides[d]!, t.shape[d]!]);
  dims.sort((a, b) => a[0] - b[0]);
  let extent = inner;
  for (const [stride, size] of dims) {
    if (stride < extent) throw new MlaError('ERR_SHAPE', `${op}: \`${name}\` has overlapping rows (strides [${t.strides.join(', ')}])`);
    extent = stride * (size - 1) + extent;
  }
}

function checkIndexTensor(op: string, name: string, t: unknown, tokens: number): TensorMeta {
  return checkTensor(op, name, t, { dtype: 'i32', shape: [tokens] });
}

/** Mixed precisions are fine through f32; bf16 ↔ f16 is almost surely a mistake. */
function checkCompatible(op: string, name: string, t: TensorMeta, other: string, dtype: DType): void {
  if (t.dtype !== dtype && t.dtype !== 'f32' && dtype !== 'f32') {
    throw new MlaError('ERR_DTYPE', `${op}: \`${name}\` (${t.dtype}) must have the dtype of \`${other}\` (${dtype}) or be f32`);
  }
}

export interface RopeShape {
  tokens: number;
  heads: number;
  layout: RopeLayout;
}

/**
 * rope(): x [T, H, rotaryDim] or [T, rotaryDim] (bf16/f16/f32, last dim contiguous, rows not
 * overlapping), positions i32 [T], a live table of the same rotaryDim.
 */
export function validateRope(x: TensorMeta, positions: TensorMeta, table: RopeTableMeta, opts: { layout?: RopeLayout | undefined } = {}, op = 'rope', xName = 'x'): RopeShape {
  const tab = checkTable(op, table);
  const xt = checkTensor(op, xName, x, { dtype: FLOAT_DTYPES, innerContiguous: true });
  if (xt.shape.length !== 2 && xt.shape.length !== 3) {
    throw new MlaError('ERR_SHAPE', `${op}: \`${xName}\` must be [T, H, ${tab.rotaryDim}] or [T, ${tab.rotaryDim}], got [${xt.shape.join(', ')}]`);
  }
  const width = xt.shape[xt.shape.length - 1]!;
  if (width !== tab.rotaryDim) {
    throw new MlaError('ERR_SHAPE', `${op}: \`${xName}\`'s last dim is ${width} but the table's rotaryDim is ${tab.rotaryDim}`);
  }
  checkNoOverlap(op, xName, xt, xt.shape.length - 1, width);
  const tokens = xt.shape[0]!;
  const heads = xt.shape.length === 3 ? xt.shape[1]! : 1;
  checkIndexTensor(op, 'positions', positions, tokens);
  const layout = checkLayout(op, opts.layout ?? tab.layout);
  return { tokens, heads, layout };
}

/** Metadata of a rotaryDim-wide slice of q's last dim (same strides; the offset is not metadata). */
export function ropeSliceMeta(q: TensorMeta, rotaryDim: number): TensorMeta {
  const last = q.shape.length - 1;
  const shape = [...q.shape];
  shape[last] = rotaryDim;
  return { shape, strides: q.strides, dtype: q.dtype, disposed: q.disposed };
}

/** ropeQuery(): q [T, H, nope + rope] or [T, nope + rope]; returns the shape and the nope width. */
export function validateRopeQuery(q: TensorMeta, positions: TensorMeta, table: RopeTableMeta, opts: { layout?: RopeLayout | undefined; nopeDim?: number | undefined } = {}): RopeShape & { nopeDim: number } {
  const op = 'ropeQuery';
  const tab = checkTable(op, table);
  const qt = checkTensor(op, 'q', q, { dtype: FLOAT_DTYPES, innerContiguous: true });
  if (qt.shape.length !== 2 && qt.shape.length !== 3) {
    throw new MlaError('ERR_SHAPE', `${op}: \`q\` must be [T, H, nope + ${tab.rotaryDim}] or [T, nope + ${tab.rotaryDim}], got [${qt.shape.join(', ')}]`);
  }
  const width = qt.shape[qt.shape.length - 1]!;
  if (width < tab.rotaryDim) throw new MlaError('ERR_SHAPE', `${op}: \`q\`'s last dim ${width} is narrower than rotaryDim ${tab.rotaryDim}`);
  const nopeDim = opts.nopeDim === undefined ? width - tab.rotaryDim : checkInt(op, 'nopeDim', opts.nopeDim, 0, width - tab.rotaryDim);
  const shape = validateRope(ropeSliceMeta(qt, tab.rotaryDim), positions, tab, opts, op, 'q');
  return Object.assign(shape, { nopeDim }); // not a spread: V8's object spread costs ~1 µs
}

/** positions[i] must lie in [0, maxPositions) (only where `active(i)`, when given). */
export function checkRopePositions(op: string, positions: ArrayLike<number>, maxPositions: number, active?: (i: number) => boolean): void {
  for (let i = 0; i < positions.length; i++) {
    const p = positions[i]!;
    if (active && !active(i)) continue;
    if (!Number.isInteger(p) || p < 0 || p >= maxPositions) {
      throw new MlaError('ERR_RANGE', `${op}: \`positions\`[${i}] = ${p} is outside the RoPE table [0, ${maxPositions})`);
    }
  }
}

/** slotMapping[i] ∈ {−1} ∪ [0, numSlots), no slot written twice. */
export function checkSlotMapping(op: string, slots: ArrayLike<number>, numSlots: number): void {
  const seen = new Map<number, number>();
  for (let i = 0; i < slots.length; i++) {
    const s = slots[i]!;
    if (s === -1) continue;
    if (!Number.isInteger(s) || s < -1 || s >= numSlots) {
      throw new MlaError('ERR_RANGE', `${op}: \`slotMapping\`[${i}] = ${s} is outside [-1, ${numSlots}) (numPages · pageSize = ${numSlots})`);
    }
    const prev = seen.get(s);
    if (prev !== undefined) throw new MlaError('ERR_ARGUMENT', `${op}: \`slotMapping\` writes slot ${s} twice (tokens ${prev} and ${i})`);
    seen.set(s, i);
  }
}

export interface AppendLatentMeta {
  kvDown: TensorMeta;
  normWeight: TensorMeta;
  eps: number;
  positions: TensorMeta;
  slotMapping: TensorMeta;
  cache: TensorMeta;
  table: RopeTableMeta;
  layout?: RopeLayout | undefined;
}

export interface AppendLatentShape {
  tokens: number;
  kvLoraRank: number;
  rotaryDim: number;
  numPages: number;
  pageSize: number;
  numSlots: number;
  layout: RopeLayout;
}

/**
 * appendLatent(): kvDown [T, C + R] (bf16/f16/f32, last dim contiguous), normWeight [C]
 * contiguous, cache [numPages, pageSize, C + R] (bf16/f16/f32, last dim contiguous) or the FP8
 * layout u8 [numPages, pageSize, 656] (C = 512, R = 64; lib/ops/fp8-cache.ts), positions
 * and slotMapping i32 [T]; C a multiple of 8 up to 1024, R = table.rotaryDim a multiple of 8
 * up to 256.
 */
export function validateAppendLatent(a: AppendLatentMeta): AppendLatentShape {
  const op = 'appendLatent';
  if (typeof a !== 'object' || a === null) throw new MlaError('ERR_ARGUMENT', `${op}: expects one options object`);
  const tab = checkTable(op, a.table);
  const R = tab.rotaryDim;
  if (R % 8 !== 0 || R > APPEND_LATENT_MAX_ROTARY_DIM) {
    throw new MlaError('ERR_SHAPE', `${op}: \`table\`'s rotaryDim ${R} must be a multiple of 8 up to ${APPEND_LATENT_MAX_ROTARY_DIM}`);
  }
  const w = checkTensor(op, 'normWeight', a.normWeight, { dtype: FLOAT_DTYPES, shape: [null], contiguous: true });
  const C = w.shape[0]!;
  if (C < 8 || C % 8 !== 0 || C > APPEND_LATENT_MAX_KV_LORA) {
    throw new MlaError('ERR_SHAPE', `${op}: \`normWeight\` length (kvLoraRank) ${C} must be a multiple of 8 in [8, ${APPEND_LATENT_MAX_KV_LORA}]`);
  }
  const kv = checkTensor(op, 'kvDown', a.kvDown, { dtype: FLOAT_DTYPES, shape: [null, C + R], innerContiguous: true });
  const tokens = kv.shape[0]!;
  checkCompatible(op, 'normWeight', w, 'kvDown', kv.dtype);
  let cache: TensorMeta;
  if (checkTensor(op, 'cache', a.cache).dtype === 'u8') {
    // The FP8 layout (lib/ops/fp8-cache.ts): quantized in the kernel; fixed widths.
    if (C !== FP8_CACHE_KV_LORA || R !== FP8_CACHE_ROPE) {
      throw new MlaError('ERR_SHAPE', `${op}: an FP8 \`cache\` (u8, 656-byte rows) stores kvLoraRank ${FP8_CACHE_KV_LORA} + rotaryDim ${FP8_CACHE_ROPE}; got ${C} + ${R}`);
    }
    checkFp8Cache(op, 'cache', a.cache);
    cache = a.cache;
  } else {
    cache = checkTensor(op, 'cache', a.cache, { dtype: FLOAT_DTYPES, shape: [null, null, C + R], innerContiguous: true });
    checkCompatible(op, 'cache', cache, 'kvDown', kv.dtype);
    checkNoOverlap(op, 'cache', cache, 2, C + R);
  }
  checkIndexTensor(op, 'positions', a.positions, tokens);
  checkIndexTensor(op, 'slotMapping', a.slotMapping, tokens);
  const eps = checkNumber(op, 'eps', a.eps);
  if (eps < 0) throw new MlaError('ERR_RANGE', `${op}: \`eps\` must be >= 0, got ${eps}`);
  const layout = checkLayout(op, a.layout ?? tab.layout);
  const numPages = cache.shape[0]!;
  const pageSize = cache.shape[1]!;
  const numSlots = numPages * pageSize;
  if (numSlots > 2 ** 31 - 1) throw new MlaError('ERR_SHAPE', `${op}: \`cache\` has ${numSlots} slots; slots are int32`);
  return { tokens, kvLoraRank: C, rotaryDim: R, numPages, pageSize, numSlots, layout };
}

// ---- ops ---------------------------------------------------------------------------------------

function device(op: string, name: string, t: unknown): DeviceTensor {
  if (!(t instanceof DeviceTensor)) throw new MlaError('ERR_ARGUMENT', `${op}: \`${name}\` must be a DeviceTensor`);
  return t;
}

function ropeTableArg(op: string, t: unknown): RopeTable {
  if (!(t instanceof RopeTable)) throw new MlaError('ERR_ARGUMENT', `${op}: \`table\` must be a RopeTable`);
  return t;
}

const LAYOUT_CODE: Readonly<Record<RopeLayout, NativeRopeLayout>> = { interleaved: 0, neox: 1 };

/**
 * Rotates x in place by positions: x is [T, H, rotaryDim] or [T, rotaryDim], any token / head
 * strides, last dim contiguous (e.g. `q.slice(2, 128, 192)`); bf16/f16/f32, fp32 math.
 */
export function rope(x: DeviceTensor, positions: DeviceTensor, table: RopeTable, opts: RopeOptions = {}): void {
  const op = 'rope';
  ropeTableArg(op, table);
  const { layout } = validateRope(x, positions, table, opts, op);
  launchRope(op, device(op, 'x', x), device(op, 'positions', positions), table, layout, opts);
}

function launchRope(op: string, x: DeviceTensor, positions: DeviceTensor, table: RopeTable, layout: RopeLayout, opts: RopeOptions): void {
  refuseIndexCheckDuringCapture(op, opts.checkIndices ?? true);
  if (opts.checkIndices ?? true) checkRopePositions(op, (positions.toHostSync(opts) as Int32Array), table.maxPositions);
  nativeOp('rope')({
    x: x.nativeRef(`${op}: \`x\``),
    positions: positions.nativeRef(`${op}: \`positions\``),
    table: table.table.nativeRef(`${op}: \`table\``),
    layout: LAYOUT_CODE[layout],
    stream: nativeStream(op, opts.stream),
  });
}

/**
 * The query side: q is the query up-projection output [T, H, nope + rope] (or [T, nope + rope]);
 * rotates q[..., nopeDim : nopeDim + rotaryDim] in place (nopeDim defaults to width − rotaryDim,
 * so [T, H, 192] and the absorbed [T, H, 576] both work). The nope part is not touched.
 */
export function ropeQuery(q: DeviceTensor, positions: DeviceTensor, table: RopeTable, opts: RopeQueryOptions = {}): void {
  const op = 'ropeQuery';
  ropeTableArg(op, table);
  const { layout, nopeDim } = validateRopeQuery(q, positions, table, opts);
  const qd = device(op, 'q', q);
  const slice = qd.slice(-1, nopeDim, nopeDim + table.rotaryDim);
  launchRope(op, slice, device(op, 'positions', positions), table, layout, opts);
}

export interface AppendLatentOptions extends StreamOption {
  /** [T, kvLoraRank + rotaryDim]: kv_a_proj_with_mqa output (latent not normalised, key not rotated). */
  kvDown: DeviceTensor;
  /** [kvLoraRank]: kv_a_layernorm weight. */
  normWeight: DeviceTensor;
  eps: number;
  /** i32 [T]: RoPE position of each token. */
  positions: DeviceTensor;
  /** i32 [T]: page · pageSize + offset; −1 skips the token. */
  slotMapping: DeviceTensor;
  /**
   * [numPages, pageSize, kvLoraRank + rotaryDim], written in place; or the FP8 layout, u8
   * [numPages, pageSize, 656] (kvLoraRank 512, rotaryDim 64): the row is quantized in the kernel,
   * bit for bit as `reference.quantizeFp8Row` does on the f32 row (docs/fp8-cache.md).
   */
  cache: DeviceTensor;
  table: RopeTable;
  layout?: RopeLayout | undefined;
  /** See RopeOptions.checkIndices (default true). */
  checkIndices?: boolean | undefined;
}

/**
 * One fused kernel: cache[slot, :C] = RMSNorm(kvDown[t, :C]) · w and
 * cache[slot, C:] = RoPE(kvDown[t, C:], positions[t]), for every token t whose slot is not −1.
 * Cache slots not named by slotMapping are left untouched.
 */
export function appendLatent(args: AppendLatentOptions): void {
  const op = 'appendLatent';
  if (typeof args !== 'object' || args === null) throw new MlaError('ERR_ARGUMENT', `${op}: expects one options object`);
  const table = ropeTableArg(op, args.table);
  const shape = validateAppendLatent(args);
  const kvDown = device(op, 'kvDown', args.kvDown);
  const normWeight = device(op, 'normWeight', args.normWeight);
  const positions = device(op, 'positions', args.positions);
  const slotMapping = device(op, 'slotMapping', args.slotMapping);
  const cache = device(op, 'cache', args.cache);
  refuseIndexCheckDuringCapture(op, args.checkIndices ?? true);
  if (args.checkIndices ?? true) {
    const slots = slotMapping.toHostSync(args) as Int32Array;
    checkSlotMapping(op, slots, shape.numSlots);
    checkRopePositions(op, (positions.toHostSync() as Int32Array), table.maxPositions, (i) => slots[i] !== -1);
  }
  nativeOp('appendLatent')({
    kvDown: kvDown.nativeRef(`${op}: \`kvDown\``),
    normWeight: normWeight.nativeRef(`${op}: \`normWeight\``),
    positions: positions.nativeRef(`${op}: \`positions\``),
    slotMapping: slotMapping.nativeRef(`${op}: \`slotMapping\``),
    cache: cache.nativeRef(`${op}: \`cache\``),
    table: table.table.nativeRef(`${op}: \`table\``),
    eps: args.eps,
    layout: LAYOUT_CODE[shape.layout],
    stream: nativeStream(op, args.stream),
  });
}

// Rotary position embedding with DeepSeek's YaRN-corrected frequencies.
//
// The frequencies and angles are computed in float32 exactly where DeepSeek's
// precompute_freqs_cis uses float32 tensors (Math.fround after each op): at
// positions in the thousands a float64 angle differs by ~1e-5 relative, which
// would swamp the 1e-5 agreement the fixtures are checked to. cos/sin of the
// float32 angle are then taken in float64.

import type { MlaConfig, YarnScaling } from '../config.js';
import { allocHost, argError, checkAtLeast, checkFiniteNumber, checkLength, checkNonNegInt, checkObject, checkPosInt, sizeProduct } from '../check.js';

export type RopeLayout = 'interleaved' | 'neox';

export interface RopeTable {
  /** Rotated width (qk_rope_head_dim); half = dim / 2 frequencies. */
  dim: number;
  half: number;
  maxPos: number;
  /** Inverse frequencies, float32 values. */
  invFreq: Float64Array;
  /** [maxPos, half], already multiplied by attentionFactor. */
  cos: Float64Array;
  sin: Float64Array;
  attentionFactor: number;
}

const f = Math.fround;

// Dimension index at which a frequency completes numRotations turns over maxPos
// positions: d·ln(L / (2π·rot)) / (2·ln θ).
export function yarnFindCorrectionDim(numRotations: number, dim: number, base: number, maxPos: number): number {
  return (dim * Math.log(maxPos / (numRotations * 2 * Math.PI))) / (2 * Math.log(base));
}

// [floor(dim(β_fast)), ceil(dim(β_slow))] clamped to [0, dim − 1]; note the clamp
// uses the full rope dim although the ramp only spans dim/2 frequencies.
export function yarnFindCorrectionRange(lowRot: number, highRot: number, dim: number, base: number, maxPos: number): [number, number] {
  const low = Math.floor(yarnFindCorrectionDim(lowRot, dim, base, maxPos));
  const high = Math.ceil(yarnFindCorrectionDim(highRot, dim, base, maxPos));
  return [Math.max(low, 0), Math.min(high, dim - 1)];
}

// ramp[i] = clamp((i − min) / (max − min), 0, 1) in float32; max gets +0.001
// when min == max to avoid dividing by zero.
export function yarnLinearRamp(min: number, max: number, n: number): Float64Array {
  const hi = min === max ? max + 0.001 : max;
  const den = f(hi - min);
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const v = f(f(i - min) / den);
    out[i] = v < 0 ? 0 : v > 1 ? 1 : v;
  }
  return out;
}

// freq_i = 1 / θ^(2i/d)                                           (float32)
// YaRN:   smooth_i = 1 − ramp_i;  freq_i ← freq_i/s·(1 − smooth_i) + freq_i·smooth_i
// Low dims (fast-rotating) keep their frequency, high dims are divided by the
// factor s, with a linear blend over [low, high].
export function ropeInvFreq(dim: number, theta: number, scaling: YarnScaling | null): Float64Array {
  const fn = 'ropeInvFreq';
  checkPosInt(fn, 'dim', dim);
  if (dim % 2 !== 0) throw argError('ERR_SHAPE', fn, 'dim', `must be even, got ${dim}`);
  checkFiniteNumber(fn, 'theta', theta);
  if (scaling !== null) {
    checkObject(fn, 'scaling', scaling);
    for (const k of ['betaFast', 'betaSlow', 'originalMaxPositionEmbeddings', 'factor'] as const) checkFiniteNumber(fn, `scaling.${k}`, scaling[k]);
  }
  const half = dim / 2;
  const freqs = new Float64Array(half);
  for (let i = 0; i < half; i++) {
    const expo = f((2 * i) / dim);
    freqs[i] = f(1 / f(Math.pow(theta, expo)));
  }
  if (scaling === null) return freqs;
  const [low, high] = yarnFindCorrectionRange(scaling.betaFast, scaling.betaSlow, dim, theta, scaling.originalMaxPositionEmbeddings);
  const ramp = yarnLinearRamp(low, high, half);
  const factor = f(scaling.factor);
  for (let i = 0; i < half; i++) {
    const smooth = f(1 - ramp[i]!);
    const fr = freqs[i]!;
    freqs[i] = f(f(f(fr / factor) * f(1 - smooth)) + f(fr * smooth));
  }
  return freqs;
}

// cos[p, i] = m·cos(p·freq_i), sin[p, i] = m·sin(p·freq_i), with the angle p·freq_i
// rounded to float32 like torch.outer(arange, freqs). m is the cos/sin magnitude
// ("attention factor"): 1 in DeepSeek's reference.
export function ropeTable(
  cfg: Pick<MlaConfig, 'qkRopeHeadDim' | 'ropeTheta' | 'ropeScaling'>,
  maxPos: number,
  opts: { attentionFactor?: number } = {},
): RopeTable {
  const fn = 'ropeTable';
  checkObject(fn, 'cfg', cfg);
  checkPosInt(fn, 'maxPos', maxPos);
  checkObject(fn, 'opts', opts);
  const dim = checkPosInt(fn, 'cfg.qkRopeHeadDim', cfg.qkRopeHeadDim);
  if (cfg.ropeScaling === undefined) throw argError('ERR_ARGUMENT', fn, 'cfg.ropeScaling', 'must be a YarnScaling or null');
  const invFreq = ropeInvFreq(dim, cfg.ropeTheta, cfg.ropeScaling);
  const half = dim / 2;
  const m = checkFiniteNumber(fn, 'opts.attentionFactor', opts.attentionFactor ?? 1);
  const cos = allocHost(fn, 'maxPos', Float64Array, sizeProduct(fn, 'maxPos', maxPos, half));
  const sin = allocHost(fn, 'maxPos', Float64Array, maxPos * half);
  for (let p = 0; p < maxPos; p++) {
    for (let i = 0; i < half; i++) {
      const angle = f(p * invFreq[i]!);
      cos[p * half + i] = m * Math.cos(angle);
      sin[p * half + i] = m * Math.sin(angle);
    }
  }
  return { dim, half, maxPos, invFreq, cos, sin, attentionFactor: m };
}

// Rotates, in place, the slice x[r·stride + offset .. + dim) of each row r by its
// position p = positions[r]:
//   interleaved: (x[2i], x[2i+1])    ← (a·c − b·s, a·s + b·c),  c, s = cos/sin(p·freq_i)
//   neox:        (x[i], x[i + d/2])  ← same rotation
export function applyRope(
  x: Float64Array,
  rows: number,
  stride: number,
  offset: number,
  dim: number,
  positions: ArrayLike<number>,
  table: RopeTable,
  layout: RopeLayout,
): void {
  const fn = 'applyRope';
  checkNonNegInt(fn, 'rows', rows);
  checkNonNegInt(fn, 'offset', offset);
  checkNonNegInt(fn, 'stride', stride);
  checkObject(fn, 'table', table);
  checkLength(fn, 'table.cos', table.cos, sizeProduct(fn, 'table', table.maxPos, table.half));
  checkLength(fn, 'table.sin', table.sin, table.maxPos * table.half);
  if (dim !== table.dim) throw argError('ERR_SHAPE', fn, 'dim', `= ${dim} does not match the table's ${table.dim}`);
  if (stride < offset + dim) throw argError('ERR_SHAPE', fn, 'stride', `= ${stride} < offset ${offset} + dim ${dim}`);
  checkLength(fn, 'positions', positions, rows);
  if (rows > 0) checkAtLeast(fn, 'x', x, sizeProduct(fn, 'rows', rows - 1, stride) + offset + dim);
  if (layout !== 'interleaved' && layout !== 'neox') throw argError('ERR_ARGUMENT', fn, 'layout', `must be 'interleaved' or 'neox', got '${String(layout)}'`);
  const half = table.half;
  const { cos, sin } = table;
  for (let r = 0; r < rows; r++) {
    const p = positions[r]!;
    if (!Number.isInteger(p) || p < 0 || p >= table.maxPos) {
      throw argError('ERR_RANGE', fn, `positions[${r}]`, `= ${p} (position ${p} of row ${r}) is outside the table [0, ${table.maxPos})`);
    }
    const base = r * stride + offset;
    const t = p * half;
    if (layout === 'interleaved') {
      for (let i = 0; i < half; i++) {
        const a = x[base + 2 * i]!;
        const b = x[base + 2 * i + 1]!;
        const c = cos[t + i]!;
        const s = sin[t + i]!;
        x[base + 2 * i] = a * c - b * s;
        x[base + 2 * i + 1] = a * s + b * c;
      }
    } else {
      for (let i = 0; i < half; i++) {
        const a = x[base + i]!;
        const b = x[base + half + i]!;
        const c = cos[t + i]!;
        const s = sin[t + i]!;
        x[base + i] = a * c - b * s;
        x[base + half + i] = a * s + b * c;
      }
    }
  }
}

export function ropeLayoutOf(cfg: Pick<MlaConfig, 'ropeInterleaved'>): RopeLayout {
  return cfg.ropeInterleaved ? 'interleaved' : 'neox';
}

// Shared by GPU tests: the skip reason, poisoning, fresh random data, error metrics.
import { cuda, DeviceTensor } from '../../lib/index.js';

const status = cuda.deviceStatus();

/** tap `skip` option for GPU tests: false when a device is usable, else the visible reason. */
export const gpuSkip: string | false = status.ok ? false : `no usable CUDA device (${status.code}: ${status.message})`;

/** Fills a tensor with NaN so any element a kernel fails to write shows up in the error. */
export function poison(t: DeviceTensor): DeviceTensor {
  return t.fill(Number.NaN);
}

/** Seeded uniform RNG (mulberry32). */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** n normal samples times `scale` (Box-Muller), as float32. */
export function randn(n: number, seed: number, scale = 1): Float32Array {
  const u = rng(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i += 2) {
    const r = Math.sqrt(-2 * Math.log(u() + 1e-12)) * scale;
    const th = 2 * Math.PI * u();
    out[i] = r * Math.cos(th);
    if (i + 1 < n) out[i + 1] = r * Math.sin(th);
  }
  return out;
}

/** ‖a − b‖_F / ‖b‖_F; NaN anywhere gives NaN (so a poisoned element fails every bound). */
export function relError(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`relError: lengths differ (${a.length} vs ${b.length})`);
  let num = 0;
  let den = 0;
  for (let i = 0; i < a.length; i++) {
    const d = a[i]! - b[i]!;
    num += d * d;
    den += b[i]! * b[i]!;
  }
  return Math.sqrt(num) / Math.sqrt(den || 1);
}

/** Values rounded through a dtype (what the GPU actually sees after upload), as float64. */
export function roundTo(data: Float32Array, dtype: 'bf16' | 'f16' | 'f32'): Float64Array {
  const out = new Float64Array(data.length);
  if (dtype === 'f32') {
    out.set(data);
    return out;
  }
  const f = new Float32Array(1);
  const u = new Uint32Array(f.buffer);
  for (let i = 0; i < data.length; i++) {
    if (dtype === 'bf16') {
      f[0] = data[i]!;
      const x = u[0]!;
      u[0] = ((x + 0x7fff + ((x >>> 16) & 1)) >>> 16) << 16;
      out[i] = f[0]!;
    } else {
      out[i] = halfRound(data[i]!);
    }
  }
  return out;
}

function halfRound(x: number): number {
  if (!Number.isFinite(x) || x === 0) return x;
  const a = Math.abs(x);
  const e = Math.max(Math.floor(Math.log2(a)), -14);
  const step = 2 ** (e - 10);
  let q = a / step;
  const fl = Math.floor(q);
  const diff = q - fl;
  q = diff > 0.5 || (diff === 0.5 && fl % 2 === 1) ? fl + 1 : fl;
  const r = q * step;
  return Math.sign(x) * (r > 65504 ? Infinity : r);
}

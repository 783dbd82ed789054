// Shared by GPU tests: the skip reason, the device they run on, poisoning, fresh random data,
// error metrics. `npm test` sets MLA_CUDA_DEVICE=auto: a real GPU when there is one, otherwise
// the emulated device (docs/emulator.md), so the kernel tests run on every machine with nvcc.
import t from 'tap';
import { cuda, DeviceTensor } from '../../lib/index.js';
import { emulatorUnavailable } from '../../lib/native.js';
import { mulberry32, randnArray, relError } from '../../lib/reference/util.js';

const status = cuda.deviceStatus();
const noEmulator = emulatorUnavailable();

/** tap `skip` option for GPU tests: false when a device is usable, else the visible reason. */
export const gpuSkip: string | false = status.ok
  ? false
  : `no usable CUDA device (${status.code}: ${status.message})${noEmulator ? `; no emulated device either: ${noEmulator}` : ''}`;

/** The kernels run on the emulated device (CPU): correct, slow; shapes may be reduced for time. */
export const emulated = status.ok && cuda.buildInfo().emulated;

/** Where this file's kernel tests run, in words. */
export const deviceLabel = status.ok
  ? `${emulated ? 'emulated device' : 'GPU'}: ${cuda.deviceInfo(0).name}`
  : `nowhere (${status.code}): kernel tests skip`;
t.comment(`kernel tests run on ${deviceLabel}`);

/** Fills a tensor with NaN so any element a kernel fails to write shows up in the error. */
export function poison(t: DeviceTensor): DeviceTensor {
  return t.fill(Number.NaN);
}

/** n normal samples times `scale`, as float32 (what a test uploads). */
export function randn(n: number, seed: number, scale = 1): Float32Array {
  return Float32Array.from(randnArray(n, mulberry32(seed), scale));
}

export { relError };
export { mulberry32 as rng };

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

// Device-to-device copy bandwidth over sizes: the memory ceiling every other suite is
// compared against, and a check that the runner's rotation gets past L2 (small sizes that
// still fit in L2 after rotation show up as faster than DRAM).
import { DTYPE_SIZE, isDType } from '../dtype.js';
import type { DType } from '../dtype.js';
import { DeviceTensor } from '../runtime/tensor.js';
import { withScope } from './check.js';
import { copyBytes } from './formulas.js';
import type { BenchCase, BenchSuite, BenchSuiteOptions, KernelCheck } from './types.js';

const MiB = 1024 * 1024;
const SIZES_MIB = [1, 4, 16, 64, 256, 1024];
const QUICK_SIZES_MIB = [16, 256];

function formatSize(bytes: number): string {
  return bytes >= 1024 * MiB && bytes % (1024 * MiB) === 0 ? `${bytes / (1024 * MiB)} GiB` : `${+(bytes / MiB).toFixed(3)} MiB`;
}

/** The copy path: a device-to-device copy of 1,000 random values must return them exactly. */
export function copyCheck(dtype: DType): KernelCheck {
  return {
    name: `copy ${dtype} (1000 elements)`,
    tolerance: 0,
    run: () => withScope((sc) => {
      // Integers fit every dtype exactly (u8 included), so the copy must be bit-exact.
      const src = sc.own(DeviceTensor.fromArray(Int32Array.from({ length: 1000 }, (_, i) => (i * 37) % 251), [1000], dtype));
      const dst = sc.own(DeviceTensor.empty([1000], dtype));
      dst.copyFrom(src);
      return [{ name: 'dst', got: dst.toFloat32Sync(), want: src.toFloat32Sync() }];
    }),
  };
}

/** One copy of `bytes` bytes (rounded down to whole elements) from one buffer into another. */
export function copyCase(bytes: number, dtype: DType = 'f32'): BenchCase {
  const elem = DTYPE_SIZE[dtype];
  const n = Math.max(1, Math.floor(bytes / elem));
  const size = n * elem;
  return {
    name: `${formatSize(size)} ${dtype}`,
    params: { bytes: size, dtype },
    flops: 0,
    bytes: copyBytes(size),
    footprintBytes: 2 * size,
    checks: [copyCheck(dtype)],
    setup() {
      const src = DeviceTensor.empty([n], dtype);
      const dst = DeviceTensor.empty([n], dtype);
      try {
        // Non-zero data, as for every benchmark (zeros can be faster on some parts).
        src.fill(1.5);
        dst.fill(-0.75);
      } catch (err) {
        src.dispose();
        dst.dispose();
        throw err;
      }
      return {
        run: (stream) => void dst.copyFrom(src, { stream }),
        dispose() {
          src.dispose();
          dst.dispose();
        },
      };
    },
  };
}

function gridSizes(opts: BenchSuiteOptions): number[] {
  const g = opts.grid ?? {};
  const bytes = g['bytes']?.map(Number);
  const mib = g['mib']?.map((v) => Number(v) * MiB);
  const sizes = bytes ?? mib ?? (opts.quick ? QUICK_SIZES_MIB : SIZES_MIB).map((m) => m * MiB);
  for (const s of sizes) if (!(s > 0)) throw new RangeError(`copy: sizes must be positive numbers, got ${String(s)}`);
  return sizes;
}

export const suite: BenchSuite = {
  name: 'copy',
  description: 'device-to-device copy bandwidth (grid keys: mib or bytes, dtype)',
  cases(opts) {
    const dtypes = (opts.grid?.['dtype'] ?? ['f32']).map((v): DType => {
      const d = String(v);
      if (!isDType(d)) throw new RangeError(`copy: unknown dtype ${d}`);
      return d;
    });
    return gridSizes(opts).flatMap((size) => dtypes.map((d) => copyCase(size, d)));
  },
};

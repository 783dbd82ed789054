// Typed view of the native addon and its loader. The addon is loaded lazily so the pure
// TypeScript parts (reference backend, safetensors, configs) work even where it is missing.
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { MlaError } from './errors.js';
import { FALLBACK_LIMITS, type NativeLimits, type NativeOps } from './native-contract.js';

/** What csrc/binding/napi_util.cc reads as a tensor argument. */
export interface NativeTensorRef {
  readonly buffer: NativeDeviceBuffer;
  /** [offset, dtype code, ndim, ...shape, ...strides], in elements. */
  readonly desc: Float64Array;
}

export interface NativeDeviceBuffer {
  readonly bytes: number;
  readonly freed: boolean;
  readonly device: number;
  free(): void;
  /** Synchronous on the legacy stream; with `stream`, staged and copied in its order. */
  upload(view: ArrayBufferView, byteOffset: number, stream?: NativeStream): void;
  download(byteOffset: number, bytes: number): ArrayBuffer;
  /** With `stream`: after the work queued there so far; the buffer stays in use until done. */
  downloadAsync(byteOffset: number, bytes: number, stream?: NativeStream): Promise<ArrayBuffer>;
}

export interface NativeStream {
  synchronize(): void;
  synchronizeAsync(): Promise<void>;
  query(): boolean;
  waitEvent(event: NativeEvent): void;
  beginCapture(): void;
  /** A new instantiated graph; with `into`, whether it was updated in place (false: topology changed). */
  endCapture(): NativeGraph;
  endCapture(into: NativeGraph): boolean;
  isCapturing(): boolean;
  /** False where nothing can hold (the emulated device). */
  hold(timeoutMs: number): boolean;
  /** False when the hold's timeout ended it before the release. */
  release(): boolean;
  destroy(): void;
}

export interface NativeGraph {
  launch(stream: NativeStream): void;
  destroy(): void;
}

export interface NativeEvent {
  record(stream?: NativeStream): void;
  synchronize(): void;
  query(): boolean;
  elapsedMs(end: NativeEvent): number;
  destroy(): void;
}

export interface NativeBuildInfo {
  compiledWithCuda: boolean;
  /** CPU-only because MLA_CUDA_DISABLE was set at build time (not for want of nvcc). */
  cudaDisabled: boolean;
  /**
   * The emulated-device addon is loaded (MLA_CUDA_DEVICE=emulator or auto without a GPU; csrc/emu):
   * the kernels run on the CPU, correct but slow, and nothing it times means anything.
   */
  emulated: boolean;
  /** CUDA architectures compiled in, e.g. "80-real 86-real 89-real 90-real 100-real 120". */
  cudaArchitectures: string;
  /** The sm_90a decode kernel (wgmma + TMA) is in the build (it targets sm_90, or is emulated). */
  hopperDecode: boolean;
  nvccVersion: string;
  /** CUDA runtime linked into the addon, e.g. 13000 for 13.0. */
  runtimeVersion: number;
  napiVersion: number;
  /** Native ops available. */
  ops: string[];
}

/** The addon's deviceStatus(); the public DeviceStatus (runtime/cuda.ts) is this type. */
export interface NativeDeviceStatus {
  /** A usable device exists. */
  ok: boolean;
  /** 'OK', 'ERR_NO_ADDON', 'ERR_NO_CUDA' or 'ERR_NO_DEVICE' (no driver / no GPU), 'ERR_CUDA'. */
  code: string;
  /** CUDA's error name when the runtime reported one (e.g. cudaErrorInsufficientDriver). */
  cudaError: string;
  /** Every GPU call throws this when `ok` is false: the situation, its fix, CUDA's error, and a pointer to `npx mla-cuda doctor`. */
  message: string;
  /** The situation alone (e.g. "no NVIDIA driver found (...)"), from runtime/no_device.h; '' when ok. `doctor` prints it. */
  reason: string;
  /** What fixes it, with `reason`. */
  fix: string;
  deviceCount: number;
  /** Driver's CUDA version (e.g. 13000), 0 when no driver is installed. */
  driverVersion: number;
  /** CUDA runtime linked into the addon, e.g. 13000 for 13.0. */
  runtimeVersion: number;
}

/** What CUDA said about the devices, as explainNoDevice reads it. */
export interface NoDeviceFacts {
  cudaError: string;
  cudaCode: number;
  cudaText: string;
  driverVersion: number;
  runtimeVersion: number;
  /** CUDA_VISIBLE_DEVICES; undefined when it is not set. */
  visibleDevices?: string | undefined;
  emulated?: boolean;
}

export interface NoDeviceExplanation {
  code: string;
  cudaError: string;
  message: string;
  reason: string;
  fix: string;
}

export interface NativeDeviceInfo {
  index: number;
  name: string;
  major: number;
  minor: number;
  smCount: number;
  totalMemory: number;
  freeMemory: number;
  l2CacheBytes: number;
  sharedMemPerBlockOptin: number;
  sharedMemPerSm: number;
  clockKHz: number;
  memoryClockKHz: number;
  memoryBusWidth: number;
  pciBusId: string;
}

export interface NativeAddon {
  DeviceBuffer: new (bytes: number) => NativeDeviceBuffer;
  Stream: new () => NativeStream;
  Event: new () => NativeEvent;
  setErrorClass(ctor: typeof MlaError): void;
  buildInfo(): NativeBuildInfo;
  deviceStatus(): NativeDeviceStatus;
  /** The translation behind every ERR_NO_DEVICE message, for any facts (pure; for tests). */
  explainNoDevice(facts: NoDeviceFacts): NoDeviceExplanation;
  deviceInfo(device: number): NativeDeviceInfo;
  setDevice(device: number): void;
  currentDevice(): number;
  synchronize(): void;
  encodeF32(data: Float32Array, dtype: number): ArrayBuffer;
  decodeToF32(data: ArrayBufferView, dtype: number): Float32Array;
  /** The launchers' limits and error bits (absent from addons built before it existed). */
  limits?(): NativeLimits;
  /** Every op takes one options object (lib/native-contract.ts); a stale build may lack some. */
  ops: Readonly<Partial<NativeOps>>;
}

export const packageRoot = join(dirname(fileURLToPath(import.meta.url)), '..');

/**
 * Which device the package runs on, from `MLA_CUDA_DEVICE`:
 * - `cuda` (the default): the CUDA addon and the real GPU;
 * - `emulator`: the emulated-device addon, which runs the same kernels on the CPU (for machines
 *   without a GPU: CI, development; never a timing tool);
 * - `auto`: the GPU when one is usable, otherwise the emulator (what the test suite uses).
 * The emulator is never chosen silently: only these values select it, and `cuda.info()` and
 * `doctor` say "emulated device" whenever it is in use.
 */
export type DeviceSelection = 'cuda' | 'emulator' | 'auto';

export function deviceSelection(): DeviceSelection {
  const v = (process.env['MLA_CUDA_DEVICE'] ?? '').trim().toLowerCase();
  if (v === '' || v === 'cuda' || v === 'gpu') return 'cuda';
  if (v === 'emulator' || v === 'emulated') return 'emulator';
  if (v === 'auto') return 'auto';
  throw new MlaError('ERR_ARGUMENT', `MLA_CUDA_DEVICE must be \`cuda\`, \`emulator\` or \`auto\`, not "${v}"`);
}

/** Where the emulated-device addon is built (scripts/build-native.mjs, cmake/emulator.cmake). */
export function emulatorAddonPath(): string {
  return process.env['MLA_CUDA_EMULATOR_ADDON'] ?? join(packageRoot, 'build', 'Release', 'emulator', 'mla_cuda_emulator.node');
}

let cached: NativeAddon | undefined;
let loadError: string | undefined;
let emulatorError: string | undefined;
let selectionError: MlaError | undefined; // a bad MLA_CUDA_DEVICE: the user's setting, not the build

/** Why MLA_CUDA_DEVICE=auto found neither a GPU nor the emulated device (undefined otherwise). */
export function emulatorUnavailable(): string | undefined {
  load();
  return emulatorError;
}

/* c8 ignore start */
function load(): NativeAddon | undefined {
  if (cached || loadError !== undefined) return cached;
  const require = createRequire(import.meta.url);
  const loadCuda = (): NativeAddon => {
    // MLA_CUDA_ADDON points at a specific .node (used by tests of the CPU-only build).
    const override = process.env['MLA_CUDA_ADDON'];
    return (override ? require(override) : (require('node-gyp-build') as (dir: string) => unknown)(packageRoot)) as NativeAddon;
  };
  const loadEmulator = (): NativeAddon => {
    const path = emulatorAddonPath();
    try {
      return require(path) as NativeAddon;
    } catch (err) {
      throw new Error(`the emulated-device addon (${path}) is not built or cannot be loaded: ` +
        `${err instanceof Error ? err.message.split('\n')[0] : String(err)}. It builds with the package where the CUDA ` +
        'toolkit headers exist on x86-64 (npm rebuild mla-cuda; MLA_CUDA_EMULATOR=0 turns it off)');
    }
  };
  try {
    const selection = deviceSelection();
    let addon: NativeAddon;
    if (selection === 'emulator') {
      addon = loadEmulator();
    } else if (selection === 'cuda') {
      addon = loadCuda();
    } else {
      let real: NativeAddon | undefined;
      try { real = loadCuda(); } catch { real = undefined; }
      if (real && real.deviceStatus().ok) {
        addon = real;
      } else {
        // No GPU and no emulator either: keep the CUDA addon, whose status says why there is
        // no device (tests then skip with that reason and this one).
        try {
          addon = loadEmulator();
        } catch (err) {
          if (!real) throw err;
          emulatorError = err instanceof Error ? err.message : String(err);
          addon = real;
        }
      }
    }
    addon.setErrorClass(MlaError);
    cached = addon;
  } catch (err) {
    loadError = err instanceof Error ? err.message : String(err);
    if (err instanceof MlaError) selectionError = err;
  }
  return cached;
}
/* c8 ignore stop */

/** The addon, or undefined when it is not built (see `addonLoadError()`). */
export function tryNative(): NativeAddon | undefined {
  return load();
}

export function addonLoadError(): string | undefined {
  load();
  return loadError;
}

/** The addon, or an MlaError ERR_NO_ADDON explaining how to build it. */
export function native(): NativeAddon {
  const addon = load();
  if (selectionError) throw selectionError;
  /* c8 ignore start */
  if (!addon) {
    throw new MlaError(
      'ERR_NO_ADDON',
      `mla-cuda: the native addon is not built or cannot be loaded (${loadError}).\n` +
        'Run `npm rebuild mla-cuda` (it needs CMake and a C++17 compiler; with the CUDA toolkit for GPU support). ' +
        'Package managers that skip install scripts (pnpm, bun, --ignore-scripts) need the build approved or run by hand.',
    );
  }
  /* c8 ignore stop */
  return addon;
}

/** The native entry point of an op (throws ERR_NO_ADDON if the addon is missing). */
export function nativeOp<K extends keyof NativeOps>(name: K): NativeOps[K] {
  const op = native().ops[name];
  /* c8 ignore next */
  if (!op) throw new MlaError('ERR_NO_ADDON', `mla-cuda: the addon has no op "${name}"; rebuild it (npm rebuild mla-cuda)`);
  return op;
}

let limitsCache: NativeLimits | undefined;
/**
 * The launchers' limits as the loaded addon was compiled with them; the fallback copy where
 * no addon loads (validation and the reference backend work without one).
 */
export function nativeLimits(): NativeLimits {
  if (limitsCache) return limitsCache;
  const addon = load();
  // Not cached while no addon is loaded: a later load (e.g. after MLA_CUDA_ADDON) still counts.
  if (!addon || typeof addon.limits !== 'function') return FALLBACK_LIMITS;
  limitsCache = addon.limits();
  return limitsCache;
}

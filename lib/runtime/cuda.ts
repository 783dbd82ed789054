import { MlaError } from '../errors.js';
import { addonLoadError, tryNative } from '../native.js';
import type { NativeBuildInfo, NativeDeviceInfo, NativeDeviceStatus } from '../native.js';
import { refuseDuringCapture } from './stream.js';

/** The addon's build (fields documented on NativeBuildInfo), and whether it loaded at all. */
export interface BuildInfo extends Omit<NativeBuildInfo, 'napiVersion'> {
  /** The addon loaded. */
  addonLoaded: boolean;
  /** Why it did not (undefined when it did). */
  addonError?: string | undefined;
}

/**
 * Whether a GPU can be used, and if not, why: the addon's answer (fields documented on
 * NativeDeviceStatus). Without an addon nobody can say why, so `reason` and `fix` are absent
 * then, and `doctor` falls back to its own advice.
 */
export type DeviceStatus = Omit<NativeDeviceStatus, 'reason' | 'fix'> & Partial<Pick<NativeDeviceStatus, 'reason' | 'fix'>>;

export interface DeviceInfo extends NativeDeviceInfo {
  /** "9.0" for an H100. */
  computeCapability: string;
  /** The addon has SASS or compatible PTX for this device. */
  supportedByBuild: boolean;
}

/** Does a build's architecture list run on compute capability major.minor? */
export function archSupports(archs: string, major: number, minor: number): boolean {
  const cc = major * 10 + minor;
  return archs.split(/[\s;]+/).filter(Boolean).some((a) => {
    const m = /^(\d+)[af]?(?:-(real|virtual))?$/.exec(a);
    if (!m) return false;
    const n = Number(m[1]);
    const hasSass = m[2] !== 'virtual';
    const hasPtx = m[2] !== 'real';
    // SASS runs on the same major with an equal or higher minor; PTX JITs on anything newer.
    return (hasSass && Math.floor(n / 10) === major && n <= cc) || (hasPtx && n <= cc);
  });
}

export function versionString(v: number): string {
  return v > 0 ? `${Math.floor(v / 1000)}.${Math.floor((v % 1000) / 10)}` : 'none';
}

/** What the addon was built with; never throws. */
export function buildInfo(): BuildInfo {
  const addon = tryNative();
  /* c8 ignore next 3 */
  if (!addon) {
    return { addonLoaded: false, addonError: addonLoadError(), compiledWithCuda: false, cudaDisabled: false, emulated: false, cudaArchitectures: '', hopperDecode: false, nvccVersion: '', runtimeVersion: 0, ops: [] };
  }
  const b = addon.buildInfo();
  return { addonLoaded: true, compiledWithCuda: b.compiledWithCuda, cudaDisabled: b.cudaDisabled, emulated: b.emulated, cudaArchitectures: b.cudaArchitectures, hopperDecode: b.hopperDecode, nvccVersion: b.nvccVersion, runtimeVersion: b.runtimeVersion, ops: b.ops };
}

/** Whether a GPU can be used, and if not, why; never throws. */
export function deviceStatus(): DeviceStatus {
  const addon = tryNative();
  /* c8 ignore next 3 */
  if (!addon) {
    return { ok: false, code: 'ERR_NO_ADDON', cudaError: '', message: `native addon not loaded: ${addonLoadError()}`, deviceCount: 0, driverVersion: 0, runtimeVersion: 0 };
  }
  return addon.deviceStatus();
}

export function gpuAvailable(): boolean {
  return deviceStatus().ok;
}

export function deviceCount(): number {
  return deviceStatus().deviceCount;
}

function requireGpu(what: string): NonNullable<ReturnType<typeof tryNative>> {
  const s = deviceStatus();
  const addon = tryNative();
  if (!addon || !s.ok) {
    const code = s.code === 'ERR_NO_CUDA' || s.code === 'ERR_NO_ADDON' ? s.code : 'ERR_NO_DEVICE';
    const err = new MlaError(code, `${what}: ${s.message}`);
    if (s.cudaError) err.cudaError = s.cudaError;
    throw err;
  }
  return addon;
}

/** Properties of one device (name, compute capability, SMs, memory, L2, clocks). */
export function deviceInfo(device = 0): DeviceInfo {
  const addon = requireGpu('deviceInfo');
  const d = addon.deviceInfo(device);
  const b = addon.buildInfo();
  return { ...d, computeCapability: `${d.major}.${d.minor}`, supportedByBuild: b.emulated || archSupports(b.cudaArchitectures, d.major, d.minor) };
}

/** Every device, or [] when there is none. */
export function devices(): DeviceInfo[] {
  const n = deviceCount();
  return Array.from({ length: n }, (_, i) => deviceInfo(i));
}

/** The device later calls run on (setDevice's, 0 by default). */
export function currentDevice(): number {
  return requireGpu('currentDevice').currentDevice();
}

export function setDevice(device: number): void {
  requireGpu('setDevice').setDevice(device);
}

/** Blocks until all work on the current device is done. */
export function synchronize(): void {
  refuseDuringCapture('cuda.synchronize', 'synchronize after endCapture()');
  requireGpu('synchronize').synchronize();
}

/** Everything at once: build, status, devices (for logs and `mla-cuda doctor`). */
export function info(): { build: BuildInfo; status: DeviceStatus; devices: DeviceInfo[] } {
  const status = deviceStatus();
  return { build: buildInfo(), status, devices: status.ok ? devices() : [] };
}

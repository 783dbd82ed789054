// The no-device path of the CUDA addon: every GPU call throws a typed error with the reason.
// npm test runs the other files on the emulated device when there is no GPU; this one always
// loads the CUDA addon, so the path a GPU-less user meets stays tested.
import './helpers/cuda-addon.js';
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { minDriverFor } from '../lib/cli/doctor.js';
import { cuda, DeviceTensor, Event, MlaError, rmsNorm, Stream } from '../lib/index.js';
import { native, packageRoot, tryNative } from '../lib/native.js';
import type { NativeDeviceBuffer, NoDeviceFacts } from '../lib/native.js';
import { rejects } from './helpers/validation.js';

const noGpuOnly = cuda.deviceStatus().ok ? 'a GPU is present (this checks the no-device path)' : false;

t.test('without a device every GPU call throws a typed error with the reason', { skip: noGpuOnly }, async (t) => {
  const s = cuda.deviceStatus();
  t.equal(cuda.buildInfo().emulated, false, 'the CUDA addon, not the emulated device');
  t.equal(s.ok, false);
  t.ok(['ERR_NO_DEVICE', 'ERR_NO_CUDA'].includes(s.code), `status code ${s.code}`);
  t.ok(s.message.length > 0, `message: ${s.message}`);
  t.equal(s.deviceCount, 0);
  t.equal(cuda.gpuAvailable(), false);
  t.same(cuda.devices(), []);
  t.same(cuda.info().devices, []);
  const code = s.code;
  await rejects(t, () => DeviceTensor.zeros([4, 4], 'bf16'), code, /CUDA|device/i);
  await rejects(t, () => DeviceTensor.fromArray(new Float32Array(4), [4], 'f16'), code, /CUDA|device/i);
  await rejects(t, () => new Stream(), code, /device|CUDA/i);
  await rejects(t, () => new Event(), code, /device|CUDA/i);
  await rejects(t, () => cuda.deviceInfo(0), code, /deviceInfo/);
  await rejects(t, () => cuda.synchronize(), code, /synchronize/);
  await rejects(t, () => cuda.setDevice(0), code, /setDevice/);
  t.ok(cuda.versionString(s.runtimeVersion).length > 0);
});

t.test('a bad MLA_CUDA_DEVICE is an argument error naming the variable, not a build problem', async (t) => {
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', `
    const { DeviceTensor } = await import(${JSON.stringify(`${packageRoot}/dist/index.js`)});
    try { DeviceTensor.zeros([2]); } catch (e) { console.log(JSON.stringify({ code: e.code, message: e.message })); }`], {
    encoding: 'utf8',
    env: { ...process.env, MLA_CUDA_DEVICE: 'tpu' },
  });
  const e = JSON.parse(r.stdout) as { code: string; message: string };
  t.equal(e.code, 'ERR_ARGUMENT');
  t.match(e.message, /MLA_CUDA_DEVICE must be `cuda`, `emulator` or `auto`, not "tpu"/);
});


/** Host-memory stand-in for an allocation: lets an op get past its inputs without a device. */
function hostTensor(shape: number[]): DeviceTensor {
  const bytes = shape.reduce((a, b) => a * b, 1) * 4;
  const buffer: NativeDeviceBuffer = {
    bytes, freed: false, device: 0, free: () => undefined, upload: () => undefined,
    download: () => new ArrayBuffer(bytes), downloadAsync: async () => new ArrayBuffer(bytes),
  };
  return DeviceTensor._wrap(buffer, shape, 'f32');
}

function thrown(fn: () => unknown): MlaError | undefined {
  try {
    fn();
  } catch (err) {
    return err instanceof MlaError ? err : undefined;
  }
  return undefined;
}

const noCudaDeviceOnly = cuda.deviceStatus().ok ? 'a GPU is present (this checks the no-device path)'
  : cuda.deviceStatus().code !== 'ERR_NO_DEVICE' ? `the addon reports ${cuda.deviceStatus().code}, not ERR_NO_DEVICE` : false;

t.test('without a device, Stream, DeviceTensor, an op and cuda.info() give one message: situation, fix, CUDA error, doctor', { skip: noCudaDeviceOnly }, async (t) => {
  const s = cuda.info().status;
  t.equal(s.code, 'ERR_NO_DEVICE');
  t.ok(s.reason, `reason: ${s.reason}`);
  t.ok(s.fix, `fix: ${s.fix}`);
  t.match(s.message, /^no usable CUDA device: /);
  t.ok(s.message.includes(`${s.reason ?? ''}. Fix: ${s.fix ?? ''}.`), 'the message is the reason, then the fix');
  t.ok(s.cudaError !== '' && s.message.includes(s.cudaError), `keeps CUDA's error name (${s.cudaError}) for searches`);
  t.match(s.message, /Run `npx mla-cuda doctor` to check the whole setup\.$/, 'ends with the pointer to doctor');
  if (s.driverVersion === 0) {
    // This machine's case in CI: the toolkit without a driver.
    t.match(s.reason, /^no NVIDIA driver found/);
    t.match(s.fix, new RegExp(`^install the NVIDIA driver, branch ${minDriverFor(s.runtimeVersion)} or newer \\(it must support CUDA ${cuda.versionString(s.runtimeVersion).replace('.', '\\.')}`));
    t.match(s.message, /cudaErrorInsufficientDriver \(35\): CUDA driver version is insufficient for CUDA runtime version/);
  }
  const calls: Array<[string, () => unknown]> = [
    ['new Stream()', () => new Stream()],
    ['new Event()', () => new Event()],
    ['DeviceTensor.fromArray', () => DeviceTensor.fromArray(new Float32Array(4), [4], 'bf16')],
    ['DeviceTensor.zeros', () => DeviceTensor.zeros([2, 2])],
    ['rmsNorm', () => rmsNorm(hostTensor([2, 8]), hostTensor([8]), 1e-6)],
  ];
  for (const [name, fn] of calls) {
    const e = thrown(fn);
    t.equal(e?.code, 'ERR_NO_DEVICE', `${name}: ERR_NO_DEVICE`);
    t.equal(e?.cudaError, s.cudaError, `${name}: cudaError`);
    t.equal(e?.message, s.message, `${name}: the same message as cuda.info().status`);
  }
  const e = thrown(() => cuda.deviceInfo(0));
  t.equal(e?.message, `deviceInfo: ${s.message}`, 'cuda.deviceInfo names itself, then the same message');
  t.equal(e?.cudaError, s.cudaError);
});

const explainSkip = tryNative() ? false : 'the addon is not built';

t.test('explainNoDevice: each situation in words, with its fix (any machine)', { skip: explainSkip }, async (t) => {
  const explain = (f: Partial<NoDeviceFacts>) => native().explainNoDevice({
    cudaError: 'cudaErrorInsufficientDriver', cudaCode: 35, cudaText: 'CUDA driver version is insufficient for CUDA runtime version',
    driverVersion: 0, runtimeVersion: 13000, ...f,
  });
  const doctor = / Run `npx mla-cuda doctor` to check the whole setup\.$/;

  const none = explain({});
  t.equal(none.code, 'ERR_NO_DEVICE');
  t.equal(none.cudaError, 'cudaErrorInsufficientDriver');
  t.equal(none.reason, 'no NVIDIA driver found (libcuda.so.1 cannot be loaded)');
  t.match(none.fix, /^install the NVIDIA driver, branch 580 or newer \(it must support CUDA 13\.0; `nvidia-smi` shows what it supports\); in a container, start it with the GPU exposed \(e\.g\. `docker run --gpus all`\)$/);
  t.equal(none.message, `no usable CUDA device: ${none.reason}. Fix: ${none.fix}. (CUDA: cudaGetDeviceCount: cudaErrorInsufficientDriver (35): ` +
    'CUDA driver version is insufficient for CUDA runtime version.) Run `npx mla-cuda doctor` to check the whole setup.');

  const old = explain({ driverVersion: 12040 });
  t.equal(old.reason, 'the NVIDIA driver is too old: it supports CUDA 12.4, this build of mla-cuda uses the CUDA 13.0 runtime');
  t.match(old.fix, /^upgrade the driver to branch 580 or newer \(CUDA 13\.0\), or rebuild with a CUDA toolkit no newer than 12\.4: `CUDACXX=\/usr\/local\/cuda-12\.4\/bin\/nvcc npm rebuild mla-cuda`$/);
  t.match(old.message, /cudaErrorInsufficientDriver \(35\)/);
  t.match(old.message, doctor);

  const noDevice = { cudaError: 'cudaErrorNoDevice', cudaCode: 100, cudaText: 'no CUDA-capable device is detected', driverVersion: 13000 };
  const hidden = explain({ ...noDevice, visibleDevices: '' });
  t.equal(hidden.reason, 'no GPU is visible: CUDA_VISIBLE_DEVICES is set to "", which hides every GPU');
  t.equal(hidden.fix, 'unset CUDA_VISIBLE_DEVICES, or set it to indices or UUIDs that `nvidia-smi -L` lists');
  t.match(hidden.message, /\(CUDA: cudaGetDeviceCount: cudaErrorNoDevice \(100\): no CUDA-capable device is detected\.\)/);
  t.match(hidden.message, doctor);
  t.equal(explain({ ...noDevice, visibleDevices: '7' }).reason, 'no GPU is visible with CUDA_VISIBLE_DEVICES="7" (it names no GPU the driver sees)');
  const unseen = explain(noDevice);
  t.equal(unseen.reason, 'the NVIDIA driver is installed (it supports CUDA 13.0) but sees no GPU');
  t.match(unseen.fix, /`nvidia-smi -L` lists a GPU.*docker run --gpus all.*dmesg/);
  t.match(explain({ ...noDevice, cudaError: '', cudaCode: 0, cudaText: '' }).message, /\(CUDA: cudaGetDeviceCount found 0 devices\.\)/, 'a count of 0 without an error');

  t.match(explain({ cudaError: 'cudaErrorSystemDriverMismatch', cudaCode: 803, cudaText: 'system has unsupported display driver / cuda driver combination', driverVersion: 13000 }).fix, /^reboot/);
  const other = explain({ cudaError: 'cudaErrorInitializationError', cudaCode: 3, cudaText: 'initialization error', driverVersion: 13000 });
  t.equal(other.reason, 'CUDA cannot initialise (driver CUDA 13.0, runtime CUDA 13.0)');
  t.match(other.message, /cudaErrorInitializationError \(3\): initialization error/);

  const emu = explain({ cudaError: 'cudaErrorNoDevice', cudaCode: 100, cudaText: 'MLA_EMU_DEVICES: cannot read "sm_7"', emulated: true });
  t.equal(emu.reason, 'MLA_EMU_DEVICES: cannot read "sm_7"');
  t.match(emu.message, /^no usable emulated device: MLA_EMU_DEVICES: cannot read "sm_7"\. Fix: set MLA_EMU_DEVICES to /);
  t.notMatch(emu.message, /doctor/, 'doctor does not diagnose the emulator\'s settings');

  // The driver branch table exists twice (C++ for the messages, TS for doctor's warnings).
  for (const rt of [11080, 12080, 13000, 13010]) {
    t.match(explain({ runtimeVersion: rt }).fix, new RegExp(`branch ${minDriverFor(rt)} or newer`), `CUDA ${rt}: branch ${minDriverFor(rt)}`);
  }
});

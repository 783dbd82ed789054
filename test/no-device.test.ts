// The no-device path of the CUDA addon: every GPU call throws a typed error with the reason.
// npm test runs the other files on the emulated device when there is no GPU; this one always
// loads the CUDA addon, so the path a GPU-less user meets stays tested.
import './helpers/cuda-addon.js';
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { cuda, DeviceTensor, Event, Stream } from '../lib/index.js';
import { packageRoot } from '../lib/native.js';
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


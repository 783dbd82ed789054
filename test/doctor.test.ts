// `mla-cuda doctor` and `info` on synthetic facts (every failure a user can hit, each with
// its fix), plus one run of the built CLI on this machine.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { diagnose, doctorReport, formatDoctor, gatherFacts, minDriverFor, runDoctor, runInfo, satisfiesRange } from '../lib/cli/doctor.js';
import type { DoctorDeps, DoctorFacts, DoctorReport } from '../lib/cli/doctor.js';
import type { DeviceInfo, DeviceStatus } from '../lib/runtime/cuda.js';

const H100: DeviceInfo = {
  index: 0, name: 'NVIDIA H100 80GB HBM3', major: 9, minor: 0, smCount: 132, totalMemory: 85e9, freeMemory: 80e9, l2CacheBytes: 50e6,
  sharedMemPerBlockOptin: 232448, sharedMemPerSm: 233472, clockKHz: 1980000, memoryClockKHz: 2619000, memoryBusWidth: 5120, pciBusId: '0000:01:00.0',
  computeCapability: '9.0', supportedByBuild: true,
};

function healthy(): DoctorFacts {
  return {
    node: 'v22.11.0',
    package: { name: 'mla-cuda', version: '0.1.0', nodeEngines: '^20.17.0 || >=22.9.0' },
    build: { addonLoaded: true, compiledWithCuda: true, cudaDisabled: false, emulated: false, cudaArchitectures: '80-real 86-real 89-real 90-real 100-real 120', hopperDecode: true, nvccVersion: '13.0.88', runtimeVersion: 13000, ops: ['fill', 'copy'] },
    napiVersion: 8,
    status: { ok: true, code: 'OK', cudaError: '', message: 'ok', deviceCount: 1, driverVersion: 13000, runtimeVersion: 13000 },
    devices: [H100],
    env: {},
  };
}

// As the addon reports it (csrc/runtime/no_device.h): the message, and its reason and fix apart.
const NO_DRIVER = {
  ok: false, code: 'ERR_NO_DEVICE', cudaError: 'cudaErrorInsufficientDriver',
  message: 'no usable CUDA device: no NVIDIA driver found (libcuda.so.1 cannot be loaded). Fix: install the NVIDIA driver, branch 580 or newer. (CUDA: ...)',
  reason: 'no NVIDIA driver found (libcuda.so.1 cannot be loaded)', fix: 'install the NVIDIA driver, branch 580 or newer (it must support CUDA 13.0)',
  deviceCount: 0, driverVersion: 0, runtimeVersion: 13000,
};

function errors(f: DoctorFacts) {
  return diagnose(f).filter((c) => c.severity === 'error');
}

t.test('satisfiesRange: the engines ranges npm uses', async (t) => {
  const range = '^20.17.0 || >=22.9.0';
  t.equal(satisfiesRange('v20.17.0', range), true);
  t.equal(satisfiesRange('v20.20.2', range), true);
  t.equal(satisfiesRange('v20.16.9', range), false);
  t.equal(satisfiesRange('v21.7.0', range), false);
  t.equal(satisfiesRange('v22.8.0', range), false);
  t.equal(satisfiesRange('v22.9.0', range), true);
  t.equal(satisfiesRange('v24.1.0', range), true);
  t.equal(satisfiesRange('v18.0.0', '>=18 <19'), true);
  t.equal(satisfiesRange('v19.0.0', '>=18 <19'), false);
  t.equal(satisfiesRange('v1.2.9', '~1.2.3'), true);
  t.equal(satisfiesRange('v1.3.0', '~1.2.3'), false);
  t.equal(satisfiesRange('v0.2.5', '^0.2.1'), true);
  t.equal(satisfiesRange('v0.3.0', '^0.2.1'), false);
  t.equal(satisfiesRange('v20.0.0', ''), true);
  t.equal(satisfiesRange('v20.0.0', 'lts/*'), null, 'unknown syntax: cannot tell');
});

t.test('a healthy setup has no problems', async (t) => {
  const r = doctorReport(healthy());
  t.equal(r.ok, true);
  t.equal(r.gpuUsable, true);
  t.same(r.checks.map((c) => c.severity), ['ok', 'ok', 'ok', 'ok', 'ok']);
  const text = formatDoctor(r);
  t.match(text, /\[ok\] +gpu 0: GPU 0: NVIDIA H100 80GB HBM3, compute capability 9\.0, 79\.2 GiB, 132 SMs; sm_90 is in the build/);
  t.match(text, /built with nvcc 13\.0\.88 for architectures 80-real/);
  t.match(text, /No problems found/);
  t.notMatch(text, /fix:/);
});

t.test('old Node: the engines range and how to fix it', async (t) => {
  const [e] = errors({ ...healthy(), node: 'v18.19.0' });
  t.equal(e?.name, 'node');
  t.match(e?.detail, /Node v18\.19\.0 does not satisfy mla-cuda's engines "\^20\.17\.0 \|\| >=22\.9\.0"/);
  t.match(e?.fix, /Node\.js 20\.17/);
});

t.test('addon not built: npm rebuild mla-cuda', async (t) => {
  const f = healthy();
  f.build = { addonLoaded: false, addonError: 'No native build was found', compiledWithCuda: false, cudaDisabled: false, emulated: false, cudaArchitectures: '', hopperDecode: false, nvccVersion: '', runtimeVersion: 0, ops: [] };
  f.status = { ...NO_DRIVER, code: 'ERR_NO_ADDON', message: 'native addon not loaded' };
  f.env = { MLA_CUDA_ADDON: '/tmp/x.node' };
  const checks = diagnose(f);
  const addon = checks.find((c) => c.name === 'addon');
  t.equal(addon?.severity, 'error');
  t.match(addon?.detail, /No native build was found/);
  t.match(addon?.fix, /^`npm rebuild mla-cuda`/);
  t.match(checks.find((c) => c.name === 'addon path')?.fix, /unset MLA_CUDA_ADDON/);
  t.notOk(checks.some((c) => c.name === 'driver'), 'nothing else can be checked without the addon');
});

t.test('built without CUDA: install the toolkit, CUDACXX, rebuild', async (t) => {
  const f = healthy();
  f.build = { ...f.build, compiledWithCuda: false, cudaArchitectures: '', nvccVersion: '', runtimeVersion: 0 };
  f.status = { ...NO_DRIVER, code: 'ERR_NO_CUDA' };
  const [e] = errors(f);
  t.equal(e?.name, 'cuda build');
  t.match(e?.detail, /built without CUDA/);
  t.match(e?.fix, /install the CUDA toolkit/);
  t.match(e?.fix, /CUDACXX=\/usr\/local\/cuda\/bin\/nvcc npm rebuild mla-cuda/);
});

t.test('built without CUDA because MLA_CUDA_DISABLE was set: unset it, not "install nvcc"', async (t) => {
  const f = healthy();
  f.build = { ...f.build, compiledWithCuda: false, cudaDisabled: true, cudaArchitectures: '', nvccVersion: '', runtimeVersion: 0 };
  f.status = { ...NO_DRIVER, code: 'ERR_NO_CUDA' };
  const [e] = errors(f);
  t.match(e?.detail, /because MLA_CUDA_DISABLE was set/);
  t.notMatch(e?.detail, /nvcc was not found/);
  t.equal(e?.fix, 'unset MLA_CUDA_DISABLE, then `npm rebuild mla-cuda`');
});

t.test('no driver: the addon\'s reason and fix, under "driver"', async (t) => {
  const r = doctorReport({ ...healthy(), status: NO_DRIVER, devices: [] });
  const e = r.checks.filter((c) => c.severity === 'error');
  t.equal(e.length, 1);
  t.equal(e[0]?.name, 'driver');
  t.equal(e[0]?.detail, NO_DRIVER.reason);
  t.equal(e[0]?.fix, NO_DRIVER.fix);
  t.match(r.checks.find((c) => c.name === 'gpu'), { severity: 'info', detail: /fix the driver first/ });
  t.equal(r.gpuUsable, false);
  t.match(formatDoctor(r), /No usable GPU: the CPU reference backend still works/);
});

t.test('driver older than the runtime: the addon\'s reason and fix; within a major, a warning', async (t) => {
  const status = { ...NO_DRIVER, driverVersion: 12040, reason: 'the NVIDIA driver is too old: it supports CUDA 12.4', fix: 'upgrade the driver to branch 580 or newer' };
  const [e, ...rest] = errors({ ...healthy(), status, devices: [] });
  t.equal(e?.name, 'driver');
  t.equal(e?.detail, status.reason);
  t.equal(e?.fix, status.fix);
  t.same(rest, [], 'one problem: the gpu check waits for the driver');
  // A driver/library mismatch is the driver's problem too.
  const mismatch = { ...status, cudaError: 'cudaErrorSystemDriverMismatch', driverVersion: 13000, reason: 'kernel module and libcuda differ', fix: 'reboot' };
  t.match(errors({ ...healthy(), status: mismatch, devices: [] }), [{ name: 'driver', detail: 'kernel module and libcuda differ', fix: 'reboot' }]);
  // Same major, older minor, but it runs (minor-version compatibility): a warning only.
  const compat = diagnose({ ...healthy(), status: { ...healthy().status, driverVersion: 12040, runtimeVersion: 12080 }, build: { ...healthy().build, runtimeVersion: 12080 } });
  t.equal(compat.find((c) => c.name === 'driver')?.severity, 'warning');
  t.match(compat.find((c) => c.name === 'driver')?.detail, /driver too old: it supports CUDA 12\.4, the addon uses CUDA runtime 12\.8 \(runs through minor-version compatibility/);
  t.match(compat.find((c) => c.name === 'driver')?.fix, /branch 525 or newer.*CUDACXX=\/usr\/local\/cuda-12\.4\/bin\/nvcc npm rebuild mla-cuda/);
  t.equal(minDriverFor(12080), '525');
  t.equal(minDriverFor(11080), '450');
});

t.test('driver fine but no GPU visible: the addon\'s reason and fix, under "gpu"', async (t) => {
  const status = {
    ...NO_DRIVER, cudaError: 'cudaErrorNoDevice', driverVersion: 13000, message: 'no usable CUDA device: no GPU is visible: ...',
    reason: 'no GPU is visible: CUDA_VISIBLE_DEVICES is set to "", which hides every GPU', fix: 'unset CUDA_VISIBLE_DEVICES',
  };
  const checks = diagnose({ ...healthy(), status, devices: [], env: { CUDA_VISIBLE_DEVICES: '' } });
  t.equal(checks.find((c) => c.name === 'driver')?.severity, 'ok');
  t.match(checks.filter((c) => c.severity === 'error'), [{ name: 'gpu', detail: status.reason, fix: status.fix }]);
  // A status without the explanation (an older addon) still shows CUDA's message.
  const bare = { ...status, reason: undefined, fix: undefined, message: 'cudaGetDeviceCount: cudaErrorNoDevice (100)' };
  t.match(errors({ ...healthy(), status: bare, devices: [] })[0], { name: 'gpu', detail: /no usable GPU: cudaGetDeviceCount: cudaErrorNoDevice/, fix: /nvidia-smi -L/ });
});

t.test('GPU architecture missing from the build: CUDAARCHS=<cc> npm rebuild', async (t) => {
  const f = healthy();
  f.build = { ...f.build, cudaArchitectures: '80-real 90-real' };
  f.devices = [{ ...H100, name: 'NVIDIA RTX PRO 6000', major: 12, minor: 0, computeCapability: '12.0', supportedByBuild: false }];
  const [e] = errors(f);
  t.match(e?.detail, /architecture sm_120 is not in this build \(80-real 90-real\)/);
  t.equal(e?.fix, '`CUDAARCHS=120 npm rebuild mla-cuda`');
  // sm_80 SASS runs on sm_89: no problem there.
  f.devices = [{ ...H100, name: 'NVIDIA L40S', major: 8, minor: 9, computeCapability: '8.9' }];
  t.same(errors(f), []);
  f.devices = [{ ...H100, name: 'Tesla T4', major: 7, minor: 5, computeCapability: '7.5' }];
  t.match(errors(f)[0]?.detail, /need compute capability 8\.0 or newer/);
});

t.test('an H100 on a build without sm_90 (PTX JIT): a warning that decode runs the portable kernel', async (t) => {
  const f = healthy();
  f.build = { ...f.build, cudaArchitectures: '80', hopperDecode: false };
  t.same(errors(f), [], 'the PTX still runs there');
  const w = diagnose(f).find((c) => c.severity === 'warning' && /sm_90a decode kernel/.test(c.detail));
  t.ok(w, 'the warning');
  t.match(w?.fix, /CUDAARCHS=90 npm rebuild mla-cuda/);
  t.notOk(diagnose(healthy()).some((c) => /sm_90a decode kernel/.test(c.detail)), 'none when the build has it');
});

function deps(facts: DoctorFacts): DoctorDeps & { out: string; err: string } {
  const d = { out: '', err: '', stdout: (s: string) => void (d.out += s), stderr: (s: string) => void (d.err += s), facts: () => facts };
  return d;
}

t.test('the emulated device is named as such, with how to use the GPU instead', async (t) => {
  const f = healthy();
  f.build = { ...f.build, emulated: true, cudaArchitectures: 'emulated', nvccVersion: 'GNU 12.2.0' };
  f.devices = [{ ...H100, name: 'Emulated H100 (sm_90, 132 SMs, CPU)', totalMemory: 2 ** 33 }];
  f.env = { MLA_CUDA_DEVICE: 'emulator' };
  const checks = diagnose(f);
  const dev = checks.find((c) => c.name === 'device');
  t.equal(dev?.severity, 'warning');
  t.match(dev?.detail, /emulated device \(MLA_CUDA_DEVICE=emulator\): the kernels run on the CPU/);
  t.match(dev?.fix, /unset MLA_CUDA_DEVICE/);
  t.match(checks.find((c) => c.name === 'gpu 0')?.detail, /emulated device 0: Emulated H100/);
  t.equal(errors(f).length, 0, 'no driver or architecture errors for the emulator');
});

t.test('runDoctor: exits 1 on a FAIL and says so; --json too; 0 with warnings only; bad arguments exit 2', async (t) => {
  const d = deps({ ...healthy(), status: NO_DRIVER, devices: [] });
  t.equal(await runDoctor([], d), 1);
  t.match(d.out, /\[FAIL\] driver: no NVIDIA driver found/);
  t.match(d.out, / {7}fix: install the NVIDIA driver/);
  t.match(d.out, /No usable GPU/);
  const j = deps({ ...healthy(), status: NO_DRIVER, devices: [] });
  t.equal(await runDoctor(['--json'], j), 1);
  const report = JSON.parse(j.out) as DoctorReport;
  t.equal(report.ok, false);
  t.equal(report.gpuUsable, false);
  t.equal(report.facts.status.code, 'ERR_NO_DEVICE');
  t.ok(report.checks.some((c) => c.fix?.includes('NVIDIA driver')));
  t.equal(await runDoctor([], deps(healthy())), 0, 'no problem: 0');
  const emu = healthy();
  emu.build = { ...emu.build, emulated: true };
  t.equal(await runDoctor([], deps(emu)), 0, 'warnings only (the emulated device): 0');
  const bad = deps(healthy());
  t.equal(await runDoctor(['--jsn'], bad), 2);
  t.match(bad.err, /unknown flag --jsn \(did you mean --json\?\)/);
  const extra = deps(healthy());
  t.equal(await runDoctor(['now'], extra), 2);
  t.match(extra.err, /takes no arguments/);
  const help = deps(healthy());
  t.equal(await runDoctor(['--help'], help), 0);
  t.match(help.out, /usage: mla-cuda doctor/);
  t.match(help.out, /Exit codes: 0 no problem \(warnings only\), 1 a problem \(\[FAIL\]; also with --json\),\n2 bad arguments\./);
});

t.test('runInfo prints build, status and devices as JSON', async (t) => {
  const d = deps(healthy());
  t.equal(await runInfo([], d), 0);
  const info = JSON.parse(d.out) as { build: { napiVersion: number; cudaArchitectures: string }; status: { ok: boolean }; devices: DeviceInfo[] };
  t.equal(info.build.napiVersion, 8);
  t.equal(info.status.ok, true);
  t.equal(info.devices[0]?.name, 'NVIDIA H100 80GB HBM3');
  const bad = deps(healthy());
  t.equal(await runInfo(['--json'], bad), 1);
});

t.test('gatherFacts on this machine never throws', async (t) => {
  const f = gatherFacts();
  t.equal(f.node, process.version);
  t.equal(f.package.name, 'mla-cuda');
  t.type(f.status.ok, 'boolean');
  t.ok(diagnose(f).length >= 1);
});

const cli = fileURLToPath(new URL('../dist/cli/main.js', import.meta.url));

t.test('built CLI: doctor exits 1 exactly when it prints a FAIL, 2 for bad arguments; info exits 0', { skip: existsSync(cli) ? false : 'dist/ not built (npm run build)' }, async (t) => {
  const doc = spawnSync(process.execPath, [cli, 'doctor'], { encoding: 'utf8' });
  t.equal(doc.status, /^\[FAIL\]/m.test(doc.stdout) ? 1 : 0, `exit ${doc.status} ${doc.stderr}`);
  t.match(doc.stdout, /^mla-cuda doctor/);
  t.match(doc.stdout, /\[(ok|FAIL)\] +node: Node v/);
  const json = spawnSync(process.execPath, [cli, 'doctor', '--json'], { encoding: 'utf8' });
  const report = JSON.parse(json.stdout) as DoctorReport;
  t.equal(json.status, report.ok ? 0 : 1);
  const info = spawnSync(process.execPath, [cli, 'info'], { encoding: 'utf8' });
  t.equal(info.status, 0);
  t.ok((JSON.parse(info.stdout) as { status: unknown }).status);
  const bad = spawnSync(process.execPath, [cli, 'doctor', '--jsn'], { encoding: 'utf8' });
  t.equal(bad.status, 2, 'bad arguments');
  t.match(bad.stderr, /unknown flag --jsn/);
});

// The CUDA addon (never the emulated device), as a user without a GPU meets it.
t.test('built CLI on the CUDA addon: without a GPU doctor prints the reason and fix every GPU call gives, and exits 1', { skip: existsSync(cli) ? false : 'dist/ not built (npm run build)' }, async (t) => {
  const env = { ...process.env, MLA_CUDA_DEVICE: 'cuda' };
  const info = spawnSync(process.execPath, [cli, 'info'], { encoding: 'utf8', env });
  const status = (JSON.parse(info.stdout) as { status: DeviceStatus }).status;
  const doc = spawnSync(process.execPath, [cli, 'doctor'], { encoding: 'utf8', env });
  if (status.ok) {
    t.equal(doc.status, /^\[FAIL\]/m.test(doc.stdout) ? 1 : 0, 'a GPU is present: exit 1 only for a FAIL');
    return;
  }
  t.equal(doc.status, 1, `exit 1 (${status.code}) ${doc.stderr}`);
  if (status.code !== 'ERR_NO_DEVICE') return; // a CPU-only build: its own check
  t.ok(status.reason && status.fix, 'the addon explains it');
  t.ok(doc.stdout.includes(`[FAIL] ${status.driverVersion === 0 || status.cudaError === 'cudaErrorInsufficientDriver' ? 'driver' : 'gpu'}: ${status.reason ?? ''}\n`), `doctor: ${status.reason}`);
  t.ok(doc.stdout.includes(`       fix: ${status.fix ?? ''}\n`), `fix: ${status.fix}`);
});

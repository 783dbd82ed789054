// The emulated device's sm_90a checks (csrc/emu/hopper.cc, docs/emulator.md): what a GPU would
// leave undefined or hang on must be a fault that names the kernel line. Each case runs in a child
// process, because a kernel fault loses the (emulated) context for the rest of the process.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { packageRoot } from '../lib/native.js';
import { emulated } from './helpers/gpu.js';

const emuSkip = emulated ? false : 'the emulated device is not in use (MLA_CUDA_DEVICE=emulator or auto without a GPU)';

interface Outcome {
  ok?: boolean;
  code?: string;
  message?: string;
}

// Runs `call` (an expression over the primitives ops) in a child on the emulated device.
function inChild(call: string, env: Record<string, string> = {}): Outcome {
  const script = `
    const p = await import(${JSON.stringify(`${packageRoot}/dist/ops/primitives.js`)});
    let out = { ok: true };
    try { ${call}; } catch (e) { out = { code: e.code, message: e.message }; }
    console.log(JSON.stringify(out));`;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], {
    encoding: 'utf8',
    // Under `npm run test:tsan` the provoked faults are races by construction (a read of bytes a
    // TMA load is still writing): ThreadSanitizer may report them, but must not change the exit.
    env: { ...process.env, MLA_CUDA_DEVICE: 'emulator', MLA_EMU_DEVICES: 'sm_90', ...(process.env['TSAN_OPTIONS'] ? { TSAN_OPTIONS: `${process.env['TSAN_OPTIONS']}:exitcode=0` } : {}), ...env },
  });
  if (r.status !== 0) return { code: `exit ${r.status}`, message: r.stderr };
  return JSON.parse(r.stdout) as Outcome;
}

const wgmmaArgs = (mode: number): string =>
  `p.wgmmaConformance(new Uint16Array(1024), new Uint16Array(256), new Float32Array(1024), ` +
  `{ dtype: 'bf16', n: 16, k: 16, swizzleA: 128, swizzleB: 128, tnspB: 0, rs: false, scaleD: true, mode: ${mode} })`;

t.test('wgmma.mma_async without wgmma.fence is a fault naming the line', { skip: emuSkip }, async (t) => {
  t.same(inChild(wgmmaArgs(0)), { ok: true }, 'the fenced control runs');
  const r = inChild(wgmmaArgs(1));
  t.equal(r.code, 'ERR_CUDA');
  t.match(r.message, /wgmmaKernel.*faulted on the emulated device: .*primitives_sm90\.cu:\d+: wgmma\.mma_async without wgmma\.fence/);
});

t.test('a cp.async into a wgmma operand before its wait_group is a fault (write after read)', { skip: emuSkip }, async (t) => {
  const r = inChild(wgmmaArgs(2));
  t.equal(r.code, 'ERR_CUDA');
  t.match(r.message, /primitives_sm90\.cu:\d+: cp\.async into shared memory while the wgmma\.mma_async at \S+primitives_sm90\.cu:\d+ still reads it/);
});

t.test('reading a TMA destination before its mbarrier wait is a fault', { skip: emuSkip }, async (t) => {
  const load = (mode: number): string => `p.tmaConformance(new Uint16Array(40 * 72), [40, 72], [64, 8], 128, [[0, 0]], { mode: ${mode} })`;
  t.same(inChild(load(0)), { ok: true }, 'the control (wait first) runs');
  const r = inChild(load(1));
  t.equal(r.code, 'ERR_CUDA');
  t.match(r.message, /tmaKernel.*faulted.*ldmatrix at .*primitives_sm90\.cu:\d+ .*reads shared memory that a TMA load is still writing/);
});

t.test('a wait for an mbarrier phase that never completes is a deadlock naming the barrier and line', { skip: emuSkip }, async (t) => {
  const r = inChild('p.mbarrierConformance(new Uint16Array(512), { mode: 1 })');
  t.equal(r.code, 'ERR_CUDA');
  t.match(r.message, /mbarrierKernel.*faulted.*deadlock in block \(0,0,0\).*64 thread\(s\) wait at .*primitives_sm90\.cu:\d+ on the mbarrier at shared offset \d+ for the phase of parity 0 \(initialised at .*count 2; now phase 0, 1 arrival\(s\)/);
});

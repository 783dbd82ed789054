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

t.test('a TMA box whose innermost coordinate is not 16-byte aligned is a fault (an illegal instruction on a GPU)', { skip: emuSkip }, async (t) => {
  const load = (x: number): string => `p.tmaConformance(new Uint16Array(40 * 72), [40, 72], [16, 8], 0, [[${x}, 1]])`;
  t.same(inChild(load(8)), { ok: true }, 'x = 8 elements (16 bytes) runs');
  for (const x of [3, -5]) {
    const r = inChild(load(x));
    t.equal(r.code, 'ERR_CUDA', `x = ${x}`);
    t.match(r.message, new RegExp(`tmaKernel.*faulted.*primitives_sm90\\.cu:\\d+: cp\\.async\\.bulk\\.tensor: the box's innermost coordinate ${x} is ${2 * x} bytes in, not a multiple of 16`));
  }
});

t.test('a wait for an mbarrier phase that never completes is a deadlock naming the barrier and line', { skip: emuSkip }, async (t) => {
  const r = inChild('p.mbarrierConformance(new Uint16Array(512), { mode: 1 })');
  t.equal(r.code, 'ERR_CUDA');
  t.match(r.message, /mbarrierKernel.*faulted.*deadlock in block \(0,0,0\).*64 thread\(s\) wait at .*primitives_sm90\.cu:\d+ on the mbarrier at shared offset \d+ for the phase of parity 0 \(initialised at .*count 2; now phase 0, 1 arrival\(s\)/);
});

// Named barriers (bar.sync / bar.arrive id, count; scheduler.cc). The correct handshake is part of
// mode 0 (primitives.test.ts checks the tile it hands over bit for bit, on a GPU too).
const mbarrierCall = (mode: number): string => `p.mbarrierConformance(new Uint16Array(512), { mode: ${mode} })`;

t.test('a named-barrier handshake over two generations hands the whole tile over', { skip: emuSkip }, async (t) => {
  const script = `(() => {
    const src = Uint16Array.from({ length: 512 }, (_, i) => (i * 13 + 5) & 0xffff);
    const r = p.mbarrierConformance(src);
    if (!r.tile.every((v, i) => v === src[i])) throw Object.assign(new Error('tile differs'), { code: 'MISMATCH' });
  })()`;
  t.same(inChild(script), { ok: true }, 'in order');
  t.same(inChild(script, { MLA_EMU_SHUFFLE: '7' }), { ok: true }, 'shuffled thread order (MLA_EMU_SHUFFLE=7)');
  t.same(inChild(script, { MLA_EMU_SHUFFLE: '12345' }), { ok: true }, 'shuffled thread order (MLA_EMU_SHUFFLE=12345)');
});

t.test('arrivals on one named-barrier generation with different counts are a fault naming both lines', { skip: emuSkip }, async (t) => {
  for (const shuffle of ['0', '3']) {
    const r = inChild(mbarrierCall(2), { MLA_EMU_SHUFFLE: shuffle });
    t.equal(r.code, 'ERR_CUDA', `MLA_EMU_SHUFFLE=${shuffle}`);
    t.match(r.message, /mbarrierKernel.*faulted on the emulated device: block \(0,0,0\) thread \d+ \(warp 1 lane \d+\) at \S+primitives_sm90\.cu:\d+: bar\.sync 3 with count 32, but this generation of named barrier 3 began at \S+primitives_sm90\.cu:\d+ with count 64/);
  }
});

t.test('a bar.sync that never completes is a deadlock naming the named barrier, its line and its count', { skip: emuSkip }, async (t) => {
  const r = inChild(mbarrierCall(3));
  t.equal(r.code, 'ERR_CUDA');
  t.match(r.message, /mbarrierKernel.*faulted.*deadlock in block \(0,0,0\).*named barrier 4: 32 of 64 threads arrived in this generation \(first at \S+primitives_sm90\.cu:\d+\), 32 thread\(s\) wait in bar\.sync 4 at \S+primitives_sm90\.cu:\d+/);
});

t.test('mbarrierConformance refuses a test mode past 3', { skip: emuSkip }, async (t) => {
  const r = inChild(mbarrierCall(4));
  t.equal(r.code, 'ERR_RANGE');
});

// wgmma.wait_group N completes every group but the newest N, their operand reads included, even
// when a still-pending wgmma chains on the same accumulators (the decode kernel's P1·V1, P0·V0).
const chainedArgs = (mode: number): string =>
  `p.wgmmaConformance(new Uint16Array(64 * 64), new Uint16Array(64 * 32), new Float32Array(64 * 32), ` +
  `{ dtype: 'bf16', n: 32, k: 64, swizzleA: 128, swizzleB: 128, tnspB: 0, rs: false, scaleD: true, mode: ${mode} })`;

t.test('wait_group releases the operand reads of each completed group, not only of delivered results', { skip: emuSkip }, async (t) => {
  t.same(inChild(chainedArgs(3)), { ok: true }, 'a cp.async into the B slice of a completed group (wait_group 1) runs');
  const r = inChild(chainedArgs(4));
  t.equal(r.code, 'ERR_CUDA', 'the B slice of the group still pending');
  t.match(r.message, /wgmmaKernel.*primitives_sm90\.cu:\d+: cp\.async into shared memory while the wgmma\.mma_async at \S+primitives_sm90\.cu:\d+ still reads it \(neither this thread nor every thread of its warpgroup has reached a wgmma\.wait_group covering its group\)/);
  t.equal(inChild(chainedArgs(3).replace('k: 64', 'k: 16').replace('64 * 64', '64 * 16').replace('64 * 32), new', '16 * 32), new')).code, 'ERR_RANGE', 'modes 3 and 4 need several k16 steps');
});

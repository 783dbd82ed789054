// The emulated device itself (docs/emulator.md): the kernels' tile configurations on each
// shared-memory tier with few SMs, a kernel fault as a typed error in a live process, memory
// accounting and the device it reports. Runs where the emulated device is in use (npm test
// without a GPU); on a real GPU the same kernels are covered by their own test files.
import { EMULATED_TIERS } from './helpers/emulated-devices.js';
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { Worker } from 'node:worker_threads';
import { cuda, DeviceTensor } from '../lib/index.js';
import { decodeConfig } from '../lib/ops/decode.js';
import { linear } from '../lib/ops/linear.js';
import { linear as refLinear } from '../lib/reference/linear.js';
import { packageRoot } from '../lib/native.js';
import { build, checkOutputs, disposeBuilt, runBuilt, type CaseSpec } from './helpers/decode-cases.js';
import { emulated, poison, randn, relError, roundTo } from './helpers/gpu.js';

const emuSkip = emulated ? false : 'the emulated device is not in use (MLA_CUDA_DEVICE=emulator or auto without a GPU)';

t.test('the emulated device says what it is', { skip: emuSkip }, async (t) => {
  const info = cuda.info();
  t.equal(info.build.emulated, true);
  t.equal(info.devices.length, EMULATED_TIERS.length, 'one device per MLA_EMU_DEVICES entry');
  EMULATED_TIERS.forEach((arch, i) => t.match(info.devices[i]!.name, new RegExp(`^Emulated .*${arch}`), `device ${i}: ${info.devices[i]!.name}`));
  t.same(info.devices.map((d) => d.sharedMemPerBlockOptin), [232448, 166912, 101376], 'the three shared-memory tiers');
});

// Decode picks BM (16/32/64 query rows) from H·s_q and BN/stages from the shared memory the
// device offers: three devices × three row counts reach all nine instantiations of the portable
// kernel (forced: on sm_90 decode would otherwise take the Hopper path, tested in decode.test.ts).
t.test('decode: every tile configuration, on each shared-memory tier, with few SMs', { skip: emuSkip }, async (t) => {
  const seen = new Set<string>();
  let seed = 4000;
  for (let dev = 0; dev < EMULATED_TIERS.length; dev++) {
    cuda.setDevice(dev);
    for (const [H, sQ, pageSize, dtype] of [[3, 4, 16, 'bf16'], [16, 2, 256, 'f16'], [64, 1, 64, 'bf16']] as const) {
      const cfg = decodeConfig(H, sQ, undefined, { kernel: 'portable' });  // the Hopper path has its own tests
      seen.add(`${cfg.blockM}x${cfg.blockN}x${cfg.stages}`);
      const spec: CaseSpec = { B: 3, H, pageSize, seqLens: [0, 1, 290 + 97 * dev], sQ, causal: sQ > 1, dtype, seed: seed++, kernel: 'portable' };
      const label = `${EMULATED_TIERS[dev]} H${H} sq${sQ} ps${pageSize} ${dtype}: BM${cfg.blockM} BN${cfg.blockN} ST${cfg.stages}, ${cfg.numParts} parts`;
      t.ok(cfg.numParts <= 4 * 4, `${label}: splits sized for ${cuda.deviceInfo(dev).smCount} SMs`);
      const b = build(spec);
      try {
        checkOutputs(t, label, runBuilt(b, spec), b.ref);
      } finally {
        disposeBuilt(b);
      }
    }
  }
  cuda.setDevice(0);
  t.equal(seen.size, 9, `all nine tile configurations ran: ${[...seen].join(', ')}`);
});

// The Hopper kernel on the 3-SM sm_90 tier: parts span several requests (and requests several
// parts), so one CTA carries its mbarrier phases from request to request, and partial slots meet
// single-split requests in the same part.
t.test('decode, Hopper kernel: several requests per part, with few SMs', { skip: emuSkip }, async (t) => {
  cuda.setDevice(0);
  let seed = 4100;
  for (const [H, sQ, pageSize, dtype] of [[16, 1, 64, 'bf16'], [128, 2, 16, 'f16'], [5, 3, 256, 'bf16']] as const) {
    const cfg = decodeConfig(H, sQ, undefined, { kernel: 'hopper' });
    const spec: CaseSpec = { B: 7, H, pageSize, seqLens: [70, 0, 1, 130, 64, 300, 9], sQ, causal: sQ > 1, dtype, seed: seed++, kernel: 'hopper' };
    const label = `${EMULATED_TIERS[0]} hopper H${H} sq${sQ} ps${pageSize} ${dtype}: ${cfg.numParts} parts x ${cfg.rowTiles} row tiles`;
    t.ok(cfg.numParts < spec.B, `${label}: fewer parts than requests`);
    const b = build(spec);
    try {
      checkOutputs(t, label, runBuilt(b, spec), b.ref);
    } finally {
      disposeBuilt(b);
    }
  }
});

// Long requests on 3 SMs: each CTA walks many pairs of tiles, so the running max shared by the
// two warpgroups grows after the first pair (a stale or racy max shows only then), and K chunks
// are reloaded into stages still being read by the other warpgroup's earlier work.
t.test('decode, Hopper kernel: many tile pairs per part, with few SMs', { skip: emuSkip }, async (t) => {
  cuda.setDevice(0);
  for (const [H, pageSize, seqLens, seed] of [[8, 64, [2500, 3], 4200], [64, 256, [1337], 4201]] as const) {
    const spec: CaseSpec = { B: seqLens.length, H, pageSize, seqLens: [...seqLens], sQ: 1, causal: false, dtype: 'bf16', seed, kernel: 'hopper' };
    const cfg = decodeConfig(H, 1, undefined, { kernel: 'hopper' });
    const b = build(spec);
    try {
      checkOutputs(t, `${EMULATED_TIERS[0]} hopper H${H} ps${pageSize} L[${seqLens.join(',')}]: ${cfg.numParts} parts`, runBuilt(b, spec), b.ref);
    } finally {
      disposeBuilt(b);
    }
  }
});

// linear takes its 64- or 128-row tiles and stage count from the same limits.
t.test('linear: tiled, skinny and split-K paths on each shared-memory tier', { skip: emuSkip }, async (t) => {
  for (let dev = 0; dev < EMULATED_TIERS.length; dev++) {
    cuda.setDevice(dev);
    for (const [T, N, K] of [[300, 136, 520], [5, 264, 2056], [40, 512, 4096]] as const) {
      const xh = randn(T * K, T + dev);
      const wh = randn(N * K, N + dev, 1 / Math.sqrt(K));
      const x = DeviceTensor.fromArray(xh, [T, K], 'bf16');
      const w = DeviceTensor.fromArray(wh, [N, K], 'bf16');
      const out = poison(DeviceTensor.empty([T, N], 'f32'));
      try {
        linear(x, w, { out });
        const err = relError(out.toFloat32Sync(), refLinear(roundTo(xh, 'bf16'), T, K, roundTo(wh, 'bf16'), N));
        t.ok(err < 1e-5, `${EMULATED_TIERS[dev]} T${T} N${N} K${K}: rel err ${err.toExponential(2)}`);
      } finally {
        x.dispose();
        w.dispose();
        out.dispose();
      }
    }
  }
  cuda.setDevice(0);
});

t.test('device memory is accounted and returns to its start value', { skip: emuSkip }, async (t) => {
  const before = cuda.deviceInfo(0).freeMemory;
  const held = Array.from({ length: 64 }, (_, i) => DeviceTensor.empty([1000 + i], 'f32'));
  t.ok(cuda.deviceInfo(0).freeMemory < before, 'allocations are counted');
  for (const x of held) x.dispose();
  t.equal(cuda.deviceInfo(0).freeMemory, before, 'and given back');
});

// Blocks run on the launching OS thread, so four Node workers launching at once exercise the
// emulator's per-thread state and its shared registries (memory, streams, attributes).
t.test('kernels launched from four worker threads at once match one thread\'s results', { skip: emuSkip }, async (t) => {
  const script = `
    const { parentPort, workerData } = require('node:worker_threads');
    import(workerData.dist).then(async ({ DeviceTensor, rmsNorm, linear, Stream }) => {
      const x = DeviceTensor.fromArray(Float32Array.from({ length: 40 * 512 }, (_, i) => Math.sin(i * 0.37 + workerData.seed)), [40, 512], 'bf16');
      const w = DeviceTensor.fromArray(Float32Array.from({ length: 512 }, (_, i) => 1 + (i % 7) / 8), [512], 'bf16');
      const m = DeviceTensor.fromArray(Float32Array.from({ length: 96 * 512 }, (_, i) => Math.cos(i * 0.11)), [96, 512], 'bf16');
      const s = new Stream();
      const sums = [];
      for (let round = 0; round < 6; round++) {
        const y = linear(rmsNorm(x, w, 1e-6, { stream: s }), m, { outDtype: 'f32', stream: s });
        sums.push(Array.from(await y.toFloat32({ stream: s })).reduce((a, b) => a + b, 0));
        y.dispose();
      }
      for (const t of [x, w, m, s]) t.dispose();
      parentPort.postMessage(sums);
    }).catch((e) => parentPort.postMessage({ error: String(e) }));`;
  const run = (seed: number): Promise<number[] | { error: string }> => new Promise((resolve, reject) => {
    const w = new Worker(script, { eval: true, workerData: { dist: `${packageRoot}/dist/index.js`, seed } });
    w.once('message', resolve);
    w.once('error', reject);
  });
  const alone = await run(1);
  const together = await Promise.all([1, 2, 3, 1].map(run));
  t.notOk('error' in alone, `one worker ran: ${JSON.stringify(alone).slice(0, 200)}`);
  t.same(together[0], alone, 'the same inputs give bit-identical results with three other workers running');
  t.same(together[3], alone, 'twice');
  t.notSame(together[1], alone, 'and other inputs other results');
});

// A kernel fault poisons the context, as on a GPU: the call that hit it and every later device
// call throw MlaError; the process lives on. In a child, since the fault is process-wide.
t.test('a kernel fault becomes a typed error and a lost context, never an abort', { skip: emuSkip }, async (t) => {
  const script = `
    const { DeviceTensor, rmsNorm } = await import(${JSON.stringify(`${packageRoot}/dist/index.js`)});
    const x = DeviceTensor.fromArray(new Float32Array(64).fill(1), [2, 32], 'bf16');
    const w = DeviceTensor.fromArray(new Float32Array(32).fill(1), [32], 'bf16');
    const out = {};
    try { rmsNorm(x, w, 1e-6); } catch (e) { out.first = { name: e.name, code: e.code, message: e.message }; }
    try { DeviceTensor.zeros([4]); } catch (e) { out.later = { code: e.code, message: e.message }; }
    console.log(JSON.stringify(out));`;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], {
    encoding: 'utf8',
    env: { ...process.env, MLA_CUDA_DEVICE: 'emulator', MLA_EMU_FAULT: 'rmsNormKernel' },
  });
  t.equal(r.status, 0, `the process exits normally ${r.stderr}`);
  const res = JSON.parse(r.stdout) as { first?: { name: string; code: string; message: string }; later?: { code: string; message: string } };
  t.equal(res.first?.name, 'MlaError');
  t.equal(res.first?.code, 'ERR_CUDA');
  t.match(res.first?.message, /rmsNormKernel.* faulted on the emulated device: block \(0,0,0\): fault injected/);
  t.equal(res.later?.code, 'ERR_CUDA', 'later calls fail too (the context is lost)');
  t.match(res.later?.message, /cudaErrorLaunchFailure.*The CUDA context is lost: .* restart the process/s);
});

// A bad MLA_EMU_DEVICES: every device call says what cannot be read and how to write it.
t.test('an unreadable MLA_EMU_DEVICES is a no-device error naming the entry and the fix', { skip: emuSkip }, async (t) => {
  const script = `
    const { cuda, Stream } = await import(${JSON.stringify(`${packageRoot}/dist/index.js`)});
    const out = { status: cuda.deviceStatus() };
    try { new Stream(); } catch (e) { out.stream = { code: e.code, message: e.message }; }
    console.log(JSON.stringify(out));`;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], {
    encoding: 'utf8',
    env: { ...process.env, MLA_CUDA_DEVICE: 'emulator', MLA_EMU_DEVICES: 'sm_90,sm_7' },
  });
  t.equal(r.status, 0, r.stderr);
  const res = JSON.parse(r.stdout) as { status: { ok: boolean; code: string; message: string }; stream?: { code: string; message: string } };
  t.equal(res.status.ok, false);
  t.equal(res.status.code, 'ERR_NO_DEVICE');
  t.match(res.status.message, /^no usable emulated device: MLA_EMU_DEVICES: cannot read "sm_7" .*Fix: set MLA_EMU_DEVICES to /);
  t.equal(res.stream?.code, 'ERR_NO_DEVICE');
  t.equal(res.stream?.message, res.status.message, 'Stream throws the status message');
});

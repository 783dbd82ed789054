// Reliability (issue 16): the addon in several worker_threads and the main thread at once, workers
// terminated in the middle of an async download and of a long kernel, a process exiting with live
// tensors, and a lost CUDA context. Every test is bounded in time; device memory in use (the
// emulated device's counter, which all threads of the process share) must return to its start
// value. Runs where the emulated device (or a GPU) is in use.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { Worker } from 'node:worker_threads';
import { cuda } from '../lib/index.js';
import { packageRoot } from '../lib/native.js';
import { gpuSkip } from './helpers/gpu.js';

const dist = `${packageRoot}/dist/index.js`;
const used = (): number => {
  const d = cuda.deviceInfo(0);
  return d.totalMemory - d.freeMemory;
};

// Mixed sizes, views, launches on a stream and the default stream, several async downloads in
// flight, and an error thrown by the addon, which must be this thread's MlaError (the error class
// lives in the thread's instance data, not in a process-wide static).
const WORK = `
async function work(lib, seed, rounds) {
  const { DeviceTensor, rmsNorm, linear, Stream, Event, MlaError } = lib;
  const sums = [];
  const s = new Stream();
  const w = DeviceTensor.fromArray(Float32Array.from({ length: 256 }, (_, i) => 1 + (i % 5) / 8), [256], 'bf16');
  const m = DeviceTensor.fromArray(Float32Array.from({ length: 48 * 256 }, (_, i) => Math.cos(i * 0.07 + seed)), [48, 256], 'bf16');
  for (let r = 0; r < rounds; r++) {
    const rows = 1 + ((seed * 7 + r * 13) % 23);
    const x = DeviceTensor.fromArray(Float32Array.from({ length: rows * 256 }, (_, i) => Math.sin(i * 0.31 + seed + r)), [rows, 256], 'bf16');
    const scratch = [1, 4099, 65536, 300000].map((n) => DeviceTensor.empty([n + r], 'u8'));
    const e = new Event();
    const normed = rmsNorm(x, w, 1e-6, { stream: r % 2 ? s : undefined });
    const y = linear(normed, m, { outDtype: 'f32', stream: r % 2 ? s : undefined });
    normed.dispose();
    e.record(r % 2 ? s : undefined);
    const view = y.slice(0, 0, Math.max(1, rows >> 1)).select(1, 3);
    // On a stream the download starts once the stream's work is done, so y stays alive until
    // then; the others start at once and keep their memory past a dispose().
    const onStream = y.toFloat32({ stream: s });
    const pending = [view.toFloat32(), x.toHost(), scratch[1].toHost()];
    let typed = false;
    try { y.slice(0, 0, rows + 1); } catch (err) { typed = err instanceof MlaError && err.code === 'ERR_RANGE'; }
    if (!typed) throw new Error('an addon error was not this thread\\'s MlaError');
    for (const t of scratch) t.dispose();
    x.dispose();
    const all = await onStream;
    y.dispose();
    const [col] = await Promise.all(pending);
    e.dispose();
    sums.push(all.reduce((a, b) => a + b, 0), col.reduce((a, b) => a + b, 0));
  }
  for (const t of [w, m, s]) t.dispose();
  return sums;
}`;

function runWorker(script: string, workerData: Record<string, unknown>): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const w = new Worker(script, { eval: true, workerData: { dist, ...workerData } });
    w.once('message', resolve);
    w.once('error', reject);
    w.once('exit', (code) => reject(new Error(`worker exited with ${code} before answering`)));
  });
}

t.test('the main thread and 4 workers allocate, launch, download and dispose at once', { skip: gpuSkip, timeout: 120_000 }, async (t) => {
  const start = used();
  const script = `
    const { parentPort, workerData } = require('node:worker_threads');
    ${WORK}
    import(workerData.dist).then((lib) => work(lib, workerData.seed, workerData.rounds))
      .then((sums) => parentPort.postMessage(sums), (e) => parentPort.postMessage({ error: String(e && e.stack || e) }));`;
  const lib = await import(dist);
  const work = new Function('lib', 'seed', 'rounds', `${WORK}; return work(lib, seed, rounds);`) as
    (l: unknown, seed: number, rounds: number) => Promise<number[]>;
  const rounds = 12;
  const [main, ...workers] = await Promise.all([work(lib, 1, rounds), ...[1, 2, 3, 1].map((seed) => runWorker(script, { seed, rounds }))]);
  for (const [i, r] of workers.entries()) t.notOk(r !== null && typeof r === 'object' && 'error' in r, `worker ${i}: ${JSON.stringify(r).slice(0, 300)}`);
  t.equal(main!.length, 2 * rounds);
  t.same(workers[0], main, 'a worker gets bit-identical results to the main thread running the same work at the same time');
  t.same(workers[3], main, 'and so does another');
  t.notSame(workers[1], main, 'other inputs give other results');
  t.equal(used(), start, 'device memory in use is back to its start value');
});

// The download runs on a libuv thread; terminating the worker completes it in an environment that
// can no longer run JS. That used to escape a Napi::Error into libuv and abort the process.
t.test('workers terminated in the middle of async downloads and of a long kernel', { skip: gpuSkip, timeout: 120_000 }, async (t) => {
  const start = used();
  const script = `
    const { parentPort, workerData } = require('node:worker_threads');
    import(workerData.dist).then(async ({ DeviceTensor, linear, Stream }) => {
      if (workerData.mode === 'download') {
        const s = new Stream();
        const xs = Array.from({ length: 6 }, (_, i) => DeviceTensor.fromArray(new Float32Array(1 << 21).fill(i), [1 << 21], 'f32'));
        const pending = xs.map((x, i) => (i % 2 ? x.toHost({ stream: s }) : x.toFloat32()));
        pending.push(s.synchronizeAsync());
        parentPort.postMessage('started');
        xs.forEach((x, i) => { if (i % 3 === 0) x.dispose(); }); // freed when their download ends
        await Promise.all(pending);
      } else {
        // ~0.3-0.6 s on the emulated device: terminate() lands while it runs.
        const x = DeviceTensor.fromArray(new Float32Array(64 * 4096).fill(0.01), [64, 4096], 'bf16');
        const w = DeviceTensor.fromArray(new Float32Array(512 * 4096).fill(0.01), [512, 4096], 'bf16');
        parentPort.postMessage('started');
        setImmediate(() => { linear(x, w); parentPort.postMessage('kernel finished'); });
      }
    });`;
  for (const mode of ['download', 'kernel', 'download', 'kernel', 'download']) {
    const w = new Worker(script, { eval: true, workerData: { dist, mode } });
    const errors: unknown[] = [];
    w.on('error', (e) => errors.push(e));
    await new Promise((resolve) => w.once('message', resolve));
    if (mode === 'kernel') await new Promise((resolve) => setTimeout(resolve, 30));
    const t0 = Date.now();
    const code = await w.terminate();
    t.equal(code, 1, `${mode}: terminated (exit code 1) in ${Date.now() - t0} ms`);
    t.same(errors, [], `${mode}: no error event`);
  }
  t.equal(used(), start, 'the terminated workers\' tensors were all freed');
});

// Live tensors, views, streams, events and downloads in flight at exit: the process (and a worker
// calling process.exit) ends normally, with nothing on stderr.
t.test('exiting with live tensors, streams, events and downloads in flight', { skip: gpuSkip, timeout: 60_000 }, async (t) => {
  const body = `
    const { DeviceTensor, Stream, Event, rmsNorm } = await import(${JSON.stringify(dist)});
    const s = new Stream(); const e = new Event();
    const x = DeviceTensor.fromArray(new Float32Array(1 << 20).fill(1), [1024, 1024], 'bf16');
    const w = DeviceTensor.fromArray(new Float32Array(1024).fill(1), [1024], 'bf16');
    const y = rmsNorm(x, w, 1e-6, { stream: s }); e.record(s);
    const v = y.slice(0, 3, 9);
    globalThis.keep = [x, w, y, v, s, e, x.toHost(), y.toHost({ stream: s }), v.toFloat32()];`;
  const cases: [string, string][] = [
    ['process.exit() at once', `${body}\nprocess.exit(0);`],
    ['the event loop running dry', `${body}\nawait Promise.all(globalThis.keep.slice(6));`],
    ['a worker calling process.exit() while the main thread waits', `
      const { Worker } = await import('node:worker_threads');
      const w = new Worker(${JSON.stringify(`(async () => { ${body}\nprocess.exit(3); })()`)}, { eval: true });
      const code = await new Promise((r) => w.once('exit', r));
      const { cuda } = await import(${JSON.stringify(dist)});
      const d = cuda.deviceInfo(0);
      console.log(JSON.stringify({ code, used: d.totalMemory - d.freeMemory }));`],
  ];
  for (const [label, script] of cases) {
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', timeout: 30_000, env: process.env });
    t.equal(r.status, 0, `${label}: exit code 0 (signal ${r.signal})`);
    t.equal(r.stderr, '', `${label}: nothing on stderr`);
    if (label.startsWith('a worker')) t.same(JSON.parse(r.stdout), { code: 3, used: 0 }, 'the worker exited with its code and its memory was freed');
  }
});

// After a kernel fault every device call throws MlaError naming the lost context and the fix;
// freeing still works, nothing aborts. In a child, since the fault is process-wide.
t.test('after a sticky device error every call throws a clear MlaError', { skip: gpuSkip, timeout: 60_000 }, async (t) => {
  const script = `
    const lib = await import(${JSON.stringify(dist)});
    const { DeviceTensor, Stream, Event, rmsNorm, linear, cuda, MlaError, RopeTable, DecodeWorkspace } = lib;
    const x = DeviceTensor.fromArray(new Float32Array(64).fill(1), [2, 32], 'bf16');
    const w = DeviceTensor.fromArray(new Float32Array(32).fill(1), [32], 'bf16');
    const m = DeviceTensor.fromArray(new Float32Array(8 * 32).fill(1), [8, 32], 'bf16');
    const s = new Stream(); const e = new Event();
    const out = {};
    const call = async (name, f) => {
      try { await f(); out[name] = 'returned'; }
      catch (err) { out[name] = { mla: err instanceof MlaError, code: err.code, message: String(err.message) }; }
    };
    await call('fault', () => rmsNorm(x, w, 1e-6));
    await call('rmsNorm again', () => rmsNorm(x, w, 1e-6));
    await call('linear', () => linear(x, m));
    await call('empty', () => DeviceTensor.empty([4]));
    await call('fromArray', () => DeviceTensor.fromArray([1, 2], [2]));
    await call('fill', () => x.fill(0));
    await call('toHostSync', () => x.toHostSync());
    await call('toHost', () => x.toHost());
    await call('toHost on a stream', () => x.toHost({ stream: s }));
    await call('copyFrom', () => x.copyFrom(x));
    await call('new Stream', () => new Stream());
    await call('new Event', () => new Event());
    await call('stream.synchronize', () => s.synchronize());
    await call('stream.synchronizeAsync', () => s.synchronizeAsync());
    await call('event.record', () => e.record(s));
    await call('cuda.synchronize', () => cuda.synchronize());
    await call('RopeTable.create', () => RopeTable.create({ rotaryDim: 64, ropeTheta: 10000, scaling: null }, 16));
    await call('new DecodeWorkspace', () => new DecodeWorkspace({ maxBatch: 1, maxHeads: 16, maxParts: 4 }));
    const disposed = [];
    for (const h of [x, w, m, s, e]) { try { h.dispose(); disposed.push(true); } catch { disposed.push(false); } }
    out.disposed = disposed;
    console.log(JSON.stringify(out));`;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], {
    encoding: 'utf8',
    timeout: 30_000,
    env: { ...process.env, MLA_CUDA_DEVICE: 'emulator', MLA_EMU_FAULT: 'rmsNormKernel' },
  });
  t.equal(r.status, 0, `the process exits normally ${r.stderr}`);
  const res = JSON.parse(r.stdout) as Record<string, { mla: boolean; code: string; message: string } | string | boolean[]>;
  t.same(res['disposed'], [true, true, true, true, true], 'dispose() of tensors, streams and events still works (and frees)');
  delete res['disposed'];
  for (const [name, v] of Object.entries(res)) {
    if (typeof v !== 'object' || Array.isArray(v)) {
      t.fail(`${name}: ${String(v)} instead of throwing`);
      continue;
    }
    t.ok(v.mla && v.code === 'ERR_CUDA', `${name}: MlaError ERR_CUDA (${v.code})`);
    if (name !== 'fault') t.match(v.message, /The CUDA context is lost: every later GPU call in this process fails; restart the process/, `${name}: says the context is lost and to restart`);
  }
});

// Reliability (issue 16): async downloads against dispose(). toHost() queues its copy before it
// returns, with or without a stream, so disposing the tensor (or the stream) right after the call
// cannot pull the memory from under it: the promise resolves with the bytes the tensor held, and
// the memory is freed once the copy is done. Refusals (a disposed tensor or stream) are rejected
// promises, never synchronous throws, like every async method.
import t from 'tap';
import { pbkdf2 } from 'node:crypto';
import { promisify } from 'node:util';
import { DeviceTensor, MlaError, Stream, cuda, linear } from '../lib/index.js';
import { gpuSkip, randn } from './helpers/gpu.js';

const pbkdf2Async = promisify(pbkdf2);

const used = (): number => {
  const d = cuda.deviceInfo(0);
  return d.totalMemory - d.freeMemory;
};

/** Calls `f` and returns its promise; a synchronous throw becomes a failed promise whose error says so. */
function noSyncThrow<T>(what: string, f: () => Promise<T>): Promise<T> {
  try {
    return f();
  } catch (err) {
    return Promise.reject(new Error(`${what} threw synchronously instead of rejecting: ${String(err)}`));
  }
}

t.test('toHost({ stream }) then dispose() at once: the download completes with the right bytes', { skip: gpuSkip, timeout: 60_000 }, async (t) => {
  const start = used();
  const s = new Stream();
  const x = DeviceTensor.fromArray(randn(64 * 256, 1), [64, 256], 'bf16');
  const w = DeviceTensor.fromArray(randn(256 * 256, 2, 0.1), [256, 256], 'bf16');
  const want = linear(x, w, { outDtype: 'f32' }).toFloat32Sync();
  for (let round = 0; round < 4; round++) {
    // Work queued on the stream before the download: the copy must wait for it, and the
    // dispose() right after toHost() must wait for the copy.
    const y = linear(x, w, { outDtype: 'f32', stream: s });
    const whole = y.toFloat32({ stream: s });
    const view = y.slice(1, 3, 200).toFloat32({ stream: s }); // strided: copied on the stream first
    const plain = y.toFloat32();
    y.dispose();
    if (round % 2) s.dispose(); // the stream too: the downloads wait on an event, not on it
    const [a, b, c] = await Promise.all([whole, view, plain]);
    t.same(a, want, `round ${round}: whole tensor`);
    t.same(b, Float32Array.from({ length: 64 * 197 }, (_, i) => want[Math.floor(i / 197) * 256 + 3 + (i % 197)]!), `round ${round}: strided view`);
    t.same(c, want, `round ${round}: without a stream`);
    if (round % 2) {
      t.ok(s.disposed);
      break;
    }
  }
  for (const d of [x, w]) d.dispose();
  s.dispose();
  t.equal(used(), start, 'the memory is freed once the downloads end');
});

t.test('toHost / toFloat32 / synchronizeAsync with a disposed stream or tensor reject (ERR_DISPOSED)', { skip: gpuSkip, timeout: 60_000 }, async (t) => {
  const start = used();
  const s = new Stream();
  s.dispose();
  const x = DeviceTensor.fromArray(Float32Array.of(1, 2, 3, 4), [2, 2], 'f32');
  const cases: [string, () => Promise<unknown>, RegExp][] = [
    ['toHost({ stream: disposed })', () => x.toHost({ stream: s }), /^toHost: `stream` was disposed/],
    ['toFloat32({ stream: disposed })', () => x.toFloat32({ stream: s }), /^toHost: `stream` was disposed/],
    ['view.toHost({ stream: disposed })', () => x.select(1, 0).toHost({ stream: s }), /^toHost: `stream` was disposed/],
    ['Stream.synchronizeAsync() disposed', () => s.synchronizeAsync(), /^Stream\.synchronizeAsync: `stream` was disposed/],
  ];
  for (const [what, f, msg] of cases) {
    const p = noSyncThrow(what, f);
    await t.rejects(p, { name: 'MlaError', code: 'ERR_DISPOSED', message: msg }, what);
  }
  const y = DeviceTensor.fromArray(Float32Array.of(1), [1], 'f32');
  y.dispose();
  const p = noSyncThrow('toHost() of a disposed tensor', () => y.toHost());
  await t.rejects(p, { code: 'ERR_DISPOSED' }, 'toHost() of a disposed tensor');
  await p.catch((err: unknown) => t.ok(err instanceof MlaError, 'an MlaError'));
  x.dispose();
  t.equal(used(), start, 'the strided view\'s temporary copy was not leaked');
});

t.test('toHost({ stream }) sees exactly the stream\'s work queued before it, not later work', { skip: gpuSkip, timeout: 60_000 }, async (t) => {
  const start = used();
  const s = new Stream();
  const x = DeviceTensor.zeros([2048], 'f32', { stream: s });
  const pending: Promise<Float32Array>[] = [];
  for (let v = 1; v <= 12; v++) {
    x.fill(v, { stream: s });
    pending.push(x.toFloat32({ stream: s }));
  }
  x.dispose();
  const seen = await Promise.all(pending);
  t.same(seen.map((h) => (h.every((e) => e === h[0]) ? h[0] : Number.NaN)), Array.from({ length: 12 }, (_, i) => i + 1), 'download i saw fill i, whole');
  s.dispose();
  t.equal(used(), start, 'no device memory left behind');
});

// toHost() without a stream used to copy on a libuv worker thread whenever that thread got to
// it: on a GPU that memcpy (legacy default stream, from another host thread) is ordered after
// every launch the main thread queued *before the worker ran*, so a write launched right after
// toHost() returned could land in the download (the emulated device showed it). It now snapshots
// like the stream path: a device copy queued on the legacy stream before toHost() returns.
t.test('toHost() without a stream sees the values at the call, not a write launched right after', { skip: gpuSkip, timeout: 60_000 }, async (t) => {
  const start = used();
  // Hold every libuv pool thread (pbkdf2 runs there) so the downloads wait in the pool queue
  // while the main thread overwrites the tensor: deterministic, where a free pool would usually
  // win the race and hide it.
  const busy = Array.from({ length: Number(process.env['UV_THREADPOOL_SIZE'] ?? 4) + 4 }, () => pbkdf2Async('x', 'y', 40_000, 32, 'sha256'));
  const n = 1 << 16;
  const x = DeviceTensor.zeros([n], 'f32');
  const pending: Promise<Float32Array>[] = [];
  const rounds = 8;
  for (let v = 1; v <= rounds; v++) {
    x.write(new Float32Array(n).fill(v));
    pending.push(x.toFloat32());
    pending.push(x.slice(0, 7, n - 5).toFloat32()); // a view: the same snapshot point
  }
  x.write(new Float32Array(n).fill(-1));
  x.dispose();
  await Promise.all(busy);
  const seen = await Promise.all(pending);
  t.same(seen.map((h) => (h.every((e) => e === h[0]) ? h[0] : Number.NaN)), Array.from({ length: 2 * rounds }, (_, i) => (i >> 1) + 1), 'download i saw write i, whole');
  t.equal(used(), start, 'the snapshots are freed once downloaded');
});

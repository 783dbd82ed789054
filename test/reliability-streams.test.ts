// Reliability (issue 16): concurrency on streams. The same ops on 4 streams at once give results
// bit-identical to running them one after another; an op on a stream is ordered after earlier and
// before later work there, host downloads included; events order work across streams. (On the
// emulated device work is synchronous, so these check the binding's bookkeeping; on a GPU the
// same tests check real overlap.)
import t from 'tap';
import { DeviceTensor, Event, Stream, cuda, linear, rmsNorm } from '../lib/index.js';
import { gpuSkip, randn } from './helpers/gpu.js';

const used = (): number => {
  const d = cuda.deviceInfo(0);
  return d.totalMemory - d.freeMemory;
};

// One "layer": norm, projection, a copy and a fill, so several kernels queue per stream.
function chain(x: DeviceTensor, w: DeviceTensor, m: DeviceTensor, stream?: Stream): DeviceTensor {
  const opts = stream ? { stream } : {};
  const n = rmsNorm(x, w, 1e-6, opts);
  const y = linear(n, m, { ...opts, outDtype: 'f32' });
  const z = DeviceTensor.empty(y.shape, 'bf16').copyFrom(y, opts);
  const zc = z.to('bf16', opts);
  const out = linear(zc, m.slice(1, 0, y.shape[1]!), { ...opts, outDtype: 'f32' });
  for (const tmp of [n, y, z, zc]) tmp.dispose();
  return out;
}

t.test('the same ops on 4 streams at once equal running them one after another', { skip: gpuSkip, timeout: 60_000 }, async (t) => {
  const start = used();
  const inputs = [0, 1, 2, 3].map((i) => ({
    x: DeviceTensor.fromArray(randn(24 * 128, 10 + i), [24, 128], 'bf16'),
    w: DeviceTensor.fromArray(randn(128, 20 + i), [128], 'bf16'),
    m: DeviceTensor.fromArray(randn(128 * 128, 30 + i, 0.1), [128, 128], 'bf16'),
  }));
  const serial: Float32Array[] = [];
  for (const { x, w, m } of inputs) {
    const y = chain(x, w, m);
    serial.push(y.toFloat32Sync());
    y.dispose();
  }
  const streams = inputs.map(() => new Stream());
  for (let round = 0; round < 3; round++) {
    // Interleave the launches over the streams, then download all four at once.
    const outs = inputs.map(({ x, w, m }, i) => chain(x, w, m, streams[i]));
    const got = await Promise.all(outs.map((y, i) => y.toFloat32({ stream: streams[i] })));
    got.forEach((g, i) => t.same(g, serial[i], `round ${round}, stream ${i}: bit-identical to the serial run`));
    for (const y of outs) y.dispose();
  }
  for (const s of streams) s.dispose();
  for (const { x, w, m } of inputs) for (const d of [x, w, m]) d.dispose();
  t.equal(used(), start, 'no device memory left behind');
});

t.test('work on a stream is ordered, host downloads included', { skip: gpuSkip, timeout: 60_000 }, async (t) => {
  const s = new Stream();
  const x = DeviceTensor.zeros([4096], 'f32', { stream: s });
  const seen: number[] = [];
  const pending: Promise<void>[] = [];
  for (let v = 1; v <= 20; v++) {
    x.fill(v, { stream: s });
    // Each download is queued after the fill before it and before the next one.
    pending.push(x.toFloat32({ stream: s }).then((h) => {
      seen.push(h[0]!);
      if (!h.every((e) => e === h[0])) t.fail(`download after fill ${v} saw a partial fill`);
    }));
    if (v % 5 === 0) t.same(x.toFloat32Sync({ stream: s })[4095], v, `a synchronous download after fill ${v} sees it`);
  }
  await Promise.all(pending);
  t.same(seen.length, 20);
  t.ok(seen.every((v, i) => i === 0 || v >= seen[i - 1]!), `asynchronous downloads see the fills in order: ${seen.join(',')}`);
  t.equal(seen[seen.length - 1], 20, 'the last download sees the last fill');
  x.dispose();
  s.dispose();
});

t.test('events order work across streams', { skip: gpuSkip, timeout: 60_000 }, async (t) => {
  const producer = new Stream();
  const consumer = new Stream();
  const x = DeviceTensor.fromArray(randn(32 * 256, 5), [32, 256], 'bf16');
  const w = DeviceTensor.fromArray(randn(256, 6), [256], 'bf16');
  const expect = rmsNorm(x, w, 1e-6).toFloat32Sync();
  for (let round = 0; round < 5; round++) {
    const y = DeviceTensor.empty([32, 256], 'bf16').fill(Number.NaN, { stream: consumer });
    const ready = new Event();
    const n = rmsNorm(x, w, 1e-6, { stream: producer });
    ready.record(producer);
    consumer.waitEvent(ready);
    y.copyFrom(n, { stream: consumer });
    t.same(await y.toFloat32({ stream: consumer }), expect, `round ${round}: the consumer stream saw the producer's result`);
    t.ok(ready.query(), 'the event has completed');
    const done = new Event().record(consumer);
    done.synchronize();
    t.ok(ready.elapsedMs(done) >= 0, 'elapsed time between the events is non-negative');
    for (const d of [y, n, ready, done]) d.dispose();
  }
  // A disposed event or stream is a typed error, never a crash.
  const e = new Event();
  e.dispose();
  t.throws(() => consumer.waitEvent(e), { code: 'ERR_DISPOSED' });
  producer.dispose();
  t.throws(() => new Event().record(producer), { code: 'ERR_DISPOSED' });
  t.throws(() => x.toHostSync({ stream: producer }), { code: 'ERR_DISPOSED' });
  for (const d of [x, w, consumer]) d.dispose();
});

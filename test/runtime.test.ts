// Device runtime: build info, device status, host conversions, tensor views and lifetime,
// validation. The GPU parts skip with a visible reason where there is no device.
import t from 'tap';
import { cuda, DeviceTensor, Event, linear, MlaError, rmsNorm, Stream } from '../lib/index.js';
import type { DType } from '../lib/index.js';
import { native, nativeOp } from '../lib/native.js';
import type { NativeDeviceBuffer } from '../lib/native.js';
import type { NativeCopyArgs, NativeFillArgs, NativeOpName } from '../lib/native-contract.js';
import { checkInt, checkNumber, checkTensor } from '../lib/ops/validate.js';
import { encodeHost } from '../lib/runtime/tensor.js';
import { emulated, gpuSkip, randn, relError, roundTo } from './helpers/gpu.js';
import { meta, rejects } from './helpers/validation.js';


/** Host-memory stand-in for a device allocation, so view and lifetime logic run in CI. */
class HostBuffer implements NativeDeviceBuffer {
  readonly device = 0;
  freed = false;
  frees = 0;
  readonly mem: Uint8Array;
  constructor(readonly bytes: number) {
    this.mem = new Uint8Array(bytes);
  }
  free(): void {
    this.frees++;
    this.freed = true;
  }
  upload(view: ArrayBufferView, byteOffset: number): void {
    this.mem.set(new Uint8Array(view.buffer, view.byteOffset, view.byteLength), byteOffset);
  }
  download(byteOffset: number, bytes: number): ArrayBuffer {
    return this.mem.slice(byteOffset, byteOffset + bytes).buffer;
  }
  downloadAsync(byteOffset: number, bytes: number): Promise<ArrayBuffer> {
    return Promise.resolve(this.download(byteOffset, bytes));
  }
}

function hostTensor(shape: number[], dtype: DType = 'f32'): { tensor: DeviceTensor; buf: HostBuffer } {
  const size = { f32: 4, f16: 2, bf16: 2, fp8e4m3: 1, i32: 4, u8: 1 }[dtype];
  const buf = new HostBuffer(shape.reduce((a, b) => a * b, 1) * size);
  return { tensor: DeviceTensor._wrap(buf, shape, dtype), buf };
}



t.test('build info describes the addon', async (t) => {
  const b = cuda.buildInfo();
  t.equal(b.addonLoaded, true);
  if (b.emulated) {
    t.equal(b.cudaArchitectures, 'emulated', 'the emulated device has no CUDA architectures');
  } else if (b.compiledWithCuda) {
    t.match(b.cudaArchitectures, /\d/, 'lists the compiled CUDA architectures');
    t.ok(b.runtimeVersion >= 12000, `links CUDA runtime ${cuda.versionString(b.runtimeVersion)}`);
  }
  t.ok(b.ops.includes('fill') && b.ops.includes('copy'), 'registers the runtime ops');
});

t.test('tensor factories validate shape and dtype before touching the device', async (t) => {
  await rejects(t, () => DeviceTensor.empty([2, -1]), 'ERR_SHAPE', /invalid size -1/);
  await rejects(t, () => DeviceTensor.empty([1.5]), 'ERR_SHAPE', /invalid size/);
  await rejects(t, () => DeviceTensor.empty(new Array<number>(9).fill(1)), 'ERR_SHAPE', /at most 8/);
  await rejects(t, () => DeviceTensor.empty([2], 'f64' as DType), 'ERR_DTYPE', /unknown dtype f64/);
  await rejects(t, () => DeviceTensor.fromArray(new Float32Array(5), [2, 3]), 'ERR_SHAPE', /`data` has 5 elements but shape \[2, 3\] needs 6/);
  await rejects(t, () => encodeHost(new Int32Array(4), 'bf16'), 'ERR_DTYPE', /Int32Array cannot be uploaded as bf16/);
});

t.test('host conversions round to nearest even', async (t) => {
  const n = native();
  const enc = (x: number[], d: number): Uint16Array => new Uint16Array(n.encodeF32(Float32Array.from(x), d));
  // bf16: 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1.0).
  t.same([...enc([1 + 2 ** -8, 1 + 3 * 2 ** -8, -2, Infinity], 2)], [0x3f80, 0x3f82, 0xc000, 0x7f80]);
  t.ok(Number.isNaN(n.decodeToF32(enc([NaN], 2), 2)[0]), 'bf16 keeps NaN');
  // f16: halfway 1 + 2^-11 -> 1; max 65504; 65520 overflows; 2^-24 is the smallest subnormal.
  t.same([...enc([1 + 2 ** -11, 65504, 65520, 2 ** -24, 2 ** -25, 3 * 2 ** -25], 1)], [0x3c00, 0x7bff, 0x7c00, 0x0001, 0x0000, 0x0002]);
  for (const [dtype, code] of [['bf16', 2], ['f16', 1]] as const) {
    const x = randn(4096, 7, 3);
    x[0] = 1e-6; x[1] = -7e-8; x[2] = 3000; x[3] = 0;
    const back = n.decodeToF32(new Uint16Array(n.encodeF32(x, code)), code);
    t.equal(relError(back, roundTo(x, dtype)), 0, `${dtype}: C++ rounding equals the reference rounding on 4096 values`);
  }
  // fp8 e4m3fn: every finite code decodes and re-encodes to itself; beyond 448 saturates.
  const codes = Uint8Array.from({ length: 256 }, (_, i) => i);
  const values = n.decodeToF32(codes, 3);
  t.equal(values[0x7e], 448);
  t.equal(values[0x01], 2 ** -9);
  t.ok(Number.isNaN(values[0x7f]!) && Number.isNaN(values[0xff]!), '0x7f and 0xff are NaN');
  const finite = [...codes].filter((c) => c !== 0x7f && c !== 0xff);
  const again = new Uint8Array(n.encodeF32(Float32Array.from(finite.map((c) => values[c]!)), 3));
  t.same([...again], finite, 'fp8 encode(decode(c)) == c for all finite codes');
  t.same([...new Uint8Array(n.encodeF32(Float32Array.from([1000, -1e9, 1.0625, 1.1875]), 3))], [0x7e, 0xfe, 0x38, 0x3a],
    'saturates and ties to even (1.0625 -> 1.0, 1.1875 -> 1.25)');
});

t.test('views share memory and follow the shape arithmetic', async (t) => {
  const { tensor } = hostTensor([4, 3, 8]);
  const s = tensor.slice(1, 1, 3);
  t.same(s.shape, [4, 2, 8]);
  t.same(s.strides, [24, 8, 1]);
  t.equal(s.offset, 8);
  t.equal(s.isContiguous, false);
  const sel = tensor.select(0, -1);
  t.same([sel.shape, sel.strides, sel.offset], [[3, 8], [8, 1], 72]);
  const last = tensor.slice(-1, 6);
  t.same([last.shape, last.offset], [[4, 3, 2], 6]);
  const p = tensor.permute([2, 0, 1]);
  t.same([p.shape, p.strides], [[8, 4, 3], [1, 24, 8]]);
  const r = tensor.reshape([12, -1]);
  t.same([r.shape, r.strides, r.isContiguous], [[12, 8], [8, 1], true]);
  t.equal(tensor.numel, 96);
  t.equal(tensor.byteLength, 384);
  t.equal(tensor.ndim, 3);
  t.match(String(s), /DeviceTensor\(f32, \[4, 2, 8\]\)/);
  await rejects(t, () => tensor.slice(1, 2, 5), 'ERR_RANGE', /\[2, 5\) is out of range for dim 1 of size 3/);
  await rejects(t, () => tensor.slice(3, 0, 1), 'ERR_RANGE', /`dim` 3 is out of range/);
  await rejects(t, () => tensor.select(0, 4), 'ERR_RANGE', /index 4 is out of range/);
  await rejects(t, () => s.reshape([64]), 'ERR_SHAPE', /not contiguous/);
  await rejects(t, () => tensor.reshape([5, -1]), 'ERR_SHAPE', /does not match 96 elements/);
  await rejects(t, () => tensor.permute([0, 0, 1]), 'ERR_ARGUMENT', /not a permutation/);
});

// (The asynchronous toHost() first copies on the device, which a host-backed buffer cannot do:
// it is tested on the device below and in test/reliability-downloads.test.ts.)
t.test('upload and download of a contiguous tensor go through the buffer', async (t) => {
  const { tensor, buf } = hostTensor([2, 3], 'bf16');
  buf.upload(encodeHost(Float32Array.from([1, 2, 3, -4, 0.5, 256]), 'bf16'), 0);
  t.same([...tensor.toFloat32Sync()], [1, 2, 3, -4, 0.5, 256]);
  const row = tensor.select(0, 1);
  t.same([...row.toFloat32Sync()], [-4, 0.5, 256], 'a contiguous view downloads its own window');
  const ints = hostTensor([3], 'i32');
  ints.buf.upload(encodeHost([7, -1, 3], 'i32'), 0);
  t.same([...ints.tensor.toHostSync()], [7, -1, 3]);
  t.same([...ints.tensor.toFloat32Sync()], [7, -1, 3]);
});

t.test('dispose frees once; views and use-after-dispose are errors, never crashes', async (t) => {
  const { tensor, buf } = hostTensor([4, 4]);
  const view = tensor.slice(0, 1, 2);
  view.dispose();
  t.equal(view.disposed, true);
  t.equal(tensor.disposed, false, 'disposing a view leaves the parent alive');
  t.equal(buf.frees, 0);
  const other = tensor.select(0, 0);
  tensor[Symbol.dispose]();
  tensor.dispose();
  t.equal(buf.frees, 1, 'double dispose frees once');
  t.equal(other.disposed, true, 'views of a freed allocation report disposed');
  await rejects(t, () => tensor.toHostSync(), 'ERR_DISPOSED', /toHost: `this` was disposed/);
  await rejects(t, () => other.slice(0, 0, 1), 'ERR_DISPOSED', /tensor was disposed/);
  await rejects(t, () => tensor.nativeRef('decode: `q`'), 'ERR_DISPOSED', /decode: `q` was disposed/);
  await rejects(t, () => checkTensor('decode', 'q', other), 'ERR_DISPOSED', /decode: `q` was disposed/);
});

t.test('native ops reject malformed descriptors with typed errors', async (t) => {
  const { tensor } = hostTensor([4]);
  await rejects(t, () => nativeOp('fill')({ value: 1 } as unknown as NativeFillArgs), 'ERR_ARGUMENT', /fill: `dst` is required/);
  await rejects(t, () => nativeOp('fill')({ dst: tensor.nativeRef(), value: 1 }), 'ERR_ARGUMENT', /fill: `dst` is not backed by a DeviceBuffer/);
  await rejects(t, () => nativeOp('copy')(5 as unknown as NativeCopyArgs), 'ERR_ARGUMENT', /copy: expected an options object/);
  await rejects(t, () => tensor.fill('1' as unknown as number), 'ERR_ARGUMENT', /`value` must be a number/);
  await rejects(t, () => tensor.copyFrom({} as DeviceTensor), 'ERR_ARGUMENT', /`src` must be a DeviceTensor/);
  await rejects(t, () => nativeOp('nope' as NativeOpName), 'ERR_NO_ADDON', /no op "nope"/);
});

t.test('argument checks name the op and the argument', async (t) => {
  t.equal(checkTensor('op', 'x', meta([2, 3]), { dtype: ['bf16', 'f16'], shape: [2, null] }).shape[1], 3);
  await rejects(t, () => checkTensor('op', 'x', 5), 'ERR_ARGUMENT', /op: `x` must be a DeviceTensor/);
  await rejects(t, () => checkTensor('op', 'x', meta([2, 3], 'f32'), { dtype: ['bf16', 'f16'] }), 'ERR_DTYPE', /op: `x` must be bf16 or f16, got f32/);
  await rejects(t, () => checkTensor('op', 'x', meta([2, 3]), { shape: [2, 4] }), 'ERR_SHAPE', /must have shape \[2, 4\], got \[2, 3\]/);
  await rejects(t, () => checkTensor('op', 'x', meta([2, 3], 'bf16', [1, 2]), { innerContiguous: true }), 'ERR_SHAPE', /contiguous last dimension/);
  await rejects(t, () => checkTensor('op', 'x', meta([2, 3], 'bf16', [6, 1]), { contiguous: true }), 'ERR_SHAPE', /must be contiguous/);
  await rejects(t, () => checkInt('op', 'n', 2.5), 'ERR_ARGUMENT', /`n` must be an integer/);
  await rejects(t, () => checkInt('op', 'n', 300, 1, 256), 'ERR_RANGE', /`n` = 300 is out of range \[1, 256\]/);
  await rejects(t, () => checkNumber('op', 'scale', NaN), 'ERR_ARGUMENT', /`scale` must be a finite number/);
  await rejects(t, () => checkNumber('op', 'scale', 0, { positive: true }), 'ERR_RANGE', /`scale` must be positive/);
});

t.test('architecture matching for doctor and deviceInfo', async (t) => {
  const build = '80-real 86-real 89-real 90-real 100-real 120';
  t.ok(cuda.archSupports(build, 9, 0));
  t.ok(cuda.archSupports(build, 8, 7), 'sm_87 runs sm_86 SASS');
  t.ok(cuda.archSupports(build, 12, 1), 'sm_121 runs sm_120 SASS');
  t.ok(cuda.archSupports(build, 13, 0), 'a newer GPU JITs the sm_120 PTX');
  t.notOk(cuda.archSupports(build, 7, 5), 'sm_75 is not built');
  t.notOk(cuda.archSupports('90-real', 10, 0), 'SASS does not cross major versions');
  t.ok(cuda.archSupports('90a-real;80-virtual', 8, 6));
  t.equal(cuda.versionString(13000), '13.0');
  t.equal(cuda.versionString(12080), '12.8');
  t.equal(cuda.versionString(0), 'none');
});

t.test('MlaError', async (t) => {
  const e = new MlaError('ERR_RANGE', 'x');
  t.ok(e instanceof Error);
  t.equal(e.name, 'MlaError');
  t.equal(e.code, 'ERR_RANGE');
});

// ---- on a GPU ------------------------------------------------------------------------------

t.test('round trips of every dtype', { skip: gpuSkip }, async (t) => {
  const x = randn(1000, 3, 4);
  for (const dtype of ['f32', 'f16', 'bf16', 'fp8e4m3'] as const) {
    using d = DeviceTensor.fromArray(x, [10, 100], dtype);
    const back = await d.toFloat32();
    const want = dtype === 'fp8e4m3' ? native().decodeToF32(new Uint8Array(native().encodeF32(x, 3)), 3) : roundTo(x, dtype);
    t.equal(relError(back, want), 0, `${dtype} round trip is exact after rounding`);
    t.same([...d.toFloat32Sync()], [...back], `${dtype} sync and async agree`);
  }
  const ints = Int32Array.from({ length: 77 }, (_, i) => i * 7919 - 300000);
  using di = DeviceTensor.fromArray(ints, [7, 11], 'i32');
  t.same([...(await di.toHost())], [...ints]);
  const bytes = Uint8Array.from({ length: 33 }, (_, i) => (i * 37) & 255);
  using du = DeviceTensor.fromArray(bytes, [33], 'u8');
  t.same([...du.toHostSync()], [...bytes]);
  const raw = Uint16Array.from([0x3f80, 0xc000, 0x7fc0]);
  using dr = DeviceTensor.fromArray(raw, [3], 'bf16');
  t.same([...(await dr.toHost())], [...raw], 'raw bf16 bits upload unchanged');
});

t.test('fill, copies, conversions and strided views on the device', { skip: gpuSkip }, async (t) => {
  using z = DeviceTensor.zeros([3, 5], 'bf16');
  t.same([...(await z.toFloat32())], new Array(15).fill(0));
  using f = DeviceTensor.full([2, 2], 'i32', -7);
  t.same([...(await f.toHost())], [-7, -7, -7, -7]);
  const x = randn(4 * 6 * 8, 11);
  using a = DeviceTensor.fromArray(x, [4, 6, 8], 'f32');
  const ref = (i: number, j: number, k: number): number => x[(i * 6 + j) * 8 + k]!;
  const sl = a.slice(1, 2, 5).slice(2, 3, 7);
  const got = await sl.toFloat32();
  const want: number[] = [];
  for (let i = 0; i < 4; i++) for (let j = 2; j < 5; j++) for (let k = 3; k < 7; k++) want.push(ref(i, j, k));
  t.same([...got], want, 'non-contiguous view downloads the right elements');
  using pt = a.permute([2, 0, 1]).contiguous();
  const pv = await pt.toFloat32();
  t.equal(pv[(5 * 4 + 3) * 6 + 2], ref(3, 2, 5), 'permute + contiguous');
  using b = a.to('bf16');
  t.equal(relError(await b.toFloat32(), roundTo(x, 'bf16')), 0, 'to(bf16) rounds like the host');
  using c = DeviceTensor.empty([4, 3, 4], 'f32');
  c.copyFrom(sl);
  t.same([...(await c.toFloat32())], want, 'copyFrom a strided view');
  sl.fill(2.5);
  const after = await a.toFloat32();
  t.equal(after[(1 * 6 + 3) * 8 + 4], 2.5, 'fill on a view writes inside the window');
  t.equal(after[(1 * 6 + 1) * 8 + 4], x[(1 * 6 + 1) * 8 + 4], 'and nothing outside it');
  await rejects(t, () => c.copyFrom(a), 'ERR_SHAPE', /different (rank|shape)/);
  using ci = DeviceTensor.empty([4, 3, 4], 'i32');
  await rejects(t, () => ci.copyFrom(c), 'ERR_DTYPE', /cannot be converted from f32 to i32/);
});

t.test('streams, events and timing', { skip: gpuSkip }, async (t) => {
  using s = new Stream();
  using e0 = new Event();
  using e1 = new Event();
  const n = emulated ? 1 << 16 : 1 << 24; // the emulator runs ~10M CUDA threads/s
  using big = DeviceTensor.empty([n], 'f32');
  e0.record(s);
  for (let i = 0; i < 10; i++) big.fill(i, { stream: s });
  e1.record(s);
  const ms = e0.elapsedMs(e1);
  t.ok(ms > 0, `10 fills of ${((n * 4) / 2 ** 20).toFixed(2)} MB took ${ms.toFixed(3)} ms`);
  big.fill(11, { stream: s });
  t.equal((await big.select(0, 7).toFloat32({ stream: s }))[0], 11, 'toHost({ stream }) comes after the stream\'s queued work');
  t.equal(big.select(0, 8).toFloat32Sync({ stream: s })[0], 11, 'and so does toHostSync({ stream })');
  big.fill(9, { stream: s });
  await s.synchronizeAsync();
  t.equal(s.query(), true);
  t.equal(e1.query(), true);
  const s2 = new Stream();
  s2.waitEvent(e1);
  s2.synchronize();
  s2.dispose();
  s2.dispose();
  await rejects(t, () => s2.synchronize(), 'ERR_DISPOSED', /`stream` was disposed/);
  t.equal((await big.select(0, 5).toFloat32())[0], 9);
  const d = cuda.deviceInfo(0);
  t.ok(d.name.length > 0 && d.smCount > 0 && d.totalMemory > 0 && d.l2CacheBytes > 0, `${d.name}, cc ${d.computeCapability}, ${d.smCount} SMs`);
  t.equal(d.supportedByBuild, true);
  t.equal(cuda.devices().length, cuda.deviceCount());
});

t.test('hold / release: queued work waits for the release, and a forgotten hold times out', { skip: gpuSkip }, async (t) => {
  using s = new Stream();
  using x = DeviceTensor.empty([1 << 12], 'f32');
  await rejects(t, () => s.release(), 'ERR_ARGUMENT', /release: this stream is not held/);
  await rejects(t, () => s.hold({ timeoutMs: 0 }), 'ERR_RANGE', /Stream.hold: `timeoutMs`/);
  const held = s.hold();
  if (emulated) {
    t.equal(held, false, 'the emulated device runs each launch as it is made: nothing to hold');
    await rejects(t, () => s.release(), 'ERR_ARGUMENT', /not held/);
    return;
  }
  t.equal(held, true, 'held');
  using other = new Stream();
  await rejects(t, () => other.hold(), 'ERR_ARGUMENT', /already held/);
  x.fill(3, { stream: s });
  await new Promise((r) => setTimeout(r, 50));
  t.equal(s.query(), false, 'the fill waits behind the hold');
  t.equal(s.release(), true, 'released in time');
  s.synchronize();
  t.equal((x.select(0, 100).toFloat32Sync())[0], 3, 'then runs');
  t.equal(s.hold({ timeoutMs: 20 }), true);
  x.fill(4, { stream: s });
  await new Promise((r) => setTimeout(r, 200));
  t.equal(s.release(), false, 'the timeout ended the hold first');
  t.equal((x.select(0, 7).toFloat32Sync({ stream: s }))[0], 4);
  // A stream disposed while held releases its hold (the next hold would refuse otherwise).
  const d = new Stream();
  d.hold();
  d.dispose();
  t.equal(other.hold(), true, 'a disposed stream gave its hold back');
  t.equal(other.release(), true);
});

t.test('native ops check forged descriptors before touching memory', { skip: gpuSkip }, async (t) => {
  // The bindings trust nothing of a descriptor: every window must lie inside its allocation,
  // including ones whose size x stride products would wrap int64 (entries go up to 2^53).
  using x = DeviceTensor.zeros([4, 4]);
  const ref = x.nativeRef();
  const fill = (desc: number[] | Float64Array | Float32Array, buffer: unknown = ref.buffer): unknown =>
    nativeOp('fill')({ dst: { buffer, desc } as never, value: 1 });
  const f64 = (...v: number[]): Float64Array => Float64Array.from(v);
  t.doesNotThrow(() => fill(f64(0, 0, 2, 4, 4, 4, 1)), 'the real descriptor fills');
  t.same([...(await x.toFloat32())], Array(16).fill(1));
  await rejects(t, () => fill([0, 0, 2, 4, 4, 4, 1]), 'ERR_ARGUMENT', /fill: `dst` needs a Float64Array descriptor/);
  await rejects(t, () => fill(Float32Array.from([0, 0, 1, 16, 1])), 'ERR_ARGUMENT', /Float64Array descriptor/);
  await rejects(t, () => fill(f64(0, 0, 2, 4, 4, 4)), 'ERR_SHAPE', /inconsistent descriptor/);
  await rejects(t, () => fill(f64(0, 0, 9, ...Array(18).fill(1))), 'ERR_SHAPE', /more than 8 dims/);
  await rejects(t, () => fill(f64(0.5, 0, 1, 4, 1)), 'ERR_ARGUMENT', /not an integer/);
  await rejects(t, () => fill(f64(0, 17, 1, 4, 1)), 'ERR_DTYPE', /unknown dtype/);
  await rejects(t, () => fill(f64(0, 0, 1, 4, -1)), 'ERR_SHAPE', /negative size or stride/);
  await rejects(t, () => fill(f64(13, 0, 1, 4, 1)), 'ERR_RANGE', /fill: `dst` addresses memory outside its buffer/);
  await rejects(t, () => fill(f64(0, 0, 1, 17, 1)), 'ERR_RANGE', /outside its buffer/);
  await rejects(t, () => fill(f64(0, 0, 2, 2 ** 33 + 1, 2, 2 ** 31, 1)), 'ERR_RANGE', /outside its buffer/);
  await rejects(t, () => fill(f64(0, 0, 2, 2 ** 52, 2 ** 52, 2 ** 12, 2 ** 12)), 'ERR_RANGE', /outside its buffer/);
  await rejects(t, () => fill(ref.desc, Object.create(Object.getPrototypeOf(ref.buffer) as object)), 'ERR_ARGUMENT', /not backed by a DeviceBuffer/);
  await rejects(t, () => nativeOp('fill')({ dst: ref, value: 1, stream: {} as never }), 'ERR_ARGUMENT', /fill: `stream` must be a Stream/);
  t.same([...(await x.toFloat32())], Array(16).fill(1), 'no refused call wrote anything');
});

t.test('write({ stream }): staged at the call, copied in the stream\'s order', { skip: gpuSkip }, async (t) => {
  using stream = new Stream();
  const src = new Int32Array(1000);
  const dst = Array.from({ length: 7 }, () => DeviceTensor.empty([1000], 'i32'));
  // More writes than staging slots, the same host array changed after each: every tensor gets
  // what the array held when its write() returned.
  dst.forEach((d, i) => {
    src.fill(i * 11 + 1);
    d.write(src, { stream });
  });
  stream.synchronize();
  dst.forEach((d, i) => t.ok((d.toHostSync() as Int32Array).every((v) => v === i * 11 + 1), `write ${i}`));
  // Ordered after a kernel queued before it on the same stream.
  using f = DeviceTensor.empty([4096], 'f32');
  f.fill(5, { stream });
  f.slice(0, 0, 3).write(Float32Array.of(1, 2, 3), { stream });
  t.same([...(await f.toFloat32({ stream }))].slice(0, 5), [1, 2, 3, 5, 5]);
  for (const d of dst) d.dispose();
});

t.test('a `stream` option that is not a live Stream is a typed error naming the op', { skip: gpuSkip }, async (t) => {
  using x = DeviceTensor.zeros([4, 8], 'bf16');
  using w = DeviceTensor.zeros([8], 'bf16');
  using m = DeviceTensor.zeros([8, 8], 'bf16');
  const dead = new Stream();
  dead.dispose();
  const calls: [string, (stream: unknown) => unknown][] = [
    ['fill', (stream) => x.fill(1, { stream } as never)],
    ['copyFrom', (stream) => x.copyFrom(x, { stream } as never)],
    ['DeviceTensor.write', (stream) => x.write(new Float32Array(32), { stream } as never)],
    ['toHostSync', (stream) => x.toHostSync({ stream } as never)],
    ['rmsNorm', (stream) => rmsNorm(x, w, 1e-6, { stream } as never)],
    ['linear', (stream) => linear(x, m, { stream } as never)],
  ];
  for (const [op, call] of calls) {
    await rejects(t, () => call(5), 'ERR_ARGUMENT', new RegExp(`^${op}: \`stream\` must be a Stream`));
    await rejects(t, () => call(dead), 'ERR_DISPOSED', new RegExp(`^${op}: \`stream\` was disposed`));
  }
  await rejects(t, () => x.toHost({ stream: {} } as never), 'ERR_ARGUMENT', /^toHost: `stream` must be a Stream/);
});

t.test('lifetime on the device: deferred free, OOM, finalizers', { skip: gpuSkip }, async (t) => {
  const d = DeviceTensor.fromArray(randn(1 << 20, 5), [1 << 20], 'f32');
  const pending = d.toHost();
  d.dispose(); // the download still in flight keeps the memory until it completes
  t.equal((await pending).length, 1 << 20);
  await rejects(t, () => d.toHost(), 'ERR_DISPOSED', /was disposed/);
  await rejects(t, () => DeviceTensor.empty([2 ** 48], 'u8'), 'ERR_OOM', /cudaMalloc/);
  using still = DeviceTensor.zeros([4]);
  t.same([...(await still.toFloat32())], [0, 0, 0, 0], 'the device is usable after an OOM');
  for (let i = 0; i < 50; i++) DeviceTensor.empty([1 << 20]); // forgotten: freed by GC finalizers
  t.pass('forgotten tensors do not crash');
});

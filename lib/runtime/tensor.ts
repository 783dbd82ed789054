import { DTYPE_CODE, DTYPE_SIZE, hostArrayFor, isDType, isFloatDType } from '../dtype.js';
import type { DType, HostArray, HostArrayOf } from '../dtype.js';
import { MlaError } from '../errors.js';
import { native, nativeOp } from '../native.js';
import type { NativeDeviceBuffer, NativeTensorRef } from '../native.js';
import { nativeStream, refuseDuringCapture, type Stream } from './stream.js';

/** What validation needs to know about a tensor (DeviceTensor, or a plain object in tests). */
export interface TensorMeta {
  readonly shape: readonly number[];
  readonly strides: readonly number[];
  readonly dtype: DType;
  readonly disposed: boolean;
}

export interface StreamOption {
  stream?: Stream | undefined;
}

export function contiguousStrides(shape: readonly number[]): number[] {
  const strides = new Array<number>(shape.length);
  let s = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    strides[i] = s;
    s *= shape[i]!;
  }
  return strides;
}

function refuseHostCopy(): void {
  refuseDuringCapture('copying to the host (toHost, toHostSync, an op checking its indices)',
    'pass `checkIndices: false` to the ops and read results after endCapture() and a launch()');
}

export function numelOf(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

function checkShape(shape: readonly number[], what: string): void {
  if (!Array.isArray(shape) || shape.length > 8) throw new MlaError('ERR_SHAPE', `${what}: shape must be an array of at most 8 sizes`);
  for (const d of shape) {
    if (!Number.isSafeInteger(d) || d < 0) throw new MlaError('ERR_SHAPE', `${what}: shape [${shape.join(', ')}] has an invalid size ${d}`);
  }
}

function checkDType(dtype: unknown, what: string): asserts dtype is DType {
  if (!isDType(dtype)) throw new MlaError('ERR_DTYPE', `${what}: unknown dtype ${String(dtype)}`);
}

// Allocations their owner freed, so that a view's `disposed` (read by every op's checks) is a
// JS lookup instead of a native property read; only DeviceTensor.dispose frees a buffer.
const freedBuffers = new WeakSet<NativeDeviceBuffer>();

/**
 * A typed, possibly strided window onto device memory. Views (slice, select, reshape,
 * permute) share the allocation and keep it alive; dispose() on the tensor that allocated it
 * frees the memory (views then report `disposed`). A tensor nobody disposes is freed by GC.
 */
export class DeviceTensor implements TensorMeta {
  readonly shape: readonly number[];
  readonly strides: readonly number[];
  readonly dtype: DType;
  /** Offset of element [0, 0, ...] in elements from the start of the allocation. */
  readonly offset: number;
  #buffer: NativeDeviceBuffer;
  #owner: boolean;
  #disposed = false;
  #ref: NativeTensorRef | undefined;

  private constructor(buffer: NativeDeviceBuffer, owner: boolean, dtype: DType, shape: readonly number[],
    strides: readonly number[], offset: number) {
    this.#buffer = buffer;
    this.#owner = owner;
    this.dtype = dtype;
    this.shape = Object.freeze([...shape]);
    this.strides = Object.freeze([...strides]);
    this.offset = offset;
  }

  /** @internal Wraps an allocation this tensor then owns (tests pass a host-memory stand-in). */
  static _wrap(buffer: NativeDeviceBuffer, shape: readonly number[], dtype: DType): DeviceTensor {
    return new DeviceTensor(buffer, true, dtype, shape, contiguousStrides(shape), 0);
  }

  /** Uninitialised device memory. */
  static empty(shape: readonly number[], dtype: DType = 'f32'): DeviceTensor {
    checkShape(shape, 'DeviceTensor.empty');
    checkDType(dtype, 'DeviceTensor.empty');
    refuseDuringCapture('allocating device memory (DeviceTensor.empty, an op without `out`)',
      'allocate every buffer before beginCapture() and pass it as `out` / `workspace`');
    const bytes = numelOf(shape) * DTYPE_SIZE[dtype];
    const what = `\`shape\` [${shape.join(', ')}] (${dtype}, ${bytes} bytes)`;
    if (!Number.isSafeInteger(bytes)) throw new MlaError('ERR_RANGE', `DeviceTensor.empty: ${what} is too large to allocate`);
    let buffer: NativeDeviceBuffer;
    try {
      buffer = new (native().DeviceBuffer)(bytes);
    } catch (err) {
      // The native message names only a byte count; the user chose a shape.
      if (err instanceof MlaError && (err.code === 'ERR_OOM' || err.code === 'ERR_RANGE')) {
        const named = new MlaError(err.code, `DeviceTensor.empty: ${what} cannot be allocated: ${err.message}`);
        if (err.cudaError !== undefined) named.cudaError = err.cudaError;
        throw named;
      }
      throw err;
    }
    return new DeviceTensor(buffer, true, dtype, shape, contiguousStrides(shape), 0);
  }

  static zeros(shape: readonly number[], dtype: DType = 'f32', opts: StreamOption = {}): DeviceTensor {
    return DeviceTensor.full(shape, dtype, 0, opts);
  }

  static full(shape: readonly number[], dtype: DType, value: number, opts: StreamOption = {}): DeviceTensor {
    const t = DeviceTensor.empty(shape, dtype);
    t.fill(value, opts);
    return t;
  }

  /**
   * Uploads host data. A Float32Array (or number[] / Float64Array, via float32) is converted
   * to f16 / bf16 / fp8e4m3 with round-to-nearest-even; raw element arrays (Uint16Array for
   * bf16/f16, Uint8Array for fp8e4m3 and u8, Int32Array for i32) are copied bit for bit.
   */
  static fromArray(data: ArrayLike<number> | HostArray | Float64Array, shape: readonly number[], dtype: DType = 'f32'): DeviceTensor {
    checkShape(shape, 'DeviceTensor.fromArray');
    checkDType(dtype, 'DeviceTensor.fromArray');
    const n = numelOf(shape);
    if (data.length !== n) {
      throw new MlaError('ERR_SHAPE', `DeviceTensor.fromArray: \`data\` has ${data.length} elements but shape [${shape.join(', ')}] needs ${n}`);
    }
    const bytes = encodeHost(data, dtype);
    const t = DeviceTensor.empty(shape, dtype);
    try {
      t.#buffer.upload(bytes, 0);
    } catch (err) {
      t.dispose();
      throw err;
    }
    return t;
  }

  /**
   * Overwrites this (contiguous) tensor's elements with host data, converted as fromArray does;
   * the memory stays the same, which is what a captured CUDA graph needs between replays.
   * Without `stream`: synchronous, on the legacy default stream (it waits for work already queued
   * on other, blocking, streams, and later work waits for it). With `stream`: in that stream's
   * order, without waiting for the device (`data` is staged in pinned memory before this returns
   * and may be reused at once); work on other streams is not ordered with it.
   */
  write(data: ArrayLike<number> | HostArray | Float64Array, opts: StreamOption = {}): this {
    this.assertAlive('write: `this`');
    refuseDuringCapture('DeviceTensor.write', 'write the inputs before launch(), outside the capture');
    if (!this.isContiguous) throw new MlaError('ERR_SHAPE', 'DeviceTensor.write: `this` must be contiguous');
    if (data.length !== this.numel) {
      throw new MlaError('ERR_SHAPE', `DeviceTensor.write: \`data\` has ${data.length} elements but the tensor [${this.shape.join(', ')}] has ${this.numel}`);
    }
    this.#buffer.upload(encodeHost(data, this.dtype), this.offset * DTYPE_SIZE[this.dtype], nativeStream('DeviceTensor.write', opts.stream));
    return this;
  }

  get disposed(): boolean {
    return this.#disposed || freedBuffers.has(this.#buffer);
  }
  get ndim(): number {
    return this.shape.length;
  }
  get numel(): number {
    return numelOf(this.shape);
  }
  get byteLength(): number {
    return this.numel * DTYPE_SIZE[this.dtype];
  }
  get isContiguous(): boolean {
    const expect = contiguousStrides(this.shape);
    return this.shape.every((d, i) => d === 1 || this.strides[i] === expect[i]);
  }

  /** Throws ERR_DISPOSED naming `what` if this tensor (or its allocation) was disposed. */
  assertAlive(what = 'tensor'): void {
    if (this.disposed) throw new MlaError('ERR_DISPOSED', `${what} was disposed`);
  }

  /**
   * @internal The descriptor native ops read (see csrc/binding/napi_util.cc), made once: a
   * tensor's geometry never changes, and ops run per layer per step.
   */
  nativeRef(what = 'tensor'): NativeTensorRef {
    this.assertAlive(what);
    if (this.#ref) return this.#ref;
    const n = this.shape.length;
    const desc = new Float64Array(3 + 2 * n);
    desc[0] = this.offset;
    desc[1] = DTYPE_CODE[this.dtype];
    desc[2] = n;
    for (let i = 0; i < n; i++) {
      desc[3 + i] = this.shape[i]!;
      desc[3 + n + i] = this.strides[i]!;
    }
    return (this.#ref = { buffer: this.#buffer, desc });
  }

  #dim(dim: number, what: string): number {
    const d = dim < 0 ? dim + this.ndim : dim;
    if (!Number.isInteger(d) || d < 0 || d >= this.ndim) throw new MlaError('ERR_RANGE', `${what}: \`dim\` ${dim} is out of range for ${this.ndim} dims`);
    return d;
  }

  #view(shape: readonly number[], strides: readonly number[], offset: number): DeviceTensor {
    return new DeviceTensor(this.#buffer, false, this.dtype, shape, strides, offset);
  }

  /** Elements [start, end) along `dim` (negative indices count from the end). */
  slice(dim: number, start: number, end: number = this.shape[this.#dim(dim, 'slice')]!): DeviceTensor {
    this.assertAlive();
    const d = this.#dim(dim, 'slice');
    const size = this.shape[d]!;
    const s = start < 0 ? start + size : start;
    const e = end < 0 ? end + size : end;
    if (!Number.isInteger(s) || !Number.isInteger(e) || s < 0 || e > size || s > e) {
      throw new MlaError('ERR_RANGE', `slice: [${start}, ${end}) is out of range for dim ${d} of size ${size}`);
    }
    const shape = [...this.shape];
    shape[d] = e - s;
    return this.#view(shape, this.strides, this.offset + s * this.strides[d]!);
  }

  /** The sub-tensor at `index` along `dim`, with that dim removed. */
  select(dim: number, index: number): DeviceTensor {
    const d = this.#dim(dim, 'select');
    const size = this.shape[d]!;
    const i = index < 0 ? index + size : index;
    if (!Number.isInteger(i) || i < 0 || i >= size) throw new MlaError('ERR_RANGE', `select: index ${index} is out of range for dim ${d} of size ${size}`);
    const v = this.slice(d, i, i + 1);
    return this.#view(v.shape.filter((_, k) => k !== d), v.strides.filter((_, k) => k !== d), v.offset);
  }

  /** Same elements, new shape (contiguous tensors only; one size may be -1). */
  reshape(shape: readonly number[]): DeviceTensor {
    this.assertAlive();
    const known = shape.filter((d) => d !== -1);
    const inferred = shape.length - known.length === 1 ? this.numel / Math.max(1, numelOf(known)) : undefined;
    const full = shape.map((d) => (d === -1 ? inferred ?? -1 : d));
    if (full.some((d) => !Number.isInteger(d)) || numelOf(full) !== this.numel) throw new MlaError('ERR_SHAPE', `reshape: [${shape.join(', ')}] does not match ${this.numel} elements`);
    checkShape(full, 'reshape');
    if (!this.isContiguous) throw new MlaError('ERR_SHAPE', 'reshape: the tensor is not contiguous; call contiguous() first');
    return this.#view(full, contiguousStrides(full), this.offset);
  }

  /** Reorders dims (a view; no data moves). */
  permute(order: readonly number[]): DeviceTensor {
    this.assertAlive();
    const sorted = [...order].map((d) => this.#dim(d, 'permute')).sort((a, b) => a - b);
    if (order.length !== this.ndim || sorted.some((d, i) => d !== i)) throw new MlaError('ERR_ARGUMENT', `permute: [${order.join(', ')}] is not a permutation of ${this.ndim} dims`);
    const dims = order.map((d) => this.#dim(d, 'permute'));
    return this.#view(dims.map((d) => this.shape[d]!), dims.map((d) => this.strides[d]!), this.offset);
  }

  /** Sets every element to `value` (converted to the dtype). */
  fill(value: number, opts: StreamOption = {}): this {
    if (typeof value !== 'number') throw new MlaError('ERR_ARGUMENT', 'fill: `value` must be a number');
    nativeOp('fill')({ dst: this.nativeRef('fill: `this`'), value, stream: nativeStream('fill', opts.stream) });
    return this;
  }

  /** Device-to-device copy from a tensor of the same shape (float dtypes convert). */
  copyFrom(src: DeviceTensor, opts: StreamOption = {}): this {
    if (!(src instanceof DeviceTensor)) throw new MlaError('ERR_ARGUMENT', 'copyFrom: `src` must be a DeviceTensor');
    const dst = this.nativeRef('copyFrom: `this`');
    const from = src.nativeRef('copyFrom: `src`');
    if (src.ndim !== this.ndim || src.shape.some((d, i) => d !== this.shape[i]))
      throw new MlaError('ERR_SHAPE', `copyFrom: \`src\` [${src.shape.join(', ')}] has a different shape than \`this\` [${this.shape.join(', ')}]`);
    // Integers copy bit-exactly or not at all: a float → int conversion would silently truncate.
    if ((!isFloatDType(src.dtype) || !isFloatDType(this.dtype)) && src.dtype !== this.dtype)
      throw new MlaError('ERR_DTYPE', `copyFrom: \`src\` cannot be converted from ${src.dtype} to ${this.dtype}`);
    nativeOp('copy')({ dst, src: from, stream: nativeStream('copyFrom', opts.stream) });
    return this;
  }

  /** A new contiguous tensor with the same values in `dtype`. */
  to(dtype: DType, opts: StreamOption = {}): DeviceTensor {
    checkDType(dtype, 'to');
    this.assertAlive('to: `this`');
    const out = DeviceTensor.empty(this.shape, dtype);
    try {
      return out.copyFrom(this, opts);
    } catch (err) {
      out.dispose();
      throw err;
    }
  }

  /** This tensor if contiguous, otherwise a contiguous copy. */
  contiguous(opts: StreamOption = {}): DeviceTensor {
    return this.isContiguous ? this : this.to(this.dtype, opts);
  }

  #download<R>(run: (buffer: NativeDeviceBuffer, byteOffset: number, bytes: number) => R, opts: StreamOption = {}, snapshot = false): { result: R; temp?: DeviceTensor } {
    this.assertAlive('toHost: `this`');
    const src = this.isContiguous && !snapshot ? this : this.to(this.dtype, opts);
    const size = DTYPE_SIZE[this.dtype];
    try {
      const result = run(src.#buffer, src.offset * size, this.numel * size);
      return src === this ? { result } : { result, temp: src };
    } catch (err) {
      if (src !== this) src.dispose();
      throw err;
    }
  }

  /**
   * Copies to the host without blocking the event loop; raw elements (bits for 16-bit floats).
   * With `stream`, the values are those after the work already queued there and before later
   * work: a device copy is queued on the stream now (a temporary the size of the tensor) and
   * downloaded once an event after it completes. The download is queued before this returns, so
   * a dispose() of the tensor or of the stream right after the call cannot pull the memory from
   * under it. Every refusal (disposed tensor or stream, graph capture) is a rejected promise,
   * never a synchronous throw.
   * Without `stream`, the same holds for the legacy default stream: the values are those after
   * the work queued there (and on blocking streams) before the call, never a write launched after
   * it returns. Work on a non-blocking stream is not ordered with it: pass that stream.
   */
  async toHost(opts: StreamOption = {}): Promise<HostArray> {
    // An async function runs synchronously up to its first await: the download starts now.
    refuseHostCopy();
    const stream = nativeStream('toHost', opts.stream);
    // Always a snapshot, stream or not. The host copy runs later on a libuv thread; its
    // legacy-stream memcpy is ordered after whatever any host thread has queued on the legacy
    // stream by *then* (CUDA orders the legacy stream by submission time, not by which JS call
    // came first), so reading the tensor itself would let a kernel or write() launched right
    // after toHost() returned land in the download (issue 16; the emulated device showed it).
    // The device copy is queued now, on the caller's thread, ahead of any later work.
    const { result, temp } = this.#download((b, off, n) => b.downloadAsync(off, n, stream), opts, true);
    try {
      return hostArrayFor(this.dtype, await result);
    } finally {
      temp?.dispose();
    }
  }

  /** Blocking variant of toHost(). */
  toHostSync(opts: StreamOption = {}): HostArray {
    refuseHostCopy();
    nativeStream('toHostSync', opts.stream)?.synchronize();
    const { result, temp } = this.#download((b, off, n) => b.download(off, n));
    temp?.dispose();
    return hostArrayFor(this.dtype, result);
  }

  /** Values as float32 (decoding bf16/f16/fp8 on the host). */
  async toFloat32(opts: StreamOption = {}): Promise<Float32Array> {
    return decodeHost(await this.toHost(opts), this.dtype);
  }

  toFloat32Sync(opts: StreamOption = {}): Float32Array {
    return decodeHost(this.toHostSync(opts), this.dtype);
  }

  /** Frees the allocation (if this tensor made it); idempotent. Views only detach. */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    if (!this.#owner) return;
    freedBuffers.add(this.#buffer);
    this.#buffer.free();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  toString(): string {
    return `DeviceTensor(${this.dtype}, [${this.shape.join(', ')}]${this.disposed ? ', disposed' : ''})`;
  }
}

/** f32 -> dtype element bytes, with round-to-nearest-even done in C++. */
export function encodeHost(data: ArrayLike<number> | HostArray | Float64Array, dtype: DType): ArrayBufferView {
  const raw: { [K in DType]: (new (n: number) => HostArrayOf[K]) } = {
    f32: Float32Array, f16: Uint16Array, bf16: Uint16Array, fp8e4m3: Uint8Array, i32: Int32Array, u8: Uint8Array,
  };
  const isFloatInput = data instanceof Float32Array || data instanceof Float64Array || Array.isArray(data);
  if (!isFloatInput && data instanceof raw[dtype]) return data as ArrayBufferView;
  if (dtype === 'f32' || dtype === 'i32' || dtype === 'u8') {
    const out = new raw[dtype](data.length);
    for (let i = 0; i < data.length; i++) out[i] = data[i]!;
    return out;
  }
  if (!isFloatInput) throw new MlaError('ERR_DTYPE', `fromArray: ${data.constructor.name} cannot be uploaded as ${dtype}; pass a Float32Array or the raw element array`);
  const f32 = data instanceof Float32Array ? data : Float32Array.from(data);
  return new Uint8Array(native().encodeF32(f32, DTYPE_CODE[dtype]));
}

/** Raw host elements -> float32 values. */
export function decodeHost(data: HostArray, dtype: DType): Float32Array {
  if (dtype === 'f32') return data as Float32Array;
  if (isFloatDType(dtype)) return native().decodeToF32(data, DTYPE_CODE[dtype]);
  return Float32Array.from(data);
}

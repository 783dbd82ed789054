// Host-side argument checks shared by the reference ops, the latent cache, the loaders and the
// attention layer. Every failure is an MlaError whose message starts `${fn}: \`${name}\``, so a
// bad call names its argument instead of surfacing as V8's RangeError / TypeError from deep
// inside (an invalid typed-array length, a property of undefined).
import { constants } from 'node:buffer';
import { MlaError, type MlaErrorCode } from './errors.js';

export function argError(code: MlaErrorCode, fn: string, name: string, detail: string): MlaError {
  return new MlaError(code, `${fn}: \`${name}\` ${detail}`);
}

/** A non-null object (not an array). */
export function checkObject<T>(fn: string, name: string, v: T): T {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw argError('ERR_ARGUMENT', fn, name, `must be an object, got ${describe(v)}`);
  return v;
}

/** An integer in [min, max]: not an integer → ERR_ARGUMENT, outside the range → ERR_RANGE (as lib/ops/validate.ts). */
export function checkInteger(fn: string, name: string, v: unknown, min = 0, max = Number.MAX_SAFE_INTEGER): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v)) throw argError('ERR_ARGUMENT', fn, name, `must be an integer, got ${describe(v)}`);
  if (v < min) throw argError('ERR_RANGE', fn, name, `must be ${min === 1 ? 'positive' : min === 0 ? 'non-negative' : `at least ${min}`}, got ${v}`);
  if (v > max) throw argError('ERR_RANGE', fn, name, `must be at most ${max}, got ${v}`);
  return v;
}

export function checkPosInt(fn: string, name: string, v: unknown): number {
  return checkInteger(fn, name, v, 1);
}

export function checkNonNegInt(fn: string, name: string, v: unknown): number {
  return checkInteger(fn, name, v, 0);
}

export function checkFiniteNumber(fn: string, name: string, v: unknown): number {
  if (typeof v !== 'number' || !Number.isFinite(v)) throw argError('ERR_ARGUMENT', fn, name, `must be a finite number, got ${describe(v)}`);
  return v;
}

type NumberArray = ArrayLike<number>;

function isNumberArray(v: unknown): v is NumberArray {
  if (Array.isArray(v)) return true;
  return ArrayBuffer.isView(v) && !(v instanceof DataView) && !(v instanceof BigInt64Array) && !(v instanceof BigUint64Array);
}

/** A number[] or a numeric typed array; `f64` demands a Float64Array (callers that use subarray / set). */
export function checkArray(fn: string, name: string, v: unknown, opts: { f64?: boolean } = {}): NumberArray {
  if (opts.f64 ? !(v instanceof Float64Array) : !isNumberArray(v)) {
    throw argError('ERR_ARGUMENT', fn, name, `must be ${opts.f64 ? 'a Float64Array' : 'an array of numbers'}, got ${describe(v)}`);
  }
  return v as NumberArray;
}

/** An array of exactly `expected` elements (wrong type → ERR_ARGUMENT, wrong length → ERR_SHAPE). */
export function checkLength(fn: string, name: string, v: unknown, expected: number, opts: { f64?: boolean } = {}): void {
  const a = checkArray(fn, name, v, opts);
  if (a.length !== expected) throw argError('ERR_SHAPE', fn, name, `must have ${expected} elements, got ${a.length}`);
}

export function checkAtLeast(fn: string, name: string, v: unknown, expected: number, opts: { f64?: boolean } = {}): void {
  const a = checkArray(fn, name, v, opts);
  if (a.length < expected) throw argError('ERR_SHAPE', fn, name, `must have at least ${expected} elements, got ${a.length}`);
}

/**
 * The product of sizes, or ERR_RANGE naming `name` when it is not a safe integer (a 1e12 × 1e12
 * request would otherwise compare lengths against a rounded float).
 */
export function sizeProduct(fn: string, name: string, ...dims: number[]): number {
  let n = 1;
  for (const d of dims) n *= d;
  if (!Number.isSafeInteger(n)) throw argError('ERR_RANGE', fn, name, `gives ${dims.join(' × ')} = ${n} elements, more than any array holds`);
  return n;
}

interface TypedArrayCtor<T> {
  new (length: number): T;
  readonly BYTES_PER_ELEMENT: number;
  readonly name: string;
}

/** Most elements one typed array may have here (2^32 on Node 20, larger on later V8s). */
export const MAX_HOST_ELEMENTS = constants.MAX_LENGTH;

/**
 * `new ctor(length)`, where `length` follows from argument `name`: past what a typed array can
 * hold → ERR_RANGE, an allocation the engine refuses → ERR_OOM; both give the byte size.
 */
export function allocHost<T>(fn: string, name: string, ctor: TypedArrayCtor<T>, length: number): T {
  const bytes = length * ctor.BYTES_PER_ELEMENT;
  // BigInt keeps the byte count exact past 2^53.
  const exact = Number.isSafeInteger(length) ? (BigInt(length) * BigInt(ctor.BYTES_PER_ELEMENT)).toString() : String(bytes);
  const what = `needs a ${ctor.name} of ${length} elements (${exact} bytes, ${formatSize(bytes)})`;
  if (!Number.isSafeInteger(length) || length < 0) throw argError('ERR_RANGE', fn, name, `${what}: not a valid array length`);
  if (length > MAX_HOST_ELEMENTS) throw argError('ERR_RANGE', fn, name, `${what}; a typed array holds at most ${MAX_HOST_ELEMENTS} elements`);
  try {
    return new ctor(length);
  } catch (e) {
    if (e instanceof RangeError) {
      const err = argError('ERR_OOM', fn, name, `${what}: host allocation failed (${e.message})`);
      err.cause = e;
      throw err;
    }
    throw e;
  }
}

function formatSize(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB', 'EiB'];
  let v = bytes;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${bytes} B` : `${v.toFixed(1)} ${units[u]}`;
}

function describe(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return `an array of ${v.length}`;
  if (typeof v === 'object') return (v as object).constructor?.name ?? 'an object';
  if (typeof v === 'string') return `'${v}'`;
  return String(v);
}

/** How `checkFinite` reads its data: numbers, or the raw bits of 16-bit floats (bf16 / f16 as stored). */
export type FiniteEncoding = 'number' | 'bf16' | 'f16';

/**
 * Flat index of the first NaN / ±Infinity, or -1. Finite data (the common case) takes one
 * branch-free pass: Σ v·0 is 0 unless some v is NaN or infinite (∞·0 is NaN); only then a second
 * pass finds the index. Raw 16-bit floats are non-finite when their exponent bits are all ones:
 * (bits & mask) + lowest mask bit carries into bit 15 exactly then, so bf16 / f16 data is
 * checked without decoding it.
 */
export function firstNonFinite(data: ArrayLike<number>, encoding: FiniteEncoding = 'number'): number {
  // One monomorphic loop per array type: a shared loop over mixed types runs ~2x slower.
  if (encoding === 'bf16') return scanBits16(data, 0x7f80);
  if (encoding === 'f16') return scanBits16(data, 0x7c00);
  if (data instanceof Float32Array) return anyNonFiniteF32(data) ? locate(data) : -1;
  if (data instanceof Float64Array) return anyNonFiniteF64(data) ? locate(data) : -1;
  return anyNonFinite(data) ? locate(data) : -1;
}

function anyNonFiniteF32(data: Float32Array): boolean {
  const n = data.length;
  let acc = 0;
  for (let i = 0; i < n; i++) acc += data[i]! * 0;
  return acc !== 0;
}

function anyNonFiniteF64(data: Float64Array): boolean {
  const n = data.length;
  let acc = 0;
  for (let i = 0; i < n; i++) acc += data[i]! * 0;
  return acc !== 0;
}

function anyNonFinite(data: ArrayLike<number>): boolean {
  const n = data.length;
  let acc = 0;
  for (let i = 0; i < n; i++) acc += data[i]! * 0;
  return acc !== 0;
}

function locate(data: ArrayLike<number>): number {
  for (let i = 0; i < data.length; i++) {
    const v = data[i]!;
    if (v - v !== 0) return i;
  }
  return -1;
}

function scanBits16(data: ArrayLike<number>, mask: number): number {
  const carry = mask & -mask;
  const n = data.length;
  let acc = 0;
  for (let i = 0; i < n; i++) acc |= (data[i]! & mask) + carry;
  if ((acc & 0x8000) === 0) return -1;
  for (let i = 0; i < data.length; i++) if ((data[i]! & mask) === mask) return i;
  return -1;
}

/** [i0, i1, ...] of flat index `flat` in a row-major tensor of `shape`. */
export function unravelIndex(flat: number, shape: readonly number[]): number[] {
  const idx = new Array<number>(shape.length).fill(0);
  let rest = flat;
  for (let d = shape.length - 1; d >= 0; d--) {
    const size = shape[d]!;
    if (size > 0) {
      idx[d] = rest % size;
      rest = Math.floor(rest / size);
    }
  }
  return idx;
}

/**
 * Throws ERR_RANGE naming `what` (e.g. `hidden`, or `weights "model.layers.0....weight"`), the
 * first NaN / Infinity, its flat and multi-dimensional index and its value. The scan is one
 * pass over the data; see MlaAttention.forward / loadMlaWeights for what it costs.
 */
export function checkFinite(fn: string, what: string, data: ArrayLike<number>, shape: readonly number[], encoding: FiniteEncoding = 'number'): void {
  const i = firstNonFinite(data, encoding);
  if (i < 0) return;
  const raw = data[i]!;
  const value = encoding === 'number' ? raw : (raw & 0x7fff) === (encoding === 'bf16' ? 0x7f80 : 0x7c00) ? (raw & 0x8000 ? -Infinity : Infinity) : NaN;
  throw new MlaError('ERR_RANGE', `${fn}: ${what} has a non-finite value ${value} at flat index ${i}, index [${unravelIndex(i, shape).join(', ')}] of shape [${shape.join(', ')}]`);
}

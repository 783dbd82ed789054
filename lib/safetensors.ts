// Safetensors reader and writer, pure TypeScript.
//
// Format: 8-byte little-endian u64 header length N, N bytes of JSON
// {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}},
// then the raw little-endian data; offsets are relative to the byte after the header.
//
// The reader keeps a file descriptor and reads only the header on open and only
// one tensor's bytes per read(), so a multi-gigabyte checkpoint can be opened to
// pull out one layer.

import * as fs from 'node:fs';
import { allocHost, argError, checkNonNegInt, checkObject, sizeProduct } from './check.js';
import { MlaError } from './errors.js';
import * as os from 'node:os';

export type SafetensorsDtype =
  | 'F64'
  | 'F32'
  | 'F16'
  | 'BF16'
  | 'F8_E4M3'
  | 'F8_E5M2'
  | 'I64'
  | 'I32'
  | 'I16'
  | 'I8'
  | 'U64'
  | 'U32'
  | 'U16'
  | 'U8'
  | 'BOOL';

export const DTYPE_BYTES: Readonly<Record<SafetensorsDtype, number>> = Object.freeze({
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  F8_E4M3: 1,
  F8_E5M2: 1,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U64: 8,
  U32: 4,
  U16: 2,
  U8: 1,
  BOOL: 1,
});

// A header bigger than this is taken as corruption, not as a real header: even
// a 100k-tensor checkpoint index stays far below it.
export const MAX_HEADER_BYTES = 100 * 1024 * 1024;

export class SafetensorsError extends MlaError {
  override name = 'SafetensorsError';
  readonly file: string;
  readonly tensor: string | undefined;
  constructor(file: string, message: string, tensor?: string) {
    super('ERR_FORMAT', `${file}${tensor === undefined ? '' : ` [tensor '${tensor}']`}: ${message}`);
    this.file = file;
    this.tensor = tensor;
  }
}

export interface TensorInfo {
  name: string;
  dtype: SafetensorsDtype;
  shape: number[];
  /** Offsets relative to the start of the data section, as in the header. */
  dataOffsets: [number, number];
  /** Absolute file offset of the first byte. */
  fileOffset: number;
  byteLength: number;
  numel: number;
}

export interface RawTensor {
  dtype: SafetensorsDtype;
  shape: number[];
  data: Uint8Array;
}

export interface Float64Tensor {
  dtype: SafetensorsDtype;
  shape: number[];
  data: Float64Array;
}

export interface Float32Tensor {
  dtype: SafetensorsDtype;
  shape: number[];
  data: Float32Array;
}

export function isSafetensorsDtype(s: string): s is SafetensorsDtype {
  return Object.prototype.hasOwnProperty.call(DTYPE_BYTES, s);
}

const LITTLE_ENDIAN_HOST = os.endianness() === 'LE';

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function isNonNegInt(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

export class SafetensorsFile implements Disposable {
  readonly path: string;
  readonly fileSize: number;
  readonly headerLength: number;
  /** Absolute offset of the data section (8 + header length). */
  readonly dataStart: number;
  readonly tensors: ReadonlyMap<string, TensorInfo>;
  readonly metadata: Readonly<Record<string, string>>;
  /** Bytes read from disk so far; lets tests prove reads are partial. */
  bytesRead = 0;
  private fd: number | null;

  private constructor(
    path: string,
    fd: number,
    fileSize: number,
    headerLength: number,
    tensors: Map<string, TensorInfo>,
    metadata: Record<string, string>,
    bytesRead: number,
  ) {
    this.path = path;
    this.fd = fd;
    this.fileSize = fileSize;
    this.headerLength = headerLength;
    this.dataStart = 8 + headerLength;
    this.tensors = tensors;
    this.metadata = Object.freeze(metadata);
    this.bytesRead = bytesRead;
  }

  static open(path: string): SafetensorsFile {
    let fd: number;
    try {
      fd = fs.openSync(path, 'r');
    } catch (e) {
      throw new SafetensorsError(path, `cannot open: ${(e as Error).message}`);
    }
    try {
      return SafetensorsFile.parse(path, fd);
    } catch (e) {
      fs.closeSync(fd);
      throw e;
    }
  }

  private static parse(path: string, fd: number): SafetensorsFile {
    const fileSize = fs.fstatSync(fd).size;
    if (fileSize < 8) {
      throw new SafetensorsError(path, `truncated file: ${fileSize} bytes, need at least 8 for the header length`);
    }
    const lenBuf = new Uint8Array(8);
    readFully(path, fd, lenBuf, 0);
    const headerLenBig = new DataView(lenBuf.buffer).getBigUint64(0, true);
    if (headerLenBig > BigInt(MAX_HEADER_BYTES)) {
      throw new SafetensorsError(
        path,
        `header length ${headerLenBig} is absurd (limit ${MAX_HEADER_BYTES} bytes); not a safetensors file or corrupt`,
      );
    }
    const headerLength = Number(headerLenBig);
    if (8 + headerLength > fileSize) {
      throw new SafetensorsError(
        path,
        `truncated file: header length ${headerLength} runs past the end of the ${fileSize}-byte file`,
      );
    }
    const headerBytes = new Uint8Array(headerLength);
    readFully(path, fd, headerBytes, 8);
    let header: unknown;
    try {
      header = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(headerBytes));
    } catch (e) {
      throw new SafetensorsError(path, `header is not valid UTF-8 JSON: ${(e as Error).message}`);
    }
    if (!isRecord(header)) {
      throw new SafetensorsError(path, 'header is not a JSON object');
    }
    const dataStart = 8 + headerLength;
    const dataSize = fileSize - dataStart;
    const metadata: Record<string, string> = {};
    const tensors = new Map<string, TensorInfo>();
    for (const [name, entry] of Object.entries(header)) {
      if (name === '__metadata__') {
        if (!isRecord(entry)) throw new SafetensorsError(path, '__metadata__ is not an object');
        for (const [k, v] of Object.entries(entry)) {
          if (typeof v !== 'string') {
            throw new SafetensorsError(path, `__metadata__ value for '${k}' is not a string`);
          }
          metadata[k] = v;
        }
        continue;
      }
      tensors.set(name, parseEntry(path, name, entry, dataStart, dataSize));
    }
    checkCoverage(path, tensors, dataSize);
    return new SafetensorsFile(path, fd, fileSize, headerLength, tensors, metadata, 8 + headerLength);
  }

  get closed(): boolean {
    return this.fd === null;
  }

  has(name: string): boolean {
    return this.tensors.has(name);
  }

  names(): string[] {
    return [...this.tensors.keys()];
  }

  info(name: string): TensorInfo {
    const t = this.tensors.get(name);
    if (t === undefined) {
      throw new SafetensorsError(this.path, 'no such tensor in the file', name);
    }
    return t;
  }

  /** The tensor's raw little-endian bytes, read from disk at its offset. */
  read(name: string): RawTensor {
    const t = this.info(name);
    if (this.fd === null) throw new SafetensorsError(this.path, 'file is closed', name);
    const data = new Uint8Array(t.byteLength);
    readFully(this.path, this.fd, data, t.fileOffset, name);
    this.bytesRead += t.byteLength;
    return { dtype: t.dtype, shape: [...t.shape], data };
  }

  readFloat64(name: string): Float64Tensor {
    const raw = this.read(name);
    return { dtype: raw.dtype, shape: raw.shape, data: decodeToFloat64(raw.data, raw.dtype) };
  }

  /** Float32 view; F64 and large integers are rounded to float32. */
  readFloat32(name: string): Float32Tensor {
    const raw = this.read(name);
    if (raw.dtype === 'F32') {
      return { dtype: raw.dtype, shape: raw.shape, data: decodeF32(raw.data) };
    }
    return { dtype: raw.dtype, shape: raw.shape, data: Float32Array.from(decodeToFloat64(raw.data, raw.dtype)) };
  }

  close(): void {
    if (this.fd !== null) {
      const fd = this.fd;
      this.fd = null;
      fs.closeSync(fd);
    }
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

function parseEntry(path: string, name: string, entry: unknown, dataStart: number, dataSize: number): TensorInfo {
  if (!isRecord(entry)) throw new SafetensorsError(path, 'header entry is not an object', name);
  const dtype = entry['dtype'];
  if (typeof dtype !== 'string') throw new SafetensorsError(path, 'missing dtype', name);
  if (!isSafetensorsDtype(dtype)) {
    throw new SafetensorsError(path, `unknown dtype '${dtype}' (known: ${Object.keys(DTYPE_BYTES).join(', ')})`, name);
  }
  const shape = entry['shape'];
  if (!Array.isArray(shape) || !shape.every(isNonNegInt)) {
    throw new SafetensorsError(path, `shape ${JSON.stringify(shape)} is not a list of non-negative integers`, name);
  }
  const offsets = entry['data_offsets'];
  if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isNonNegInt)) {
    throw new SafetensorsError(path, `data_offsets ${JSON.stringify(offsets)} is not a pair of non-negative integers`, name);
  }
  const [begin, end] = offsets as [number, number];
  if (end < begin) throw new SafetensorsError(path, `data_offsets [${begin}, ${end}] end before begin`, name);
  if (end > dataSize) {
    throw new SafetensorsError(
      path,
      `data_offsets [${begin}, ${end}] out of range: the data section holds ${dataSize} bytes (file truncated?)`,
      name,
    );
  }
  let numel = 1;
  for (const d of shape as number[]) numel *= d;
  const expected = numel * DTYPE_BYTES[dtype];
  if (!Number.isSafeInteger(expected) || end - begin !== expected) {
    throw new SafetensorsError(
      path,
      `data_offsets [${begin}, ${end}] span ${end - begin} bytes but ${dtype}${JSON.stringify(shape)} needs ${expected}`,
      name,
    );
  }
  return {
    name,
    dtype,
    shape: [...(shape as number[])],
    dataOffsets: [begin, end],
    fileOffset: dataStart + begin,
    byteLength: end - begin,
    numel,
  };
}

// The format requires the tensors' byte ranges, sorted by begin, to tile the data section
// exactly: an overlap means two tensors share bytes and a gap means an offset was shifted, and
// either way some weight would load as the wrong bytes without any other check noticing.
function checkCoverage(path: string, tensors: ReadonlyMap<string, TensorInfo>, dataSize: number): void {
  const sorted = [...tensors.values()].sort((a, b) => a.dataOffsets[0] - b.dataOffsets[0] || a.dataOffsets[1] - b.dataOffsets[1]);
  const label = (t: TensorInfo | null, edge: string): string => (t === null ? edge : `tensor '${t.name}' [${t.dataOffsets[0]}, ${t.dataOffsets[1]})`);
  let pos = 0;
  let prev: TensorInfo | null = null;
  for (const t of sorted) {
    const [begin, end] = t.dataOffsets;
    if (begin < pos) {
      throw new SafetensorsError(path, `data_offsets overlap: ${label(prev, 'start of data')} and ${label(t, '')} share bytes [${begin}, ${Math.min(pos, end)})`);
    }
    if (begin > pos) {
      throw new SafetensorsError(path, `data_offsets leave a gap of ${begin - pos} bytes [${pos}, ${begin}) between ${label(prev, 'start of data')} and ${label(t, '')}`);
    }
    pos = end;
    prev = t;
  }
  if (pos < dataSize) {
    throw new SafetensorsError(path, `data_offsets leave a gap of ${dataSize - pos} bytes [${pos}, ${dataSize}) between ${label(prev, 'start of data')} and end of data`);
  }
}

// fs.readSync may return fewer bytes than asked (pipes, huge reads), so loop.
function readFully(path: string, fd: number, buf: Uint8Array, position: number, tensor?: string): void {
  let done = 0;
  while (done < buf.length) {
    const n = fs.readSync(fd, buf, done, buf.length - done, position + done);
    if (n === 0) {
      throw new SafetensorsError(path, `truncated file: wanted ${buf.length} bytes at offset ${position}, got ${done}`, tensor);
    }
    done += n;
  }
}

// ---------------------------------------------------------------------------
// Element decoding

// bf16 is the top half of a float32.
export function bf16ToFloat(bits: number): number {
  F32_SCRATCH_U32[0] = (bits & 0xffff) << 16;
  return F32_SCRATCH[0]!;
}

const F32_SCRATCH = new Float32Array(1);
const F32_SCRATCH_U32 = new Uint32Array(F32_SCRATCH.buffer);

// IEEE half: 1 sign, 5 exponent (bias 15), 10 mantissa; exponent 0 is subnormal, 31 inf/NaN.
export function f16ToFloat(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const exp = (bits >> 10) & 0x1f;
  const mant = bits & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 31) return mant === 0 ? sign * Infinity : NaN;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}

// float8 e4m3fn: 1 sign, 4 exponent (bias 7), 3 mantissa; no infinities, only
// S.1111.111 is NaN, so the largest finite value is 1.75 * 2^8 = 448.
export function e4m3ToFloat(bits: number): number {
  const sign = bits & 0x80 ? -1 : 1;
  const exp = (bits >> 3) & 0xf;
  const mant = bits & 0x7;
  if (exp === 15 && mant === 7) return NaN;
  if (exp === 0) return sign * (mant / 8) * 2 ** -6;
  return sign * (1 + mant / 8) * 2 ** (exp - 7);
}

// float8 e5m2: 1 sign, 5 exponent (bias 15), 2 mantissa, IEEE-like inf/NaN.
export function e5m2ToFloat(bits: number): number {
  const sign = bits & 0x80 ? -1 : 1;
  const exp = (bits >> 2) & 0x1f;
  const mant = bits & 0x3;
  if (exp === 0) return sign * (mant / 4) * 2 ** -14;
  if (exp === 31) return mant === 0 ? sign * Infinity : NaN;
  return sign * (1 + mant / 4) * 2 ** (exp - 15);
}

const E4M3_TABLE = Float64Array.from({ length: 256 }, (_, i) => e4m3ToFloat(i));
const E5M2_TABLE = Float64Array.from({ length: 256 }, (_, i) => e5m2ToFloat(i));
let f16Table: Float64Array | null = null;
function getF16Table(): Float64Array {
  if (f16Table === null) f16Table = Float64Array.from({ length: 65536 }, (_, i) => f16ToFloat(i));
  return f16Table;
}

function decodeF32(bytes: Uint8Array): Float32Array {
  const n = bytes.length / 4;
  if (LITTLE_ENDIAN_HOST && bytes.byteOffset % 4 === 0) {
    return new Float32Array(bytes.buffer, bytes.byteOffset, n);
  }
  const out = new Float32Array(n);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (let i = 0; i < n; i++) out[i] = dv.getFloat32(4 * i, true);
  return out;
}

export function decodeToFloat64(bytes: Uint8Array, dtype: SafetensorsDtype): Float64Array {
  const n = bytes.length / DTYPE_BYTES[dtype];
  const out = new Float64Array(n);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  switch (dtype) {
    case 'F64':
      if (LITTLE_ENDIAN_HOST && bytes.byteOffset % 8 === 0) {
        out.set(new Float64Array(bytes.buffer, bytes.byteOffset, n));
      } else {
        for (let i = 0; i < n; i++) out[i] = dv.getFloat64(8 * i, true);
      }
      break;
    case 'F32':
      out.set(decodeF32(bytes));
      break;
    case 'F16': {
      const tab = getF16Table();
      for (let i = 0; i < n; i++) out[i] = tab[dv.getUint16(2 * i, true)]!;
      break;
    }
    case 'BF16': {
      const u32 = new Uint32Array(1);
      const f32 = new Float32Array(u32.buffer);
      for (let i = 0; i < n; i++) {
        u32[0] = dv.getUint16(2 * i, true) << 16;
        out[i] = f32[0]!;
      }
      break;
    }
    case 'F8_E4M3':
      for (let i = 0; i < n; i++) out[i] = E4M3_TABLE[bytes[i]!]!;
      break;
    case 'F8_E5M2':
      for (let i = 0; i < n; i++) out[i] = E5M2_TABLE[bytes[i]!]!;
      break;
    case 'I64':
      for (let i = 0; i < n; i++) out[i] = Number(dv.getBigInt64(8 * i, true));
      break;
    case 'U64':
      for (let i = 0; i < n; i++) out[i] = Number(dv.getBigUint64(8 * i, true));
      break;
    case 'I32':
      for (let i = 0; i < n; i++) out[i] = dv.getInt32(4 * i, true);
      break;
    case 'U32':
      for (let i = 0; i < n; i++) out[i] = dv.getUint32(4 * i, true);
      break;
    case 'I16':
      for (let i = 0; i < n; i++) out[i] = dv.getInt16(2 * i, true);
      break;
    case 'U16':
      for (let i = 0; i < n; i++) out[i] = dv.getUint16(2 * i, true);
      break;
    case 'I8':
      for (let i = 0; i < n; i++) out[i] = dv.getInt8(i);
      break;
    case 'U8':
      for (let i = 0; i < n; i++) out[i] = bytes[i]!;
      break;
    case 'BOOL':
      for (let i = 0; i < n; i++) out[i] = bytes[i] !== 0 ? 1 : 0;
      break;
  }
  return out;
}

// ---------------------------------------------------------------------------
// Element encoding (for the writer)

// Round-to-nearest-even float32 -> bf16, keeping NaN a NaN. A float64 input is
// rounded to float32 first (double rounding; fine for test data).
export function floatToBf16(x: number): number {
  F32_SCRATCH[0] = x;
  const u = F32_SCRATCH_U32[0]!;
  if ((u & 0x7f800000) === 0x7f800000 && (u & 0x7fffff) !== 0) return ((u >>> 16) | 0x40) & 0xffff;
  const rounded = u + 0x7fff + ((u >>> 16) & 1);
  return (rounded >>> 16) & 0xffff;
}

// Nearest representable magnitude by search over the positive codes; ties go to
// the even code (even mantissa), as round-to-nearest-even does. The sign bit is
// then copied, so -0 and tiny negatives keep their sign.
function nearestCode(x: number, table: Float64Array, nanCode: number, overflows: (a: number) => boolean, overflowCode: number): number {
  if (Number.isNaN(x)) return nanCode;
  const sign = x < 0 || Object.is(x, -0) ? 0x80 : 0;
  const a = Math.abs(x);
  if (overflows(a)) return sign | overflowCode;
  let best = 0;
  let bestErr = Infinity;
  for (let c = 0; c < 128; c++) {
    const v = table[c]!;
    if (!Number.isFinite(v)) continue;
    const err = Math.abs(v - a);
    if (err < bestErr || (err === bestErr && (c & 1) === 0)) {
      best = c;
      bestErr = err;
    }
  }
  return sign | best;
}

// e4m3fn has no infinity: values past 448 (beyond the tie at 464, which rounds
// to the even 448) become NaN, as torch's conversion does.
export function floatToE4m3(x: number): number {
  return nearestCode(x, E4M3_TABLE, 0x7f, (a) => a > 464, 0x7f);
}

// e5m2 rounds like IEEE: the tie at 59392 goes to the even neighbour, infinity.
export function floatToE5m2(x: number): number {
  return nearestCode(x, E5M2_TABLE, 0x7f, (a) => a >= 59392, 0x7c);
}

export function floatToF16(x: number): number {
  if (Number.isNaN(x)) return 0x7e00;
  const sign = x < 0 || Object.is(x, -0) ? 0x8000 : 0;
  const a = Math.abs(x);
  if (a >= 65520) return sign | 0x7c00;
  if (a < 2 ** -14) {
    // Subnormal: quantum 2^-24; Math.round is half-up, fix ties to even.
    const q = a / 2 ** -24;
    let m = Math.floor(q);
    const frac = q - m;
    if (frac > 0.5 || (frac === 0.5 && (m & 1) === 1)) m++;
    return sign | m;
  }
  let e = Math.floor(Math.log2(a));
  if (2 ** e > a) e--;
  if (2 ** (e + 1) <= a) e++;
  const q = (a / 2 ** e - 1) * 1024;
  let m = Math.floor(q);
  const frac = q - m;
  if (frac > 0.5 || (frac === 0.5 && (m & 1) === 1)) m++;
  if (m === 1024) {
    m = 0;
    e++;
  }
  if (e + 15 >= 31) return sign | 0x7c00;
  return sign | ((e + 15) << 10) | m;
}

export type NumericArray =
  | Float64Array
  | Float32Array
  | Int32Array
  | Int16Array
  | Int8Array
  | Uint32Array
  | Uint16Array
  | BigInt64Array
  | BigUint64Array
  | number[];

export interface TensorToWrite {
  dtype: SafetensorsDtype;
  shape: number[];
  /** Raw little-endian bytes (used as is) or numbers converted to dtype. */
  data: Uint8Array | NumericArray;
}

export function encodeTensorData(t: TensorToWrite): Uint8Array {
  if (t.data instanceof Uint8Array) return t.data;
  const size = DTYPE_BYTES[t.dtype];
  const src = t.data;
  const n = src.length;
  const out = allocHost('writeSafetensors', 'data', Uint8Array, n * size);
  const dv = new DataView(out.buffer);
  const num = (i: number): number => Number(src[i]!);
  for (let i = 0; i < n; i++) {
    switch (t.dtype) {
      case 'F64':
        dv.setFloat64(8 * i, num(i), true);
        break;
      case 'F32':
        dv.setFloat32(4 * i, num(i), true);
        break;
      case 'F16':
        dv.setUint16(2 * i, floatToF16(num(i)), true);
        break;
      case 'BF16':
        dv.setUint16(2 * i, floatToBf16(num(i)), true);
        break;
      case 'F8_E4M3':
        out[i] = floatToE4m3(num(i));
        break;
      case 'F8_E5M2':
        out[i] = floatToE5m2(num(i));
        break;
      case 'I64':
        dv.setBigInt64(8 * i, BigInt(src[i]!), true);
        break;
      case 'U64':
        dv.setBigUint64(8 * i, BigInt(src[i]!), true);
        break;
      case 'I32':
        dv.setInt32(4 * i, num(i), true);
        break;
      case 'U32':
        dv.setUint32(4 * i, num(i), true);
        break;
      case 'I16':
        dv.setInt16(2 * i, num(i), true);
        break;
      case 'U16':
        dv.setUint16(2 * i, num(i), true);
        break;
      case 'I8':
        dv.setInt8(i, num(i));
        break;
      case 'U8':
        out[i] = num(i);
        break;
      case 'BOOL':
        out[i] = num(i) !== 0 ? 1 : 0;
        break;
    }
  }
  return out;
}

function isEntryList(
  t: Record<string, TensorToWrite> | ReadonlyArray<[string, TensorToWrite]>,
): t is ReadonlyArray<[string, TensorToWrite]> {
  return Array.isArray(t);
}

// Checked before encoding, so a bad entry is named instead of failing inside a DataView or a
// typed-array constructor.
function checkTensorToWrite(entry: unknown, i: number): void {
  const fn = 'writeSafetensors';
  if (!Array.isArray(entry) || entry.length !== 2 || typeof entry[0] !== 'string') throw argError('ERR_ARGUMENT', fn, `tensors[${i}]`, 'must be a [name, tensor] pair');
  const [name, t] = entry as [string, TensorToWrite];
  const where = `tensors['${name}']`;
  checkObject(fn, where, t);
  if (typeof t.dtype !== 'string' || !isSafetensorsDtype(t.dtype)) throw argError('ERR_DTYPE', fn, `${where}.dtype`, `must be one of ${Object.keys(DTYPE_BYTES).join(', ')}, got ${String(t.dtype)}`);
  if (!Array.isArray(t.shape)) throw argError('ERR_ARGUMENT', fn, `${where}.shape`, 'must be an array of sizes');
  t.shape.forEach((d, k) => checkNonNegInt(fn, `${where}.shape[${k}]`, d));
  const n = sizeProduct(fn, `${where}.shape`, ...t.shape);
  if (!(t.data instanceof Uint8Array) && !Array.isArray(t.data) && !ArrayBuffer.isView(t.data)) throw argError('ERR_ARGUMENT', fn, `${where}.data`, 'must be raw bytes (Uint8Array) or an array of numbers');
  if (!(t.data instanceof Uint8Array) && t.data.length !== n) throw argError('ERR_SHAPE', fn, `${where}.data`, `has ${t.data.length} values, ${t.dtype}[${t.shape.join(', ')}] needs ${n}`);
}

/** Header bytes (padded with spaces to a multiple of 8, as the reference writer does) and the data chunks in order. */
export function buildSafetensors(
  tensors: Record<string, TensorToWrite> | ReadonlyArray<[string, TensorToWrite]>,
  metadata?: Record<string, string>,
): { header: Uint8Array; chunks: Uint8Array[] } {
  if (typeof tensors !== 'object' || tensors === null) throw argError('ERR_ARGUMENT', 'writeSafetensors', 'tensors', 'must be an object or a list of [name, tensor] pairs');
  const entries: ReadonlyArray<[string, TensorToWrite]> = isEntryList(tensors) ? tensors : Object.entries(tensors);
  entries.forEach((e, i) => checkTensorToWrite(e, i));
  const json: Record<string, unknown> = {};
  if (metadata !== undefined && Object.keys(metadata).length > 0) json['__metadata__'] = metadata;
  const chunks: Uint8Array[] = [];
  let offset = 0;
  for (const [name, t] of entries) {
    const bytes = encodeTensorData(t);
    let numel = 1;
    for (const d of t.shape) numel *= d;
    if (bytes.length !== numel * DTYPE_BYTES[t.dtype]) {
      throw new SafetensorsError('<writer>', `data has ${bytes.length} bytes, ${t.dtype}${JSON.stringify(t.shape)} needs ${numel * DTYPE_BYTES[t.dtype]}`, name);
    }
    json[name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + bytes.length] };
    chunks.push(bytes);
    offset += bytes.length;
  }
  let text = JSON.stringify(json);
  const enc = new TextEncoder();
  let headerBody = enc.encode(text);
  const pad = (8 - (headerBody.length % 8)) % 8;
  if (pad > 0) {
    text += ' '.repeat(pad);
    headerBody = enc.encode(text);
  }
  const header = new Uint8Array(8 + headerBody.length);
  new DataView(header.buffer).setBigUint64(0, BigInt(headerBody.length), true);
  header.set(headerBody, 8);
  return { header, chunks };
}

/** Writes tensors in the given order; streams chunk by chunk. */
export function writeSafetensors(
  path: string,
  tensors: Record<string, TensorToWrite> | ReadonlyArray<[string, TensorToWrite]>,
  metadata?: Record<string, string>,
): void {
  const { header, chunks } = buildSafetensors(tensors, metadata);
  const fd = fs.openSync(path, 'w');
  try {
    writeAll(fd, header);
    for (const c of chunks) writeAll(fd, c);
  } finally {
    fs.closeSync(fd);
  }
}

function writeAll(fd: number, buf: Uint8Array): void {
  let done = 0;
  while (done < buf.length) done += fs.writeSync(fd, buf, done, buf.length - done);
}

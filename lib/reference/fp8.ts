// FP8 latent cache in DeepSeek-V3.2's 656-byte layout (FlashMLA's `V32_FP8Sparse`). Per token:
//   bytes [0, 512)    the 512 latent values as e4m3 (OCP "fn": no infinity, max 448)
//   bytes [512, 528)  four float32 scales, one per 128-value tile (little endian)
//   bytes [528, 656)  the 64 rotated rope values as bf16 (little endian)
// scale = 2^ceil(log2(max(amax / 448, 1e-4))) of its tile (a power of two, so x / scale and
// e4m3 · scale are exact), stored value = RNE_e4m3(x / scale). Dequantized latent values are
// exactly representable in bf16 (4 significant bits times a power of two), so the kernels can
// expand them into bf16 tiles without a rounding step.
//
// Non-finite inputs (defined behaviour, identical in the kernel): NaN and ±Infinity are stored
// as the e4m3 NaN (0x7f, with the input's sign bit; e4m3fn has no infinity) and do not take
// part in their tile's amax; a NaN/Inf rope value is stored as the bf16 NaN/Inf it rounds to.
// Reading such a row back gives NaN there, as a bf16 cache holding the NaN would.

import { appendLatent, type AppendLatentReferenceArgs } from './cache.js';
import { decode, type AttentionResult, type DecodeReferenceArgs } from './decode.js';
import { allocHost, argError, checkArray, checkObject, checkPosInt, sizeProduct } from '../check.js';

/** Latent values per token (kv_lora_rank of DeepSeek-V2/V3). */
export const FP8_LATENT_DIM = 512;
/** Rope values per token. */
export const FP8_ROPE_DIM = 64;
/** Latent values per scale. */
export const FP8_TILE = 128;
export const FP8_NUM_SCALES = FP8_LATENT_DIM / FP8_TILE;
/** Byte offsets inside one token row. */
export const FP8_SCALE_OFFSET = FP8_LATENT_DIM;
export const FP8_ROPE_OFFSET = FP8_SCALE_OFFSET + 4 * FP8_NUM_SCALES;
/** Bytes per token per layer: 512 + 16 + 128 = 656. */
export const FP8_ROW_BYTES = FP8_ROPE_OFFSET + 2 * FP8_ROPE_DIM;
/** Largest finite e4m3 value. */
export const E4M3_MAX = 448;
/** Smallest scale before rounding up to a power of two (1e-4 → 2^-13). */
export const FP8_MIN_SCALE = 1e-4;

/** The byte of v rounded to e4m3 (round to nearest, ties to even; |v| > 448 saturates to ±448). */
export function e4m3Encode(v: number): number {
  const sign = v < 0 || Object.is(v, -0) ? 0x80 : 0;
  if (!Number.isFinite(v)) return sign | 0x7f;
  const a = Math.abs(v);
  if (a < 2 ** -6) return sign | roundHalfEven(a * 2 ** 9); // subnormals: k · 2^-9 (k = 8 is 2^-6, byte 0x08)
  let e = Math.floor(Math.log2(a));
  if (2 ** e > a) e--;
  else if (2 ** (e + 1) <= a) e++;
  let m = roundHalfEven((a / 2 ** e - 1) * 8); // exact: a / 2^e in [1, 2) has ≤ 53 bits
  if (m === 8) {
    m = 0;
    e++;
  }
  const byte = ((e + 7) << 3) | m;
  return sign | Math.min(byte, 0x7e);
}

/** The value of an e4m3 byte (0x7f / 0xff are NaN). */
export function e4m3Decode(b: number): number {
  const sign = b & 0x80 ? -1 : 1;
  const e = (b >> 3) & 15;
  const m = b & 7;
  if (e === 15 && m === 7) return NaN;
  return sign * (e === 0 ? m * 2 ** -9 : (8 + m) * 2 ** (e - 10));
}

/** bf16 bits of v, rounded once from float64 (RNE; overflow gives ±Infinity). */
export function bf16Encode(v: number): number {
  if (Number.isNaN(v)) return 0x7fc0;
  const sign = v < 0 || Object.is(v, -0) ? 0x8000 : 0;
  const a = Math.abs(v);
  if (a === Infinity) return sign | 0x7f80;
  if (a === 0) return sign;
  let e = Math.max(Math.floor(Math.log2(a)), -126);
  if (2 ** e > a && e > -126) e--;
  else if (2 ** (e + 1) <= a) e++;
  const ulp = 2 ** (e - 7);
  const r = roundHalfEven(a / ulp) * ulp;
  if (r >= 2 ** 128) return sign | 0x7f80;
  return sign | (new Uint32Array(new Float32Array([r]).buffer)[0]! >>> 16);
}

export function bf16Decode(bits: number): number {
  return new Float32Array(new Uint32Array([(bits & 0xffff) << 16]).buffer)[0]!;
}

function roundHalfEven(x: number): number {
  const f = Math.floor(x);
  const d = x - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

/** The scale of a tile with largest finite magnitude amax: 2^ceil(log2(max(amax / 448, 1e-4))). */
export function fp8TileScale(amax: number): number {
  // amax / 448 is never rounded onto a power of two from above (see docs/fp8-cache.md), so the
  // float64 quotient gives the exact ceil.
  const x = Math.max(amax / E4M3_MAX, FP8_MIN_SCALE);
  let e = Math.ceil(Math.log2(x));
  if (2 ** (e - 1) >= x) e--;
  else if (2 ** e < x) e++;
  return 2 ** e;
}

/**
 * Writes one 576-value cache row (latent then rotated rope) as 656 bytes at dst[offset].
 * `row` holds at least 576 values starting at rowOffset.
 */
export function quantizeFp8Row(row: ArrayLike<number>, rowOffset: number, dst: Uint8Array, offset: number): void {
  const dv = new DataView(dst.buffer, dst.byteOffset + offset, FP8_ROW_BYTES);
  for (let tile = 0; tile < FP8_NUM_SCALES; tile++) {
    let amax = 0;
    for (let i = 0; i < FP8_TILE; i++) {
      const x = row[rowOffset + tile * FP8_TILE + i]!;
      if (Number.isFinite(x)) amax = Math.max(amax, Math.abs(x));
    }
    const scale = fp8TileScale(amax);
    dv.setFloat32(FP8_SCALE_OFFSET + 4 * tile, scale, true);
    for (let i = 0; i < FP8_TILE; i++) {
      const k = tile * FP8_TILE + i;
      dv.setUint8(k, e4m3Encode(row[rowOffset + k]! / scale));
    }
  }
  for (let i = 0; i < FP8_ROPE_DIM; i++) dv.setUint16(FP8_ROPE_OFFSET + 2 * i, bf16Encode(row[rowOffset + FP8_LATENT_DIM + i]!), true);
}

/** Reads the 656 bytes at src[offset] back into 576 values at out[outOffset]. */
export function dequantizeFp8Row(src: Uint8Array, offset: number, out: Float64Array, outOffset: number): void {
  const dv = new DataView(src.buffer, src.byteOffset + offset, FP8_ROW_BYTES);
  for (let tile = 0; tile < FP8_NUM_SCALES; tile++) {
    const scale = dv.getFloat32(FP8_SCALE_OFFSET + 4 * tile, true);
    for (let i = 0; i < FP8_TILE; i++) {
      const k = tile * FP8_TILE + i;
      out[outOffset + k] = e4m3Decode(src[offset + k]!) * scale;
    }
  }
  for (let i = 0; i < FP8_ROPE_DIM; i++) out[outOffset + FP8_LATENT_DIM + i] = bf16Decode(dv.getUint16(FP8_ROPE_OFFSET + 2 * i, true));
}

/** Geometry of a paged FP8 cache in bytes: page p, token o at p·pageStride + o·656. */
export interface Fp8CacheGeometry {
  numPages: number;
  pageSize: number;
  /** Bytes from one page to the next; ≥ pageSize·656 (default exactly that). */
  pageStride?: number;
}

function fp8Geometry(fn: string, bytes: Uint8Array, g: Fp8CacheGeometry): { numPages: number; pageSize: number; pageStride: number } {
  checkObject(fn, 'geometry', g);
  const numPages = checkPosInt(fn, 'numPages', g.numPages);
  const pageSize = checkPosInt(fn, 'pageSize', g.pageSize);
  const pageStride = g.pageStride ?? pageSize * FP8_ROW_BYTES;
  checkPosInt(fn, 'pageStride', pageStride);
  if (pageStride < pageSize * FP8_ROW_BYTES) throw argError('ERR_SHAPE', fn, 'pageStride', `= ${pageStride} is less than pageSize·656 = ${pageSize * FP8_ROW_BYTES}`);
  if (!(bytes instanceof Uint8Array)) throw argError('ERR_ARGUMENT', fn, 'cache', 'must be a Uint8Array');
  const need = (numPages - 1) * pageStride + pageSize * FP8_ROW_BYTES;
  if (bytes.length < need) throw argError('ERR_SHAPE', fn, 'cache', `has ${bytes.length} bytes; ${numPages} pages of stride ${pageStride} need ${need}`);
  return { numPages, pageSize, pageStride };
}

/** Quantizes a float64 cache [numPages, pageSize, 576] into the 656-byte layout (a new buffer unless `out`). */
export function quantizeFp8Cache(cache: Float64Array, g: Fp8CacheGeometry, out?: Uint8Array): Uint8Array {
  const fn = 'quantizeFp8Cache';
  checkArray(fn, 'cache', cache, { f64: true });
  const pageStride = g.pageStride ?? g.pageSize * FP8_ROW_BYTES;
  const bytes = out ?? allocHost(fn, 'cache', Uint8Array, sizeProduct(fn, 'numPages', g.numPages, pageStride));
  const { numPages, pageSize } = fp8Geometry(fn, bytes, g);
  const D = FP8_LATENT_DIM + FP8_ROPE_DIM;
  if (cache.length !== numPages * pageSize * D) throw argError('ERR_SHAPE', fn, 'cache', `has ${cache.length} values; expected numPages·pageSize·576 = ${numPages * pageSize * D}`);
  for (let p = 0; p < numPages; p++) {
    for (let o = 0; o < pageSize; o++) quantizeFp8Row(cache, (p * pageSize + o) * D, bytes, p * pageStride + o * FP8_ROW_BYTES);
  }
  return bytes;
}

/** The float64 cache [numPages, pageSize, 576] an FP8 cache stands for (padding bytes between pages ignored). */
export function dequantizeFp8Cache(bytes: Uint8Array, g: Fp8CacheGeometry): Float64Array {
  const fn = 'dequantizeFp8Cache';
  const { numPages, pageSize, pageStride } = fp8Geometry(fn, bytes, g);
  const D = FP8_LATENT_DIM + FP8_ROPE_DIM;
  const out = allocHost(fn, 'cache', Float64Array, sizeProduct(fn, 'numPages', numPages, pageSize, D));
  for (let p = 0; p < numPages; p++) {
    for (let o = 0; o < pageSize; o++) dequantizeFp8Row(bytes, p * pageStride + o * FP8_ROW_BYTES, out, (p * pageSize + o) * D);
  }
  return out;
}

export interface AppendLatentFp8ReferenceArgs extends Omit<AppendLatentReferenceArgs, 'cache'> {
  /** The FP8 cache bytes, written in place (only the named slots' 656-byte rows). */
  cache: Uint8Array;
  numPages: number;
  pageStride?: number;
}

// cache[slot] = quantizeFp8Row([RMSNorm(kvDown[t, :512]) · w ; RoPE(kvDown[t, 512:], pos)]),
// every step in float64, rounded once to e4m3 / bf16.
export function appendLatentFp8(args: AppendLatentFp8ReferenceArgs): void {
  const fn = 'appendLatent';
  checkObject(fn, 'args', args);
  const { numPages, pageSize, pageStride } = fp8Geometry(fn, args.cache, args);
  if (args.normWeight.length !== FP8_LATENT_DIM) throw argError('ERR_SHAPE', fn, 'normWeight', `has ${args.normWeight.length} values; the FP8 layout stores a 512-wide latent`);
  if (args.ropeTable.dim !== FP8_ROPE_DIM) throw argError('ERR_SHAPE', fn, 'ropeTable.dim', `is ${args.ropeTable.dim}; the FP8 layout stores a 64-wide rope key`);
  const D = FP8_LATENT_DIM + FP8_ROPE_DIM;
  const T = args.slotMapping.length;
  const staging = new Float64Array(T * D);
  // The bf16/f32 reference writer into a staging cache with one slot per token, then quantize.
  appendLatent({ ...args, cache: staging, pageSize: 1, slotMapping: Array.from({ length: T }, (_, t) => (args.slotMapping[t] === -1 ? -1 : t)) });
  for (let t = 0; t < T; t++) {
    const slot = args.slotMapping[t]!;
    if (slot === -1) continue;
    if (!Number.isInteger(slot) || slot < 0 || slot >= numPages * pageSize) {
      throw argError('ERR_RANGE', fn, `slotMapping[${t}]`, `= ${slot} is outside the cache's slots [0, ${numPages * pageSize})`);
    }
    quantizeFp8Row(staging, t * D, args.cache, Math.floor(slot / pageSize) * pageStride + (slot % pageSize) * FP8_ROW_BYTES);
  }
}

export interface DecodeFp8ReferenceArgs extends Omit<DecodeReferenceArgs, 'cache' | 'dimLatent' | 'headDim'> {
  cache: Uint8Array;
  numPages: number;
  pageStride?: number;
}

/** decode over an FP8 cache = decode on the dequantized cache. */
export function decodeFp8(args: DecodeFp8ReferenceArgs): AttentionResult {
  const cache = dequantizeFp8Cache(args.cache, args);
  return decode({ ...args, cache, dimLatent: FP8_LATENT_DIM, headDim: FP8_LATENT_DIM + FP8_ROPE_DIM });
}

/** The dequantized rows [Σ seqLens, 576] of each request, in request order (what prefill gathers). */
export function gatherFp8Cache(bytes: Uint8Array, g: Fp8CacheGeometry, blockTable: Int32Array, maxPages: number, seqLens: ArrayLike<number>): Float64Array {
  const fn = 'gatherFp8Cache';
  const { pageSize, pageStride } = fp8Geometry(fn, bytes, g);
  const D = FP8_LATENT_DIM + FP8_ROPE_DIM;
  let total = 0;
  for (let b = 0; b < seqLens.length; b++) total += seqLens[b]!;
  const out = allocHost(fn, 'seqLens', Float64Array, sizeProduct(fn, 'seqLens', total, D));
  let r = 0;
  for (let b = 0; b < seqLens.length; b++) {
    for (let t = 0; t < seqLens[b]!; t++, r++) {
      const lp = Math.floor(t / pageSize);
      const page = lp < maxPages ? blockTable[b * maxPages + lp]! : -1;
      if (!(page >= 0 && page < g.numPages)) throw argError('ERR_RANGE', fn, 'blockTable', `maps logical page ${lp} of request ${b} to invalid page ${page}`);
      dequantizeFp8Row(bytes, page * pageStride + (t % pageSize) * FP8_ROW_BYTES, out, r * D);
    }
  }
  return out;
}

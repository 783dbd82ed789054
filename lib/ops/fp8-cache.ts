// The FP8 latent cache as a device tensor: u8 [numPages, pageSize, 656] in DeepSeek-V3.2's
// per-token layout (FlashMLA's `V32_FP8Sparse`; the bytes are described in lib/reference/fp8.ts
// and docs/fp8-cache.md). Rows are 656 bytes apart; pages may be further apart than
// pageSize·656 (a strided view of a bigger allocation), in multiples of 16 bytes, because the
// kernels move rows 16 bytes at a time.
import { MlaError } from '../errors.js';
import type { TensorMeta } from '../runtime/tensor.js';
import { checkTensor } from './validate.js';

/** Bytes per token per layer in the FP8 layout: 512 e4m3 + 4 f32 scales + 64 bf16. */
export const FP8_CACHE_ROW_BYTES = 656;
/** The latent and rope widths the layout is defined for (DeepSeek-V2/V3/V3.2). */
export const FP8_CACHE_KV_LORA = 512;
export const FP8_CACHE_ROPE = 64;

/** How a latent cache stores a token: the model dtype (576 values), or the 656-byte FP8 layout. */
export type KvCacheFormat = 'model' | 'fp8_e4m3';

/** True when a cache tensor is in the FP8 layout (the only u8 cache the kernels accept). */
export function isFp8Cache(t: TensorMeta): boolean {
  return t.dtype === 'u8';
}

export interface Fp8CacheShape {
  numPages: number;
  pageSize: number;
  /** Bytes between pages. */
  pageStride: number;
}

/** Checks an FP8 cache tensor; every failure names `${op}: \`${name}\``. */
export function checkFp8Cache(op: string, name: string, t: unknown): Fp8CacheShape {
  const c = checkTensor(op, name, t, { dtype: 'u8', shape: [null, null, FP8_CACHE_ROW_BYTES], innerContiguous: true });
  const [numPages, pageSize] = c.shape as [number, number, number];
  const where = `${op}: \`${name}\``;
  if (pageSize > 1 && c.strides[1] !== FP8_CACHE_ROW_BYTES) {
    throw new MlaError('ERR_SHAPE', `${where} rows must be ${FP8_CACHE_ROW_BYTES} bytes apart (the FP8 layout), got stride ${c.strides[1]}`);
  }
  const pageStride = numPages > 1 ? c.strides[0]! : pageSize * FP8_CACHE_ROW_BYTES;
  if (numPages > 1 && (pageStride < pageSize * FP8_CACHE_ROW_BYTES || pageStride % 16 !== 0)) {
    throw new MlaError('ERR_SHAPE', `${where} page stride ${pageStride} must be a multiple of 16 bytes and at least pageSize·${FP8_CACHE_ROW_BYTES} = ${pageSize * FP8_CACHE_ROW_BYTES}`);
  }
  return { numPages, pageSize, pageStride };
}

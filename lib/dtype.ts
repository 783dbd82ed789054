/** Element types of device tensors. */
export type DType = 'f32' | 'f16' | 'bf16' | 'fp8e4m3' | 'i32' | 'u8';

export const DTYPES: readonly DType[] = ['f32', 'f16', 'bf16', 'fp8e4m3', 'i32', 'u8'];

/** The numeric codes shared with csrc/core/dtype.h. */
export const DTYPE_CODE: Readonly<Record<DType, number>> = { f32: 0, f16: 1, bf16: 2, fp8e4m3: 3, i32: 4, u8: 5 };

export const DTYPE_SIZE: Readonly<Record<DType, number>> = { f32: 4, f16: 2, bf16: 2, fp8e4m3: 1, i32: 4, u8: 1 };

/** Host array type that holds a dtype's raw elements (16-bit floats as their bits). */
export interface HostArrayOf {
  f32: Float32Array;
  f16: Uint16Array;
  bf16: Uint16Array;
  fp8e4m3: Uint8Array;
  i32: Int32Array;
  u8: Uint8Array;
}
export type HostArray = HostArrayOf[DType];

export function isDType(x: unknown): x is DType {
  return typeof x === 'string' && (DTYPES as readonly string[]).includes(x);
}

export function isFloatDType(t: DType): boolean {
  return t === 'f32' || t === 'f16' || t === 'bf16' || t === 'fp8e4m3';
}

export function hostArrayFor(dtype: DType, buffer: ArrayBuffer, byteOffset = 0, length?: number): HostArray {
  switch (dtype) {
    case 'f32': return new Float32Array(buffer, byteOffset, length);
    case 'f16':
    case 'bf16': return new Uint16Array(buffer, byteOffset, length);
    case 'i32': return new Int32Array(buffer, byteOffset, length);
    case 'fp8e4m3':
    case 'u8': return new Uint8Array(buffer, byteOffset, length);
  }
}

// Argument checks shared by every op wrapper. They run before any launch, on tensor
// metadata only, so they work (and are tested) on machines without a GPU.
// Verbs, so a reader knows what a name does: validate<Op>(...) checks a whole op's arguments and
// returns its plan or geometry; check<Thing>(...) checks one value or one set of host indices
// (checkTensor, checkInt, checkDecodeIndices, checkPrefillIndices, checkSlotMapping).
import type { DType } from '../dtype.js';
import { MlaError } from '../errors.js';
import type { TensorMeta } from '../runtime/tensor.js';
import { capturing } from '../runtime/stream.js';

export interface TensorSpec {
  /** Allowed dtypes. */
  dtype?: DType | readonly DType[];
  /** Expected sizes; null = any. Its length fixes the rank. */
  shape?: readonly (number | null)[];
  /** The last dim must have stride 1 (rows may be strided). */
  innerContiguous?: boolean;
  /** Fully contiguous. */
  contiguous?: boolean;
}

function fmt(shape: readonly (number | null)[]): string {
  return `[${shape.map((d) => (d === null ? '*' : d)).join(', ')}]`;
}

function isTensorMeta(t: unknown): t is TensorMeta {
  return typeof t === 'object' && t !== null && Array.isArray((t as TensorMeta).shape) && Array.isArray((t as TensorMeta).strides) && typeof (t as TensorMeta).dtype === 'string';
}

/** Checks one tensor argument of `op`; every failure names `${op}: \`${name}\``. */
export function checkTensor(op: string, name: string, t: unknown, spec: TensorSpec = {}): TensorMeta {
  const where = `${op}: \`${name}\``;
  if (!isTensorMeta(t)) throw new MlaError('ERR_ARGUMENT', `${where} must be a DeviceTensor`);
  if (t.disposed) throw new MlaError('ERR_DISPOSED', `${where} was disposed`);
  if (spec.dtype !== undefined) {
    const allowed = typeof spec.dtype === 'string' ? [spec.dtype] : spec.dtype;
    if (!allowed.includes(t.dtype)) throw new MlaError('ERR_DTYPE', `${where} must be ${allowed.join(' or ')}, got ${t.dtype}`);
  }
  if (spec.shape !== undefined) {
    const want = spec.shape;
    const ok = t.shape.length === want.length && want.every((d, i) => d === null || d === t.shape[i]);
    if (!ok) throw new MlaError('ERR_SHAPE', `${where} must have shape ${fmt(want)}, got [${t.shape.join(', ')}]`);
  }
  if (spec.innerContiguous && t.shape.length > 0 && t.strides[t.strides.length - 1] !== 1 && t.shape[t.shape.length - 1] !== 1) {
    throw new MlaError('ERR_SHAPE', `${where} must have a contiguous last dimension (stride 1)`);
  }
  if (spec.contiguous) {
    let expect = 1;
    for (let i = t.shape.length - 1; i >= 0; i--) {
      if (t.shape[i] !== 1 && t.strides[i] !== expect) throw new MlaError('ERR_SHAPE', `${where} must be contiguous`);
      expect *= t.shape[i]!;
    }
  }
  return t;
}

/**
 * Kernels move rows in aligned units (16-byte cp.async/ldmatrix rows, 4-byte output pairs), so
 * every stride but the innermost of a non-unit dim must be a non-negative multiple of `multiple`
 * elements, and with `offset` the first element must sit at such an offset too (a view that
 * starts mid-row misaligns every row). `why` says which unit, for the message.
 */
export function checkRowAlignment(op: string, name: string, t: TensorMeta, multiple: number, why: string, opts: { offset?: boolean } = {}): void {
  for (let d = 0; d < t.shape.length - 1; d++) {
    const s = t.strides[d]!;
    if (t.shape[d]! > 1 && (s < 0 || s % multiple !== 0)) {
      throw new MlaError('ERR_SHAPE', `${op}: \`${name}\` strides must be non-negative multiples of ${multiple} elements (${why}), got [${t.strides.join(', ')}]`);
    }
  }
  const offset = (t as { offset?: unknown }).offset;
  if (opts.offset && typeof offset === 'number' && offset % multiple !== 0) {
    throw new MlaError('ERR_SHAPE', `${op}: \`${name}\` must start at an element offset that is a multiple of ${multiple} (${why}), got ${offset}`);
  }
}

export function checkSameDType(op: string, name: string, t: TensorMeta, other: string, dtype: DType): void {
  if (t.dtype !== dtype) throw new MlaError('ERR_DTYPE', `${op}: \`${name}\` must have the same dtype as \`${other}\` (${dtype}), got ${t.dtype}`);
}

export function checkInt(op: string, name: string, v: unknown, min = -Infinity, max = Infinity): number {
  if (typeof v !== 'number' || !Number.isInteger(v)) throw new MlaError('ERR_ARGUMENT', `${op}: \`${name}\` must be an integer, got ${String(v)}`);
  if (v < min || v > max) throw new MlaError('ERR_RANGE', `${op}: \`${name}\` = ${v} is out of range [${min}, ${max}]`);
  return v;
}

export function checkNumber(op: string, name: string, v: unknown, opts: { positive?: boolean } = {}): number {
  if (typeof v !== 'number' || !Number.isFinite(v)) throw new MlaError('ERR_ARGUMENT', `${op}: \`${name}\` must be a finite number, got ${String(v)}`);
  if (opts.positive && !(v > 0)) throw new MlaError('ERR_RANGE', `${op}: \`${name}\` must be positive, got ${v}`);
  return v;
}

export function isPowerOfTwo(n: number): boolean {
  return Number.isInteger(n) && n > 0 && (n & (n - 1)) === 0;
}

/** An op's host-side index check copies indices to the host, which a CUDA graph capture cannot hold. */
export function refuseIndexCheckDuringCapture(op: string, checkIndices: boolean): void {
  if (checkIndices && capturing()) {
    throw new MlaError('ERR_ARGUMENT', `${op}: \`checkIndices\` must be false while a CUDA graph is being captured ` +
      '(the check copies the indices to the host; the kernels still guard every index)');
  }
}

// PTX conformance op (csrc/kernels/primitives.cu): runs mma.sync, ldmatrix, cp.async and the
// warp shuffles/votes once on tiny host inputs and returns the raw registers, for
// test/primitives.test.ts to hold against lib/reference/primitives.ts and to diff a GPU run
// with an emulated-device run. A diagnostic, not exported from lib/index.ts.
import type { DType, HostArray } from '../dtype.js';
import { MlaError } from '../errors.js';
import { nativeStream } from '../runtime/stream.js';
import { native, nativeOp } from '../native.js';
import { isNativePrimitiveTensor, type NativePrimitivesArgs, type NativePrimitiveTensor } from '../native-contract.js';
import { FILL_U32 } from '../reference/primitives.js';
import type { ShflOpName, ShuffleCase, SwizzleSpan, WgmmaCase } from '../reference/primitives.js';
import { DeviceTensor } from '../runtime/tensor.js';
import type { StreamOption } from '../runtime/tensor.js';
import { checkInt, isPowerOfTwo } from './validate.js';

export type { ShflOpName, ShuffleCase, SwizzleSpan, WgmmaCase } from '../reference/primitives.js';
export type MmaDType = 'bf16' | 'f16';

const OP = 'primitives';
// csrc/kernels/primitives.h: Primitive and ShflOp.
const WHICH = { mma: 0, ldmatrix: 1, cpAsync: 2, shuffle: 3, vote: 4, wgmma: 5, tma: 6, mbarrier: 7 } as const;
const SHFL_CODE: Readonly<Record<ShflOpName, number>> = { idx: 0, xor: 1, down: 2, up: 3 };
const MAX_ROWS = 1 << 16;

type ArrayCtor = Uint16Array | Uint32Array | Int32Array | Float32Array;
function checkArray<T extends ArrayCtor>(fn: string, name: string, v: unknown, ctor: abstract new (...args: never[]) => T, length: number | null): T {
  if (!(v instanceof ctor)) throw new MlaError('ERR_ARGUMENT', `${fn}: \`${name}\` must be a ${ctor.name}`);
  if (length !== null && v.length !== length) throw new MlaError('ERR_SHAPE', `${fn}: \`${name}\` must have ${length} elements, got ${v.length}`);
  return v;
}

function asI32(v: Uint32Array): Int32Array {
  return new Int32Array(v.buffer, v.byteOffset, v.length);
}
function asU32(v: HostArray): Uint32Array {
  return new Uint32Array(v.buffer, v.byteOffset, (v.length * v.BYTES_PER_ELEMENT) / 4);
}

interface Upload {
  data: HostArray;
  shape: number[];
  dtype: DType;
}

// Uploads, fills every output with a known bit pattern (0xFFFFFFFF, or NaN 0x7FC00000 for f32,
// converted on the host so GPU and emulator start from the same bits), launches, downloads.
type Extra = Omit<NativePrimitivesArgs, 'which' | 'stream' | NativePrimitiveTensor>;
function run(which: number, ins: Record<string, Upload>, outs: Record<string, Upload>, extra: Extra, opts: StreamOption): HostArray[] {
  const owned: DeviceTensor[] = [];
  const up = (u: Upload): DeviceTensor => {
    const t = DeviceTensor.fromArray(u.data, u.shape, u.dtype);
    owned.push(t);
    return t;
  };
  try {
    const args: NativePrimitivesArgs = { which, ...extra, stream: nativeStream(OP, opts.stream) };
    const bind = (k: string, t: DeviceTensor): void => {
      // Only the names primitives.h reads: anything else would be silently ignored natively.
      if (!isNativePrimitiveTensor(k)) throw new MlaError('ERR_ARGUMENT', `${OP}: no tensor \`${k}\``);
      args[k] = t.nativeRef(`${OP}: \`${k}\``);
    };
    for (const [k, u] of Object.entries(ins)) bind(k, up(u));
    const outT = Object.entries(outs).map(([k, u]) => {
      const t = up(u);
      bind(k, t);
      return t;
    });
    nativeOp(OP)(args);
    return outT.map((t) => t.toHostSync(opts));
  } finally {
    for (const t of owned) t.dispose();
  }
}

const filledI32 = (n: number): Int32Array => new Int32Array(n).fill(FILL_U32 | 0);

/**
 * mma16816<bf16|f16> on A [16,16] and B [16,8] (row-major 16-bit float bits) and C [16,8] f32;
 * returns D [16,8] f32. Fragments are packed from global memory in the kernel (no ldmatrix).
 */
export function mmaConformance(a: Uint16Array, b: Uint16Array, c: Float32Array, dtype: MmaDType, opts: StreamOption = {}): Float32Array {
  const fn = 'mmaConformance';
  checkArray(fn, 'a', a, Uint16Array, 256);
  checkArray(fn, 'b', b, Uint16Array, 128);
  checkArray(fn, 'c', c, Float32Array, 128);
  if (dtype !== 'bf16' && dtype !== 'f16') throw new MlaError('ERR_DTYPE', `${fn}: \`dtype\` must be bf16 or f16, got ${String(dtype)}`);
  const [d] = run(WHICH.mma, {
    a: { data: a, shape: [16, 16], dtype },
    b: { data: b, shape: [16, 8], dtype },
    c: { data: c, shape: [16, 8], dtype: 'f32' },
  }, { d: { data: new Float32Array(128).fill(Number.NaN), shape: [16, 8], dtype: 'f32' } }, {}, opts);
  return d as Float32Array;
}

/**
 * ldmatrix.x{num}[.trans] from a [32,8] u16 matrix copied into shared memory; lane l passes the
 * address of row perm[l]. Returns [32 lanes][4] registers (those past `num` stay 0xFFFFFFFF).
 */
export function ldmatrixConformance(matrix: Uint16Array, perm: ArrayLike<number>, num: 1 | 2 | 4, trans: boolean, opts: StreamOption = {}): Uint32Array {
  const fn = 'ldmatrixConformance';
  checkArray(fn, 'matrix', matrix, Uint16Array, 256);
  if (typeof perm !== 'object' || perm === null || perm.length !== 32) throw new MlaError('ERR_SHAPE', `${fn}: \`perm\` must have 32 elements`);
  const p = Int32Array.from({ length: 32 }, (_, i) => checkInt(fn, `perm[${i}]`, perm[i], 0, 31));
  if (num !== 1 && num !== 2 && num !== 4) throw new MlaError('ERR_RANGE', `${fn}: \`num\` must be 1, 2 or 4, got ${String(num)}`);
  if (typeof trans !== 'boolean') throw new MlaError('ERR_ARGUMENT', `${fn}: \`trans\` must be a boolean`);
  const [frag] = run(WHICH.ldmatrix, {
    matrix: { data: matrix, shape: [32, 8], dtype: 'bf16' },
    perm: { data: p, shape: [32], dtype: 'i32' },
  }, { frag: { data: filledI32(128), shape: [32, 4], dtype: 'i32' } }, { num, trans }, opts);
  return asU32(frag!);
}

/**
 * cp.async 16 B per chunk: chunk i of src [64 chunks × 4 u32] lands in shared memory if pred[i],
 * else zero fill; chunks 0-31 form commit group 0, 32-63 group 1. `early` [32,4]: chunk `lane`
 * read by its own thread after wait_group 1; `out` [64,4]: all of it after wait_group 0.
 */
export function cpAsyncConformance(src: Uint32Array, pred: ArrayLike<boolean>, opts: StreamOption = {}): { early: Uint32Array; out: Uint32Array } {
  const fn = 'cpAsyncConformance';
  checkArray(fn, 'src', src, Uint32Array, 256);
  if (typeof pred !== 'object' || pred === null || pred.length !== 64) throw new MlaError('ERR_SHAPE', `${fn}: \`pred\` must have 64 elements`);
  const p = Int32Array.from({ length: 64 }, (_, i) => {
    if (typeof pred[i] !== 'boolean') throw new MlaError('ERR_ARGUMENT', `${fn}: \`pred[${i}]\` must be a boolean`);
    return pred[i] ? 1 : 0;
  });
  const [early, out] = run(WHICH.cpAsync, {
    src: { data: asI32(src), shape: [64, 4], dtype: 'i32' },
    pred: { data: p, shape: [64], dtype: 'i32' },
  }, {
    early: { data: filledI32(128), shape: [32, 4], dtype: 'i32' },
    out: { data: filledI32(256), shape: [64, 4], dtype: 'i32' },
  }, {}, opts);
  return { early: asU32(early!), out: asU32(out!) };
}

/** __shfl{,_xor,_down,_up}_sync(full mask, values[lane], arg, width) per case: [cases][32 lanes]. */
export function shuffleConformance(values: Uint32Array, cases: readonly ShuffleCase[], opts: StreamOption = {}): Uint32Array {
  const fn = 'shuffleConformance';
  checkArray(fn, 'values', values, Uint32Array, 32);
  if (!Array.isArray(cases)) throw new MlaError('ERR_ARGUMENT', `${fn}: \`cases\` must be an array`);
  if (cases.length > MAX_ROWS) throw new MlaError('ERR_RANGE', `${fn}: \`cases\` has more than ${MAX_ROWS} entries`);
  const enc = new Int32Array(cases.length * 3);
  cases.forEach((c: ShuffleCase, i) => {
    const code = typeof c === 'object' && c !== null && Object.hasOwn(SHFL_CODE, c.op) ? SHFL_CODE[c.op] : undefined;
    if (code === undefined) throw new MlaError('ERR_ARGUMENT', `${fn}: \`cases[${i}].op\` must be idx, xor, down or up`);
    enc[i * 3] = code;
    enc[i * 3 + 1] = checkInt(fn, `cases[${i}].arg`, c.arg, -(2 ** 31), 2 ** 31 - 1);
    const w = checkInt(fn, `cases[${i}].width`, c.width, 1, 32);
    if (!isPowerOfTwo(w)) throw new MlaError('ERR_RANGE', `${fn}: \`cases[${i}].width\` must be a power of two, got ${w}`);
    enc[i * 3 + 2] = w;
  });
  if (cases.length === 0) return new Uint32Array(0);
  const [out] = run(WHICH.shuffle, {
    values: { data: asI32(values), shape: [32], dtype: 'i32' },
    cases: { data: enc, shape: [cases.length, 3], dtype: 'i32' },
  }, { shfl: { data: filledI32(cases.length * 32), shape: [cases.length, 32], dtype: 'i32' } }, {}, opts);
  return asU32(out!);
}

/**
 * __ballot_sync / __any_sync / __all_sync (full mask) on preds [m × 32 lanes] (nonzero = true):
 * [m][ballot, any, all][32 lanes], any/all as 0 or 1.
 */
export function voteConformance(preds: Int32Array, opts: StreamOption = {}): Uint32Array {
  const fn = 'voteConformance';
  checkArray(fn, 'preds', preds, Int32Array, null);
  if (preds.length % 32 !== 0) throw new MlaError('ERR_SHAPE', `${fn}: \`preds\` must hold whole warps (a multiple of 32 elements), got ${preds.length}`);
  const m = preds.length / 32;
  if (m > MAX_ROWS) throw new MlaError('ERR_RANGE', `${fn}: \`preds\` has more than ${MAX_ROWS} warps`);
  if (m === 0) return new Uint32Array(0);
  const [out] = run(WHICH.vote, { preds: { data: preds, shape: [m, 32], dtype: 'i32' } },
    { votes: { data: filledI32(m * 96), shape: [m, 3, 32], dtype: 'i32' } }, {}, opts);
  return asU32(out!);
}

// ---- sm_90a (csrc/kernels/primitives_sm90.cu): compute capability 9.0 only -----------------------
const SPANS: readonly number[] = [0, 32, 64, 128];
function checkSpan(fn: string, name: string, v: unknown): SwizzleSpan {
  if (typeof v !== 'number' || !SPANS.includes(v)) throw new MlaError('ERR_RANGE', `${fn}: \`${name}\` must be 0, 32, 64 or 128 (bytes), got ${String(v)}`);
  return v as SwizzleSpan;
}
// The test modes (mostly faults) break PTX rules on purpose (faults on the emulated device;
// undefined, or a hang, on a GPU), so only the emulated device takes them. Maxima: tma 1, mbarrier
// 3, wgmma 4 (primitives_sm90.cu's launcher checks the same).
function checkMode(fn: string, mode: unknown, max: 1 | 3 | 4 = 1): number {
  if (typeof mode !== 'number' || !Number.isInteger(mode) || mode < 0 || mode > max) throw new MlaError('ERR_RANGE', `${fn}: \`mode\` must be 0 to ${max}`);
  if (mode !== 0 && !native().buildInfo().emulated) throw new MlaError('ERR_ARGUMENT', `${fn}: \`mode\` ${mode} (an emulator test variant) runs on the emulated device only`);
  return mode;
}

/**
 * wgmma.mma_async m64nNk16 f32.{bf16,f16} in k/16 steps: D [64,n] = A [64,k]·B [k,n] (+ C when
 * scaleD), A and B as row-major 16-bit float bits placed by the kernel in the canonical shared
 * memory layouts `c` describes (see WgmmaCase). Returns D, f32.
 */
export function wgmmaConformance(a: Uint16Array, b: Uint16Array, c: Float32Array, spec: WgmmaCase, opts: StreamOption = {}): Float32Array {
  const fn = 'wgmmaConformance';
  if (typeof spec !== 'object' || spec === null) throw new MlaError('ERR_ARGUMENT', `${fn}: \`spec\` must be an object`);
  const { n, k, dtype } = spec;
  if (n !== 16 && n !== 32 && n !== 64 && n !== 256) throw new MlaError('ERR_RANGE', `${fn}: \`n\` must be 16, 32, 64 or 256, got ${String(n)}`);
  if (k !== 16 && !(k === 64 && (n === 32 || n === 64))) throw new MlaError('ERR_RANGE', `${fn}: \`k\` must be 16, or 64 with n 32 or 64, got ${String(k)}`);
  if (dtype !== 'bf16' && dtype !== 'f16') throw new MlaError('ERR_DTYPE', `${fn}: \`dtype\` must be bf16 or f16, got ${String(dtype)}`);
  const swizzleA = checkSpan(fn, 'swizzleA', spec.swizzleA), swizzleB = checkSpan(fn, 'swizzleB', spec.swizzleB);
  if (spec.tnspB !== 0 && spec.tnspB !== 1) throw new MlaError('ERR_RANGE', `${fn}: \`tnspB\` must be 0 or 1`);
  const tnspA = spec.tnspA ?? 0;
  if (tnspA !== 0 && tnspA !== 1) throw new MlaError('ERR_RANGE', `${fn}: \`tnspA\` must be 0 or 1`);
  const lboRows = spec.lboRows ?? k;
  checkInt(fn, 'lboRows', lboRows, k, 256);
  if (typeof spec.rs !== 'boolean' || typeof spec.scaleD !== 'boolean') throw new MlaError('ERR_ARGUMENT', `${fn}: \`rs\` and \`scaleD\` must be booleans`);
  if (tnspA === 1 && spec.rs) throw new MlaError('ERR_ARGUMENT', `${fn}: \`tnspA\` 1 (A MN-major) needs A in shared memory, not \`rs\``);
  checkArray(fn, 'a', a, Uint16Array, 64 * k);
  checkArray(fn, 'b', b, Uint16Array, k * n);
  checkArray(fn, 'c', c, Float32Array, 64 * n);
  const mode = checkMode(fn, spec.mode ?? 0, 4);
  if (mode >= 3 && k === 16) throw new MlaError('ERR_RANGE', `${fn}: \`mode\` ${mode} needs k > 16 (several k16 steps)`);
  const [d] = run(WHICH.wgmma, {
    a: { data: a, shape: [64, k], dtype },
    b: { data: b, shape: [k, n], dtype },
    c: { data: c, shape: [64, n], dtype: 'f32' },
  }, { d: { data: new Float32Array(64 * n).fill(Number.NaN), shape: [64, n], dtype: 'f32' } },
  { n, k, swizzleA, swizzleB, tnspA, tnspB: spec.tnspB, lboRows, rs: spec.rs, scaleD: spec.scaleD, mode }, opts);
  return d as Float32Array;
}

/**
 * cp.async.bulk.tensor (TMA) box loads from a bf16 tensor `src` of `shape` (rank 2 or 3, outermost
 * first) through a tensor map with `box` (innermost first) and `swizzle`; `coords` are the boxes'
 * corners (innermost first, may lie outside the tensor). Returns [loads][box elements]: the raw
 * shared-memory bytes of each load (from a 1024-byte aligned destination) as u16.
 */
export function tmaConformance(src: Uint16Array, shape: readonly number[], box: readonly number[], swizzle: SwizzleSpan, coords: readonly (readonly number[])[], opts: StreamOption & { mode?: 0 | 1 } = {}): Uint16Array {
  const fn = 'tmaConformance';
  if (!Array.isArray(shape) || (shape.length !== 2 && shape.length !== 3)) throw new MlaError('ERR_SHAPE', `${fn}: \`shape\` must have 2 or 3 dims`);
  const rank = shape.length;
  shape.forEach((v, i) => checkInt(fn, `shape[${i}]`, v, 1, 1 << 20));
  checkArray(fn, 'src', src, Uint16Array, shape.reduce((x, y) => x * y, 1));
  if (!Array.isArray(box) || box.length !== rank) throw new MlaError('ERR_SHAPE', `${fn}: \`box\` must have ${rank} dims`);
  box.forEach((v, i) => checkInt(fn, `box[${i}]`, v, 1, 256));
  checkSpan(fn, 'swizzle', swizzle);
  if (!Array.isArray(coords) || coords.length < 1 || coords.length > 64) throw new MlaError('ERR_SHAPE', `${fn}: \`coords\` must have 1 to 64 entries`);
  const enc = new Int32Array(coords.length * rank);
  coords.forEach((c, i) => {
    if (!Array.isArray(c) || c.length !== rank) throw new MlaError('ERR_SHAPE', `${fn}: \`coords[${i}]\` must have ${rank} entries`);
    c.forEach((v, j) => { enc[i * rank + j] = checkInt(fn, `coords[${i}][${j}]`, v, -(2 ** 31), 2 ** 31 - 1); });
  });
  const elems = box.reduce((x, y) => x * y, 1);
  const [out] = run(WHICH.tma, {
    src: { data: src, shape: [...shape], dtype: 'bf16' },
    coords: { data: enc, shape: [coords.length, rank], dtype: 'i32' },
  }, { out: { data: new Uint16Array(coords.length * elems).fill(0xffff), shape: [coords.length, elems], dtype: 'bf16' } },
  { box0: box[0], box1: box[1] ?? 1, box2: box[2] ?? 1, swizzle, mode: checkMode(fn, opts.mode ?? 0) }, opts);
  return out as Uint16Array;
}

const HANDOVER = { named: 0, mbarrier: 1 } as const;

/**
 * The scripted mbarrier phases of primitives_sm90.cu (count 2, arrivals by threads 0 and 32, a
 * phase that also waits for a TMA box of `src` [8,64] bf16): `waits` [2 threads][10 steps] are the
 * try_wait.parity results, `tile` the box the TMA delivered, handed from warp 0 to warp 1 in two
 * halves before it is written out: through named barriers (bar.arrive / bar.sync; `handover`
 * 'named', the default) or through mbarriers ('mbarrier'), each a kernel of its own, so that
 * `compute-sanitizer --tool racecheck` reports tell which hand-over the tool accepts.
 * `mode` (emulated device only): 1 an mbarrier wait that never completes, 2 a named barrier
 * generation joined with two different counts, 3 a bar.sync that never completes.
 */
export function mbarrierConformance(src: Uint16Array, opts: StreamOption & { mode?: 0 | 1 | 2 | 3; handover?: 'named' | 'mbarrier' } = {}): { waits: Uint32Array; tile: Uint16Array } {
  const fn = 'mbarrierConformance';
  checkArray(fn, 'src', src, Uint16Array, 512);
  const handover = opts.handover ?? 'named';
  if (typeof handover !== 'string' || !Object.hasOwn(HANDOVER, handover)) throw new MlaError('ERR_ARGUMENT', `${fn}: \`handover\` must be 'named' or 'mbarrier'`);
  const [tile, waits] = run(WHICH.mbarrier, { src: { data: src, shape: [8, 64], dtype: 'bf16' } }, {
    tile: { data: new Uint16Array(512).fill(0xffff), shape: [8, 64], dtype: 'bf16' },
    waits: { data: filledI32(20), shape: [2, 10], dtype: 'i32' },
  }, { mode: checkMode(fn, opts.mode ?? 0, 3), handover: HANDOVER[handover] }, opts);
  return { waits: asU32(waits!), tile: tile as Uint16Array };
}

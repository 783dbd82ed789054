// Reliability (issue 16): property-based fuzzing of the device API with fast-check. Random shapes
// (with NaN, ±Infinity, negative, fractional and huge sizes), dtypes (with unknown ones), strided
// views and offsets, index tensors (negative, huge, out of range, wrong dtype), disposed inputs and
// aliasing outputs. Every call either returns what the float64 reference says or throws an
// MlaError whose message starts with the op's name and names what is wrong; the device context
// must survive every case (a fault on the emulated device would poison it) and no device memory
// may be left behind. With checkIndices: false an out-of-range index must never be read or
// written: its rows stay untouched and the emulated device's guard pages see no access.
//
// Seeded and reproducible: FUZZ_SEED (default 16) and FUZZ_RUNS (cases per property, default 60;
// `npm run fuzz` runs 2,000). A failure prints the seed and the shrunk counterexample.
import t from 'tap';
import fc from 'fast-check';
import { DeviceTensor, MlaError, RopeTable, cuda, linear, rmsNorm, rope, reference } from '../lib/index.js';
import type { DType, MatmulOutputDType } from '../lib/index.js';
import { gpuSkip, roundTo } from './helpers/gpu.js';
import { relErr } from './helpers/fuzz.js';

const SEED = Number(process.env['FUZZ_SEED'] ?? 16);
const RUNS = Number(process.env['FUZZ_RUNS'] ?? 60);
const params = (runs = RUNS): fc.Parameters<unknown> => ({ seed: SEED, numRuns: runs, endOnFailure: true });
let cases = 0;
// Per property: calls that returned a checked result, and calls refused with a typed error.
const tally: Record<string, { ok: number; refused: number }> = {};
const count = (prop: string, outcome: 'ok' | 'refused'): void => {
  (tally[prop] ??= { ok: 0, refused: 0 })[outcome]++;
};

const used = (): number => {
  const d = cuda.deviceInfo(0);
  return d.totalMemory - d.freeMemory;
};

// A size as a caller might pass it: mostly small, sometimes hostile.
const size = fc.oneof(
  { weight: 12, arbitrary: fc.integer({ min: 0, max: 6 }) },
  { weight: 1, arbitrary: fc.constantFrom(-1, Number.NaN, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY, 1.5, 2 ** 31, 2 ** 53, 2 ** 60) },
);
const anyDtype = fc.oneof(
  { weight: 8, arbitrary: fc.constantFrom<DType>('f32', 'bf16', 'f16', 'fp8e4m3', 'i32', 'u8') },
  { weight: 1, arbitrary: fc.constantFrom('f64', 'int8', '', 'BF16') },
);
const anyIndex = fc.oneof(
  { weight: 8, arbitrary: fc.integer({ min: -7, max: 7 }) },
  { weight: 1, arbitrary: fc.constantFrom(Number.NaN, Number.POSITIVE_INFINITY, 0.5, 2 ** 40, -(2 ** 40)) },
);

/** The error is an MlaError of a known code whose message starts with one of `ops`. */
function expectTyped(err: unknown, ops: readonly string[], ctx: string): void {
  if (!(err instanceof MlaError)) throw new Error(`${ctx}: threw a non-MlaError: ${String(err)}`);
  if (!ops.some((op) => err.message.startsWith(op))) throw new Error(`${ctx}: ${err.code} "${err.message}" does not start with ${ops.join(' / ')}`);
  if (err.code === 'ERR_CUDA') throw new Error(`${ctx}: a CUDA error (the context may be lost): ${err.message}`);
}

function contextAlive(): void {
  cuda.synchronize(); // throws once a fault poisoned the context
  DeviceTensor.zeros([1]).dispose();
}

// Host model of a view: element i of the flattened view reads base[offset + Σ idx·stride].
function gather(base: Float32Array, shape: readonly number[], strides: readonly number[], offset: number): Float32Array {
  const n = shape.reduce((a, b) => a * b, 1);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    let rem = i, off = offset;
    for (let d = shape.length - 1; d >= 0; d--) {
      off += (rem % shape[d]!) * strides[d]!;
      rem = Math.floor(rem / shape[d]!);
    }
    out[i] = base[off]!;
  }
  return out;
}

type ViewOp = { kind: 'slice'; dim: number; start: number; end: number } | { kind: 'select'; dim: number; index: number }
  | { kind: 'permute'; order: number[] } | { kind: 'reshape'; shape: number[] } | { kind: 'dispose' };
const viewOp: fc.Arbitrary<ViewOp> = fc.oneof(
  fc.record({ kind: fc.constant('slice' as const), dim: anyIndex, start: anyIndex, end: anyIndex }),
  fc.record({ kind: fc.constant('select' as const), dim: anyIndex, index: anyIndex }),
  fc.record({ kind: fc.constant('permute' as const), order: fc.array(fc.integer({ min: -4, max: 4 }), { maxLength: 5 }) }),
  fc.record({ kind: fc.constant('reshape' as const), shape: fc.array(fc.oneof(fc.integer({ min: -1, max: 8 }), size), { maxLength: 4 }) }),
  { arbitrary: fc.record({ kind: fc.constant('dispose' as const) }), weight: 1 },
);

t.test('DeviceTensor: random shapes, dtypes, views, offsets and disposal', { skip: gpuSkip, timeout: 300_000 }, async (t) => {
  const start = used();
  const downloads: Promise<unknown>[] = [];
  fc.assert(fc.property(fc.array(size, { maxLength: 4 }), anyDtype, fc.array(viewOp, { maxLength: 4 }), fc.boolean(), (shape, dtype, ops, useAsync) => {
    cases++;
    let base: DeviceTensor;
    try {
      base = DeviceTensor.empty(shape, dtype as DType);
    } catch (err) {
      expectTyped(err, ['DeviceTensor.empty'], `empty(${JSON.stringify(shape)}, ${dtype})`);
      count('DeviceTensor', 'refused');
      return;
    }
    try {
      // Small integers: exact in every dtype (fp8e4m3 included).
      const host = Float32Array.from({ length: base.numel }, (_, i) => i % 15);
      if (base.numel) {
        const src = DeviceTensor.fromArray(host, base.shape, dtype === 'i32' || dtype === 'u8' ? dtype : 'f32');
        base.copyFrom(src);
        src.dispose();
      }
      let view = base;
      let disposed = false;
      for (const op of ops) {
        try {
          if (op.kind === 'dispose') {
            base.dispose();
            disposed = true;
          } else if (op.kind === 'slice') view = view.slice(op.dim, op.start, op.end);
          else if (op.kind === 'select') view = view.select(op.dim, op.index);
          else if (op.kind === 'permute') view = view.permute(op.order);
          else view = view.reshape(op.shape);
        } catch (err) {
          expectTyped(err, [op.kind, 'tensor was disposed', 'DeviceTensor'], `${op.kind} ${JSON.stringify(op)} on ${view.toString()}`);
          count('DeviceTensor', 'refused');
          continue;
        }
        count('DeviceTensor', 'ok');
      }
      try {
        const got = view.toFloat32Sync();
        if (disposed) throw new Error('a view of a disposed tensor was read');
        const want = gather(host, view.shape, view.strides, view.offset);
        if (got.length !== want.length || got.some((v, i) => v !== want[i])) throw new Error(`${view.toString()}: read ${got.slice(0, 8).join(',')} want ${want.slice(0, 8).join(',')}`);
      } catch (err) {
        if (!disposed) throw err;
        expectTyped(err, ['toHost'], 'read after dispose');
      }
      if (useAsync && !disposed) {
        // Started before dispose(): it must finish with the right bytes.
        const want = gather(host, view.shape, view.strides, view.offset);
        const v = view;
        downloads.push(v.toFloat32().then((got) => {
          if (got.some((e, i) => e !== want[i])) throw new Error(`${v.toString()}: an async download overtaken by dispose() read wrong data`);
        }));
        base.dispose();
      }
    } finally {
      base.dispose();
    }
  }), params(RUNS * 4));
  await Promise.all(downloads);
  contextAlive();
  t.equal(used(), start, 'no device memory left behind');
});

const floatDtype = fc.constantFrom<DType>('bf16', 'f16', 'f32');
const tol = (d: DType): number => (d === 'f32' ? 1e-5 : 2e-2);

t.test('rmsNorm: random rows, widths, dtypes, strided inputs, aliasing outputs, bad eps', { skip: gpuSkip, timeout: 300_000 }, async (t) => {
  const start = used();
  fc.assert(fc.property(
    fc.integer({ min: 0, max: 9 }), fc.oneof(fc.integer({ min: 1, max: 96 }), fc.constantFrom(256, 512, 1536)), fc.integer({ min: 0, max: 8 }),
    floatDtype, fc.oneof({ weight: 4, arbitrary: floatDtype }, { weight: 1, arbitrary: fc.constantFrom<DType>('i32', 'fp8e4m3') }),
    fc.oneof({ weight: 6, arbitrary: fc.constant(1e-6) }, { weight: 1, arbitrary: fc.constantFrom(0, -1, Number.NaN, Number.POSITIVE_INFINITY) }),
    fc.constantFrom('none', 'fresh', 'alias', 'wrong-shape', 'disposed-x', 'disposed-w'), fc.integer({ min: 0, max: 1 << 20 }),
    (rows, dim, pad, dtype, wDtype, eps, outKind, seed) => {
      cases++;
      const xh = Float32Array.from({ length: rows * (dim + pad) }, (_, i) => Math.sin(i * 0.37 + seed));
      const wh = Float32Array.from({ length: dim }, (_, i) => 1 + Math.cos(i + seed) / 4);
      const wide = DeviceTensor.fromArray(xh, [rows, dim + pad], dtype);
      const x = wide.slice(1, pad, dim + pad); // row stride dim + pad, offset pad
      const w = DeviceTensor.fromArray(wh, [dim], wDtype);
      const out = outKind === 'fresh' ? DeviceTensor.empty([rows, dim], dtype).fill(Number.NaN)
        : outKind === 'alias' ? x : outKind === 'wrong-shape' ? DeviceTensor.empty([rows + 1, dim], dtype) : undefined;
      if (outKind === 'disposed-x') wide.dispose();
      if (outKind === 'disposed-w') w.dispose();
      try {
        let y: DeviceTensor;
        try {
          y = rmsNorm(x, w, eps, out ? { out } : {});
        } catch (err) {
          expectTyped(err, ['rmsNorm'], `rmsNorm rows ${rows} dim ${dim} ${dtype}/${wDtype} eps ${eps} out ${outKind}`);
          count('rmsNorm', 'refused');
          return;
        }
        const xr = roundTo(Float32Array.from(gather(xh, [rows, dim], [dim + pad, 1], pad)), dtype as 'bf16');
        const want = reference.rmsNorm(xr, rows, dim, roundTo(wh, wDtype as 'bf16'), eps);
        const got = y.toFloat32Sync();
        const err = relErr(got, want);
        if (!(err <= tol(dtype)) && want.length > 0) throw new Error(`rmsNorm rows ${rows} dim ${dim} ${dtype}/${wDtype} out ${outKind}: rel err ${err}`);
        count('rmsNorm', 'ok');
        if (y !== out && y !== x) y.dispose();
      } finally {
        for (const d of [wide, w, out]) d?.dispose();
      }
    }), params());
  contextAlive();
  t.equal(used(), start, 'no device memory left behind');
});

t.test('linear: random sizes, dtypes, strided inputs and outputs', { skip: gpuSkip, timeout: 300_000 }, async (t) => {
  const start = used();
  fc.assert(fc.property(
    fc.integer({ min: 0, max: 12 }),
    fc.oneof({ weight: 4, arbitrary: fc.integer({ min: 1, max: 40 }).map((k) => 8 * k) }, { weight: 1, arbitrary: fc.integer({ min: 1, max: 70 }) }),
    fc.oneof({ weight: 4, arbitrary: fc.integer({ min: 1, max: 12 }).map((n) => 8 * n) }, { weight: 1, arbitrary: fc.integer({ min: 1, max: 30 }) }),
    fc.constantFrom<DType>('bf16', 'f16'), fc.constantFrom<MatmulOutputDType>('bf16', 'f16', 'f32'),
    fc.constantFrom('none', 'none', 'fresh', 'fresh', 'alias-x', 'strided', 'disposed'),
    fc.integer({ min: 0, max: 1 << 20 }),
    (T, K, N, dtype, outDtype, outKind, seed) => {
      cases++;
      const xh = Float32Array.from({ length: T * K }, (_, i) => Math.sin(i * 0.61 + seed));
      const wh = Float32Array.from({ length: N * K }, (_, i) => Math.cos(i * 0.23 + seed) / Math.sqrt(K));
      const x = DeviceTensor.fromArray(xh, [T, K], dtype);
      const w = DeviceTensor.fromArray(wh, [N, K], dtype);
      const wideOut = outKind === 'strided' ? DeviceTensor.empty([T, N + 8], outDtype) : undefined;
      const out = outKind === 'fresh' ? DeviceTensor.empty([T, N], outDtype) : outKind === 'alias-x' ? x : wideOut?.slice(1, 8, N + 8);
      if (outKind === 'disposed') w.dispose();
      try {
        let y: DeviceTensor;
        try {
          y = linear(x, w, { outDtype, ...(out ? { out } : {}) });
        } catch (err) {
          expectTyped(err, ['linear'], `linear T${T} K${K} N${N} ${dtype}->${outDtype} out ${outKind}`);
          count('linear', 'refused');
          return;
        }
        const want = reference.linear(roundTo(xh, dtype as 'bf16'), T, K, roundTo(wh, dtype as 'bf16'), N);
        const err = relErr(y.toFloat32Sync(), want);
        if (!(err <= (outDtype === 'f32' ? 1e-5 : 2e-2)) && want.length > 0) throw new Error(`linear T${T} K${K} N${N} ${dtype}->${outDtype} out ${outKind}: rel err ${err}`);
        count('linear', 'ok');
        if (y !== out) y.dispose();
      } finally {
        for (const d of [x, w, out, wideOut]) d?.dispose();
      }
    }), params());
  contextAlive();
  t.equal(used(), start, 'no device memory left behind');
});

// Positions: in range, negative, at and past maxPositions, huge; as i32 or as a wrong dtype.
t.test('rope: random index tensors; with checkIndices false bad rows are never touched', { skip: gpuSkip, timeout: 300_000 }, async (t) => {
  const start = used();
  const maxPos = 64;
  const table = RopeTable.create({ rotaryDim: 64, ropeTheta: 10000, scaling: null }, maxPos);
  const refTable = reference.ropeTable({ qkRopeHeadDim: 64, ropeTheta: 10000, ropeScaling: null }, maxPos);
  const position = fc.oneof(
    { weight: 6, arbitrary: fc.integer({ min: 0, max: maxPos - 1 }) },
    { weight: 1, arbitrary: fc.constantFrom(-1, -(2 ** 31), maxPos, maxPos + 1, 2 ** 31 - 1, 2 ** 24) },
  );
  fc.assert(fc.property(
    fc.integer({ min: 0, max: 12 }).chain((T) => fc.tuple(fc.constant(T), fc.array(position, { minLength: T, maxLength: T }))),
    fc.integer({ min: 1, max: 3 }), fc.constantFrom<DType>('bf16', 'f32'), fc.constantFrom<DType>('i32', 'i32', 'i32', 'f32', 'u8'),
    fc.boolean(), fc.constantFrom<'interleaved' | 'neox'>('interleaved', 'neox'), fc.integer({ min: 0, max: 1 << 20 }),
    ([T, pos], H, dtype, posDtype, checkIndices, layout, seed) => {
      cases++;
      const xh = Float32Array.from({ length: T * H * 64 }, (_, i) => Math.sin(i * 0.13 + seed));
      const x = DeviceTensor.fromArray(xh, [T, H, 64], dtype);
      const p = posDtype === 'i32' ? DeviceTensor.fromArray(Int32Array.from(pos), [T], 'i32') : DeviceTensor.fromArray(Float32Array.from(pos, (v) => Math.abs(v) % 256), [T], posDtype);
      try {
        try {
          rope(x, p, table, { checkIndices, layout });
        } catch (err) {
          expectTyped(err, ['rope'], `rope T${T} H${H} ${dtype} positions ${posDtype} [${pos.join(',')}] check ${checkIndices}`);
          if (posDtype === 'i32' && !checkIndices) throw new Error(`rope with checkIndices false refused [${pos.join(',')}]: ${(err as Error).message}`);
          count('rope', 'refused');
          return;
        }
        if (posDtype !== 'i32') throw new Error(`rope accepted ${posDtype} positions`);
        const bad = pos.some((v) => v < 0 || v >= maxPos);
        if (bad && checkIndices) throw new Error(`rope accepted out-of-range positions [${pos.join(',')}] with checkIndices`);
        const want = roundTo(xh, dtype as 'bf16');
        const before = Float64Array.from(want);
        for (let r = 0; r < T; r++) {
          if (pos[r]! < 0 || pos[r]! >= maxPos) continue; // skipped by the kernel: left as it was
          reference.applyRope(want.subarray(r * H * 64), H, 64, 0, 64, new Array<number>(H).fill(pos[r]!), refTable, layout);
        }
        const got = x.toFloat32Sync();
        for (let r = 0; r < T; r++) {
          if (pos[r]! >= 0 && pos[r]! < maxPos) continue;
          for (let i = r * H * 64; i < (r + 1) * H * 64; i++) {
            if (got[i] !== before[i]) throw new Error(`rope wrote row ${r} whose position ${pos[r]} is out of range`);
          }
        }
        const err = relErr(got, want);
        if (!(err <= tol(dtype)) && T > 0) throw new Error(`rope T${T} H${H} ${dtype} ${layout}: rel err ${err}`);
        count(bad ? 'rope (bad indices skipped)' : 'rope', 'ok');
      } finally {
        x.dispose();
        p.dispose();
      }
      contextAlive();
    }), params());
  table.dispose();
  contextAlive();
  t.equal(used(), start, 'no device memory left behind');
});

t.test('fuzz cases run', async (t) => {
  t.comment(`fuzz: ${cases} cases, seed ${SEED}, ${RUNS} runs per property (DeviceTensor ×4)`);
  for (const [prop, n] of Object.entries(tally)) t.comment(`  ${prop}: ${n.ok} checked against the reference, ${n.refused} refused with a typed error`);
  t.pass(`${cases} cases, 0 crashes`);
});


// Reliability (issue 16): the "no keys" LSE convention across ops. Prefill writes lse = −inf for a
// query without keys; decode and sparse write +inf with out = 0. mergeAttnStates treats either
// infinity as an empty side (weight 0, its output never read), so partials of any op merge
// correctly; before, a +inf side got weight 1 and swallowed the real partial. Checked here: the
// kernel against its float64 twin (reference.mergeAttnStates) on rows mixing finite,
// −inf and +inf LSEs (all-empty rows included, empty sides' outputs poisoned with NaN), and decode
// split over two key ranges (one of them empty) merging to decode over all the keys.
import t from 'tap';
import { DecodeWorkspace, DeviceTensor, cuda, decode, mergeAttnStates, reference } from '../lib/index.js';
import { gpuSkip, randn, relError, roundTo } from './helpers/gpu.js';

const used = (): number => {
  const d = cuda.deviceInfo(0);
  return d.totalMemory - d.freeMemory;
};

t.test('mergeAttnStates: ±inf LSE is an empty side, kernel = float64 reference (bf16 / f16)', { skip: gpuSkip }, async (t) => {
  const start = used();
  const kinds = [0.7, -2.5, 3, Number.NEGATIVE_INFINITY, Number.POSITIVE_INFINITY] as const;
  const R = kinds.length * kinds.length, H = 2, D = 128;
  for (const dtype of ['bf16', 'f16'] as const) {
    // Every pair (lse, partLse) of the kinds, per head; head 1 shifted by 40 (large LSEs).
    const l1 = new Float64Array(R * H), l2 = new Float64Array(R * H);
    for (let r = 0; r < R; r++) for (let h = 0; h < H; h++) {
      l1[r * H + h] = kinds[Math.floor(r / kinds.length)]! + (h ? 40 : 0);
      l2[r * H + h] = kinds[r % kinds.length]! + (h ? 40 : 0);
    }
    const o1 = Float32Array.from(randn(R * H * D, 1));
    const o2 = Float32Array.from(randn(R * H * D, 2));
    // An empty side's output is garbage the merge must not read; decode's +inf side is 0.
    for (let i = 0; i < R * H; i++) {
      if (l1[i] === Number.NEGATIVE_INFINITY) o1.fill(Number.NaN, i * D, (i + 1) * D);
      if (l2[i] === Number.POSITIVE_INFINITY) o2.fill(0, i * D, (i + 1) * D);
      if (l2[i] === Number.NEGATIVE_INFINITY) o2.fill(Number.NaN, i * D, (i + 1) * D);
    }
    const want = { out: roundTo(o1, dtype), lse: Float64Array.from(l1) };
    reference.mergeAttnStates({ out: want.out, lse: want.lse, part: roundTo(o2, dtype), partLse: l2, dim: D });
    const out = DeviceTensor.fromArray(o1, [R, H, D], dtype);
    const part = DeviceTensor.fromArray(o2, [R, H, D], dtype);
    const lse = DeviceTensor.fromArray(Float32Array.from(l1), [R, H], 'f32');
    const plse = DeviceTensor.fromArray(Float32Array.from(l2), [R, H], 'f32');
    try {
      mergeAttnStates({ out, lse, part, partLse: plse });
      const gotO = out.toFloat32Sync(), gotL = lse.toFloat32Sync();
      t.notOk(gotO.some(Number.isNaN), `${dtype}: no NaN (no empty side was read)`);
      t.ok(relError(gotO, want.out) < 1e-2, `${dtype}: out = reference`);
      let bad = 0;
      for (let i = 0; i < R * H; i++) {
        const w = want.lse[i]!, g = gotL[i]!;
        if (Number.isFinite(w) ? !(Math.abs(g - w) <= 1e-5 * (1 + Math.abs(w))) : g !== w) bad++;
      }
      t.equal(bad, 0, `${dtype}: lse = reference`);
      // The rule, stated: both empty → out 0, lse −inf; one empty → the other side as it was.
      for (let r = 0; r < R; r++) {
        const a = kinds[Math.floor(r / kinds.length)]!, b = kinds[r % kinds.length]!;
        const i = r * H;
        if (!Number.isFinite(a) && !Number.isFinite(b)) {
          t.equal(gotL[i], Number.NEGATIVE_INFINITY, `${dtype} (${a}, ${b}): lse −inf`);
          t.ok(gotO.subarray(i * D, (i + 1) * D).every((v) => v === 0), `${dtype} (${a}, ${b}): out 0`);
        } else if (!Number.isFinite(b)) {
          t.equal(gotL[i], Math.fround(a), `${dtype} (${a}, ${b}): lse of the finite side`);
        } else if (!Number.isFinite(a)) {
          t.equal(gotL[i], Math.fround(b), `${dtype} (${a}, ${b}): lse of the finite side`);
        }
      }
    } finally {
      for (const x of [out, part, lse, plse]) x.dispose();
    }
  }
  // NaN is not "empty": it propagates instead of being hidden.
  const want = { out: new Float64Array(4).fill(1), lse: Float64Array.of(Number.NaN) };
  reference.mergeAttnStates({ out: want.out, lse: want.lse, part: new Float64Array(4), partLse: [1], dim: 4 });
  t.ok(Number.isNaN(want.lse[0]) && want.out.every(Number.isNaN), 'reference: a NaN LSE propagates');
  t.equal(used(), start, 'no device memory left behind');
});

t.test('decode split over two key ranges (one may be empty: lse +inf) merges to decode over all keys', { skip: gpuSkip, timeout: 120_000 }, async (t) => {
  const start = used();
  const H = 2, D = 576, pageSize = 16, L = 40, numPages = 4;
  const q = DeviceTensor.fromArray(randn(H * D, 3, 0.5), [1, H, D], 'bf16');
  const cache = DeviceTensor.fromArray(randn(numPages * pageSize * D, 4), [numPages, pageSize, D], 'bf16');
  const ws = new DecodeWorkspace({ maxBatch: 1, maxHeads: H, maxQSeqLen: 1, maxParts: 4 });
  const made: DeviceTensor[] = [q, cache];
  const run = (firstPage: number, len: number): { out: DeviceTensor; lse: DeviceTensor } => {
    const blockTable = DeviceTensor.fromArray(Int32Array.from({ length: numPages }, (_, i) => Math.min(numPages - 1, firstPage + i)), [1, numPages], 'i32');
    const seqLens = DeviceTensor.fromArray(Int32Array.of(len), [1], 'i32');
    const r = decode({ q, cache, blockTable, seqLens, scale: 0.1, causal: true, workspace: ws });
    made.push(blockTable, seqLens, r.out, r.lse);
    return r;
  };
  try {
    const all = run(0, L);
    const wantO = all.out.toFloat32Sync(), wantL = all.lse.toFloat32Sync();
    for (const split of [0, 16, 32]) {
      const a = run(0, split), b = run(split / pageSize, L - split);
      if (split === 0) t.ok(a.lse.toFloat32Sync().every((v) => v === Number.POSITIVE_INFINITY), 'an empty decode partial has lse +inf');
      mergeAttnStates({ out: b.out, lse: b.lse, part: a.out, partLse: a.lse });
      t.ok(relError(b.out.toFloat32Sync(), wantO) < 1e-2, `split at ${split}: merged out = decode over all ${L} keys`);
      t.ok(relError(b.lse.toFloat32Sync(), wantL) < 1e-5, `split at ${split}: merged lse = decode's`);
    }
    // Both partials empty: out 0, lse −inf (the merge's "no keys yet").
    const e1 = run(0, 0), e2 = run(0, 0);
    mergeAttnStates({ out: e1.out, lse: e1.lse, part: e2.out, partLse: e2.lse });
    t.ok(e1.out.toFloat32Sync().every((v) => v === 0) && e1.lse.toFloat32Sync().every((v) => v === Number.NEGATIVE_INFINITY), 'two empty partials: out 0, lse −inf');
  } finally {
    for (const x of made) x.dispose();
    ws.dispose();
  }
  t.equal(used(), start, 'no device memory left behind');
});

// Found by the issue-16 review: for a query that sees no key (causal, more queries than keys)
// the float64 prefill reference wrote lse +inf while the prefill kernel's "no keys" is −inf (its
// chunks merge through mergeAttnStates, whose "both sides empty" result is −inf; the kernel
// itself refuses qSeqLens > kvSeqLens). The reference writes −inf now, out 0, like a merge of
// two empty partials.
t.test('prefill reference with a query that sees no key: lse −inf and out 0, as the kernel and the merge', { skip: gpuSkip }, async (t) => {
  const H = 2, qLens = [3, 2], kLens = [1, 4]; // request 0: queries 0 and 1 see nothing
  const Tq = 5, Tk = 5;
  const q = roundTo(randn(Tq * H * 192, 1), 'bf16');
  const k = roundTo(randn(Tk * H * 192, 2), 'bf16');
  const v = roundTo(randn(Tk * H * 128, 4), 'bf16');
  const ref = reference.mhaVarlen({ q, k, v, qSeqLens: qLens, kvSeqLens: kLens, numHeads: H, headDimQk: 192, headDimV: 128, scale: 0.1, causal: true });
  t.same(Array.from(ref.lse.subarray(0, 2 * H)), Array(2 * H).fill(Number.NEGATIVE_INFINITY), 'lse −inf');
  t.ok(ref.out.subarray(0, 2 * H * 128).every((x) => x === 0), 'out 0');
  t.ok(ref.lse.subarray(2 * H).every(Number.isFinite), 'the rows with keys are finite');
  const merged = { out: new Float64Array(128).fill(Number.NaN), lse: Float64Array.of(Number.NEGATIVE_INFINITY) };
  reference.mergeAttnStates({ ...merged, part: new Float64Array(128), partLse: [Number.NEGATIVE_INFINITY], dim: 128 });
  t.same(Array.from(merged.lse), [ref.lse[0]], 'the same marker as two merged empty partials');
  await Promise.resolve();
});

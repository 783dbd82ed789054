import t from 'tap';
import { MLA_PRESETS } from '../../lib/config.js';
import { gatherPagedCache, pagedSlot } from '../../lib/reference/cache.js';
import { linear } from '../../lib/reference/linear.js';
import { applyRope, ropeTable } from '../../lib/reference/rope.js';
import { maxAbsDiff, mulberry32, randn, randnArray, relError } from '../../lib/reference/util.js';
import * as reference from '../../lib/reference/index.js';

t.test('rmsnorm', async (t) => {
  const rng = mulberry32(1);
  const rows = 3;
  const dim = 7;
  const x = randnArray(rows * dim, rng);
  const w = randnArray(dim, rng);
  const y = reference.rmsNorm(x, rows, dim, w, 1e-6);
  for (let r = 0; r < rows; r++) {
    const row = x.subarray(r * dim, (r + 1) * dim);
    const rms = Math.sqrt(row.reduce((a, v) => a + v * v, 0) / dim + 1e-6);
    const want = row.map((v, i) => (v / rms) * w[i]!);
    t.ok(maxAbsDiff(y.subarray(r * dim, (r + 1) * dim), want) < 1e-15, `row ${r}`);
  }
  // Strided in and out: normalise the first 4 of 6 columns in place.
  const z = randnArray(2 * 6, rng);
  const orig = Float64Array.from(z);
  reference.rmsNorm(z, 2, 4, w.subarray(0, 4), 0.5, { inStride: 6, outStride: 6, out: z });
  t.same([...z.subarray(4, 6)], [...orig.subarray(4, 6)], 'columns past dim untouched');
  const first = orig.subarray(0, 4);
  const rms = Math.sqrt(first.reduce((a, v) => a + v * v, 0) / 4 + 0.5);
  t.ok(Math.abs(z[0]! - (orig[0]! / rms) * w[0]!) < 1e-15, 'eps enters inside the square root');
  t.throws(() => reference.rmsNorm(x, rows, dim, w.subarray(1), 1e-6), { code: 'ERR_SHAPE', message: /rmsnorm: `weight`/ });
  t.throws(() => reference.rmsNorm(x, rows + 1, dim, w, 1e-6), { code: 'ERR_SHAPE', message: /rmsnorm: `x`/ });
});

t.test('linear: y = x·Wᵀ with W stored [out, in]', async (t) => {
  const rng = mulberry32(2);
  for (const [rows, K, N] of [[1, 1, 1], [3, 7, 5], [4, 13, 2], [2, 64, 9]] as const) {
    const x = randnArray(rows * K, rng);
    const w = randnArray(N * K, rng);
    const y = linear(x, rows, K, w, N);
    const want = new Float64Array(rows * N);
    for (let r = 0; r < rows; r++) for (let n = 0; n < N; n++) for (let k = 0; k < K; k++) want[r * N + n]! += x[r * K + k]! * w[n * K + k]!;
    t.ok(relError(y, want) < 1e-14, `[${rows}, ${K}] × [${N}, ${K}]ᵀ`);
  }
  t.throws(() => linear(new Float64Array(6), 2, 3, new Float64Array(5), 2), { code: 'ERR_SHAPE', message: /linear: `weight`/ });
});

t.test('reference.appendLatent writes RMSNorm(latent) and RoPE(key) at each slot', async (t) => {
  const rng = mulberry32(3);
  const cfg = MLA_PRESETS['deepseek-v3'];
  const C = 32;
  const R = 64;
  const D = C + R;
  const pageSize = 3;
  const numPages = 4;
  const table = ropeTable(cfg, 100);
  const T = 5;
  const kvDown = randnArray(T * D, rng);
  const normWeight = randnArray(C, rng).map((v) => 1 + 0.1 * v);
  const positions = [10, 11, 12, 99, 0];
  const slots = [7, 0, -1, 11, 5];
  const cache = randnArray(numPages * pageSize * D, rng);
  const before = Float64Array.from(cache);
  reference.appendLatent({ kvDown, normWeight, eps: 1e-6, positions, slotMapping: slots, cache, pageSize, ropeTable: table, layout: 'interleaved' });
  for (let i = 0; i < T; i++) {
    const s = slots[i]!;
    if (s < 0) continue;
    const lat = reference.rmsNorm(kvDown.subarray(i * D, i * D + C), 1, C, normWeight, 1e-6);
    const key = kvDown.slice(i * D + C, (i + 1) * D);
    applyRope(key, 1, R, 0, R, [positions[i]!], table, 'interleaved');
    t.same([...cache.subarray(s * D, s * D + C)], [...lat], `token ${i} latent at slot ${s}`);
    t.same([...cache.subarray(s * D + C, (s + 1) * D)], [...key], `token ${i} rotated key at slot ${s}`);
  }
  let othersKept = true;
  for (let s = 0; s < numPages * pageSize; s++) {
    if (slots.includes(s)) continue;
    for (let d = 0; d < D; d++) othersKept &&= cache[s * D + d] === before[s * D + d];
  }
  t.ok(othersKept, 'other slots (and the skipped −1 token) leave the cache alone');
  t.throws(
    () => reference.appendLatent({ kvDown, normWeight, eps: 1e-6, positions, slotMapping: [0, 0, 0, 12, 0], cache, pageSize, ropeTable: table, layout: 'neox' }),
    { code: 'ERR_RANGE', message: /`slotMapping\[3\]` = 12 is outside the cache's slots \[0, 12\)/ },
  );
  t.throws(
    () => reference.appendLatent({ kvDown, normWeight, eps: 1e-6, positions, slotMapping: slots, cache: cache.subarray(1), pageSize, ropeTable: table, layout: 'neox' }),
    { code: 'ERR_SHAPE', message: /`cache` length .* multiple of pageSize/ },
  );
});

t.test('gatherPagedCache follows the block table', async (t) => {
  const D = 2;
  const pageSize = 2;
  // 3 pages; request 0 uses pages [2, 0], request 1 page [1].
  const cache = Float64Array.from({ length: 3 * pageSize * D }, (_, i) => i);
  const view = { cache, pageSize, dim: D, blockTable: Int32Array.from([2, 0, 1, -1]), maxPages: 2 };
  t.equal(pagedSlot(view, 0, 2), 0);
  t.equal(pagedSlot(view, 1, 1), 3);
  t.same([...gatherPagedCache(view, [3, 1])], [8, 9, 10, 11, 0, 1, 4, 5]);
  t.throws(() => gatherPagedCache(view, [5, 0]), { code: 'ERR_RANGE', message: /`blockTable`.*logical page 2/ });
  t.throws(() => gatherPagedCache(view, [0, 3]), { code: 'ERR_RANGE', message: /invalid page -1/ });
});

t.test('util: relError, seeded RNG', async (t) => {
  t.equal(relError([3, 4], [0, 0]), 5, 'reference zero: absolute norm');
  t.equal(relError([1, 1], [1, 1]), 0);
  t.ok(Math.abs(relError([1.1, 2], [1, 2]) - 0.1 / Math.sqrt(5)) < 1e-15);
  t.throws(() => relError([1], [1, 2]), /lengths differ/);
  const a = mulberry32(123);
  const b = mulberry32(123);
  const seqA = Array.from({ length: 5 }, () => a());
  t.same(seqA, Array.from({ length: 5 }, () => b()), 'same seed, same stream');
  t.ok(seqA.every((v) => v >= 0 && v < 1));
  const rng = mulberry32(7);
  const n = 20000;
  let s = 0;
  let s2 = 0;
  for (let i = 0; i < n; i++) {
    const v = randn(rng);
    s += v;
    s2 += v * v;
  }
  t.ok(Math.abs(s / n) < 0.03 && Math.abs(s2 / n - 1) < 0.05, `randn mean ${(s / n).toFixed(3)}, var ${(s2 / n).toFixed(3)}`);
});

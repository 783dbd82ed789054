// prefill: validation and chunk planning (CPU, always run) and the kernels against the float64
// naive-prefill reference (GPU only, skipped with the reason otherwise).
import t from 'tap';
import type { Test } from 'tap';
import { DeviceTensor } from '../lib/index.js';
import type { TensorMeta } from '../lib/index.js';
import {
  mergeAttnStates,
  prefill,
  prefillAttention,
  PrefillWorkspace,
  preparePrefillWeights,
  validateMergeAttnStatesArgs,
  validatePrefillArgs,
  validatePrefillAttentionArgs,
  checkPrefillIndices,
} from '../lib/ops/prefill.js';
import type { PrefillArgsMeta, PrefillDims } from '../lib/ops/prefill.js';
import { gpuSkip, poison, randn, relError, roundTo } from './helpers/gpu.js';
import { meta, throwsNaming as expectMla } from './helpers/validation.js';
import * as reference from '../lib/reference/index.js';

// ---- helpers ----------------------------------------------------------------------------------


const H = 4;
function baseArgs(over: Partial<PrefillArgsMeta> = {}): PrefillArgsMeta {
  return {
    q: meta([10, H, 192], 'bf16'),
    cache: meta([8, 16, 576], 'bf16'),
    blockTable: meta([2, 4], 'i32'),
    seqLens: [12, 20],
    qSeqLens: [4, 6],
    weights: { kvBProj: meta([H * 256, 512], 'bf16') },
    scale: 0.1,
    ...over,
  };
}

// ---- validation (no GPU) ------------------------------------------------------------------------

t.test('validatePrefillArgs accepts good arguments and reports the sizes', async (t) => {
  const d = validatePrefillArgs(baseArgs());
  t.match(d, { batch: 2, heads: H, tokens: 10, numPages: 8, pageSize: 16, maxPages: 4, dtype: 'bf16', fused: true, chunkTokens: 8192 });
  const s = validatePrefillArgs(baseArgs({ weights: { wUK: meta([H * 128, 512], 'bf16'), wUV: meta([H * 128, 512], 'bf16') }, chunkTokens: 100 }));
  t.equal(s.fused, false);
  t.equal(s.chunkTokens, 100);
  t.doesNotThrow(() => validatePrefillArgs(baseArgs({ q: meta([10, H, 192], 'f16'), cache: meta([8, 16, 576], 'f16'), weights: { kvBProj: meta([H * 256, 512], 'f16') } })));
  t.doesNotThrow(() => validatePrefillArgs(baseArgs({ seqLens: meta([2], 'i32'), qSeqLens: Int32Array.of(4, 6) })));
});

t.test('validatePrefillArgs rejects bad arguments, naming them', async (t) => {
  expectMla(t, () => validatePrefillArgs(baseArgs({ q: meta([10, H, 192], 'f32') })), 'ERR_DTYPE', 'q');
  expectMla(t, () => validatePrefillArgs(baseArgs({ q: meta([10, H, 576], 'bf16') })), 'ERR_SHAPE', 'q');
  expectMla(t, () => validatePrefillArgs(baseArgs({ q: meta([10, 129, 192], 'bf16') })), 'ERR_SHAPE', 'q');
  expectMla(t, () => validatePrefillArgs(baseArgs({ q: meta([10, H, 192], 'bf16', undefined, { disposed: true }) })), 'ERR_DISPOSED', 'q');
  expectMla(t, () => validatePrefillArgs(baseArgs({ q: meta([10, H, 192], 'bf16', [H * 196, 196, 1]) })), 'ERR_SHAPE', 'q');
  expectMla(t, () => validatePrefillArgs(baseArgs({ q: meta([10, H, 192], 'bf16', [H * 192, 1, H]) })), 'ERR_SHAPE', 'q');
  // 16-byte cp.async sources and 4-byte pair stores: element offsets must be aligned.
  expectMla(t, () => validatePrefillArgs(baseArgs({ q: { ...meta([10, H, 192], 'bf16'), offset: 4 } as TensorMeta })), 'ERR_SHAPE', 'q');
  expectMla(t, () => validatePrefillArgs(baseArgs({ out: { ...meta([10, H, 128], 'bf16'), offset: 3 } as TensorMeta })), 'ERR_SHAPE', 'out');
  t.doesNotThrow(() => validatePrefillArgs(baseArgs({ q: { ...meta([10, H, 192], 'bf16'), offset: 8 * H * 192 } as TensorMeta })));
  expectMla(t, () => validatePrefillArgs(baseArgs({ cache: meta([8, 16, 512], 'bf16') })), 'ERR_SHAPE', 'cache');
  expectMla(t, () => validatePrefillArgs(baseArgs({ cache: meta([8, 16, 576], 'f16') })), 'ERR_DTYPE', 'cache');
  expectMla(t, () => validatePrefillArgs(baseArgs({ blockTable: meta([2, 4], 'f32') })), 'ERR_DTYPE', 'blockTable');
  expectMla(t, () => validatePrefillArgs(baseArgs({ blockTable: meta([8], 'i32') })), 'ERR_SHAPE', 'blockTable');
  expectMla(t, () => validatePrefillArgs(baseArgs({ seqLens: [12] })), 'ERR_SHAPE', 'seqLens');
  expectMla(t, () => validatePrefillArgs(baseArgs({ qSeqLens: meta([3], 'i32') })), 'ERR_SHAPE', 'qSeqLens');
  expectMla(t, () => validatePrefillArgs(baseArgs({ qSeqLens: meta([2], 'f32') })), 'ERR_DTYPE', 'qSeqLens');
  expectMla(t, () => validatePrefillArgs(baseArgs({ weights: { kvBProj: meta([H * 128, 512], 'bf16') } })), 'ERR_SHAPE', 'weights.kvBProj');
  expectMla(t, () => validatePrefillArgs(baseArgs({ weights: { kvBProj: meta([H * 256, 512], 'f16') } })), 'ERR_DTYPE', 'weights.kvBProj');
  expectMla(t, () => validatePrefillArgs(baseArgs({ weights: { wUK: meta([H * 128, 512], 'bf16'), wUV: meta([H * 128, 576], 'bf16') } })), 'ERR_SHAPE', 'weights.wUV');
  expectMla(t, () => validatePrefillArgs(baseArgs({ weights: { wUK: meta([H * 256, 512], 'bf16'), wUV: meta([H * 128, 512], 'bf16') } })), 'ERR_SHAPE', 'weights.wUK');
  expectMla(t, () => validatePrefillArgs(baseArgs({ scale: 0 })), 'ERR_RANGE', 'scale');
  expectMla(t, () => validatePrefillArgs(baseArgs({ scale: Number.NaN })), 'ERR_ARGUMENT', 'scale');
  expectMla(t, () => validatePrefillArgs(baseArgs({ out: meta([10, H, 192], 'bf16') })), 'ERR_SHAPE', 'out');
  expectMla(t, () => validatePrefillArgs(baseArgs({ out: meta([10, H, 128], 'f16') })), 'ERR_DTYPE', 'out');
  expectMla(t, () => validatePrefillArgs(baseArgs({ lse: meta([10, H], 'bf16') })), 'ERR_DTYPE', 'lse');
  expectMla(t, () => validatePrefillArgs(baseArgs({ lse: meta([H, 10], 'f32') })), 'ERR_SHAPE', 'lse');
  expectMla(t, () => validatePrefillArgs(baseArgs({ blockTableHost: new Int32Array(7) })), 'ERR_SHAPE', 'blockTableHost');
  expectMla(t, () => validatePrefillArgs(baseArgs({ chunkTokens: 0 })), 'ERR_RANGE', 'chunkTokens');
  expectMla(t, () => validatePrefillArgs(baseArgs({ chunkTokens: 1.5 })), 'ERR_ARGUMENT', 'chunkTokens');
  // Both weight forms at once is ambiguous.
  t.throws(() => validatePrefillArgs(baseArgs({ weights: { kvBProj: meta([H * 256, 512], 'bf16'), wUK: meta([H * 128, 512], 'bf16'), wUV: meta([H * 128, 512], 'bf16') } as never })), { code: 'ERR_ARGUMENT' });
});

function dimsOf(over: Partial<PrefillDims> = {}): PrefillDims {
  return { batch: 2, heads: H, tokens: 10, numPages: 8, pageSize: 16, maxPages: 4, dtype: 'bf16', fused: true, chunkTokens: 8192, scale: 0.1, ...over };
}
const table = Int32Array.from([0, 1, 2, 3, 4, 5, 6, 7]);

t.test('checkPrefillIndices checks lengths and pages (ERR_RANGE naming the argument)', async (t) => {
  const pl = checkPrefillIndices(dimsOf(), { blockTable: table, seqLens: [12, 20], qSeqLens: [4, 6] });
  t.same(Array.from(pl.plan), [0, 4, 12, 0, 4, 6, 20, 12]);
  t.equal(pl.totalKv, 32);
  expectMla(t, () => checkPrefillIndices(dimsOf(), { blockTable: table, seqLens: [3, 20], qSeqLens: [4, 6] }), 'ERR_RANGE', 'qSeqLens');
  expectMla(t, () => checkPrefillIndices(dimsOf(), { blockTable: table, seqLens: [12, 65], qSeqLens: [4, 6] }), 'ERR_RANGE', 'seqLens');
  expectMla(t, () => checkPrefillIndices(dimsOf(), { blockTable: table, seqLens: [-1, 20], qSeqLens: [0, 10] }), 'ERR_RANGE', 'seqLens');
  expectMla(t, () => checkPrefillIndices(dimsOf(), { blockTable: table, seqLens: [12, 20], qSeqLens: [4, 5] }), 'ERR_SHAPE', 'q');
  const bad = Int32Array.from([0, 1, 2, 3, 4, 8, 6, 7]); // request 1, logical page 1 -> page 8 of 8
  expectMla(t, () => checkPrefillIndices(dimsOf(), { blockTable: bad, seqLens: [12, 20], qSeqLens: [4, 6] }), 'ERR_RANGE', 'blockTable');
  // Pages past a request's length are never read, so garbage there is fine.
  const tail = Int32Array.from([0, -1, -1, -1, 4, 5, 99, -7]);
  t.doesNotThrow(() => checkPrefillIndices(dimsOf(), { blockTable: tail, seqLens: [12, 20], qSeqLens: [4, 6] }));
  // A request without queries needs no keys (its pages are not checked or gathered).
  const none = checkPrefillIndices(dimsOf({ tokens: 6 }), { blockTable: Int32Array.from([-5, -5, -5, -5, 4, 5, 6, 7]), seqLens: [12, 20], qSeqLens: [0, 6] });
  t.same(Array.from(none.plan), [0, 0, 0, 0, 0, 6, 20, 0]);
});

t.test('chunk plan: every context row once, split requests flagged', async (t) => {
  const seq = [12, 20, 0, 33, 5];
  const qs = [4, 6, 0, 33, 1];
  const dims = dimsOf({ batch: 5, tokens: 44, maxPages: 4, chunkTokens: 16 });
  const bt = new Int32Array(20).fill(0);
  const pl = checkPrefillIndices(dims, { blockTable: bt, seqLens: seq, qSeqLens: qs });
  t.equal(pl.totalKv, 70);
  t.equal(pl.chunks.length, 5);
  t.equal(pl.maxChunkRows, 16);
  let covered = 0;
  for (const c of pl.chunks) {
    t.equal(c.g0, covered);
    covered = c.g1;
    const first = c.reqBegin;
    t.equal(c.split, pl.plan[first * 4 + 3]! < c.g0, `split flag of chunk at ${c.g0}`);
  }
  t.equal(covered, 70);
  t.equal(pl.maxSplitQLen, 33); // request 3 (33 queries, rows 32..64) spans three chunks
  t.match(pl.chunks[0], { g0: 0, g1: 16, reqBegin: 0, reqEnd: 2, split: false, maxQLen: 6 });
  t.match(pl.chunks[1], { g0: 16, g1: 32, reqBegin: 1, reqEnd: 2, split: true, maxQLen: 0 });
  t.match(pl.chunks[2], { g0: 32, g1: 48, reqBegin: 3, split: false, maxQLen: 33 });
  t.match(pl.chunks[4], { g0: 64, g1: 70, reqBegin: 3, reqEnd: 5, split: true, maxQLen: 1 });
});

// What the GPU computes, chunk by chunk, in float64: per chunk the causal attention of each
// request's queries over the chunk's keys, first chunk written, later ones merged by LSE. Must
// equal the one-shot reference, which checks the plan and the merge algebra without a GPU.
t.test('chunked attention + LSE merge equals the one-shot reference (float64 emulation)', async (t) => {
  const Hh = 2;
  const D = 8;
  const seq = [5, 40, 1, 70, 9];
  const qs = [5, 13, 1, 70, 2];
  const Tq = qs.reduce((a, b) => a + b, 0);
  const Tk = seq.reduce((a, b) => a + b, 0);
  const q = Float64Array.from(randn(Tq * Hh * D, 1));
  const k = Float64Array.from(randn(Tk * Hh * D, 2));
  const v = Float64Array.from(randn(Tk * Hh * D, 3));
  const ref = reference.mhaVarlen({ q, k, v, qSeqLens: qs, kvSeqLens: seq, numHeads: Hh, headDimQk: D, headDimV: D, scale: 0.3, causal: true });
  for (const chunkTokens of [1, 7, 16, 64, 1000]) {
    const dims = dimsOf({ batch: 5, tokens: Tq, maxPages: 100, numPages: 1, pageSize: 1, chunkTokens });
    const pl = checkPrefillIndices(dims, { blockTable: new Int32Array(500), seqLens: seq, qSeqLens: qs });
    const out = new Float64Array(Tq * Hh * D).fill(Number.NaN);
    const lse = new Float64Array(Tq * Hh).fill(Number.NaN);
    for (const c of pl.chunks) {
      for (let b = c.reqBegin; b < c.reqEnd; b++) {
        const [qStart, qLen, seqLen, kvStart] = Array.from(pl.plan.subarray(b * 4, b * 4 + 4)) as [number, number, number, number];
        const kLo = Math.max(0, c.g0 - kvStart);
        const kHi = Math.min(seqLen, c.g1 - kvStart);
        const merge = b === c.reqBegin && c.split;
        for (let j = 0; j < qLen; j++) {
          for (let h = 0; h < Hh; h++) {
            const row = (qStart + j) * Hh + h;
            let m = -Infinity;
            const s: number[] = [];
            const hiJ = Math.min(kHi, seqLen - qLen + j + 1);
            for (let p = kLo; p < hiJ; p++) {
              let dot = 0;
              for (let d = 0; d < D; d++) dot += q[row * D + d]! * k[((kvStart + p) * Hh + h) * D + d]!;
              s.push(dot * 0.3);
              m = Math.max(m, dot * 0.3);
            }
            const o = new Float64Array(D);
            let l = 0;
            s.forEach((x, i) => {
              const w = Math.exp(x - m);
              l += w;
              for (let d = 0; d < D; d++) o[d] += w * v[((kvStart + kLo + i) * Hh + h) * D + d]!;
            });
            const pl2 = l > 0 ? m + Math.log(l) : -Infinity;
            if (!merge) {
              for (let d = 0; d < D; d++) out[row * D + d] = l > 0 ? o[d]! / l : 0;
              lse[row] = pl2;
            } else {
              const l1 = lse[row]!;
              const mm = Math.max(l1, pl2);
              const w1 = mm === -Infinity ? 0 : Math.exp(l1 - mm);
              const w2 = mm === -Infinity ? 0 : Math.exp(pl2 - mm);
              for (let d = 0; d < D; d++) {
                const a = w1 > 0 ? out[row * D + d]! * w1 : 0;
                const bb = w2 > 0 ? (o[d]! / l) * w2 : 0;
                out[row * D + d] = (a + bb) / (w1 + w2);
              }
              lse[row] = mm + Math.log(w1 + w2);
            }
          }
        }
      }
    }
    t.ok(relError(out, ref.out) < 1e-12, `out, chunkTokens ${chunkTokens}: ${relError(out, ref.out)}`);
    t.ok(relError(lse, ref.lse) < 1e-12, `lse, chunkTokens ${chunkTokens}`);
  }
});

t.test('validatePrefillAttentionArgs / validateMergeAttnStatesArgs', async (t) => {
  const good = {
    q: meta([10, H, 192], 'f16'), kNope: meta([30, H, 128], 'f16'), kRope: meta([30, 64], 'f16'), v: meta([30, H, 128], 'f16'),
    qSeqLens: [4, 6], kvSeqLens: [10, 20], scale: 0.5,
  };
  t.match(validatePrefillAttentionArgs(good), { batch: 2, heads: H, tokens: 10, keys: 30 });
  expectMla(t, () => validatePrefillAttentionArgs({ ...good, kRope: meta([30, 128], 'f16') }), 'ERR_SHAPE', 'kRope');
  expectMla(t, () => validatePrefillAttentionArgs({ ...good, v: meta([30, H, 128], 'bf16') }), 'ERR_DTYPE', 'v');
  expectMla(t, () => validatePrefillAttentionArgs({ ...good, kNope: meta([30, H + 1, 128], 'f16') }), 'ERR_SHAPE', 'kNope');
  expectMla(t, () => validatePrefillAttentionArgs({ ...good, kvSeqLens: [10] }), 'ERR_SHAPE', 'kvSeqLens');
  const m = { out: meta([5, H, 128], 'bf16'), lse: meta([5, H], 'f32'), part: meta([5, H, 128], 'bf16'), partLse: meta([5, H], 'f32') };
  t.doesNotThrow(() => validateMergeAttnStatesArgs(m));
  expectMla(t, () => validateMergeAttnStatesArgs({ ...m, part: meta([5, H, 128], 'f16') }), 'ERR_DTYPE', 'part');
  expectMla(t, () => validateMergeAttnStatesArgs({ ...m, partLse: meta([5, H + 1], 'f32') }), 'ERR_SHAPE', 'partLse');
  expectMla(t, () => validateMergeAttnStatesArgs({ ...m, lse: meta([5, H], 'f16') }), 'ERR_DTYPE', 'lse');
});

// ---- GPU ------------------------------------------------------------------------------------------

interface Case {
  heads: number;
  /** [new tokens, cached prefix] per request */
  reqs: [number, number][];
  dtype: 'bf16' | 'f16';
  pageSize: number;
  chunkTokens?: number;
  split?: boolean;
}

// Builds a paged cache with shuffled pages, runs prefill and the float64 reference on the
// values the GPU sees (rounded to the dtype).
function runCase(t: Test, c: Case, seed: number, workspace?: PrefillWorkspace): void {
  const Hh = c.heads;
  const B = c.reqs.length;
  const qLens = c.reqs.map(([n]) => n);
  const seqLens = c.reqs.map(([n, p]) => n + p);
  const Tq = qLens.reduce((a, b) => a + b, 0);
  const Tk = seqLens.reduce((a, b) => a + b, 0);
  const maxPages = Math.max(1, ...seqLens.map((s) => Math.ceil(s / c.pageSize)));
  const numPages = B * maxPages + 3;
  // Random page permutation so logical order ≠ physical order.
  const perm = Array.from({ length: numPages }, (_, i) => i);
  let r = seed;
  for (let i = numPages - 1; i > 0; i--) {
    r = (r * 1103515245 + 12345) >>> 0;
    const j = r % (i + 1);
    [perm[i], perm[j]] = [perm[j]!, perm[i]!];
  }
  const blockTable = new Int32Array(B * maxPages);
  for (let i = 0; i < B * maxPages; i++) blockTable[i] = perm[i]!;
  const kvRows = roundTo(randn(Tk * 576, seed + 1), c.dtype);
  const cacheHost = new Float32Array(numPages * c.pageSize * 576).fill(Number.NaN); // unused rows poisoned
  let k0 = 0;
  for (let b = 0; b < B; b++) {
    for (let p = 0; p < seqLens[b]!; p++) {
      const page = blockTable[b * maxPages + Math.floor(p / c.pageSize)]!;
      const slot = page * c.pageSize + (p % c.pageSize);
      cacheHost.set(kvRows.subarray((k0 + p) * 576, (k0 + p + 1) * 576), slot * 576);
    }
    k0 += seqLens[b]!;
  }
  const q = roundTo(randn(Tq * Hh * 192, seed + 2), c.dtype);
  const w = roundTo(randn(Hh * 256 * 512, seed + 3, 1 / Math.sqrt(512)), c.dtype);
  const scale = 1 / Math.sqrt(192);
  const ref = reference.prefill({
    q, kv: kvRows, kvBProj: w, qSeqLens: qLens, kvSeqLens: seqLens, scale,
    numHeads: Hh, qkNopeHeadDim: 128, qkRopeHeadDim: 64, vHeadDim: 128, kvLoraRank: 512,
  });

  const dq = DeviceTensor.fromArray(Float32Array.from(q), [Tq, Hh, 192], c.dtype);
  const dcache = DeviceTensor.fromArray(cacheHost, [numPages, c.pageSize, 576], c.dtype);
  const dbt = DeviceTensor.fromArray(blockTable, [B, maxPages], 'i32');
  const dseq = DeviceTensor.fromArray(Int32Array.from(seqLens), [B], 'i32');
  const dw = DeviceTensor.fromArray(Float32Array.from(w), [Hh * 256, 512], c.dtype);
  const out = poison(DeviceTensor.empty([Tq, Hh, 128], c.dtype));
  const lse = poison(DeviceTensor.empty([Tq, Hh], 'f32'));
  const split = c.split ? preparePrefillWeights(dw, { numHeads: Hh }) : undefined;
  try {
    prefill({
      q: dq, cache: dcache, blockTable: dbt, seqLens: dseq, qSeqLens: qLens,
      weights: split ?? { kvBProj: dw }, scale, out, lse, chunkTokens: c.chunkTokens, workspace,
    });
    const eo = relError(out.toFloat32Sync(), ref.out);
    const el = relError(lse.toFloat32Sync(), ref.lse);
    const label = `${c.dtype} H${Hh} reqs ${JSON.stringify(c.reqs)} page ${c.pageSize} chunk ${c.chunkTokens ?? 'default'}${c.split ? ' wUK/wUV' : ''}${workspace ? ' workspace' : ''}`;
    t.ok(eo < 1e-2, `${label}: out rel err ${eo.toExponential(2)}`);
    t.ok(el < 1e-2, `${label}: lse rel err ${el.toExponential(2)}`);
  } finally {
    for (const x of [dq, dcache, dbt, dseq, dw, out, lse, split?.wUK, split?.wUV]) x?.dispose();
  }
}

t.test('prefill vs float64 reference', { skip: gpuSkip }, async (t) => {
  const cases: Case[] = [
    { heads: 8, reqs: [[1, 0], [7, 0], [64, 0], [1000, 0]], dtype: 'bf16', pageSize: 64 },
    { heads: 8, reqs: [[1, 0], [7, 0], [64, 0], [1000, 0]], dtype: 'f16', pageSize: 64 },
    // Cached prefixes (chunked prefill / prefix caching), a request without queries.
    { heads: 4, reqs: [[1, 200], [7, 9], [0, 50], [64, 100], [300, 777]], dtype: 'bf16', pageSize: 16 },
    // Small chunks: requests spanning several chunks, partial results merged by LSE.
    { heads: 4, reqs: [[1, 200], [7, 9], [64, 100], [300, 777]], dtype: 'bf16', pageSize: 16, chunkTokens: 300 },
    { heads: 4, reqs: [[1, 200], [7, 9], [64, 100], [300, 777]], dtype: 'f16', pageSize: 1, chunkTokens: 97 },
    { heads: 2, reqs: [[130, 0], [65, 63]], dtype: 'bf16', pageSize: 32, split: true },
    { heads: 1, reqs: [[5, 3]], dtype: 'f16', pageSize: 8 },
    { heads: 128, reqs: [[3, 2], [17, 0]], dtype: 'bf16', pageSize: 64 },
    { heads: 128, reqs: [[9, 30]], dtype: 'f16', pageSize: 16, chunkTokens: 16, split: true },
  ];
  for (const [i, c] of cases.entries()) {
    const label = `H${c.heads} ${c.dtype} page ${c.pageSize} [q, prefix] ${JSON.stringify(c.reqs)}${c.chunkTokens ? ` chunks of ${c.chunkTokens}` : ''}`;
    await t.test(label, async (tt) => runCase(tt, c, 100 + 17 * i));
  }
});

t.test('prefill with a reused workspace (buffers grow, then are reused)', { skip: gpuSkip }, async (t) => {
  const ws = new PrefillWorkspace();
  try {
    runCase(t, { heads: 4, reqs: [[20, 5]], dtype: 'bf16', pageSize: 16 }, 7, ws);
    runCase(t, { heads: 4, reqs: [[1, 200], [300, 777]], dtype: 'bf16', pageSize: 16, chunkTokens: 256 }, 8, ws);
    const held = ws.bytes;
    runCase(t, { heads: 2, reqs: [[7, 9], [64, 100]], dtype: 'bf16', pageSize: 16, chunkTokens: 64, split: true }, 9, ws);
    runCase(t, { heads: 4, reqs: [[33, 0]], dtype: 'bf16', pageSize: 16 }, 10, ws);
    t.ok(ws.bytes >= held, 'buffers are kept');
  } finally {
    ws.dispose();
  }
  t.equal(ws.bytes, 0);
});

t.test('prefill with no queries returns empty results', { skip: gpuSkip }, async (t) => {
  const q = DeviceTensor.empty([0, 2, 192], 'bf16');
  const cache = DeviceTensor.zeros([1, 16, 576], 'bf16');
  const bt = DeviceTensor.fromArray(Int32Array.of(0, 0), [2, 1], 'i32');
  const w = DeviceTensor.zeros([512, 512], 'bf16');
  const r = prefill({ q, cache, blockTable: bt, seqLens: [0, 5], qSeqLens: [0, 0], weights: { kvBProj: w }, scale: 0.1 });
  t.same(r.out.shape, [0, 2, 128]);
  t.same(r.lse.shape, [0, 2]);
  for (const x of [q, cache, bt, w, r.out, r.lse]) x.dispose();
});

t.test('prefill rejects bad index values from device tensors', { skip: gpuSkip }, async (t) => {
  const q = DeviceTensor.zeros([4, 2, 192], 'bf16');
  const cache = DeviceTensor.zeros([2, 16, 576], 'bf16');
  const bt = DeviceTensor.fromArray(Int32Array.of(0, 5), [2, 1], 'i32');
  const w = DeviceTensor.zeros([512, 512], 'bf16');
  try {
    t.throws(() => prefill({ q, cache, blockTable: bt, seqLens: [2, 2], qSeqLens: [2, 2], weights: { kvBProj: w }, scale: 0.1 }), { code: 'ERR_RANGE', message: /blockTable/ });
    const seq = DeviceTensor.fromArray(Int32Array.of(2, 1), [2], 'i32');
    t.throws(() => prefill({ q, cache, blockTable: bt, seqLens: seq, qSeqLens: [2, 2], weights: { kvBProj: w }, scale: 0.1 }), { code: 'ERR_RANGE', message: /qSeqLens/ });
    seq.dispose();
  } finally {
    for (const x of [q, cache, bt, w]) x.dispose();
  }
});

t.test('prefillAttention (kernel alone) vs reference.mhaVarlen', { skip: gpuSkip }, async (t) => {
  for (const [dtype, Hh, qLens, kLens] of [
    ['bf16', 3, [1, 64, 65, 200], [1, 64, 130, 1000]],
    ['f16', 16, [17, 128], [17, 300]],
  ] as ['bf16' | 'f16', number, number[], number[]][]) {
    const Tq = qLens.reduce((a, b) => a + b, 0);
    const Tk = kLens.reduce((a, b) => a + b, 0);
    const q = roundTo(randn(Tq * Hh * 192, 7), dtype);
    const kn = roundTo(randn(Tk * Hh * 128, 8), dtype);
    const kr = roundTo(randn(Tk * 64, 9), dtype);
    const v = roundTo(randn(Tk * Hh * 128, 10), dtype);
    const k = new Float64Array(Tk * Hh * 192);
    for (let i = 0; i < Tk; i++) {
      for (let h = 0; h < Hh; h++) {
        k.set(kn.subarray((i * Hh + h) * 128, (i * Hh + h + 1) * 128), (i * Hh + h) * 192);
        k.set(kr.subarray(i * 64, (i + 1) * 64), (i * Hh + h) * 192 + 128);
      }
    }
    const scale = 0.08;
    const ref = reference.mhaVarlen({ q, k, v, qSeqLens: qLens, kvSeqLens: kLens, numHeads: Hh, headDimQk: 192, headDimV: 128, scale, causal: true });
    const ts = [
      DeviceTensor.fromArray(Float32Array.from(q), [Tq, Hh, 192], dtype),
      DeviceTensor.fromArray(Float32Array.from(kn), [Tk, Hh, 128], dtype),
      DeviceTensor.fromArray(Float32Array.from(kr), [Tk, 64], dtype),
      DeviceTensor.fromArray(Float32Array.from(v), [Tk, Hh, 128], dtype),
      poison(DeviceTensor.empty([Tq, Hh, 128], dtype)),
      poison(DeviceTensor.empty([Tq, Hh], 'f32')),
    ] as const;
    try {
      prefillAttention({ q: ts[0], kNope: ts[1], kRope: ts[2], v: ts[3], qSeqLens: qLens, kvSeqLens: Int32Array.from(kLens), scale, out: ts[4], lse: ts[5] });
      const eo = relError(ts[4].toFloat32Sync(), ref.out);
      const el = relError(ts[5].toFloat32Sync(), ref.lse);
      t.ok(eo < 1e-2, `${dtype} H${Hh}: out rel err ${eo.toExponential(2)}`);
      t.ok(el < 1e-2, `${dtype} H${Hh}: lse rel err ${el.toExponential(2)}`);
    } finally {
      for (const x of ts) x.dispose();
    }
  }
});

t.test('mergeAttnStates edge LSEs: both −inf, one side +inf = empty (decode\'s "no keys"), no NaN', { skip: gpuSkip }, async (t) => {
  const D = 128;
  for (const dtype of ['bf16', 'f16'] as const) {
    const o1 = new Float32Array(3 * D);
    const o2 = new Float32Array(3 * D);
    for (let i = 0; i < 3 * D; i++) {
      o1[i] = 0.25 * ((i % 7) - 3);
      o2[i] = 0.5 * ((i % 5) - 2);
    }
    const out = DeviceTensor.fromArray(o1, [3, 1, D], dtype);
    const part = DeviceTensor.fromArray(o2, [3, 1, D], dtype);
    const lse = DeviceTensor.fromArray(Float32Array.from([-Infinity, Infinity, 1]), [3, 1], 'f32');
    const plse = DeviceTensor.fromArray(Float32Array.from([-Infinity, 0.5, Infinity]), [3, 1], 'f32');
    try {
      mergeAttnStates({ out, lse, part, partLse: plse });
      const got = out.toFloat32Sync();
      const gotL = lse.toFloat32Sync();
      // ±inf is "no keys" on either side (issue 16): the finite side is the result.
      t.same(Array.from(gotL), [-Infinity, 0.5, 1], `${dtype} lse`);
      let bad = 0;
      for (let d = 0; d < D; d++) {
        if (got[d] !== 0) bad++;
        if (got[D + d] !== o2[D + d]) bad++;
        if (got[2 * D + d] !== o1[2 * D + d]) bad++;
      }
      t.equal(bad, 0, `${dtype} out: zero row, then the finite side's o`);
    } finally {
      for (const x of [out, part, lse, plse]) x.dispose();
    }
  }
});

t.test('mergeAttnStates vs float64', { skip: gpuSkip }, async (t) => {
  const R = 37;
  const Hh = 3;
  const D = 128;
  for (const dtype of ['bf16', 'f16'] as const) {
    const o1 = roundTo(randn(R * Hh * D, 11), dtype);
    const o2 = roundTo(randn(R * Hh * D, 12), dtype);
    const l1 = Float64Array.from(randn(R * Hh, 13, 3));
    const l2 = Float64Array.from(randn(R * Hh, 14, 3));
    l1[0] = -Infinity; // no keys on one side: that side's o must be ignored
    l2[1] = -Infinity;
    o1.fill(Number.NaN, 0, D);
    const wantO = new Float64Array(R * Hh * D);
    const wantL = new Float64Array(R * Hh);
    for (let i = 0; i < R * Hh; i++) {
      const m = Math.max(l1[i]!, l2[i]!);
      const w1 = Math.exp(l1[i]! - m);
      const w2 = Math.exp(l2[i]! - m);
      for (let d = 0; d < D; d++) wantO[i * D + d] = ((w1 > 0 ? o1[i * D + d]! * w1 : 0) + (w2 > 0 ? o2[i * D + d]! * w2 : 0)) / (w1 + w2);
      wantL[i] = m + Math.log(w1 + w2);
    }
    const out = DeviceTensor.fromArray(Float32Array.from(o1), [R, Hh, D], dtype);
    const part = DeviceTensor.fromArray(Float32Array.from(o2), [R, Hh, D], dtype);
    const lse = DeviceTensor.fromArray(Float32Array.from(l1), [R, Hh], 'f32');
    const plse = DeviceTensor.fromArray(Float32Array.from(l2), [R, Hh], 'f32');
    try {
      mergeAttnStates({ out, lse, part, partLse: plse });
      t.ok(relError(out.toFloat32Sync(), wantO) < 1e-2, `${dtype} out`);
      t.ok(relError(lse.toFloat32Sync(), wantL) < 1e-5, `${dtype} lse`);
    } finally {
      for (const x of [out, part, lse, plse]) x.dispose();
    }
  }
});

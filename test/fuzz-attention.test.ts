// Reliability (issue 16): property-based fuzzing (fast-check, seeded) of the attention ops and
// classes, in the style of test/fuzz-ops.test.ts: decode (hostile block tables, seqLens and
// qSeqLens, wrong index dtypes, page sizes 16..256, head counts, s_q, causal, checkIndices on and
// off, the FP8 cache), prefill (hostile host lengths and block tables), appendLatent (hostile
// slot mappings and positions, model and FP8 caches), ropeQuery, absorbQuery / absorbOutput,
// mergeAttnStates, and LatentCache as a class (random sequences of its methods with hostile
// arguments). Every call either equals the float64 reference or throws an MlaError naming the
// argument; with checkIndices: false, rows and outputs an out-of-range index would address stay
// bit-identical and the emulated device sees no access outside an allocation (a fault would
// poison the context, which every case checks).
//
// Seeded and reproducible: FUZZ_SEED (default 16), FUZZ_RUNS (default 60; each property runs a
// fraction of it, shapes are kept small: ~40 s on 2 cores). `npm run fuzz` runs 2,000.
import t from 'tap';
import fc from 'fast-check';
import {
  DeviceTensor, DecodeWorkspace, LatentCache, MlaError, RopeTable, absorbOutput, absorbQuery, appendLatent, cuda, decode,
  mergeAttnStates, prefill, prepareAbsorbWeights, reference, ropeQuery,
} from '../lib/index.js';
import type { DType } from '../lib/index.js';
import { gpuSkip, randn, roundTo } from './helpers/gpu.js';
import { relErr } from './helpers/fuzz.js';

const SEED = Number(process.env['FUZZ_SEED'] ?? 16);
const RUNS = Number(process.env['FUZZ_RUNS'] ?? 60);
const params = (runs: number): fc.Parameters<unknown> => ({ seed: SEED, numRuns: Math.max(1, Math.round(runs)), endOnFailure: true });
const tally: Record<string, { ok: number; refused: number }> = {};
const count = (prop: string, outcome: 'ok' | 'refused'): void => {
  (tally[prop] ??= { ok: 0, refused: 0 })[outcome]++;
};

const used = (): number => {
  const d = cuda.deviceInfo(0);
  return d.totalMemory - d.freeMemory;
};

/** An MlaError (not ERR_CUDA) whose message starts with one of `ops` and names `names` if given. */
function expectTyped(err: unknown, ops: readonly string[], ctx: string, names?: readonly string[]): MlaError {
  if (!(err instanceof MlaError)) throw new Error(`${ctx}: threw a non-MlaError: ${String(err)}`);
  if (!ops.some((op) => err.message.startsWith(op))) throw new Error(`${ctx}: ${err.code} "${err.message}" does not start with ${ops.join(' / ')}`);
  if (err.code === 'ERR_CUDA') throw new Error(`${ctx}: a CUDA error (the context may be lost): ${err.message}`);
  if (names && !names.some((n) => err.message.includes(n))) throw new Error(`${ctx}: "${err.message}" names none of ${names.join(', ')}`);
  return err;
}

function contextAlive(): void {
  cuda.synchronize(); // throws once a fault poisoned the context
  DeviceTensor.zeros([1]).dispose();
}

function sameBits(a: ArrayLike<number>, b: ArrayLike<number>): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i] && !(Number.isNaN(a[i]) && Number.isNaN(b[i]))) return false;
  return true;
}

/** Deterministic shuffle (the property's seed), so logical page order ≠ physical order. */
function shuffled(n: number, seed: number): number[] {
  const p = Array.from({ length: n }, (_, i) => i);
  let r = seed >>> 0;
  for (let i = n - 1; i > 0; i--) {
    r = (Math.imul(r, 1103515245) + 12345) >>> 0;
    const j = r % (i + 1);
    [p[i], p[j]] = [p[j]!, p[i]!];
  }
  return p;
}

const HOSTILE_INDEX = [-1, -(2 ** 31), 2 ** 31 - 1, 2 ** 24] as const;
const indexDtype = fc.oneof({ weight: 12, arbitrary: fc.constant<DType>('i32') }, { weight: 1, arbitrary: fc.constantFrom<DType>('f32', 'u8', 'bf16') });

/** An i32 tensor, or the same values as a wrong dtype (which the op must refuse). */
function indexTensor(values: readonly number[], shape: number[], dtype: DType): DeviceTensor {
  return dtype === 'i32' ? DeviceTensor.fromArray(Int32Array.from(values), shape, 'i32')
    : DeviceTensor.fromArray(Float32Array.from(values, (v) => Math.abs(v) % 200), shape, dtype);
}

// ---------------------------------------------------------------------------------------------
t.test('decode: hostile block tables / seqLens / qSeqLens, page sizes, heads, s_q, causal, FP8, checkIndices', { skip: gpuSkip, timeout: 300_000 }, async (t) => {
  const start = used();
  const req = fc.record({
    len: fc.oneof({ weight: 8, arbitrary: fc.integer({ min: 0, max: 40 }) }, { weight: 1, arbitrary: fc.constantFrom(...HOSTILE_INDEX, 100_000) }),
    badPage: fc.option(fc.tuple(fc.integer({ min: 0, max: 3 }), fc.constantFrom(...HOSTILE_INDEX, -7)), { freq: 5 }),
  });
  fc.assert(fc.property(
    fc.array(req, { maxLength: 3 }), fc.constantFrom(1, 2, 3, 16), fc.constantFrom(16, 32, 64, 128, 256), fc.integer({ min: 1, max: 2 }),
    fc.boolean(), fc.boolean(), fc.constantFrom<'bf16' | 'f16' | 'fp8'>('bf16', 'bf16', 'f16', 'fp8'),
    indexDtype, indexDtype, fc.boolean(), fc.integer({ min: 0, max: 1 << 20 }),
    (reqs, H, pageSize, sQ, causal, checkIndices, format, btDtype, slDtype, varQ, seed) => {
      const B = reqs.length;
      const fp8 = format === 'fp8';
      const dtype = format === 'f16' ? 'f16' : 'bf16';
      const lens = reqs.map((r) => r.len);
      const valid = (L: number): boolean => L >= 0 && L <= 40;
      const maxPages = Math.max(1, ...lens.map((L) => (valid(L) ? Math.ceil(L / pageSize) : 1)));
      const numPages = B * maxPages + 1;
      const perm = shuffled(numPages, seed);
      const table = Array.from({ length: B * maxPages }, (_, i) => perm[i]!);
      const used0 = (b: number): number => Math.ceil(Math.max(0, Math.min(lens[b]!, maxPages * pageSize)) / pageSize);
      // A request is skipped by the kernel when its length is out of range or a page it uses is.
      const bad = reqs.map((r, b) => {
        const lenBad = !(lens[b]! >= 0 && lens[b]! <= maxPages * pageSize);
        if (r.badPage && r.badPage[0] < maxPages) {
          table[b * maxPages + r.badPage[0]] = r.badPage[1];
          if (!lenBad && r.badPage[0] < used0(b) && (r.badPage[1] < 0 || r.badPage[1] >= numPages)) return true;
        }
        return lenBad;
      });
      // qSeqLens: sQ per request, or (varQ) per request 0..2 with the sum as tokens.
      const qLens = varQ ? reqs.map((_, b) => (seed >> b) % 3) : reqs.map(() => sQ);
      const tokens = qLens.reduce((a, b) => a + b, 0);
      const D = 576;
      const qF = randn(tokens * H * D, seed + 1, 0.5);
      const cF = randn(numPages * pageSize * D, seed + 2, 1);
      const cacheRef = roundTo(cF, dtype);
      const fp8Bytes = fp8 ? reference.quantizeFp8Cache(cacheRef, { numPages, pageSize }) : undefined;
      const ctx = `decode B${B} H${H} page ${pageSize} lens [${lens.join(',')}] q [${qLens.join(',')}] table [${table.join(',')}] ${format} causal ${causal} check ${checkIndices} bt ${btDtype} sl ${slDtype}`;
      const q = DeviceTensor.fromArray(qF, [tokens, H, D], dtype);
      const cache = fp8Bytes ? DeviceTensor.fromArray(fp8Bytes, [numPages, pageSize, 656], 'u8') : DeviceTensor.fromArray(cF, [numPages, pageSize, D], dtype);
      const blockTable = indexTensor(table, [B, maxPages], btDtype);
      const seqLens = indexTensor(lens, [B], slDtype);
      const qSeqLens = varQ ? DeviceTensor.fromArray(Int32Array.from(qLens), [B], 'i32') : undefined;
      const ws = new DecodeWorkspace({ maxBatch: Math.max(1, B), maxHeads: H, maxQSeqLen: 2, maxParts: 4 });
      const out = DeviceTensor.empty([tokens, H, 512], dtype).fill(Number.NaN);
      const lse = DeviceTensor.empty([tokens, H], 'f32').fill(Number.NaN);
      const cacheBefore = cache.toHostSync();
      try {
        try {
          decode({ q, cache, blockTable, seqLens, qSeqLens, maxQSeqLen: varQ ? 2 : undefined, scale: 0.135, causal, out, lse, workspace: ws, checkIndices });
        } catch (err) {
          const e = expectTyped(err, ['decode'], ctx);
          const wrongDtype = btDtype !== 'i32' || slDtype !== 'i32';
          if (!wrongDtype && !(checkIndices && bad.some(Boolean))) throw new Error(`${ctx}: refused a valid call: ${e.message}`);
          if (!wrongDtype && !/seqLens|blockTable/.test(e.message)) throw new Error(`${ctx}: "${e.message}" names no index argument`);
          count(checkIndices ? 'decode (checkIndices)' : 'decode', 'refused');
          return;
        }
        if (btDtype !== 'i32' || slDtype !== 'i32') throw new Error(`${ctx}: accepted a ${btDtype} blockTable / ${slDtype} seqLens`);
        if (checkIndices && bad.some(Boolean)) throw new Error(`${ctx}: accepted out-of-range indices with checkIndices`);
        // The reference sees the skipped requests as empty (out 0, lse +inf: what the kernel writes).
        const refLens = lens.map((L, b) => (bad[b] ? 0 : L));
        const refTable = Int32Array.from(table, (p) => (p >= 0 && p < numPages ? p : 0));
        const refArgs = { q: roundTo(qF, dtype), pageSize, blockTable: refTable, seqLens: refLens, qSeqLens: qLens, numHeads: H, scale: 0.135, causal };
        const want = fp8Bytes ? reference.decodeFp8({ ...refArgs, cache: fp8Bytes, numPages })
          : reference.decode({ ...refArgs, cache: cacheRef, dimLatent: 512, headDim: D });
        const gotOut = out.toFloat32Sync();
        const gotLse = lse.toFloat32Sync();
        const e = relErr(gotOut, want.out);
        if (!(e <= 2e-2) && tokens > 0 && want.out.some((v) => v !== 0)) throw new Error(`${ctx}: out rel err ${e}`);
        for (let i = 0; i < want.lse.length; i++) {
          const w = want.lse[i]!, g = gotLse[i]!;
          if (w === Number.POSITIVE_INFINITY ? g !== w : !(Math.abs(g - w) <= 2e-3 + 2e-3 * Math.abs(w))) throw new Error(`${ctx}: lse[${i}] ${g} want ${w}`);
        }
        if (!sameBits(cache.toHostSync(), cacheBefore)) throw new Error(`${ctx}: decode wrote its cache`);
        // A skipped request with queries is reported; one without queries reads nothing and
        // may go unreported.
        const report = ws.checkErrors();
        if (report.ok && bad.some((x, b) => x && qLens[b]! > 0)) throw new Error(`${ctx}: no error reported for bad ${JSON.stringify(bad)}`);
        if (!report.ok && !bad.some(Boolean)) throw new Error(`${ctx}: error report ${JSON.stringify(report)} without a bad index`);
        count(bad.some(Boolean) ? 'decode (bad indices skipped)' : 'decode', 'ok');
      } finally {
        for (const x of [q, cache, blockTable, seqLens, qSeqLens, out, lse, ws]) x?.dispose();
      }
      contextAlive();
    }), params(RUNS * 2));
  contextAlive();
  t.equal(used(), start, 'no device memory left behind');
});

// ---------------------------------------------------------------------------------------------
// Longer contexts than the property above (several hundred keys, so the split-KV plan uses
// several parts and the combine merges them), few cases to stay cheap on the emulated device.
t.test('decode: long contexts (150..700 keys), several split parts, vs the reference', { skip: gpuSkip, timeout: 300_000 }, async (t) => {
  const start = used();
  fc.assert(fc.property(
    fc.array(fc.integer({ min: 150, max: 700 }), { minLength: 1, maxLength: 2 }), fc.constantFrom(1, 2), fc.constantFrom(64, 128), fc.constantFrom(2, 8, 16), fc.integer({ min: 0, max: 1 << 20 }),
    (lens, H, pageSize, maxParts, seed) => {
      const B = lens.length, D = 576;
      const maxPages = Math.max(1, ...lens.map((L) => Math.ceil(L / pageSize)));
      const numPages = B * maxPages + 1;
      const perm = shuffled(numPages, seed);
      const table = Int32Array.from({ length: B * maxPages }, (_, i) => perm[i]!);
      const qF = randn(B * H * D, seed + 1, 0.5);
      const cF = randn(numPages * pageSize * D, seed + 2, 1);
      const ctx = `decode long lens [${lens.join(',')}] H${H} page ${pageSize} parts ${maxParts}`;
      const q = DeviceTensor.fromArray(qF, [B, H, D], 'bf16');
      const cache = DeviceTensor.fromArray(cF, [numPages, pageSize, D], 'bf16');
      const blockTable = DeviceTensor.fromArray(table, [B, maxPages], 'i32');
      const seqLens = DeviceTensor.fromArray(Int32Array.from(lens), [B], 'i32');
      const ws = new DecodeWorkspace({ maxBatch: B, maxHeads: H, maxQSeqLen: 1, maxParts });
      try {
        const r = decode({ q, cache, blockTable, seqLens, scale: 0.135, causal: true, workspace: ws });
        const want = reference.decode({ q: roundTo(qF, 'bf16'), cache: roundTo(cF, 'bf16'), pageSize, blockTable: table, seqLens: lens, qSeqLens: lens.map(() => 1), numHeads: H, scale: 0.135, causal: true, dimLatent: 512, headDim: D });
        const e = relErr(r.out.toFloat32Sync(), want.out);
        const gotLse = r.lse.toFloat32Sync();
        r.out.dispose();
        r.lse.dispose();
        if (!(e <= 2e-2) && want.out.some((v) => v !== 0)) throw new Error(`${ctx}: out rel err ${e}`);
        for (let i = 0; i < want.lse.length; i++) {
          const w = want.lse[i]!, g = gotLse[i]!;
          if (w === Number.POSITIVE_INFINITY ? g !== w : !(Math.abs(g - w) <= 2e-3 + 2e-3 * Math.abs(w))) throw new Error(`${ctx}: lse[${i}] ${g} want ${w}`);
        }
        count('decode (long contexts)', 'ok');
      } finally {
        for (const x of [q, cache, blockTable, seqLens, ws]) x.dispose();
      }
      contextAlive();
    }), params(Math.max(3, RUNS / 10)));
  t.equal(used(), start, 'no device memory left behind');
});

// ---------------------------------------------------------------------------------------------
t.test('prefill: hostile seqLens / qSeqLens / block tables (host and device), FP8 cache', { skip: gpuSkip, timeout: 300_000 }, async (t) => {
  const start = used();
  const H = 1;
  const pageSize = 16;
  const len = fc.oneof({ weight: 24, arbitrary: fc.integer({ min: 0, max: 20 }) }, { weight: 1, arbitrary: fc.constantFrom(-1, 2 ** 31 - 1, 1.5, Number.NaN) });
  fc.assert(fc.property(
    fc.array(fc.tuple(len, len), { minLength: 1, maxLength: 2 }), fc.option(fc.tuple(fc.integer({ min: 0, max: 3 }), fc.constantFrom(...HOSTILE_INDEX)), { freq: 4 }),
    fc.boolean(), fc.boolean(), fc.integer({ min: 0, max: 1 << 20 }),
    (reqs, badPage, deviceLens, fp8, seed) => {
      const B = reqs.length;
      const qLens = reqs.map(([n]) => n);
      const seqLens = reqs.map(([n, p]) => n + p);
      const validLens = reqs.every(([n, p]) => Number.isInteger(n) && Number.isInteger(p) && n >= 0 && p >= 0 && n <= 20 && p <= 20);
      const maxPages = validLens ? Math.max(1, ...seqLens.map((s) => Math.ceil(s / pageSize))) : 3;
      const numPages = B * maxPages + 1;
      const perm = shuffled(numPages, seed);
      const table = Int32Array.from({ length: B * maxPages }, (_, i) => perm[i]!);
      let badUsed = false;
      if (badPage && badPage[0] < B * maxPages) {
        table[badPage[0]] = badPage[1];
        const b = Math.floor(badPage[0] / maxPages);
        // A request without queries gathers nothing, so its pages are never read.
        badUsed = validLens && qLens[b]! > 0 && badPage[0] % maxPages < Math.ceil(seqLens[b]! / pageSize);
      }
      const Tq = validLens ? qLens.reduce((a, b) => a + b, 0) : 1;
      const ctx = `prefill reqs ${JSON.stringify(reqs)} table [${table.join(',')}] ${deviceLens ? 'device' : 'host'} lens ${fp8 ? 'fp8' : 'bf16'}`;
      const kvRows = roundTo(randn(numPages * pageSize * 576, seed + 1), 'bf16');
      const cacheF64 = fp8 ? reference.dequantizeFp8Cache(reference.quantizeFp8Cache(kvRows, { numPages, pageSize }), { numPages, pageSize }) : kvRows;
      const qh = roundTo(randn(Tq * H * 192, seed + 2), 'bf16');
      const wh = roundTo(randn(H * 256 * 512, seed + 3, 1 / Math.sqrt(512)), 'bf16');
      const q = DeviceTensor.fromArray(Float32Array.from(qh), [Tq, H, 192], 'bf16');
      const cache = fp8 ? DeviceTensor.fromArray(reference.quantizeFp8Cache(kvRows, { numPages, pageSize }), [numPages, pageSize, 656], 'u8')
        : DeviceTensor.fromArray(Float32Array.from(kvRows), [numPages, pageSize, 576], 'bf16');
      const bt = DeviceTensor.fromArray(table, [B, maxPages], 'i32');
      const w = DeviceTensor.fromArray(Float32Array.from(wh), [H * 256, 512], 'bf16');
      const dl = deviceLens && reqs.every(([n, p]) => Number.isInteger(n + p) && Number.isInteger(n)) ? [DeviceTensor.fromArray(Int32Array.from(seqLens.map((v) => v | 0)), [B], 'i32'), DeviceTensor.fromArray(Int32Array.from(qLens.map((v) => v | 0)), [B], 'i32')] : undefined;
      try {
        let res: { out: DeviceTensor; lse: DeviceTensor };
        try {
          res = prefill({ q, cache, blockTable: bt, seqLens: dl?.[0] ?? seqLens, qSeqLens: dl?.[1] ?? qLens, weights: { kvBProj: w }, scale: 0.1 });
        } catch (err) {
          const e = expectTyped(err, ['prefill'], ctx, ['seqLens', 'qSeqLens', 'blockTable', '`q`']);
          if (validLens && !badUsed) throw new Error(`${ctx}: refused a valid call: ${e.message}`);
          count('prefill', 'refused');
          return;
        }
        if (!validLens || badUsed) throw new Error(`${ctx}: accepted out-of-range lengths or pages`);
        // The keys of request b, in order, as the cache holds them.
        const kv = new Float64Array(seqLens.reduce((a, b) => a + b, 0) * 576);
        let k0 = 0;
        for (let b = 0; b < B; b++) {
          for (let p = 0; p < seqLens[b]!; p++) {
            const page = table[b * maxPages + Math.floor(p / pageSize)]!;
            if (page < 0 || page >= numPages) continue; // a request without queries: never read
            const slot = page * pageSize + (p % pageSize);
            kv.set(cacheF64.subarray(slot * 576, (slot + 1) * 576), (k0 + p) * 576);
          }
          k0 += seqLens[b]!;
        }
        const want = reference.prefill({ q: qh, kv, kvBProj: wh, qSeqLens: qLens, kvSeqLens: seqLens, scale: 0.1, numHeads: H, qkNopeHeadDim: 128, qkRopeHeadDim: 64, vHeadDim: 128, kvLoraRank: 512 });
        const e = relErr(res.out.toFloat32Sync(), want.out);
        res.out.dispose();
        res.lse.dispose();
        if (!(e <= 2e-2) && Tq > 0) throw new Error(`${ctx}: out rel err ${e}`);
        count('prefill', 'ok');
      } finally {
        for (const x of [q, cache, bt, w, ...(dl ?? [])]) x.dispose();
      }
      contextAlive();
    }), params(RUNS));
  contextAlive();
  t.equal(used(), start, 'no device memory left behind');
});

// ---------------------------------------------------------------------------------------------
t.test('appendLatent: hostile slot mappings and positions, model and FP8 caches; unaddressed rows untouched', { skip: gpuSkip, timeout: 300_000 }, async (t) => {
  const start = used();
  const maxPos = 64;
  const table = RopeTable.create({ rotaryDim: 64, ropeTheta: 10000, scaling: null }, maxPos);
  const refTable = reference.ropeTable({ qkRopeHeadDim: 64, ropeTheta: 10000, ropeScaling: null }, maxPos);
  fc.assert(fc.property(
    fc.integer({ min: 0, max: 6 }).chain((T) => fc.tuple(fc.constant(T),
      fc.array(fc.oneof({ weight: 6, arbitrary: fc.integer({ min: -1, max: 2 * 16 - 1 }) }, { weight: 1, arbitrary: fc.constantFrom(-2, 32, 2 ** 31 - 1, -(2 ** 31)) }), { minLength: T, maxLength: T }),
      fc.array(fc.oneof({ weight: 6, arbitrary: fc.integer({ min: 0, max: maxPos - 1 }) }, { weight: 1, arbitrary: fc.constantFrom(-1, maxPos, 2 ** 31 - 1) }), { minLength: T, maxLength: T }))),
    fc.boolean(), fc.boolean(), indexDtype, fc.integer({ min: 0, max: 1 << 20 }),
    ([T, slots, pos], checkIndices, fp8, slotDtype, seed) => {
      // Distinct valid slots (two tokens writing one row would race).
      const seen = new Set<number>();
      const slotMap = slots.map((s) => (s >= 0 && s < 32 && seen.has(s) ? -1 : (seen.add(s), s)));
      const numPages = 2, pageSize = 16, numSlots = 32;
      const ctx = `appendLatent T${T} slots [${slotMap.join(',')}] pos [${pos.join(',')}] ${fp8 ? 'fp8' : 'bf16'} check ${checkIndices} ${slotDtype}`;
      const kvh = randn(T * 576, seed + 1);
      const nw = Float32Array.from({ length: 512 }, (_, i) => 1 + Math.sin(i + seed) / 8);
      const kvDown = DeviceTensor.fromArray(kvh, [T, 576], 'bf16');
      const normWeight = DeviceTensor.fromArray(nw, [512], 'bf16');
      const positions = DeviceTensor.fromArray(Int32Array.from(pos), [T], 'i32');
      const slotMapping = indexTensor(slotMap, [T], slotDtype);
      const cacheInit = randn(numSlots * 576, seed + 2);
      const fp8Init = fp8 ? reference.quantizeFp8Cache(roundTo(cacheInit, 'bf16'), { numPages, pageSize }) : undefined;
      const cache = fp8Init ? DeviceTensor.fromArray(fp8Init, [numPages, pageSize, 656], 'u8') : DeviceTensor.fromArray(cacheInit, [numPages, pageSize, 576], 'bf16');
      const before = cache.toHostSync();
      const rowBytes = fp8 ? 656 : 576; // elements per row of the raw host array
      const active = slotMap.map((s, i) => s !== -1 && s >= 0 && s < numSlots && pos[i]! >= 0 && pos[i]! < maxPos);
      const anyBad = slotMap.some((s, i) => s !== -1 && (s < 0 || s >= numSlots || pos[i]! < 0 || pos[i]! >= maxPos));
      try {
        try {
          appendLatent({ kvDown, normWeight, eps: 1e-6, positions, slotMapping, cache, table, checkIndices });
        } catch (err) {
          const e = expectTyped(err, ['appendLatent'], ctx);
          if (slotDtype === 'i32' && !(checkIndices && anyBad)) throw new Error(`${ctx}: refused a valid call: ${e.message}`);
          if (slotDtype === 'i32' && !/slotMapping|positions/.test(e.message)) throw new Error(`${ctx}: "${e.message}" names no index argument`);
          count('appendLatent', 'refused');
          return;
        }
        if (slotDtype !== 'i32') throw new Error(`${ctx}: accepted a ${slotDtype} slotMapping`);
        if (checkIndices && anyBad) throw new Error(`${ctx}: accepted out-of-range indices with checkIndices`);
        const got = cache.toHostSync();
        // Rows no active token names are bit-identical.
        const written = new Set(slotMap.filter((_, i) => active[i]));
        for (let s = 0; s < numSlots; s++) {
          if (written.has(s)) continue;
          if (!sameBits(got.subarray(s * rowBytes, (s + 1) * rowBytes), before.subarray(s * rowBytes, (s + 1) * rowBytes))) throw new Error(`${ctx}: row ${s} was written though no valid token names it`);
        }
        // Active rows equal the reference (skipped tokens: slot −1 for the reference).
        const refSlots = slotMap.map((s, i) => (active[i] ? s : -1));
        const refArgs = { kvDown: roundTo(kvh, 'bf16'), normWeight: roundTo(nw, 'bf16'), eps: 1e-6, positions: pos.map((p, i) => (active[i] ? p : 0)), slotMapping: refSlots, pageSize, ropeTable: refTable, layout: 'interleaved' as const };
        if (fp8Init) {
          const want = Uint8Array.from(fp8Init);
          reference.appendLatentFp8({ ...refArgs, cache: want, numPages });
          // The kernel rotates in f32, the reference in float64: a rope value may round to the
          // neighbouring bf16 (one byte of a row); compare what the rows stand for.
          const g = { numPages, pageSize };
          const e = relErr(reference.dequantizeFp8Cache(got as Uint8Array, g), reference.dequantizeFp8Cache(want, g));
          if (!(e <= 1e-2)) throw new Error(`${ctx}: FP8 rows differ from the reference: rel err ${e}`);
        } else {
          const want = roundTo(cacheInit, 'bf16');
          reference.appendLatent({ ...refArgs, cache: want });
          const back = DeviceTensor.fromArray(got, [numSlots * 576], 'bf16');
          const e = relErr(back.toFloat32Sync(), want);
          back.dispose();
          if (!(e <= 1e-2)) throw new Error(`${ctx}: rel err ${e}`);
        }
        count(anyBad ? 'appendLatent (bad indices skipped)' : 'appendLatent', 'ok');
      } finally {
        for (const x of [kvDown, normWeight, positions, slotMapping, cache]) x.dispose();
      }
      contextAlive();
    }), params(RUNS));
  table.dispose();
  contextAlive();
  t.equal(used(), start, 'no device memory left behind');
});

// ---------------------------------------------------------------------------------------------
t.test('ropeQuery: hostile positions, nopeDim, layouts; skipped rows untouched', { skip: gpuSkip, timeout: 300_000 }, async (t) => {
  const start = used();
  const maxPos = 32;
  const table = RopeTable.create({ rotaryDim: 64, ropeTheta: 10000, scaling: null }, maxPos);
  const refTable = reference.ropeTable({ qkRopeHeadDim: 64, ropeTheta: 10000, ropeScaling: null }, maxPos);
  fc.assert(fc.property(
    fc.integer({ min: 0, max: 6 }).chain((T) => fc.tuple(fc.constant(T), fc.array(fc.oneof({ weight: 5, arbitrary: fc.integer({ min: 0, max: maxPos - 1 }) }, { weight: 1, arbitrary: fc.constantFrom(-1, maxPos, 2 ** 31 - 1, -(2 ** 31)) }), { minLength: T, maxLength: T }))),
    fc.integer({ min: 1, max: 3 }), fc.constantFrom<'bf16' | 'f16'>('bf16', 'f16'), fc.oneof({ weight: 4, arbitrary: fc.constant<number | undefined>(undefined) }, { weight: 1, arbitrary: fc.constantFrom(0, 128, -1, 129, 1.5, Number.NaN) }),
    fc.boolean(), fc.constantFrom<'interleaved' | 'neox'>('interleaved', 'neox'), indexDtype, fc.integer({ min: 0, max: 1 << 20 }),
    ([T, pos], H, dtype, nopeDim, checkIndices, layout, posDtype, seed) => {
      const W = 192;
      const xh = randn(T * H * W, seed);
      const q = DeviceTensor.fromArray(xh, [T, H, W], dtype);
      const p = indexTensor(pos, [T], posDtype);
      const ctx = `ropeQuery T${T} H${H} ${dtype} nope ${nopeDim} pos [${pos.join(',')}] ${posDtype} check ${checkIndices} ${layout}`;
      const anyBad = pos.some((v) => v < 0 || v >= maxPos);
      try {
        try {
          ropeQuery(q, p, table, { checkIndices, layout, nopeDim });
        } catch (err) {
          const e = expectTyped(err, ['ropeQuery'], ctx);
          const validNope = nopeDim === undefined || (Number.isInteger(nopeDim) && nopeDim >= 0 && nopeDim <= 128);
          if (posDtype === 'i32' && validNope && !(checkIndices && anyBad)) throw new Error(`${ctx}: refused a valid call: ${e.message}`);
          count('ropeQuery', 'refused');
          return;
        }
        if (posDtype !== 'i32' || (checkIndices && anyBad)) throw new Error(`${ctx}: accepted bad positions`);
        const nope = nopeDim ?? 128;
        const want = roundTo(xh, dtype);
        const before = Float64Array.from(want);
        for (let r = 0; r < T; r++) {
          if (pos[r]! < 0 || pos[r]! >= maxPos) continue;
          reference.applyRope(want.subarray(r * H * W), H, W, nope, 64, new Array<number>(H).fill(pos[r]!), refTable, layout);
        }
        const got = q.toFloat32Sync();
        for (let r = 0; r < T; r++) {
          const skip = pos[r]! < 0 || pos[r]! >= maxPos;
          for (let i = r * H * W; i < (r + 1) * H * W; i++) {
            const inNope = (i % W) < nope || (i % W) >= nope + 64; // outside the rotated slice
            if ((skip || inNope) && got[i] !== before[i]) throw new Error(`${ctx}: wrote element ${i} (row ${r}, ${skip ? 'skipped' : 'nope part'})`);
          }
        }
        const e = relErr(got, want);
        if (!(e <= 1e-2) && T > 0) throw new Error(`${ctx}: rel err ${e}`);
        count(anyBad ? 'ropeQuery (bad indices skipped)' : 'ropeQuery', 'ok');
      } finally {
        q.dispose();
        p.dispose();
      }
      contextAlive();
    }), params(RUNS));
  table.dispose();
  contextAlive();
  t.equal(used(), start, 'no device memory left behind');
});

// ---------------------------------------------------------------------------------------------
t.test('absorbQuery / absorbOutput: random dims, dtypes, strided queries, disposed weights', { skip: gpuSkip, timeout: 300_000 }, async (t) => {
  const start = used();
  fc.assert(fc.property(
    fc.integer({ min: 0, max: 5 }), fc.integer({ min: 1, max: 3 }), fc.constantFrom(16, 32, 64), fc.constantFrom(16, 32, 64), fc.constantFrom(32, 64),
    fc.constantFrom<'bf16' | 'f16'>('bf16', 'f16'), fc.constantFrom('none', 'none', 'strided', 'wrong-dtype', 'disposed', 'wrong-heads'), fc.integer({ min: 0, max: 1 << 20 }),
    (T, H, N, V, C, dtype, kind, seed) => {
      const ctx = `absorb T${T} H${H} N${N} V${V} C${C} ${dtype} ${kind}`;
      const dims = { numHeads: H, qkNopeHeadDim: N, vHeadDim: V, kvLoraRank: C };
      const wh = randn(H * (N + V) * C, seed, 1 / Math.sqrt(C));
      const kvB = DeviceTensor.fromArray(wh, [H * (N + V), C], dtype);
      const weights = prepareAbsorbWeights(kvB, dims);
      const refW = reference.splitKvBProj(roundTo(wh, dtype), dims);
      const pad = kind === 'strided' ? 64 : 0;
      const qh = randn(T * (kind === 'wrong-heads' ? H + 1 : H) * (N + pad), seed + 1);
      const qWide = DeviceTensor.fromArray(qh, [T, kind === 'wrong-heads' ? H + 1 : H, N + pad], kind === 'wrong-dtype' ? 'f32' : dtype);
      const qNope = pad ? qWide.slice(2, 0, N) : qWide;
      const oh = randn(T * H * C, seed + 2);
      const oLat = DeviceTensor.fromArray(oh, [T, H, C], dtype);
      if (kind === 'disposed') weights.dispose();
      try {
        let ql: DeviceTensor, o: DeviceTensor;
        try {
          ql = absorbQuery(qNope, weights);
          o = absorbOutput(oLat, weights);
        } catch (err) {
          expectTyped(err, ['absorbQuery', 'absorbOutput'], ctx);
          if (kind === 'none' || kind === 'strided') throw new Error(`${ctx}: refused a valid call: ${(err as Error).message}`);
          count('absorbQuery/absorbOutput', 'refused');
          return;
        }
        if (kind !== 'none' && kind !== 'strided') throw new Error(`${ctx}: accepted it`);
        const qRef = Float64Array.from({ length: T * H * N }, (_, i) => roundTo(Float32Array.of(qh[Math.floor(i / N) * (N + pad) + (i % N)]!), dtype)[0]!);
        const e1 = relErr(ql.toFloat32Sync(), reference.absorbQuery(qRef, T, refW));
        const e2 = relErr(o.toFloat32Sync(), reference.absorbOutput(roundTo(oh, dtype), T, refW));
        ql.dispose();
        o.dispose();
        if (T > 0 && !(e1 <= 2e-2 && e2 <= 2e-2)) throw new Error(`${ctx}: rel err ${e1} / ${e2}`);
        count('absorbQuery/absorbOutput', 'ok');
      } finally {
        for (const x of [kvB, qWide, oLat, weights]) x.dispose();
      }
    }), params(RUNS / 3));
  contextAlive();
  t.equal(used(), start, 'no device memory left behind');
});

// ---------------------------------------------------------------------------------------------
t.test('mergeAttnStates: random shapes, -inf / +inf / NaN LSEs, wrong shapes and dtypes, aliasing', { skip: gpuSkip, timeout: 300_000 }, async (t) => {
  const start = used();
  const lseVal = fc.oneof({ weight: 6, arbitrary: fc.double({ min: -20, max: 20, noNaN: true }) }, { weight: 1, arbitrary: fc.constantFrom(Number.NEGATIVE_INFINITY, Number.POSITIVE_INFINITY) });
  fc.assert(fc.property(
    fc.integer({ min: 0, max: 4 }), fc.integer({ min: 1, max: 3 }), fc.constantFrom(8, 64, 128, 512), fc.constantFrom<'bf16' | 'f16'>('bf16', 'f16'),
    fc.array(lseVal, { minLength: 24, maxLength: 24 }), fc.constantFrom('ok', 'ok', 'ok', 'wrong-shape', 'wrong-dtype', 'alias', 'disposed'), fc.integer({ min: 0, max: 1 << 20 }),
    (R, H, D, dtype, lses, kind, seed) => {
      const ctx = `mergeAttnStates R${R} H${H} D${D} ${dtype} ${kind}`;
      const o1 = randn(R * H * D, seed), o2 = randn(R * H * D, seed + 1);
      const l1 = Float32Array.from({ length: R * H }, (_, i) => lses[i % 24]!);
      const l2 = Float32Array.from({ length: R * H }, (_, i) => lses[(i + 7) % 24]!);
      const out = DeviceTensor.fromArray(o1, [R, H, D], dtype);
      const lse = DeviceTensor.fromArray(l1, [R, H], 'f32');
      const part = kind === 'alias' ? out : kind === 'wrong-shape' ? DeviceTensor.fromArray(randn(R * (H + 1) * D, seed), [R, H + 1, D], dtype)
        : DeviceTensor.fromArray(o2, [R, H, D], kind === 'wrong-dtype' ? 'f32' : dtype);
      const partLse = DeviceTensor.fromArray(l2, [R, H], 'f32');
      if (kind === 'disposed') partLse.dispose();
      try {
        try {
          mergeAttnStates({ out, lse, part, partLse });
        } catch (err) {
          expectTyped(err, ['mergeAttnStates'], ctx, ['`part`', '`partLse`', 'part']);
          if (kind === 'ok' || kind === 'alias') throw new Error(`${ctx}: refused a valid call: ${(err as Error).message}`);
          count('mergeAttnStates', 'refused');
          return;
        }
        if (kind !== 'ok' && kind !== 'alias') throw new Error(`${ctx}: accepted it`);
        // Every row against the float64 twin, ±inf rows included (issue 16: either infinity is
        // an empty side; both empty give out 0, lse −inf).
        const want = { out: roundTo(o1, dtype), lse: Float64Array.from(l1) };
        reference.mergeAttnStates({ out: want.out, lse: want.lse, part: kind === 'alias' ? Float64Array.from(want.out) : roundTo(o2, dtype), partLse: l2, dim: D });
        const gotO = out.toFloat32Sync(), gotL = lse.toFloat32Sync();
        for (let r = 0; r < R * H; r++) {
          const w = want.lse[r]!, g = gotL[r]!;
          if (Number.isFinite(w) ? !(Math.abs(g - w) <= 1e-4 + 1e-5 * Math.abs(w)) : g !== w) throw new Error(`${ctx}: lse[${r}] ${g} want ${w} (inputs ${l1[r]}, ${l2[r]})`);
          const e = relErr(gotO.subarray(r * D, (r + 1) * D), want.out.subarray(r * D, (r + 1) * D));
          if (!(e <= 1e-2) && want.out.subarray(r * D, (r + 1) * D).some((v) => v !== 0)) throw new Error(`${ctx}: row ${r} rel err ${e}`);
          if (w === Number.NEGATIVE_INFINITY && gotO.subarray(r * D, (r + 1) * D).some((v) => v !== 0)) throw new Error(`${ctx}: row ${r} has no keys but out ≠ 0`);
        }
        count('mergeAttnStates', 'ok');
      } finally {
        for (const x of [out, lse, part, partLse]) x.dispose();
      }
    }), params(RUNS));
  contextAlive();
  t.equal(used(), start, 'no device memory left behind');
});

// ---------------------------------------------------------------------------------------------
// LatentCache as a class: random method sequences with hostile arguments against a host model
// (lengths per sequence); after every call the allocator's books balance.
type CacheCall =
  | { m: 'addSequence'; id: unknown; offset: unknown }
  | { m: 'planStep'; batch: { seqId: unknown; numTokens: unknown }[] }
  | { m: 'truncate'; id: unknown; length: unknown }
  | { m: 'fork'; src: unknown; dst: unknown }
  | { m: 'freeSequence'; id: unknown }
  | { m: 'reserve'; id: unknown; n: unknown }
  | { m: 'dispose' };
const seqId = fc.oneof({ weight: 12, arbitrary: fc.constantFrom<unknown>(0, 1, 2, 'a', 'b') }, { weight: 1, arbitrary: fc.constantFrom<unknown>(-1, 1.5, '', null, undefined, Number.NaN, {}) });
const count0 = fc.oneof({ weight: 12, arbitrary: fc.integer({ min: 0, max: 40 }) }, { weight: 1, arbitrary: fc.constantFrom<unknown>(-1, 1.5, Number.NaN, Number.POSITIVE_INFINITY, 2 ** 40, '3', null) });
const cacheCall: fc.Arbitrary<CacheCall> = fc.oneof(
  fc.record({ m: fc.constant('addSequence' as const), id: seqId, offset: fc.oneof(fc.constant<unknown>(undefined), count0) }),
  fc.record({ m: fc.constant('planStep' as const), batch: fc.array(fc.record({ seqId, numTokens: count0 }), { maxLength: 3 }) }),
  fc.record({ m: fc.constant('truncate' as const), id: seqId, length: count0 }),
  fc.record({ m: fc.constant('fork' as const), src: seqId, dst: seqId }),
  fc.record({ m: fc.constant('freeSequence' as const), id: seqId }),
  fc.record({ m: fc.constant('reserve' as const), id: seqId, n: count0 }),
  { weight: 1, arbitrary: fc.record({ m: fc.constant('dispose' as const) }) },
);

function runCacheCall(c: LatentCache, call: CacheCall): void {
  // The casts hand hostile values to a typed API on purpose: that is what is being fuzzed.
  switch (call.m) {
    case 'addSequence': c.addSequence(call.id as number, call.offset === undefined ? {} : { positionOffset: call.offset as number }); break;
    case 'planStep': c.planStep(call.batch as { seqId: number; numTokens: number }[]); break;
    case 'truncate': c.truncate(call.id as number, call.length as number); break;
    case 'fork': c.fork(call.src as number, call.dst as number); break;
    case 'freeSequence': c.freeSequence(call.id as number); break;
    case 'reserve': c.reserve(call.id as number, call.n as number); break;
    case 'dispose': c.dispose(); break;
  }
}

function checkBooks(c: LatentCache, numPages: number, ctx: string): void {
  if (c.disposed) return;
  const s = c.state();
  if (s.pagesFree + s.pagesInUse !== numPages) throw new Error(`${ctx}: ${s.pagesFree} free + ${s.pagesInUse} in use ≠ ${numPages}`);
  const refs = new Array<number>(numPages).fill(0);
  for (const q of s.sequences) {
    if (!(q.length >= 0) || q.pages.length !== Math.ceil(q.length / c.pageSize)) throw new Error(`${ctx}: sequence ${String(q.id)} has ${q.length} tokens on ${q.pages.length} pages`);
    for (const p of q.pages) refs[p]!++;
  }
  if (!sameBits(refs, s.refcounts.slice(0, numPages))) throw new Error(`${ctx}: refcounts ${s.refcounts.join(',')} ≠ page uses ${refs.join(',')}`);
}

t.test('LatentCache: random method sequences with hostile arguments (reference backend, and GPU with FP8)', { skip: gpuSkip, timeout: 300_000 }, async (t) => {
  const start = used();
  fc.assert(fc.property(fc.array(cacheCall, { maxLength: 14 }), fc.constantFrom(16, 32), fc.integer({ min: 1, max: 6 }), fc.constantFrom('reference', 'reference', 'reference', 'gpu', 'gpu-fp8'), (calls, pageSize, numPages, backend) => {
    const cache = new LatentCache({
      config: { kvLoraRank: 512, qkRopeHeadDim: 64 }, numLayers: 1, numPages, pageSize,
      backend: backend === 'reference' ? 'reference' : 'gpu', ...(backend === 'gpu-fp8' ? { kvCacheFormat: 'fp8_e4m3' as const } : {}),
    });
    try {
      for (const [i, call] of calls.entries()) {
        const ctx = `${backend} page ${pageSize} pages ${numPages} call ${i} ${JSON.stringify(call)}`;
        const lenBefore = new Map<unknown, number>();
        if (!cache.disposed) for (const id of cache.sequenceIds()) lenBefore.set(id, cache.length(id));
        try {
          runCacheCall(cache, call);
          count('LatentCache', 'ok');
        } catch (err) {
          expectTyped(err, ['LatentCache'], ctx);
          // A refused call changes nothing.
          if (!cache.disposed) for (const [id, L] of lenBefore) if (cache.length(id as number) !== L) throw new Error(`${ctx}: refused but changed sequence ${String(id)}`);
          count('LatentCache', 'refused');
        }
        checkBooks(cache, numPages, ctx);
      }
    } finally {
      cache.dispose();
    }
  }), params(RUNS * 2));
  contextAlive();
  t.equal(used(), start, 'no device memory left behind');
});

t.test('fuzz cases run', async (t) => {
  for (const [prop, n] of Object.entries(tally)) t.comment(`  ${prop}: ${n.ok} checked against the reference, ${n.refused} refused with a typed error`);
  t.pass(`seed ${SEED}, ${RUNS} runs per property unit, 0 crashes`);
});

// The paged latent cache: allocation, slot mappings, step plans, forks with shared
// prefixes and copied partial pages, truncation with copy-on-write, capacity errors
// that change nothing, and the GPU storage (skipped without a device).

import t from 'tap';
import type { Test } from 'tap';
import { MLA_PRESETS } from '../lib/config.js';
import { MlaError } from '../lib/errors.js';
import { LatentCache, packStepIndices, stepIndexLayout, type CacheState, type LatentCacheOptions, type SequenceId } from '../lib/latent-cache.js';
import { gpuSkip } from './helpers/gpu.js';

const DIMS = { kvLoraRank: 6, qkRopeHeadDim: 2 };

function cache(numPages = 8, pageSize = 4, numLayers = 2): LatentCache {
  return new LatentCache({ config: DIMS, numLayers, numPages, pageSize, backend: 'reference' });
}

function expectUnchanged(t: Test, c: LatentCache, fn: () => unknown, code: string, pattern: RegExp, label: string): void {
  const before: CacheState = c.state();
  const store = c.backend === 'reference' ? Float64Array.from(c.hostLayer(0)) : null;
  let err: unknown = null;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  t.ok(err instanceof MlaError && err.code === code && pattern.test(err.message), `${label}: ${err instanceof Error ? err.message : 'no error thrown'}`);
  t.same(c.state(), before, `${label}: state unchanged`);
  if (store !== null) t.same(c.hostLayer(0), store, `${label}: storage unchanged`);
}

t.test('reserve hands out slots page by page', async (t) => {
  const c = cache();
  t.equal(c.pagesFree, 8);
  c.addSequence(1);
  t.same([...c.reserve(1, 3)], [0, 1, 2], 'first page is page 0');
  t.same([...c.reserve(1, 3)], [3, 4, 5], 'crosses into page 1');
  t.equal(c.length(1), 6);
  t.same(c.pages(1), [0, 1]);
  t.equal(c.pagesInUse, 2);
  t.same([...c.reserve(1, 0)], [], 'n = 0 is a no-op');
  c.addSequence('b', { positionOffset: 100 });
  t.same([...c.reserve('b', 1)], [8]);
  t.equal(c.positionOffset('b'), 100);
  t.same([...c.reserve(1, 2)], [6, 7]);
  const bt = c.blockTable([1, 'b'], -1);
  t.equal(bt.maxPages, 2);
  t.same([...bt.table], [0, 1, 2, -1]);
  c.freeSequence(1);
  t.equal(c.pagesFree, 7);
  t.same(c.sequenceIds(), ['b']);
  c.addSequence(2);
  t.same(c.pages(2), []);
  c.reserve(2, 1);
  t.ok([0, 1].includes(c.pages(2)[0]!), 'freed pages are reused');
});

t.test('bytes per token and storage layout', async (t) => {
  const c = cache(3, 5, 4);
  t.same(c.bytesPerToken, { perLayer: 8 * 8, total: 8 * 8 * 4 }, 'reference storage is float64');
  t.equal(c.hostLayer(3).length, 3 * 5 * 8);
  t.throws(() => c.hostLayer(4), { code: 'ERR_ARGUMENT' });
  t.throws(() => c.deviceLayer(0), { code: 'ERR_ARGUMENT', message: /reference backend/ });
});

// 'a' holds 5 tokens, 'b' (positions from 10) none; the step adds 3 to 'b' and 2 to 'a'.
function twoSequenceStep(): { c: LatentCache; step: ReturnType<LatentCache['planStep']> } {
  const c = cache(8, 4);
  c.addSequence('a');
  c.addSequence('b', { positionOffset: 10 });
  c.reserve('a', 5);
  return { c, step: c.planStep([{ seqId: 'b', numTokens: 3 }, { seqId: 'a', numTokens: 2 }]) };
}

t.test('planStep: all-or-nothing reservation and step arrays', async (t) => {
  const { c, step } = twoSequenceStep();
  t.equal(step.numTokens, 5);
  t.same([...step.positions], [10, 11, 12, 5, 6]);
  t.same([...step.contextLens], [0, 5]);
  t.same([...step.seqLens], [3, 7]);
  t.same([...step.qSeqLens], [3, 2]);
  t.same([...step.cuSeqLens], [0, 3, 5]);
  t.same(step.entries.map((e) => e.tokenStart), [0, 3]);
  // 'a' owns pages 0, 1; 'b' got page 2.
  t.same([...step.slotMapping], [8, 9, 10, 5, 6]);
  t.equal(step.maxPages, 2);
  t.same([...step.blockTable], [2, 0, 0, 1]);

  expectUnchanged(t, c, () => c.planStep([{ seqId: 'a', numTokens: 2 }, { seqId: 'b', numTokens: 30 }]), 'ERR_CAPACITY', /sequence 'b' needs 8 more page\(s\) \(9 for the whole step\) but only 5 of 8 are free/, 'step over capacity');
  expectUnchanged(t, c, () => c.planStep([{ seqId: 'a', numTokens: 1 }, { seqId: 'x', numTokens: 1 }]), 'ERR_ARGUMENT', /unknown sequence id 'x'/, 'unknown id in a step');
  expectUnchanged(t, c, () => c.planStep([{ seqId: 'a', numTokens: 1 }, { seqId: 'a', numTokens: 1 }]), 'ERR_ARGUMENT', /twice/, 'duplicate id');
  expectUnchanged(t, c, () => c.planStep([{ seqId: 'a', numTokens: 1.5 }]), 'ERR_ARGUMENT', /numTokens/, 'fractional numTokens');
  expectUnchanged(t, c, () => c.planStep([]), 'ERR_ARGUMENT', /non-empty/, 'empty batch');
});

t.test('capacity and id errors leave everything untouched', async (t) => {
  const c = cache(3, 4);
  c.addSequence(0);
  c.reserve(0, 6);
  expectUnchanged(t, c, () => c.reserve(0, 7), 'ERR_CAPACITY', /sequence 0 needs 2 more page\(s\) but only 1 of 3 are free/, 'reserve past capacity');
  expectUnchanged(t, c, () => c.reserve(9, 1), 'ERR_ARGUMENT', /unknown sequence id 9/, 'reserve for an unknown id');
  expectUnchanged(t, c, () => c.reserve(0, -1), 'ERR_ARGUMENT', /non-negative/, 'negative n');
  expectUnchanged(t, c, () => c.freeSequence('nope'), 'ERR_ARGUMENT', /unknown sequence id 'nope'/, 'free an unknown id');
  expectUnchanged(t, c, () => c.fork(5, 6), 'ERR_ARGUMENT', /unknown sequence id 5/, 'fork an unknown id');
  expectUnchanged(t, c, () => c.addSequence(0), 'ERR_ARGUMENT', /already exists/, 'duplicate id');
  expectUnchanged(t, c, () => c.addSequence(1.5), 'ERR_ARGUMENT', /safe integer or a non-empty string/, 'bad id');
  expectUnchanged(t, c, () => c.truncate(0, 7), 'ERR_ARGUMENT', /\[0, 6\]/, 'truncate past the end');
  c.reserve(0, 2);
  c.addSequence(1);
  c.reserve(1, 4);
  t.equal(c.pagesFree, 0);
  c.fork(1, 2);
  t.same(c.pages(2), c.pages(1), 'a page-aligned fork needs no free page');
  expectUnchanged(t, c, () => c.fork(1, 2), 'ERR_ARGUMENT', /sequence 2 already exists/, 'fork onto an existing id');
  expectUnchanged(t, c, () => c.reserve(2, 1), 'ERR_CAPACITY', /sequence 2 needs 1 more page\(s\) but only 0 of 3 are free/, 'full cache');
});

t.test('fork shares full pages, copies the partial one, frees by refcount', async (t) => {
  const c = cache(8, 4);
  c.addSequence('p');
  const slots = c.reserve('p', 6);
  // Mark every row of 'p' in both layers so the copy can be checked.
  for (let l = 0; l < 2; l++) for (const [i, s] of slots.entries()) c.hostLayer(l).fill(100 * l + i + 1, s * 8, (s + 1) * 8);
  c.fork('p', 'q');
  t.equal(c.length('q'), 6);
  const [pp, qp] = [c.pages('p'), c.pages('q')];
  t.equal(qp[0], pp[0], 'full page shared');
  t.not(qp[1], pp[1], 'partial page copied');
  t.equal(c.state().refcounts[pp[0]!], 2);
  for (let l = 0; l < 2; l++) {
    const row = (page: number, off: number): number => c.hostLayer(l)[(page * 4 + off) * 8]!;
    t.same([row(qp[1]!, 0), row(qp[1]!, 1)], [100 * l + 5, 100 * l + 6], `layer ${l}: copied rows hold the source's values`);
  }
  // Appends never land in the other sequence's pages.
  const a = c.reserve('p', 3);
  const b = c.reserve('q', 3);
  const own = (id: string): Set<number> => new Set(c.pages(id).slice(1));
  for (const s of a) t.notOk(own('q').has(Math.floor(s / 4)), `p slot ${s} is not q's`);
  for (const s of b) t.notOk(own('p').has(Math.floor(s / 4)), `q slot ${s} is not p's`);
  t.notOk([...a].some((s) => [...b].includes(s)), 'no slot handed to both');

  const inUse = c.pagesInUse;
  c.freeSequence('p');
  t.equal(c.pagesInUse, inUse - 2, "p's private pages return, the shared one stays");
  t.equal(c.state().refcounts[pp[0]!], 1);
  c.freeSequence('q');
  t.equal(c.pagesFree, 8, 'everything returns once the last holder is freed');

  // An aligned fork takes no page; a fork into a full cache with a partial page fails cleanly.
  const d = cache(3, 4);
  d.addSequence(0);
  d.reserve(0, 8);
  d.fork(0, 1);
  t.equal(d.pagesFree, 1, 'page-aligned fork copies nothing');
  d.reserve(0, 1);
  expectUnchanged(t, d, () => d.fork(0, 2), 'ERR_CAPACITY', /sequence 2 needs 1 more page\(s\) but only 0 of 3 are free/, 'fork without a page for the copy');
});

t.test('truncate, then copy-on-write of a shared partial page', async (t) => {
  const c = cache(6, 4);
  c.addSequence('p');
  c.reserve('p', 8);
  c.fork('p', 'q');
  c.truncate('q', 6);
  t.equal(c.length('q'), 6);
  t.same(c.pages('q'), c.pages('p'), 'still sharing both pages');
  c.hostLayer(0).fill(7, c.pages('p')[1]! * 4 * 8, (c.pages('p')[1]! * 4 + 4) * 8);
  const s = c.reserve('q', 1);
  const qp = c.pages('q');
  t.not(qp[1], c.pages('p')[1], 'the shared page was copied before writing into it');
  t.equal(s[0], qp[1]! * 4 + 2);
  t.equal(c.hostLayer(0)[(qp[1]! * 4) * 8], 7, 'the copy kept the shared rows');
  c.truncate('q', 0);
  t.same(c.pages('q'), []);
});

t.test('validation of options', async (t) => {
  t.throws(() => new LatentCache({ config: DIMS, numLayers: 0, numPages: 1, backend: 'reference' }), { code: 'ERR_ARGUMENT', message: /numLayers/ });
  t.throws(() => new LatentCache({ config: DIMS, numLayers: 1, numPages: 1, pageSize: 0, backend: 'reference' }), { code: 'ERR_ARGUMENT', message: /pageSize/ });
  t.throws(() => new LatentCache({ config: DIMS, numLayers: 1, numPages: 1, backend: 'cpu' as 'reference' }), { code: 'ERR_ARGUMENT' });
  t.throws(() => new LatentCache({ config: DIMS, numLayers: 1, numPages: 1, backend: 'reference', dtype: 'f32' as 'bf16' }), { code: 'ERR_DTYPE' });
  const c = cache();
  c.dispose();
  t.ok(c.disposed);
  t.throws(() => c.addSequence(1), { code: 'ERR_DISPOSED' });
  c.dispose();
});

t.test('a step\'s indices packed for one upload: 16-byte aligned parts, the block table widened with zeros', async (t) => {
  const { c, step } = twoSequenceStep();
  const layout = stepIndexLayout(step.numTokens, 2, 3);
  t.same(layout.at, { positions: 0, slotMapping: 8, seqLens: 16, contextLens: 20, qSeqLens: 24, cuSeqLens: 28, blockTable: 32 });
  t.equal(layout.total, 40);
  const host = new Int32Array(layout.total).fill(-7);
  packStepIndices(step, layout, host);
  const part = (k: keyof typeof layout.at, n: number): number[] => [...host.subarray(layout.at[k], layout.at[k] + n)];
  t.same(part('positions', 5), [...step.positions]);
  t.same(part('slotMapping', 5), [...step.slotMapping]);
  t.same(part('seqLens', 2), [...step.seqLens]);
  t.same(part('contextLens', 2), [...step.contextLens]);
  t.same(part('qSeqLens', 2), [...step.qSeqLens]);
  t.same(part('cuSeqLens', 3), [...step.cuSeqLens]);
  t.same(part('blockTable', 6), [2, 0, 0, 0, 1, 0], 'rows of 3 columns, the third zero');
  c.dispose();
});

t.test('gpu storage: bf16 pages, device step arrays, forks copy on the device', { skip: gpuSkip }, async (t) => {
  const cfg = MLA_PRESETS['deepseek-v3'];
  const c = new LatentCache({ config: cfg, numLayers: 2, numPages: 4, pageSize: 64, backend: 'gpu' });
  t.same(c.bytesPerToken, { perLayer: 1152, total: 2304 });
  t.same(c.deviceLayer(1).shape, [4, 64, 576]);
  t.equal(c.deviceLayer(0).dtype, 'bf16');
  c.addSequence(0);
  const step = c.planStep([{ seqId: 0, numTokens: 70 }]);
  const dev = c.uploadStep(step);
  for (const k of ['positions', 'slotMapping', 'seqLens', 'contextLens', 'qSeqLens', 'cuSeqLens', 'blockTable'] as const) {
    t.same([...(dev[k].toHostSync() as Int32Array)], [...step[k]], `device ${k}`);
  }
  t.same(dev.blockTable.shape, [1, 2]);
  const src = c.pages(0)[1]!;
  c.deviceLayer(0).select(0, src).fill(3);
  c.fork(0, 1);
  const copy = c.pages(1)[1]!;
  t.ok(c.deviceLayer(0).select(0, copy).toFloat32Sync().every((v) => v === 3), 'partial page copied on the device');
  c.dispose();
  t.ok(dev.positions.disposed, 'step tensors freed with the cache');
});

t.test('a disposed cache refuses every member that reads state, naming the member', async (t) => {
  const c = cache();
  c.addSequence('a');
  c.reserve('a', 3);
  const step = c.planStep([{ seqId: 'a', numTokens: 1 }]);
  c.dispose();
  t.doesNotThrow(() => c.dispose(), 'dispose() twice is a no-op');
  t.ok(c.disposed, '`disposed` stays readable');
  t.equal(c.numPages, 8, 'the fixed geometry stays readable');
  const calls: [string, () => unknown][] = [
    ['length()', () => c.length('a')],
    ['positionOffset()', () => c.positionOffset('a')],
    ['pages()', () => c.pages('a')],
    ['hasSequence()', () => c.hasSequence('a')],
    ['sequenceIds()', () => c.sequenceIds()],
    ['addSequence()', () => c.addSequence('b')],
    ['reserve()', () => c.reserve('a', 1)],
    ['planStep()', () => c.planStep([{ seqId: 'a', numTokens: 1 }])],
    ['isCurrentStep()', () => c.isCurrentStep(step)],
    ['truncate()', () => c.truncate('a', 0)],
    ['fork()', () => c.fork('a', 'b')],
    ['freeSequence()', () => c.freeSequence('a')],
    ['blockTable()', () => c.blockTable(['a'])],
    ['hostLayer()', () => c.hostLayer(0)],
    ['deviceLayer()', () => c.deviceLayer(0)],
    ['uploadStep()', () => c.uploadStep(step)],
    ['state()', () => c.state()],
    ['pagesFree', () => c.pagesFree],
    ['pagesInUse', () => c.pagesInUse],
    ['bytesPerToken', () => c.bytesPerToken],
  ];
  for (const [member, fn] of calls) {
    const escaped = member.replace(/[()]/g, '\\$&');
    t.throws(fn, { code: 'ERR_DISPOSED', message: new RegExp(`^LatentCache\\.${escaped}: this LatentCache was disposed$`) }, member);
  }
});

t.test('sizes past int32 slots or a typed array are refused up front, naming the argument', async (t) => {
  t.throws(() => new LatentCache({ config: DIMS, numLayers: 1, numPages: 1e12, backend: 'reference' }), { code: 'ERR_RANGE', message: /`numPages` × pageSize = 1000000000000 × 64 slots exceed the int32 slot indices/ });
  // 2^24 pages of 64 rows fit int32 slots, but 2^30 rows × 2^22 float64 values fit no typed array:
  // ERR_RANGE where the length is past Node's limit (2^32 on Node 20), ERR_OOM where V8 refuses it.
  try {
    new LatentCache({ config: { kvLoraRank: 2 ** 22 - 2, qkRopeHeadDim: 2 }, numLayers: 1, numPages: 2 ** 24, backend: 'reference' });
    t.fail('a 32 PiB host cache was accepted');
  } catch (e) {
    t.ok(e instanceof MlaError && (e.code === 'ERR_RANGE' || e.code === 'ERR_OOM'), `ERR_RANGE or ERR_OOM (${String(e)})`);
    t.match((e as Error).message, /^LatentCache: `numPages` needs a Float64Array of 4503599627370496 elements \(36028797018963968 bytes, 32\.0 PiB\)/);
  }
  t.throws(() => new LatentCache(undefined as unknown as LatentCacheOptions), { code: 'ERR_ARGUMENT', message: /`opts`/ });
  t.throws(() => new LatentCache({ numLayers: 1, numPages: 1, backend: 'reference' } as unknown as LatentCacheOptions), { code: 'ERR_ARGUMENT', message: /`config`/ });
  const c = cache();
  t.throws(() => c.blockTable('a' as unknown as SequenceId[]), { code: 'ERR_ARGUMENT', message: /`ids`/ });
  t.throws(() => c.addSequence('x', null as unknown as { positionOffset?: number }), { code: 'ERR_ARGUMENT', message: /`opts`/ });
});

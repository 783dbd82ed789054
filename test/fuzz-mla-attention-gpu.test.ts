// Reliability (issue 16): MlaAttention on the GPU backend (the emulated device in CI) fuzzed as a
// class with the v3slim fixture (fast-check, seeded). Random sequences of forward() (mostly valid
// batches, some hostile), the cache's fork / truncate / freeSequence, the `sparse` option (valid
// and hostile selections), captureDecode() + DecodeGraph.step() with valid and hostile arguments
// (wrong batch length, unknown ids, sequences with nothing cached, past maxSeqLen, a disposed
// graph), and dispose() of the graph or the layer at random late points. Three layers run every
// accepted call: A (under test), G (a twin GPU layer, eager) and R (a twin on the float64
// reference backend). Invariants, after every call:
//  - an accepted forward on A equals R within bf16 tolerance (relative Frobenius < 3e-2) and G
//    bit for bit; an accepted DecodeGraph.step equals G's eager forward of the same step bit for
//    bit (and R within tolerance);
//  - a refused call throws an MlaError with a code (never ERR_CUDA) and leaves A's
//    cache.state() as it was;
//  - no emulator fault (the context stays alive); after disposing everything the device's free
//    memory is back to its value before the case.
// Seeded and reproducible: FUZZ_SEED (default 16), FUZZ_RUNS (default 60; RUNS / 6 cases here,
// each a few emulated forwards of a 1024-wide layer).
import t from 'tap';
import fc from 'fast-check';
import { fileURLToPath } from 'node:url';
import { DeviceTensor, LatentCache, MlaAttention, MlaError, Stream, cuda } from '../lib/index.js';
import type { CacheStep, DecodeGraph, SequenceId } from '../lib/index.js';
import { mulberry32, randnArray } from '../lib/reference/util.js';
import { loadMlaConfig, loadMlaWeights } from '../lib/weights.js';
import { gpuSkip } from './helpers/gpu.js';
import { relErr } from './helpers/fuzz.js';

const SEED = Number(process.env['FUZZ_SEED'] ?? 16);
const RUNS = Number(process.env['FUZZ_RUNS'] ?? 60);
const FILE = fileURLToPath(new URL('./fixtures/mla-v3slim.safetensors', import.meta.url));
const CONFIG = loadMlaConfig(FILE);
const WEIGHTS = loadMlaWeights(FILE, CONFIG, { prefix: 'weights.' });
const HID = CONFIG.hiddenSize;
const PAGE = 16;
const NUM_PAGES = 10;

const tally = { cases: 0, forward: 0, sparse: 0, graphStep: 0, refused: 0, other: 0 };

function sameBits(a: DeviceTensor, b: DeviceTensor): boolean {
  const x = new Uint8Array(a.toHostSync().buffer), y = new Uint8Array(b.toHostSync().buffer);
  return x.length === y.length && x.every((v, i) => v === y[i]);
}

// ---- the calls -------------------------------------------------------------------------------
const IDS = ['s0', 's1', 's2'] as const;
const ID = fc.oneof({ weight: 8, arbitrary: fc.constantFrom<unknown>(...IDS) }, { weight: 1, arbitrary: fc.constantFrom<unknown>('nope', -1, null, 1.5) });
type SparseKind = 'none' | 'ok' | 'hostile-len' | 'short' | 'topk0' | 'not-int32';
type StepKind = 'ids' | 'planned' | 'wrong-length' | 'unknown-id' | 'empty' | 'wrong-hidden' | 'stale';
type Call =
  | { m: 'forward'; batch: { seqId: unknown; numTokens: unknown }[]; sparse: SparseKind; seed: number }
  | { m: 'add'; id: unknown }
  | { m: 'fork'; src: unknown; dst: unknown }
  | { m: 'truncate'; id: unknown; len: number }
  | { m: 'free'; id: unknown }
  | { m: 'capture'; batch: number; maxSeqLen: number }
  | { m: 'step'; kind: StepKind; seed: number }
  | { m: 'disposeGraph' }
  | { m: 'disposeLayer' };

const call: fc.Arbitrary<Call> = fc.oneof(
  {
    weight: 6,
    arbitrary: fc.record({
      m: fc.constant('forward' as const),
      batch: fc.oneof(
        // Valid batches weighted up so that most forwards are accepted and compared.
        { weight: 5, arbitrary: fc.uniqueArray(fc.record({ seqId: fc.constantFrom<unknown>(...IDS), numTokens: fc.integer({ min: 1, max: 6 }) }), { minLength: 1, maxLength: 2, selector: (e) => e.seqId }) },
        { weight: 1, arbitrary: fc.array(fc.record({ seqId: ID, numTokens: fc.oneof(fc.integer({ min: 1, max: 3 }), fc.constantFrom<unknown>(0, -1, 1.5, 2 ** 31, Number.NaN)) }), { minLength: 0, maxLength: 2 }) },
      ),
      sparse: fc.oneof({ weight: 6, arbitrary: fc.constant<SparseKind>('none') }, { weight: 2, arbitrary: fc.constant<SparseKind>('ok') }, { weight: 1, arbitrary: fc.constantFrom<SparseKind>('hostile-len', 'short', 'topk0', 'not-int32') }),
      seed: fc.integer({ min: 0, max: 1 << 20 }),
    }),
  },
  { weight: 1, arbitrary: fc.record({ m: fc.constant('add' as const), id: ID }) },
  { weight: 1, arbitrary: fc.record({ m: fc.constant('fork' as const), src: ID, dst: ID }) },
  { weight: 1, arbitrary: fc.record({ m: fc.constant('truncate' as const), id: ID, len: fc.integer({ min: 0, max: 10 }) }) },
  { weight: 1, arbitrary: fc.record({ m: fc.constant('free' as const), id: ID }) },
  { weight: 3, arbitrary: fc.record({ m: fc.constant('capture' as const), batch: fc.integer({ min: 1, max: 2 }), maxSeqLen: fc.constantFrom(8, 20, 48) }) },
  {
    weight: 7,
    arbitrary: fc.record({
      m: fc.constant('step' as const),
      kind: fc.oneof({ weight: 5, arbitrary: fc.constantFrom<StepKind>('ids', 'planned') }, { weight: 2, arbitrary: fc.constantFrom<StepKind>('wrong-length', 'unknown-id', 'empty', 'wrong-hidden', 'stale') }),
      seed: fc.integer({ min: 0, max: 1 << 20 }),
    }),
  },
  { weight: 1, arbitrary: fc.constant({ m: 'disposeGraph' as const }) },
  { weight: 1, arbitrary: fc.constant({ m: 'disposeLayer' as const }) },
);

/** The three layers of a case and what is alive in it. */
interface Case {
  stream: Stream;
  caches: { a: LatentCache; g: LatentCache; r: LatentCache };
  a: MlaAttention;
  g: MlaAttention;
  r: MlaAttention;
  graph: DecodeGraph | null;
  /** Sequences whose cache holds at least one token (those a graph step may name). */
  ids: Set<SequenceId>;
}

function sparseFor(kind: SparseKind, T: number, maxLen: number, seed: number): { indices: Int32Array; topk: number; topkLength?: Int32Array } | undefined {
  if (kind === 'none') return undefined;
  const rng = mulberry32(seed);
  const topk = kind === 'topk0' ? 0 : 1 + Math.floor(rng() * 4);
  const k = Math.max(1, topk);
  // Positions in range, -1, past the token's own and huge: the mask drops what is not visible.
  const indices = Int32Array.from({ length: kind === 'short' ? T * k - 1 : T * k }, () => {
    const r = rng();
    return r < 0.75 ? Math.floor(rng() * (maxLen + 2)) : r < 0.85 ? -1 : 2 ** 31 - 1;
  });
  const sel: { indices: Int32Array; topk: number; topkLength?: Int32Array } = { indices: kind === 'not-int32' ? (Float32Array.from(indices) as unknown as Int32Array) : indices, topk };
  if (kind === 'hostile-len') sel.topkLength = Int32Array.from({ length: T }, (_, i) => [-5, 1 << 30, k + 1][i % 3]!);
  else if (rng() < 0.4) sel.topkLength = Int32Array.from({ length: T }, () => Math.floor(rng() * (k + 1)));
  return sel;
}

const stateOf = (c: LatentCache): string => (c.disposed ? 'disposed' : JSON.stringify(c.state()));

/** A refusal: an MlaError with a code, not a CUDA error. */
function expectRefusal(err: unknown, ctx: string): MlaError {
  if (!(err instanceof MlaError)) throw new Error(`${ctx}: threw a non-MlaError: ${err instanceof Error ? err.stack : String(err)}`);
  if (typeof err.code !== 'string' || !err.code.startsWith('ERR_') || err.code === 'ERR_CUDA') throw new Error(`${ctx}: ${err.code} ${err.message}`);
  return err;
}

/** The same cache call on the three caches; throws (typed) when A refuses, then nothing ran on the twins. */
function onCaches(c: Case, f: (cache: LatentCache) => void): void {
  f(c.caches.a);
  f(c.caches.g);
  f(c.caches.r);
}

function upload(x: Float64Array, T: number): DeviceTensor {
  return DeviceTensor.fromArray(Float32Array.from(x), [T, HID], 'bf16');
}

/** Runs one accepted forward on the twins G and R and compares them with A's output. */
type TwinArg = readonly { seqId: SequenceId; numTokens: number }[] | CacheStep;
function checkTwins(c: Case, ctx: string, x: DeviceTensor, gArg: TwinArg, rArg: TwinArg, y: DeviceTensor, sparse: ReturnType<typeof sparseFor>, bitEqual: boolean): void {
  const opts = sparse === undefined ? {} : { sparse };
  using yg = c.g.forward(x, gArg, opts);
  // The reference sees the bf16 values the GPU computes from.
  const yr = c.r.forward(Float64Array.from(x.toFloat32Sync()), rArg, opts);
  const got = y.toFloat32Sync();
  const err = relErr(got, yr);
  if (!(err < 3e-2)) throw new Error(`${ctx}: differs from the float64 reference (relative Frobenius ${err})`);
  if (!got.every(Number.isFinite)) throw new Error(`${ctx}: non-finite output`);
  if (bitEqual && !sameBits(y, yg)) throw new Error(`${ctx}: differs from the twin GPU layer's eager forward`);
}

function runCall(c: Case, call: Call, ctx: string): void {
  const A = c.caches.a;
  switch (call.m) {
    case 'add':
      onCaches(c, (k) => k.addSequence(call.id as SequenceId));
      return;
    case 'fork':
      onCaches(c, (k) => k.fork(call.src as SequenceId, call.dst as SequenceId));
      if (A.length(call.dst as SequenceId) > 0) c.ids.add(call.dst as SequenceId);
      return;
    case 'truncate':
      onCaches(c, (k) => k.truncate(call.id as SequenceId, call.len));
      if (A.length(call.id as SequenceId) === 0) c.ids.delete(call.id as SequenceId);
      return;
    case 'free':
      onCaches(c, (k) => k.freeSequence(call.id as SequenceId));
      c.ids.delete(call.id as SequenceId);
      return;
    case 'disposeLayer':
      c.a.dispose();
      return;
    case 'disposeGraph':
      c.graph?.dispose();
      return;
    case 'capture': {
      const g = c.a.captureDecode({ batch: call.batch, maxSeqLen: call.maxSeqLen });
      c.graph?.dispose();
      c.graph = g;
      return;
    }
    case 'forward': {
      const T = call.batch.reduce((s, e) => s + (Number.isSafeInteger(e.numTokens) && (e.numTokens as number) > 0 && (e.numTokens as number) < 64 ? (e.numTokens as number) : 0), 0);
      const maxLen = Math.max(0, ...IDS.map((id) => (A.hasSequence(id) ? A.length(id) : 0))) + 6;
      const sparse = sparseFor(call.sparse, T, maxLen, call.seed + 1);
      using x = upload(randnArray(Math.max(1, T) * HID, mulberry32(call.seed), 0.5), Math.max(1, T));
      const batch = call.batch as { seqId: SequenceId; numTokens: number }[];
      using y = c.a.forward(x, batch, sparse === undefined ? {} : { sparse });
      const valid = (call.sparse === 'none' || call.sparse === 'ok' || call.sparse === 'hostile-len') && T > 0;
      if (!valid) throw new Error(`${ctx}: accepted a hostile call`);
      checkTwins(c, ctx, x, batch, batch, y, sparse, true);
      for (const e of batch) c.ids.add(e.seqId);
      tally[sparse ? 'sparse' : 'forward']++;
      return;
    }
    case 'step': {
      const graph = c.graph;
      if (graph === null) return;
      const B = graph.batch;
      const alive = [...c.ids].filter((id) => A.hasSequence(id) && A.length(id) > 0);
      let ids: unknown[] = alive.slice(0, B);
      if (call.kind === 'wrong-length') ids = alive.slice(0, B + 1).concat(alive.length <= B ? ['s0'] : []);
      else if (call.kind === 'unknown-id') ids = [...alive.slice(0, B - 1), 'nope'];
      else if (call.kind === 'empty') {
        const fresh = IDS.find((id) => A.hasSequence(id) && A.length(id) === 0);
        ids = [...alive.slice(0, B - 1), fresh ?? 'nope'];
      }
      const valid = (call.kind === 'ids' || call.kind === 'planned') && ids.length === B && !graph.disposed && !c.a.disposed;
      using x = upload(randnArray(B * HID, mulberry32(call.seed), 0.5), B);
      using wrong = call.kind === 'wrong-hidden' ? DeviceTensor.zeros([B, HID + 1], 'bf16') : null;
      let arg: readonly SequenceId[] | CacheStep = ids as SequenceId[];
      let twinArgs: { g: CacheStep; r: CacheStep } | null = null;
      if (call.kind === 'planned' || call.kind === 'stale') {
        if (ids.length !== B || ids.some((id) => !A.hasSequence(id as SequenceId))) return;
        // A plan is a cache call of its own: the twins plan the same step.
        const plan = (k: LatentCache): CacheStep => k.planStep((ids as SequenceId[]).map((seqId) => ({ seqId, numTokens: 1 })));
        arg = plan(A);
        twinArgs = { g: plan(c.caches.g), r: plan(c.caches.r) };
        if (call.kind === 'stale') {
          const e0 = arg.entries[0]!;
          onCaches(c, (k) => k.truncate(e0.seqId, e0.contextLen));
          onCaches(c, (k) => k.planStep([{ seqId: e0.seqId, numTokens: 1 }]));
        }
      }
      const before = stateOf(A);
      let y: DeviceTensor;
      try {
        y = graph.step(wrong ?? x, arg);
      } catch (err) {
        const e = expectRefusal(err, ctx);
        if (stateOf(A) !== before) throw new Error(`${ctx}: refused (${e.message}) but the cache state changed`);
        if (call.kind === 'planned') {
          // A refused CacheStep stays reserved (the caller planned it): all three give it back.
          for (const en of (arg as CacheStep).entries) onCaches(c, (k) => k.truncate(en.seqId, en.contextLen));
        }
        if (valid && e.code !== 'ERR_CAPACITY' && e.code !== 'ERR_RANGE') throw new Error(`${ctx}: refused a valid step: ${e.code} ${e.message}`);
        throw e;
      }
      if (!valid) throw new Error(`${ctx}: accepted a hostile step`);
      const batch = (ids as SequenceId[]).map((seqId) => ({ seqId, numTokens: 1 }));
      checkTwins(c, ctx, x, twinArgs?.g ?? batch, twinArgs?.r ?? batch, y, undefined, true);
      tally.graphStep++;
      return;
    }
  }
}

t.test('MlaAttention (gpu backend, v3slim): random forward / cache / sparse / DecodeGraph sequences vs twin layers', { skip: gpuSkip, timeout: 300_000 }, async (t) => {
  const free0 = cuda.deviceInfo(0).freeMemory;
  const stream = new Stream();
  const mkCache = (backend: 'gpu' | 'reference'): LatentCache => new LatentCache({ config: CONFIG, numLayers: 1, numPages: NUM_PAGES, pageSize: PAGE, backend });
  // The twins live across cases (a layer upload costs as much as two forwards); each case
  // starts them from empty caches, and A, the layer under test, from a fresh one.
  const gCache = mkCache('gpu'), rCache = mkCache('reference');
  const g = MlaAttention.create({ config: CONFIG, weights: WEIGHTS, cache: gCache, layer: 0, backend: 'gpu', stream });
  const r = MlaAttention.create({ config: CONFIG, weights: WEIGHTS, cache: rCache, layer: 0, backend: 'reference' });
  try {
    fc.assert(fc.property(fc.array(call, { minLength: 3, maxLength: 12 }), (calls) => {
      tally.cases++;
      for (const k of [gCache, rCache]) for (const q of k.state().sequences) k.freeSequence(q.id);
      const aCache = mkCache('gpu');
      const c: Case = {
        stream,
        caches: { a: aCache, g: gCache, r: rCache },
        a: MlaAttention.create({ config: CONFIG, weights: WEIGHTS, cache: aCache, layer: 0, backend: 'gpu', stream }),
        g,
        r,
        graph: null,
        ids: new Set(),
      };
      try {
        // Every id exists at first, so that most forwards reach the layer.
        for (const id of IDS) onCaches(c, (k) => k.addSequence(id));
        for (const [i, cl] of calls.entries()) {
          // The layer is disposed at a random late point (early, the rest of the case would be refusals).
          if (cl.m === 'disposeLayer' && i < calls.length / 2) continue;
          const ctx = `call ${i} ${JSON.stringify(cl)}`;
          const before = stateOf(aCache);
          try {
            runCall(c, cl, ctx);
            tally.other += cl.m === 'forward' || cl.m === 'step' ? 0 : 1;
          } catch (err) {
            if (err instanceof Error && !(err instanceof MlaError)) throw err;
            const e = expectRefusal(err, ctx);
            if (cl.m !== 'step' && stateOf(aCache) !== before) throw new Error(`${ctx}: refused (${e.message}) but the cache state changed`);
            tally.refused++;
          }
          const lens = (k: LatentCache): string => JSON.stringify(k.state().sequences.map((q) => [q.id, q.length]));
          if (lens(aCache) !== lens(gCache) || lens(aCache) !== lens(rCache)) throw new Error(`${ctx}: the caches diverged: ${lens(aCache)} / ${lens(gCache)} / ${lens(rCache)}`);
          // A fault would poison the context: every later call would throw ERR_CUDA.
          stream.synchronize();
        }
      } finally {
        c.graph?.dispose();
        c.a.dispose();
        aCache.dispose();
      }
    }), { seed: SEED, numRuns: Math.max(1, Math.round(RUNS / 5)), endOnFailure: true });
  } finally {
    for (const x of [g, r, gCache, rCache, stream]) x.dispose();
  }
  cuda.synchronize();
  t.equal(cuda.deviceInfo(0).freeMemory, free0, 'device memory back to its start value after disposing everything');
  t.comment(`seed ${SEED}: ${tally.cases} cases; ${tally.forward} forwards and ${tally.sparse} sparse forwards vs the twins, ${tally.graphStep} graph steps bit-equal to the eager twin, ${tally.other} cache / capture / dispose calls, ${tally.refused} refused with a typed error; 0 faults`);
});

// Found by the fuzzer: an eager forward with a larger decode batch (or a longer query) after
// captureDecode() replaced the layer's decode workspace and freed the one the graph replays, so
// the next DecodeGraph.step faulted (the context lost). And a step after the layer's dispose()
// replayed freed weights. Now the outgrown workspace lives until the last graph is disposed,
// and a step on a disposed layer throws ERR_DISPOSED.
t.test('DecodeGraph.step after an eager forward outgrew the workspace, and after the layer was disposed', { skip: gpuSkip }, async (t) => {
  const free0 = cuda.deviceInfo(0).freeMemory;
  {
    using stream = new Stream();
    using cache = new LatentCache({ config: CONFIG, numLayers: 1, numPages: NUM_PAGES, pageSize: PAGE, backend: 'gpu' });
    const layer = MlaAttention.create({ config: CONFIG, weights: WEIGHTS, cache, layer: 0, backend: 'gpu', stream });
    for (const id of IDS) cache.addSequence(id);
    const three = IDS.map((seqId) => ({ seqId, numTokens: 1 }));
    using x3 = upload(randnArray(3 * HID, mulberry32(1), 0.5), 3);
    using x1 = upload(randnArray(HID, mulberry32(2), 0.5), 1);
    using x9 = upload(randnArray(9 * HID, mulberry32(3), 0.5), 9);
    layer.forward(x3, three).dispose();
    using graph = layer.captureDecode({ batch: 1, maxSeqLen: 20 });
    layer.forward(x9, three.map((e) => ({ ...e, numTokens: 3 }))).dispose(); // a 3-token decode: a bigger workspace
    graph.step(x1, ['s0']);
    stream.synchronize();
    t.ok(graph.output.toFloat32Sync().every(Number.isFinite), 'the replay ran on the workspace it was captured with');
    layer.dispose();
    const before = JSON.stringify(cache.state());
    t.throws(() => graph.step(x1, ['s0']), { name: 'MlaError', code: 'ERR_DISPOSED', message: /DecodeGraph.step: its MlaAttention was disposed/ });
    t.equal(JSON.stringify(cache.state()), before, 'state() unchanged');
    cuda.synchronize();
    t.pass('no fault: the context is alive');
  }
  t.equal(cuda.deviceInfo(0).freeMemory, free0, 'everything freed once the graph and the layer are disposed');
});

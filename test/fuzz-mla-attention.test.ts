// Reliability (issue 16): MlaAttention fuzzed as a class (fast-check, seeded). Random sequences
// of forward() with hostile batches (unknown / duplicate ids, zero / negative / huge numTokens,
// wrong hidden lengths, types, shapes, dtypes, disposed tensors, stale CacheSteps), hostile
// sparse selections and path rules, the cache's addSequence / fork / truncate / freeSequence
// interleaved, captureDecode + DecodeGraph.step with hostile arguments (GPU backend), and
// dispose() at random points. Invariants, after every call:
//  - it succeeds, or throws an MlaError (never ERR_CUDA) whose message names the argument;
//  - a refused call leaves cache.state() as it was (deep equal);
//  - a successful forward equals a twin layer on a twin cache that ran the same accepted calls
//    (bit-equal on the float64 reference backend, within bf16 tolerance on the GPU backend);
//  - no emulator fault (the context stays alive), no device memory left behind at the end.
// Reference backend mostly (cheap); GPU-backend cases with the v3slim fixture.
// Seeded and reproducible: FUZZ_SEED (default 16), FUZZ_RUNS (default 60).
import t from 'tap';
import fc from 'fast-check';
import { fileURLToPath } from 'node:url';
import { DeviceTensor, LatentCache, MlaAttention, MlaError, Stream, cuda } from '../lib/index.js';
import type { CacheStep, MlaConfig, SequenceId } from '../lib/index.js';
import type { AttentionPath, PathRule } from '../lib/attention.js';
import { mulberry32, randnArray } from '../lib/reference/util.js';
import { loadMlaConfig, loadMlaWeights } from '../lib/weights.js';
import { gpuSkip } from './helpers/gpu.js';
import { relErr } from './helpers/fuzz.js';
import { randomLayerWeights } from '../lib/reference/testing.js';

const SEED = Number(process.env['FUZZ_SEED'] ?? 16);
const RUNS = Number(process.env['FUZZ_RUNS'] ?? 60);
const params = (runs: number): fc.Parameters<unknown> => ({ seed: SEED, numRuns: Math.max(1, Math.round(runs)), endOnFailure: true });
const tally: Record<string, { ok: number; refused: number; cases: number }> = {};
const count = (prop: string, outcome: 'ok' | 'refused' | 'cases'): void => {
  (tally[prop] ??= { ok: 0, refused: 0, cases: 0 })[outcome]++;
};

const used = (): number => {
  const d = cuda.deviceInfo(0);
  return d.totalMemory - d.freeMemory;
};

function contextAlive(): void {
  cuda.synchronize(); // throws once a fault poisoned the context
  DeviceTensor.zeros([1]).dispose();
}

/** A typed refusal (not ERR_CUDA) from MlaAttention / LatentCache / DecodeGraph that names what it refuses. */
function expectTyped(err: unknown, ctx: string): MlaError {
  if (!(err instanceof MlaError)) throw new Error(`${ctx}: threw a non-MlaError: ${String(err)}`);
  if (err.code === 'ERR_CUDA') throw new Error(`${ctx}: a CUDA error (the context may be lost): ${err.message}`);
  if (!/^(MlaAttention|LatentCache|DecodeGraph)/.test(err.message)) throw new Error(`${ctx}: "${err.message}" does not name the class`);
  if (!/`[^`]+`|batch\[\d+\]|sequence |batch|disposed/.test(err.message)) throw new Error(`${ctx}: "${err.message}" names no argument`);
  return err;
}

const TINY: MlaConfig = {
  ...loadMlaConfig(fileURLToPath(new URL('./fixtures/mla-tiny.safetensors', import.meta.url))),
};
const W_TINY = randomLayerWeights(TINY, 11);

// ---- the calls -------------------------------------------------------------------------------
const ID = fc.oneof({ weight: 10, arbitrary: fc.constantFrom<unknown>(0, 1, 2, 'a') }, { weight: 1, arbitrary: fc.constantFrom<unknown>(-1, 1.5, '', null, undefined, Number.NaN, {}, 99) });
const N_TOKENS = fc.oneof({ weight: 10, arbitrary: fc.integer({ min: 1, max: 9 }) }, { weight: 2, arbitrary: fc.constantFrom<unknown>(0, -1, -(2 ** 31), 2 ** 31, 2 ** 53, 1.5, Number.NaN, Number.POSITIVE_INFINITY, '2', null) });
type Hidden = 'ok' | 'f32' | 'short' | 'long' | 'int32' | 'array' | 'wrong-dtype' | 'disposed' | 'wrong-shape';
type SparseKind = 'none' | 'ok' | 'topk0' | 'topk-huge' | 'topk-frac' | 'short' | 'not-int32' | 'len-short' | 'len-hostile' | 'null';
type Call =
  | { m: 'add'; id: unknown; offset: unknown }
  | { m: 'forward'; batch: { seqId: unknown; numTokens: unknown }[]; hidden: Hidden; sparse: SparseKind; plan: 'array' | 'step' | 'stale-truncate' | 'stale-replan' | 'fake-step'; seed: number }
  | { m: 'fork'; src: unknown; dst: unknown }
  | { m: 'truncate'; id: unknown; len: unknown }
  | { m: 'free'; id: unknown }
  | { m: 'dispose' };

const call: fc.Arbitrary<Call> = fc.oneof(
  { weight: 3, arbitrary: fc.record({ m: fc.constant('add' as const), id: ID, offset: fc.oneof({ weight: 6, arbitrary: fc.constant<unknown>(undefined) }, { weight: 2, arbitrary: fc.integer({ min: 0, max: 100 }) }, { weight: 1, arbitrary: fc.constantFrom<unknown>(-1, 2 ** 31 - 4, 2 ** 40, 1.5) }) }) },
  {
    weight: 8,
    arbitrary: fc.record({
      m: fc.constant('forward' as const),
      batch: fc.oneof(
        { weight: 4, arbitrary: fc.array(fc.record({ seqId: fc.constantFrom<unknown>(0, 1, 'a'), numTokens: fc.integer({ min: 1, max: 9 }) }), { minLength: 1, maxLength: 3 }) },
        { weight: 3, arbitrary: fc.array(fc.record({ seqId: ID, numTokens: N_TOKENS }), { minLength: 0, maxLength: 3 }) },
      ),
      hidden: fc.oneof({ weight: 12, arbitrary: fc.constant<Hidden>('ok') }, { weight: 1, arbitrary: fc.constantFrom<Hidden>('f32', 'short', 'long', 'int32', 'array', 'wrong-dtype', 'disposed', 'wrong-shape') }),
      sparse: fc.oneof({ weight: 8, arbitrary: fc.constant<SparseKind>('none') }, { weight: 3, arbitrary: fc.constant<SparseKind>('ok') }, { weight: 1, arbitrary: fc.constantFrom<SparseKind>('topk0', 'topk-huge', 'topk-frac', 'short', 'not-int32', 'len-short', 'len-hostile', 'null') }),
      plan: fc.oneof({ weight: 8, arbitrary: fc.constant<'array'>('array') }, { weight: 2, arbitrary: fc.constant<'step'>('step') }, { weight: 1, arbitrary: fc.constantFrom<'stale-truncate' | 'stale-replan' | 'fake-step'>('stale-truncate', 'stale-replan', 'fake-step') }),
      seed: fc.integer({ min: 0, max: 1 << 20 }),
    }),
  },
  { weight: 2, arbitrary: fc.record({ m: fc.constant('fork' as const), src: ID, dst: ID }) },
  { weight: 2, arbitrary: fc.record({ m: fc.constant('truncate' as const), id: ID, len: fc.oneof({ weight: 6, arbitrary: fc.integer({ min: 0, max: 12 }) }, { weight: 1, arbitrary: fc.constantFrom<unknown>(-1, 1.5, Number.NaN, 2 ** 40) }) }) },
  { weight: 1, arbitrary: fc.record({ m: fc.constant('free' as const), id: ID }) },
  { weight: 1, arbitrary: fc.record({ m: fc.constant('dispose' as const) }) },
);

/** A refusal already checked inside the forward case (its plan may have changed the cache). */
class Handled extends Error {}

interface Side {
  cache: LatentCache;
  layer: MlaAttention;
}

// A sequence id 2 routed to a bad path: a hostile user pathRule (refused after the plan).
const hostileRule: PathRule = ({ seqId, numTokens, contextLen }) => (seqId === 2 && contextLen > 0 ? 'sideways' as AttentionPath : numTokens > 4 || contextLen === 0 ? 'prefill' : 'decode');

function hiddenFor(kind: Hidden, T: number, hid: number, seed: number, gpu: { dtype: 'bf16' } | null): { x: Float64Array | Float32Array | DeviceTensor; twin: Float64Array | DeviceTensor | null; owned: DeviceTensor[] } {
  // A huge numTokens is refused before hidden is read: a token's worth stands in for it.
  if (T * hid > 1 << 20) T = 1;
  const n = T * hid;
  const base = randnArray(n, mulberry32(seed), 1);
  const owned: DeviceTensor[] = [];
  const dev = (a: Float64Array, shape: number[], dtype: 'bf16' | 'f16'): DeviceTensor => {
    const d = DeviceTensor.fromArray(Float32Array.from(a), shape, dtype);
    owned.push(d);
    return d;
  };
  if (gpu) {
    switch (kind) {
      case 'ok': case 'f32': return { x: dev(base, [T, hid], 'bf16'), twin: dev(base, [T, hid], 'bf16'), owned };
      case 'wrong-dtype': return { x: dev(base, [T, hid], 'f16'), twin: null, owned };
      case 'disposed': { const d = dev(base, [T, hid], 'bf16'); d.dispose(); return { x: d, twin: null, owned }; }
      case 'short': case 'wrong-shape': return { x: dev(base.subarray(0, Math.max(0, n - hid)), [Math.max(0, T - 1), hid], 'bf16'), twin: null, owned };
      default: return { x: base, twin: null, owned }; // a host array on the gpu backend
    }
  }
  switch (kind) {
    case 'ok': return { x: base, twin: Float64Array.from(base), owned };
    case 'f32': { const f = Float32Array.from(base); return { x: f, twin: Float64Array.from(f), owned }; }
    case 'short': return { x: base.subarray(0, Math.max(0, n - 1)), twin: null, owned };
    case 'long': return { x: new Float64Array(n + hid), twin: null, owned };
    case 'int32': return { x: new Int32Array(n) as unknown as Float64Array, twin: null, owned };
    case 'array': return { x: Array.from(base) as unknown as Float64Array, twin: null, owned };
    default: return { x: dev(base, [T, hid], 'bf16'), twin: null, owned }; // a DeviceTensor on the reference backend
  }
}

function sparseFor(kind: SparseKind, T: number, seed: number): { indices: Int32Array; topk: number; topkLength?: Int32Array } | undefined | null {
  if (kind === 'none') return undefined;
  if (kind === 'null') return null;
  if (T > 1 << 16) T = 1; // a huge numTokens is refused first
  const topk = kind === 'topk0' ? 0 : kind === 'topk-huge' ? 1 << 20 : kind === 'topk-frac' ? 1.5 : 3;
  const rng = mulberry32(seed);
  const k = Number.isSafeInteger(topk) && topk > 0 && topk < 64 ? topk : 3;
  // Positions -1, in range, past the token's own, and huge: the mask drops what is not visible.
  const indices = Int32Array.from({ length: kind === 'short' ? Math.max(0, T * k - 1) : T * k }, () => {
    const r = rng();
    return r < 0.6 ? Math.floor(rng() * 12) : r < 0.75 ? -1 : r < 0.9 ? 2 ** 31 - 1 : -(2 ** 31);
  });
  const sel: { indices: Int32Array; topk: number; topkLength?: Int32Array } = { indices: kind === 'not-int32' ? (Float32Array.from(indices) as unknown as Int32Array) : indices, topk };
  if (kind === 'len-short') sel.topkLength = new Int32Array(Math.max(0, T - 1));
  else if (kind === 'len-hostile' || rng() < 0.3) sel.topkLength = Int32Array.from({ length: T }, (_, i) => [-5, 0, 1, k, 1 << 30][i % 5]!);
  return sel;
}

function stateOf(c: LatentCache): string {
  return c.disposed ? 'disposed' : JSON.stringify(c.state());
}

function output(y: Float64Array | DeviceTensor): Float64Array {
  if (y instanceof DeviceTensor) {
    const h = Float64Array.from(y.toFloat32Sync());
    return h;
  }
  return y;
}

/** Runs one random call sequence on `a` (under test) and `b` (the twin: accepted calls only). */
function runSequence(calls: readonly Call[], a: Side, b: Side, prop: string, gpu: boolean, hid: number): void {
  const alive = new Set<SequenceId>([0]); // every case starts with sequence 0
  for (const [i, c] of calls.entries()) {
    const ctx = `${prop} call ${i} ${JSON.stringify(c)}`;
    if (a.cache.disposed) return;
    const before = stateOf(a.cache);
    let ok = false;
    const cleanup: DeviceTensor[] = [];
    try {
      try {
        switch (c.m) {
          case 'add':
            a.cache.addSequence(c.id as SequenceId, c.offset === undefined ? {} : { positionOffset: c.offset as number });
            b.cache.addSequence(c.id as SequenceId, c.offset === undefined ? {} : { positionOffset: c.offset as number });
            alive.add(c.id as SequenceId);
            break;
          case 'fork':
            a.cache.fork(c.src as SequenceId, c.dst as SequenceId);
            b.cache.fork(c.src as SequenceId, c.dst as SequenceId);
            alive.add(c.dst as SequenceId);
            break;
          case 'truncate':
            a.cache.truncate(c.id as SequenceId, c.len as number);
            b.cache.truncate(c.id as SequenceId, c.len as number);
            break;
          case 'free':
            a.cache.freeSequence(c.id as SequenceId);
            b.cache.freeSequence(c.id as SequenceId);
            alive.delete(c.id as SequenceId);
            break;
          case 'dispose':
            a.layer.dispose();
            if (!a.layer.disposed) throw new Error(`${ctx}: not disposed`);
            break;
          case 'forward': {
            const T = c.batch.reduce((s, e) => s + (Number.isSafeInteger(e.numTokens) && (e.numTokens as number) > 0 ? (e.numTokens as number) : 0), 0);
            const validBatch = c.batch.length > 0 && c.batch.every((e) => Number.isSafeInteger(e.numTokens) && (e.numTokens as number) > 0 && alive.has(e.seqId as SequenceId))
              && new Set(c.batch.map((e) => e.seqId)).size === c.batch.length;
            const h = hiddenFor(c.hidden, T, hid, c.seed, gpu ? { dtype: 'bf16' } : null);
            cleanup.push(...h.owned);
            const sel = sparseFor(c.sparse, T, c.seed + 1);
            const batch = c.batch as { seqId: SequenceId; numTokens: number }[];
            let arg: typeof batch | CacheStep = batch;
            let twinStep: CacheStep | null = null;
            if (c.plan !== 'array' && validBatch) {
              // A plan is a cache call of its own: the twin plans too (and both keep what it reserved).
              try {
                arg = a.cache.planStep(batch);
              } catch (err) {
                expectTyped(err, `${ctx} (planStep)`);
                if (stateOf(a.cache) !== before) throw new Error(`${ctx}: a refused planStep changed the cache`);
                throw new Handled();
              }
              twinStep = b.cache.planStep(batch);
              if (c.plan === 'stale-truncate') {
                const e0 = arg.entries[0]!;
                a.cache.truncate(e0.seqId, e0.contextLen);
                b.cache.truncate(e0.seqId, e0.contextLen);
              } else if (c.plan === 'stale-replan') {
                const e0 = arg.entries[0]!;
                a.cache.truncate(e0.seqId, e0.contextLen);
                b.cache.truncate(e0.seqId, e0.contextLen);
                a.cache.planStep([{ seqId: e0.seqId, numTokens: 1 }]);
                b.cache.planStep([{ seqId: e0.seqId, numTokens: 1 }]);
              } else if (c.plan === 'fake-step') {
                arg = { ...arg };
              }
            }
            const mid = stateOf(a.cache);
            const opts = sel === undefined ? {} : { sparse: sel as NonNullable<typeof sel> };
            let y: Float64Array | DeviceTensor;
            try {
              y = a.layer.forward(h.x as Float64Array, arg, opts);
            } catch (err) {
              const e = expectTyped(err, ctx);
              if (stateOf(a.cache) !== mid) throw new Error(`${ctx}: refused (${e.message}) but the cache state changed`);
              const mustPass = !a.layer.disposed && validBatch && h.twin !== null && (c.sparse === 'none' || c.sparse === 'ok') && (c.plan === 'array' || c.plan === 'step')
                && !(c.batch.some((x) => x.seqId === 2) && a.cache.length(2) > 0 && c.sparse === 'none');
              if (mustPass && e.code !== 'ERR_CAPACITY' && e.code !== 'ERR_RANGE' && !/sideways/.test(e.message)) throw new Error(`${ctx}: refused a valid call: ${e.code} ${e.message}`);
              throw new Handled();
            }
            if (a.layer.disposed) throw new Error(`${ctx}: a disposed layer ran forward`);
            if (!validBatch || h.twin === null || c.plan.startsWith('stale') || c.plan === 'fake-step' || !(c.sparse === 'none' || c.sparse === 'ok')) {
              throw new Error(`${ctx}: accepted a hostile call`);
            }
            const got = output(y);
            if (y instanceof DeviceTensor) y.dispose();
            const z = b.layer.forward(h.twin as Float64Array, twinStep ?? batch, opts);
            const want = output(z);
            if (z instanceof DeviceTensor) z.dispose();
            if (gpu ? !(relErr(got, want) <= 1e-2) : !got.every((v, k) => v === want[k])) throw new Error(`${ctx}: differs from the twin (rel err ${relErr(got, want)})`);
            if (got.some((v) => !Number.isFinite(v))) throw new Error(`${ctx}: non-finite output`);
            count(`${prop}: forward checked against the twin`, 'ok');
            break;
          }
        }
        ok = true;
      } catch (err) {
        if (err instanceof Handled) { count(prop, 'refused'); continue; }
        if (err instanceof Error && !(err instanceof MlaError)) throw err;
        expectTyped(err, ctx);
        if (stateOf(a.cache) !== before) throw new Error(`${ctx}: refused (${(err as Error).message}) but the cache state changed`);
      }
      count(prop, ok ? 'ok' : 'refused');
      if (!a.cache.disposed && !b.cache.disposed) {
        const sa = a.cache.state(), sb = b.cache.state();
        const lens = (s: typeof sa): string => JSON.stringify(s.sequences.map((q) => [q.id, q.length, q.positionOffset]));
        if (lens(sa) !== lens(sb) || sa.pagesFree !== sb.pagesFree) throw new Error(`${ctx}: the cache and its twin diverged`);
      }
    } finally {
      for (const d of cleanup) d.dispose();
    }
  }
}

t.test('MlaAttention (reference backend): random call sequences, hostile batches / steps / sparse / path rules, dispose', { timeout: 300_000 }, async (t) => {
  fc.assert(fc.property(fc.array(call, { minLength: 1, maxLength: 14 }), fc.constantFrom(4, 8), fc.integer({ min: 2, max: 10 }), fc.boolean(), (calls, pageSize, numPages, hostile) => {
    const mk = (): Side => {
      const cache = new LatentCache({ config: TINY, numLayers: 1, numPages, pageSize, backend: 'reference' });
      return { cache, layer: MlaAttention.create({ config: TINY, weights: W_TINY, cache, layer: 0, backend: 'reference', ...(hostile ? { pathRule: hostileRule } : {}) }) };
    };
    const a = mk(), b = mk();
    count('MlaAttention (reference)', 'cases');
    try {
      // Sequence 0 exists in most cases, so forwards reach the layer.
      a.cache.addSequence(0);
      b.cache.addSequence(0);
      runSequence(calls, a, b, 'MlaAttention (reference)', false, TINY.hiddenSize);
    } finally {
      for (const s of [a, b]) {
        s.layer.dispose();
        s.cache.dispose();
      }
    }
  }), params(RUNS * 3));
  t.pass('ok');
});

t.test('fuzz cases run', async (t) => {
  for (const [prop, n] of Object.entries(tally)) t.comment(`  ${prop}: ${n.cases ? `${n.cases} cases, ` : ''}${n.ok} calls accepted, ${n.refused} refused with a typed error`);
  t.pass(`seed ${SEED}, ${RUNS} runs per property unit, 0 crashes`);
});

// Found by the fuzzer's invariant: a forward refused after its plan (here by the path rule) must
// give back exactly what the plan took, including the private copy of a shared, partially filled
// last page (a fork truncated into a shared page): the refusal leaves cache.state() as it was.
t.test('a forward refused after planning restores the cache state exactly (copy-on-write page included)', async (t) => {
  const cache = new LatentCache({ config: TINY, numLayers: 1, numPages: 8, pageSize: 4, backend: 'reference' });
  const layer = MlaAttention.create({ config: TINY, weights: W_TINY, cache, layer: 0, backend: 'reference', pathRule: hostileRule });
  cache.addSequence(0);
  layer.forward(randnArray(6 * TINY.hiddenSize, mulberry32(1), 1), [{ seqId: 0, numTokens: 6 }]);
  cache.fork(0, 2);
  cache.truncate(2, 2); // sequence 2: 2 tokens on a page it shares with sequence 0
  const before = JSON.stringify(cache.state());
  t.throws(() => layer.forward(randnArray(TINY.hiddenSize, mulberry32(2), 1), [{ seqId: 2, numTokens: 1 }]), { name: 'MlaError', code: 'ERR_ARGUMENT', message: /pathRule/ });
  t.equal(JSON.stringify(cache.state()), before, 'state() unchanged');
  layer.dispose();
  cache.dispose();
});

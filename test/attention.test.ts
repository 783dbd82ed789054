// MlaAttention end to end: the golden fixtures (DeepSeek-V3's own model.py) through
// the layer + paged cache, the no-query-compression path against ReferenceMlaLayer,
// mixed batches, chunked prefill, forks, and typed errors that leave the cache intact.

import t from 'tap';
import { fileURLToPath } from 'node:url';
import { MlaAttention, type AttentionPath, type PathRule } from '../lib/attention.js';
import { mlaConfigFromHuggingFace, type MlaConfig } from '../lib/config.js';
import { MlaError } from '../lib/errors.js';
import { LatentCache, type BatchEntry, type SequenceId } from '../lib/latent-cache.js';
import { ReferenceMlaLayer, type MlaLayerWeights } from '../lib/reference/index.js';
import { mulberry32, randnArray, relError } from '../lib/reference/util.js';
import { DeviceTensor } from '../lib/runtime/tensor.js';
import { SafetensorsFile } from '../lib/safetensors.js';
import { loadMlaConfig, loadMlaWeights, type MlaWeights } from '../lib/weights.js';
import { gpuSkip, roundTo } from './helpers/gpu.js';
import { checkGpuGeometry, sharedPlanCounts } from '../lib/attention/gpu-backend.js';
import { Stream } from '../lib/runtime/stream.js';
import { randomLayerWeights } from '../lib/reference/testing.js';

const TOL = 1e-5;

function fixturePath(name: string): string {
  return fileURLToPath(new URL(`./fixtures/${name}.safetensors`, import.meta.url));
}

interface Fixture {
  cfg: MlaConfig;
  weights: MlaWeights;
  B: number;
  P: number;
  K: number;
  read(name: string): Float64Array;
}

function openFixture(name: string): Fixture {
  const file = fixturePath(name);
  const f = SafetensorsFile.open(file);
  const cfg = loadMlaConfig(file);
  const num = (k: string): number => Number(f.metadata[k]);
  const tensors = new Map<string, Float64Array>();
  for (const n of f.names()) if (!n.startsWith('weights.')) tensors.set(n, f.readFloat64(n).data);
  f.close();
  return {
    cfg,
    weights: loadMlaWeights(file, cfg, { prefix: 'weights.' }),
    B: num('batch'),
    P: num('prefill_len'),
    K: num('decode_steps'),
    read(n) {
      const v = tensors.get(n);
      if (v === undefined) throw new Error(`fixture ${name} lacks ${n}`);
      return v;
    },
  };
}

// Runs the fixture's prefill and decode steps; returns each stored output's rel. error.
function replayFixture(fx: Fixture, opts: { pageSize: number; pathRule?: PathRule; f32?: boolean }): Map<string, number> {
  const { cfg, B, P, K } = fx;
  const cache = new LatentCache({ config: cfg, numLayers: 1, numPages: B * Math.ceil((P + K) / opts.pageSize) + 1, pageSize: opts.pageSize, backend: 'reference' });
  const layer = MlaAttention.create({ config: cfg, weights: fx.weights, cache, layer: 0, backend: 'reference', ...(opts.pathRule ? { pathRule: opts.pathRule } : {}) });
  for (let b = 0; b < B; b++) cache.addSequence(b);
  const errs = new Map<string, number>();
  const input = (x: Float64Array): Float64Array | Float32Array => (opts.f32 ? Float32Array.from(x) : x);
  errs.set('y.prefill', relError(layer.forward(input(fx.read('x.prefill')), Array.from({ length: B }, (_, b) => ({ seqId: b, numTokens: P }))), fx.read('y.prefill')));
  for (let k = 0; k < K; k++) {
    const y = layer.forward(input(fx.read(`x.decode.${k}`)), Array.from({ length: B }, (_, b) => ({ seqId: b, numTokens: 1 })));
    errs.set(`y.decode.${k}`, relError(y, fx.read(`y.decode.${k}`)));
  }
  // The cache rows themselves: normalised latent and rotated rope key per token.
  const { kvLoraRank: C, qkRopeHeadDim: R } = cfg;
  const D = C + R;
  const store = cache.hostLayer(0);
  const latent = new Float64Array(B * (P + K) * C);
  const rope = new Float64Array(B * (P + K) * R);
  for (let b = 0; b < B; b++) {
    const pages = cache.pages(b);
    for (let i = 0; i < P + K; i++) {
      const slot = pages[Math.floor(i / opts.pageSize)]! * opts.pageSize + (i % opts.pageSize);
      latent.set(store.subarray(slot * D, slot * D + C), (b * (P + K) + i) * C);
      rope.set(store.subarray(slot * D + C, (slot + 1) * D), (b * (P + K) + i) * R);
    }
  }
  errs.set('cache.latent', relError(latent, fx.read('cache.latent')));
  errs.set('cache.rope', relError(rope, fx.read('cache.rope')));
  layer.dispose();
  cache.dispose();
  return errs;
}

for (const name of ['mla-tiny', 'mla-v3slim']) {
  t.test(`reference backend reproduces fixture ${name}`, async (t) => {
    const fx = openFixture(name);
    const errs = replayFixture(fx, { pageSize: 16 });
    t.equal(errs.size, 3 + fx.K, 'y.prefill, every y.decode.K and both cache tensors checked');
    for (const [k, e] of errs) t.ok(e < TOL, `${k}: rel err ${e.toExponential(2)}`);
    if (name === 'mla-tiny') {
      // Float32 input, an odd page size, and each path forced for every request.
      for (const [label, o] of [
        ['f32 input, pageSize 3', { pageSize: 3, f32: true }],
        ['absorbed path for the prefill too', { pageSize: 5, pathRule: (): AttentionPath => 'decode' }],
        ['naive path for the decodes too', { pageSize: 4, pathRule: (): AttentionPath => 'prefill' }],
      ] as const) {
        for (const [k, e] of replayFixture(fx, o)) t.ok(e < TOL, `${label}: ${k} rel err ${e.toExponential(2)}`);
      }
    }
  });
}

t.test('gpu backend geometry check (no GPU needed)', async (t) => {
  t.throws(() => checkGpuGeometry(openFixture('mla-tiny').cfg, 64), { code: 'ERR_SHAPE', message: /kv_lora_rank 32 \(needs 512\).*v_head_dim 20/ }, 'the tiny fixture is outside what the kernels support');
  const v3 = openFixture('mla-v3slim').cfg;
  t.doesNotThrow(() => checkGpuGeometry(v3, 64));
  t.throws(() => checkGpuGeometry(v3, 48), { code: 'ERR_SHAPE', message: /page size 48/ });
  t.throws(() => checkGpuGeometry({ ...v3, numHeads: 256 }, 64), { code: 'ERR_SHAPE', message: /256 heads/ });
});

t.test('gpu backend reproduces the v3slim fixture within bf16 tolerance', { skip: gpuSkip }, async (t) => {
  const fx = openFixture('mla-v3slim');
  const { cfg, B, P, K } = fx;
  const cache = new LatentCache({ config: cfg, numLayers: 1, numPages: B * Math.ceil((P + K) / 64) + 1, pageSize: 64, backend: 'gpu', dtype: 'bf16' });
  const layer = MlaAttention.create({ config: cfg, weights: fx.weights, cache, layer: 0, backend: 'gpu', dtype: 'bf16' });
  for (let b = 0; b < B; b++) cache.addSequence(b);
  const run = (x: Float64Array, n: number): Float32Array => {
    const h = DeviceTensor.fromArray(Float32Array.from(x), [B * n, cfg.hiddenSize], 'bf16');
    const y = layer.forward(h, Array.from({ length: B }, (_, b) => ({ seqId: b, numTokens: n })));
    const out = y.toFloat32Sync();
    h.dispose();
    y.dispose();
    return out;
  };
  const ep = relError(run(fx.read('x.prefill'), P), fx.read('y.prefill'));
  t.ok(ep < 2e-2, `y.prefill: rel err ${ep.toExponential(2)}`);
  for (let k = 0; k < K; k++) {
    const e = relError(run(fx.read(`x.decode.${k}`), 1), fx.read(`y.decode.${k}`));
    t.ok(e < 2e-2, `y.decode.${k}: rel err ${e.toExponential(2)}`);
  }
  // The cache rows the layer wrote, found through its page table: a slot or position mix-up
  // barely moves y but shows here (the rope half above all).
  const { kvLoraRank: C, qkRopeHeadDim: R } = cfg;
  const store = cache.deviceLayer(0).toFloat32Sync();
  const latent = new Float64Array(B * (P + K) * C);
  const rope = new Float64Array(B * (P + K) * R);
  for (let b = 0; b < B; b++) {
    const pages = cache.pages(b);
    for (let i = 0; i < P + K; i++) {
      const slot = pages[Math.floor(i / 64)]! * 64 + (i % 64);
      latent.set(store.subarray(slot * (C + R), slot * (C + R) + C), (b * (P + K) + i) * C);
      rope.set(store.subarray(slot * (C + R) + C, (slot + 1) * (C + R)), (b * (P + K) + i) * R);
    }
  }
  for (const [name, got] of [['cache.latent', latent], ['cache.rope', rope]] as const) {
    const e = relError(got, fx.read(name));
    t.ok(e < 1e-2, `${name}: rel err ${e.toExponential(2)}`);
  }
  layer.dispose();
  cache.dispose();
});

// q_lora_rank 96 (q_a_proj → norm → q_b_proj) and null (q_proj, V2-Lite style).
for (const qLora of [96, null]) t.test(`gpu backend: mixed batch against the reference backend (q_lora_rank ${String(qLora)})`, { skip: gpuSkip }, async (t) => {
  // DeepSeek head geometry, small hidden size and head count, random weights rounded to bf16.
  const cfg: MlaConfig = mlaConfigFromHuggingFace({ hidden_size: 256, num_attention_heads: 4, q_lora_rank: qLora, kv_lora_rank: 512, qk_nope_head_dim: 128, qk_rope_head_dim: 64, v_head_dim: 128 });
  const w = randomLayerWeights(cfg, 5);
  const bf = (a: Float64Array | null): Float64Array | null => (a === null ? null : roundTo(Float32Array.from(a), 'bf16'));
  const wb: MlaLayerWeights = {
    qAProj: bf(w.qAProj), qALayernorm: w.qALayernorm, qBProj: bf(w.qBProj), qProj: bf(w.qProj),
    kvAProjWithMqa: bf(w.kvAProjWithMqa)!, kvALayernorm: w.kvALayernorm, kvBProj: bf(w.kvBProj)!, oProj: bf(w.oProj)!,
  };
  const gc = new LatentCache({ config: cfg, numLayers: 1, numPages: 16, pageSize: 16, backend: 'gpu' });
  const gl = MlaAttention.create({ config: cfg, weights: wb, cache: gc, layer: 0, backend: 'gpu' });
  const rc = new LatentCache({ config: cfg, numLayers: 1, numPages: 16, pageSize: 16, backend: 'reference' });
  const rl = MlaAttention.create({ config: cfg, weights: wb, cache: rc, layer: 0, backend: 'reference' });
  const steps: BatchEntry[][] = [
    [{ seqId: 'a', numTokens: 20 }, { seqId: 'b', numTokens: 7 }],
    [{ seqId: 'a', numTokens: 1 }, { seqId: 'b', numTokens: 3 }, { seqId: 'c', numTokens: 9 }],
    [{ seqId: 'c', numTokens: 1 }, { seqId: 'a', numTokens: 1 }, { seqId: 'b', numTokens: 1 }],
    // prefill, decode, prefill: three attention launches over one step.
    [{ seqId: 'a', numTokens: 6 }, { seqId: 'b', numTokens: 1 }, { seqId: 'c', numTokens: 5 }],
  ];
  for (const id of ['a', 'b', 'c']) {
    gc.addSequence(id);
    rc.addSequence(id);
  }
  steps.forEach((batch, i) => {
    const T = batch.reduce((a, e) => a + e.numTokens, 0);
    const x = roundTo(Float32Array.from(tokens(cfg, T, 70 + i)), 'bf16');
    const h = DeviceTensor.fromArray(Float32Array.from(x), [T, cfg.hiddenSize], 'bf16');
    const y = gl.forward(h, batch);
    const e = relError(y.toFloat32Sync(), rl.forward(x, batch));
    t.ok(e < 2e-2, `step ${i}: rel err ${e.toExponential(2)}`);
    h.dispose();
    y.dispose();
  });
  t.same(gc.state(), rc.state(), 'both caches hold the same pages and lengths');
  gl.dispose();
  gc.dispose();
  rl.dispose();
  rc.dispose();
});

// A DeepSeek-V2-Lite-shaped layer (no query compression: q_proj), scaled down.
const LITE: MlaConfig = mlaConfigFromHuggingFace({
  hidden_size: 64,
  num_attention_heads: 4,
  q_lora_rank: null,
  kv_lora_rank: 32,
  qk_nope_head_dim: 24,
  qk_rope_head_dim: 16,
  v_head_dim: 20,
  rope_scaling: { type: 'yarn', factor: 40, original_max_position_embeddings: 4096, mscale: 0.707, mscale_all_dim: 0.707 },
});

const W_LITE = randomLayerWeights(LITE, 7);
const TINY: MlaConfig = { ...LITE, hiddenSize: 48, numHeads: 3, qLoraRank: 20 };
const W_TINY = randomLayerWeights(TINY, 11);

function tokens(cfg: MlaConfig, n: number, seed: number): Float64Array {
  return randnArray(n * cfg.hiddenSize, mulberry32(seed));
}

interface Rig {
  cache: LatentCache;
  layer: MlaAttention;
}

function rig(cfg: MlaConfig, w: MlaLayerWeights, numPages = 64, pageSize = 4, extra: { prefillThreshold?: number } = {}): Rig {
  const cache = new LatentCache({ config: cfg, numLayers: 1, numPages, pageSize, backend: 'reference' });
  return { cache, layer: MlaAttention.create({ config: cfg, weights: w, cache, layer: 0, backend: 'reference', ...extra }) };
}

t.test('q_proj path (q_lora_rank null) matches ReferenceMlaLayer, absorbed and naive', async (t) => {
  t.equal(LITE.qLoraRank, null);
  const B = 2;
  const S = 6;
  const ref = new ReferenceMlaLayer(LITE, W_LITE, { batch: B, maxSeqLen: 16, pageSize: 4 });
  const { cache, layer } = rig(LITE, W_LITE);
  cache.addSequence('a');
  cache.addSequence('b');
  const x = tokens(LITE, B * S, 1);
  const want = ref.forward(x, 0).y;
  t.ok(relError(layer.forward(x, [{ seqId: 'a', numTokens: S }, { seqId: 'b', numTokens: S }]), want) < 1e-12, 'prefill');
  for (let k = 0; k < 3; k++) {
    const xd = tokens(LITE, B, 10 + k);
    const wantD = ref.forward(xd, S + k).y;
    const got = layer.forward(xd, [{ seqId: 'a', numTokens: 1 }, { seqId: 'b', numTokens: 1 }]);
    t.ok(relError(got, wantD) < 1e-12, `decode ${k}: rel err ${relError(got, wantD).toExponential(2)}`);
  }
  // The naive reference mode is an independent composition (expand the latent, plain MHA).
  const naive = new ReferenceMlaLayer(LITE, W_LITE, { batch: 1, maxSeqLen: 16, pageSize: 5, mode: 'naive' });
  const r2 = rig(LITE, W_LITE, 16, 4);
  r2.cache.addSequence(0);
  const x2 = tokens(LITE, 9, 3);
  t.ok(relError(r2.layer.forward(x2, [{ seqId: 0, numTokens: 9 }]), naive.forward(x2, 0).y) < 1e-12, 'prefill vs naive reference');
  const xd = tokens(LITE, 1, 4);
  t.ok(relError(r2.layer.forward(xd, [{ seqId: 0, numTokens: 1 }]), naive.forward(xd, 9).y) < 1e-12, 'absorbed decode vs naive reference');
});

// Runs a schedule of steps, each a list of (seq, numTokens); returns every
// sequence's outputs in order, concatenated.
type Schedule = readonly (readonly [SequenceId, number][])[];
function runSchedule(cfg: MlaConfig, w: MlaLayerWeights, schedule: Schedule, inputs: Map<SequenceId, Float64Array>, pageSize = 4): Map<SequenceId, Float64Array> {
  const { cache, layer } = rig(cfg, w, 64, pageSize);
  const hid = cfg.hiddenSize;
  const pos = new Map<SequenceId, number>();
  const outs = new Map<SequenceId, number[]>();
  for (const step of schedule) {
    const batch: BatchEntry[] = [];
    const parts: Float64Array[] = [];
    for (const [id, n] of step) {
      if (!cache.hasSequence(id)) cache.addSequence(id);
      const p = pos.get(id) ?? 0;
      parts.push(inputs.get(id)!.subarray(p * hid, (p + n) * hid));
      pos.set(id, p + n);
      batch.push({ seqId: id, numTokens: n });
    }
    const x = new Float64Array(parts.reduce((a, p) => a + p.length, 0));
    let o = 0;
    for (const p of parts) {
      x.set(p, o);
      o += p.length;
    }
    const y = layer.forward(x, batch);
    o = 0;
    for (const [id, n] of step) {
      const list = outs.get(id) ?? [];
      list.push(...y.subarray(o * hid, (o + n) * hid));
      outs.set(id, list);
      o += n;
    }
  }
  return new Map([...outs].map(([k, v]) => [k, Float64Array.from(v)]));
}

t.test('mixed batches equal each sequence run alone', async (t) => {
  const inputs = new Map<SequenceId, Float64Array>([
    ['A', tokens(TINY, 12, 21)],
    ['B', tokens(TINY, 9, 22)],
    ['C', tokens(TINY, 5, 23)],
  ]);
  // A and B prefill together; then A decodes while B takes a 2-token decode and C
  // starts its prompt; then all three decode one token at different lengths.
  const mixed: Schedule = [
    [['A', 9], ['B', 6]],
    [['A', 1], ['B', 2], ['C', 4]],
    [['C', 1], ['A', 1], ['B', 1]],
    [['A', 1]],
  ];
  const together = runSchedule(TINY, W_TINY, mixed, inputs);
  for (const id of ['A', 'B', 'C']) {
    const alone = runSchedule(TINY, W_TINY, mixed.map((s) => s.filter(([i]) => i === id)).filter((s) => s.length > 0), inputs);
    const e = relError(together.get(id)!, alone.get(id)!);
    t.ok(e < 1e-13, `${id}: batched vs alone rel err ${e.toExponential(2)}`);
  }
});

t.test('a prefill in chunks equals one prefill', async (t) => {
  const inputs = new Map<SequenceId, Float64Array>([['s', tokens(TINY, 11, 31)]]);
  const whole = runSchedule(TINY, W_TINY, [[['s', 10]], [['s', 1]]], inputs).get('s')!;
  for (const chunks of [[6, 4], [3, 7], [2, 2, 2, 2, 2], [5, 5]]) {
    const got = runSchedule(TINY, W_TINY, [...chunks.map((n) => [['s', n]] as [SequenceId, number][]), [['s', 1]]], inputs).get('s')!;
    t.ok(relError(got, whole) < 1e-12, `chunks ${chunks.join('+')} then a decode: rel err ${relError(got, whole).toExponential(2)}`);
  }
});

t.test('fork: shared prefix, private partial page, independent continuations', async (t) => {
  const { cache, layer } = rig(TINY, W_TINY, 32, 4);
  const prompt = tokens(TINY, 10, 41);
  const x1 = tokens(TINY, 1, 42);
  const x2 = tokens(TINY, 1, 43);
  cache.addSequence('p');
  layer.forward(prompt, [{ seqId: 'p', numTokens: 10 }]);
  cache.fork('p', 'q');
  const pp = cache.pages('p');
  const qp = cache.pages('q');
  t.same(qp.slice(0, 2), pp.slice(0, 2), 'full pages are shared');
  t.not(qp[2], pp[2], 'the partially filled page is copied');
  const y = layer.forward(Float64Array.from([...x1, ...x2]), [{ seqId: 'p', numTokens: 1 }, { seqId: 'q', numTokens: 1 }]);
  const solo = (x: Float64Array): Float64Array => {
    const r = rig(TINY, W_TINY, 32, 4);
    r.cache.addSequence(0);
    r.layer.forward(prompt, [{ seqId: 0, numTokens: 10 }]);
    return r.layer.forward(x, [{ seqId: 0, numTokens: 1 }]);
  };
  t.ok(relError(y.subarray(0, TINY.hiddenSize), solo(x1)) < 1e-12, 'the source continues as if never forked');
  t.ok(relError(y.subarray(TINY.hiddenSize), solo(x2)) < 1e-12, 'the fork continues from the shared prefix');
  // Both keep going past the page boundary; then freeing one keeps the other intact.
  const used = cache.pagesInUse;
  cache.freeSequence('p');
  t.equal(cache.pagesInUse, used - 1, "freeing the source returns only its private page; the shared ones stay with the fork");
  const again = layer.forward(tokens(TINY, 3, 44), [{ seqId: 'q', numTokens: 3 }]);
  t.ok(again.every(Number.isFinite), 'the fork still runs after its source is freed');
});

t.test('typed errors leave the cache untouched', async (t) => {
  const { cache, layer } = rig(TINY, W_TINY, 5, 4);
  cache.addSequence('a');
  cache.addSequence('b');
  const ya = layer.forward(tokens(TINY, 6, 51), [{ seqId: 'a', numTokens: 6 }]);
  t.equal(ya.length, 6 * TINY.hiddenSize);
  const snap = (): unknown => ({ state: cache.state(), table: [...cache.blockTable(['a', 'b']).table], store: Float64Array.from(cache.hostLayer(0)) });
  const before = snap();
  const expectErr = (label: string, code: string, fn: () => unknown, pattern: RegExp): void => {
    let err: unknown = null;
    try {
      fn();
    } catch (e) {
      err = e;
    }
    t.ok(err instanceof MlaError && err.code === code && pattern.test(err.message), `${label}: ${code} (${err instanceof Error ? err.message : 'no error'})`);
    t.same(snap(), before, `${label}: cache state, block tables and storage unchanged`);
  };
  // 'a' holds 2 pages, 3 are free: 'b' wants 9 more tokens (3 pages) and 'a' 4 (1 page).
  expectErr('cache exhaustion', 'ERR_CAPACITY', () => layer.forward(tokens(TINY, 13, 52), [{ seqId: 'b', numTokens: 9 }, { seqId: 'a', numTokens: 4 }]), /sequence 'a' needs 1 more page.*4 for the whole step.*3 of 5 are free/);
  expectErr('unknown sequence id', 'ERR_ARGUMENT', () => layer.forward(tokens(TINY, 2, 53), [{ seqId: 'a', numTokens: 1 }, { seqId: 'zz', numTokens: 1 }]), /unknown sequence id 'zz'/);
  expectErr('wrong hidden size', 'ERR_SHAPE', () => layer.forward(new Float64Array(2 * (TINY.hiddenSize + 1)), [{ seqId: 'a', numTokens: 1 }, { seqId: 'b', numTokens: 1 }]), /2 tokens × hidden_size 48/);
  expectErr('bad numTokens', 'ERR_ARGUMENT', () => layer.forward(new Float64Array(0), [{ seqId: 'a', numTokens: 0 }]), /numTokens/);
  expectErr('sequence twice in a batch', 'ERR_ARGUMENT', () => layer.forward(tokens(TINY, 2, 54), [{ seqId: 'a', numTokens: 1 }, { seqId: 'a', numTokens: 1 }]), /appears twice/);
  expectErr('device tensor on the reference backend', 'ERR_ARGUMENT', () => layer.forward({} as unknown as Float64Array, [{ seqId: 'a', numTokens: 1 }]), /Float64Array or Float32Array/);
  expectErr('a path rule answering nonsense rolls back', 'ERR_ARGUMENT', () => {
    const bad = MlaAttention.create({ config: TINY, weights: W_TINY, cache, layer: 0, backend: 'reference', pathRule: () => 'sideways' as 'decode' });
    return bad.forward(tokens(TINY, 1, 55), [{ seqId: 'a', numTokens: 1 }]);
  }, /pathRule/);
  // After all that the layer still computes the right thing.
  const r = rig(TINY, W_TINY, 5, 4);
  r.cache.addSequence('a');
  r.layer.forward(tokens(TINY, 6, 51), [{ seqId: 'a', numTokens: 6 }]);
  const x = tokens(TINY, 1, 56);
  t.ok(relError(layer.forward(x, [{ seqId: 'a', numTokens: 1 }]), r.layer.forward(x, [{ seqId: 'a', numTokens: 1 }])) < 1e-13, 'next step after the errors is exact');

  t.throws(() => MlaAttention.create({ config: TINY, weights: W_LITE, cache, layer: 0, backend: 'reference' }), { code: 'ERR_SHAPE' }, 'weights of another geometry');
  t.throws(() => MlaAttention.create({ config: TINY, weights: W_TINY, cache, layer: 1, backend: 'reference' }), { code: 'ERR_ARGUMENT' }, 'layer outside the cache');
  t.throws(() => MlaAttention.create({ config: TINY, weights: W_TINY, cache, layer: 0, backend: 'gpu' }), { code: 'ERR_ARGUMENT' }, 'reference cache with the gpu backend');
  layer.dispose();
  t.throws(() => layer.forward(x, [{ seqId: 'a', numTokens: 1 }]), { code: 'ERR_DISPOSED', message: /^MlaAttention\.forward: this MlaAttention was disposed$/ });
  t.doesNotThrow(() => layer.dispose(), 'dispose() twice is a no-op');
  t.ok(layer.disposed);
  // A live layer over a disposed cache names the cache.
  const r2 = rig(TINY, W_TINY, 4, 4);
  r2.cache.addSequence('a');
  r2.cache.dispose();
  t.throws(() => r2.layer.forward(x, [{ seqId: 'a', numTokens: 1 }]), { code: 'ERR_DISPOSED', message: /MlaAttention\.forward: its `cache` \(LatentCache\) was disposed/ });
  t.throws(() => MlaAttention.create({ config: TINY, weights: W_TINY, cache: r2.cache, layer: 0, backend: 'reference' }), { code: 'ERR_DISPOSED', message: /`cache` was disposed/ });
  r2.layer.dispose();
});

t.test('forward({ checkFinite: true }) rejects NaN / Infinity in hidden before reserving; off by default', async (t) => {
  const r = rig(TINY, W_TINY, 8, 4);
  r.cache.addSequence('a');
  const hid = TINY.hiddenSize;
  const batch = [{ seqId: 'a', numTokens: 3 }];
  // Token 1, channel 5: flat index hid + 5.
  const cases: [string, Float64Array | Float32Array, number, string][] = [
    ['float64 NaN', tokens(TINY, 3, 80), Number.NaN, 'NaN'],
    ['float64 Infinity', tokens(TINY, 3, 80), Infinity, 'Infinity'],
    ['float32 -Infinity', Float32Array.from(tokens(TINY, 3, 80)), -Infinity, '-Infinity'],
  ];
  for (const [label, x, bad, shown] of cases) {
    x[hid + 5] = bad;
    const before = r.cache.state();
    t.throws(() => r.layer.forward(x, batch, { checkFinite: true }), {
      code: 'ERR_RANGE',
      message: new RegExp(`^MlaAttention\\.forward: \`hidden\` has a non-finite value ${shown} at flat index ${hid + 5}, index \\[1, 5\\] of shape \\[3, ${hid}\\]$`),
    }, label);
    t.same(r.cache.state(), before, `${label}: no cache slot reserved`);
  }
  const x = tokens(TINY, 3, 80);
  x[hid + 5] = Number.NaN;
  const y = r.layer.forward(x, batch);
  t.ok(y.some((v) => Number.isNaN(v)), 'off by default: the NaN goes through to the output');
  t.equal(r.cache.length('a'), 3, 'and the step ran');
  t.ok(r.layer.forward(x, [{ seqId: 'a', numTokens: 3 }], { checkFinite: false }).some((v) => Number.isNaN(v)), 'checkFinite: false likewise');
  const clean = tokens(TINY, 1, 81);
  t.doesNotThrow(() => r.layer.forward(clean, [{ seqId: 'a', numTokens: 1 }], { checkFinite: true }), 'finite input passes the check');
  t.throws(() => r.layer.forward(clean, [{ seqId: 'a', numTokens: 1 }], { checkFinite: 1 as unknown as boolean }), { code: 'ERR_ARGUMENT', message: /`opts\.checkFinite` must be a boolean/ });
  t.throws(() => r.layer.forward(clean, [{ seqId: 'a', numTokens: 1 }], null as unknown as { checkFinite?: boolean }), { code: 'ERR_ARGUMENT', message: /`opts` must be an object/ });
});

t.test('forward({ checkFinite: true }) on the gpu backend checks the downloaded bf16 bits', { skip: gpuSkip }, async (t) => {
  const cfg: MlaConfig = mlaConfigFromHuggingFace({ hidden_size: 256, num_attention_heads: 4, q_lora_rank: 96, kv_lora_rank: 512, qk_nope_head_dim: 128, qk_rope_head_dim: 64, v_head_dim: 128 });
  const gc = new LatentCache({ config: cfg, numLayers: 1, numPages: 4, pageSize: 16, backend: 'gpu' });
  const gl = MlaAttention.create({ config: cfg, weights: randomLayerWeights(cfg, 5), cache: gc, layer: 0, backend: 'gpu' });
  gc.addSequence('a');
  for (const [bad, shown] of [[Infinity, 'Infinity'], [Number.NaN, 'NaN'], [-Infinity, '-Infinity']] as const) {
    const x = Float32Array.from(tokens(cfg, 2, 90));
    x[256 + 7] = bad;
    const h = DeviceTensor.fromArray(x, [2, 256], 'bf16');
    t.throws(() => gl.forward(h, [{ seqId: 'a', numTokens: 2 }], { checkFinite: true }), {
      code: 'ERR_RANGE',
      message: new RegExp(`\`hidden\` has a non-finite value ${shown} at flat index 263, index \\[1, 7\\] of shape \\[2, 256\\]`),
    }, `${shown} in a bf16 DeviceTensor`);
    h.dispose();
  }
  t.equal(gc.length('a'), 0, 'nothing reserved');
  gl.dispose();
  gc.dispose();
});

t.test('forward({ out }) writes the given buffer, bit for bit the output it would allocate', { skip: gpuSkip }, async (t) => {
  const cfg: MlaConfig = mlaConfigFromHuggingFace({ hidden_size: 256, num_attention_heads: 4, q_lora_rank: 96, kv_lora_rank: 512, qk_nope_head_dim: 128, qk_rope_head_dim: 64, v_head_dim: 128 });
  const weights = randomLayerWeights(cfg, 6);
  const twins = [0, 1].map(() => {
    const cache = new LatentCache({ config: cfg, numLayers: 1, numPages: 8, pageSize: 16, backend: 'gpu' });
    const layer = MlaAttention.create({ config: cfg, weights, cache, layer: 0, backend: 'gpu' });
    cache.addSequence('a');
    cache.addSequence('b');
    return { cache, layer };
  });
  const [fresh, given] = twins as [typeof twins[0], typeof twins[0]];
  const out = DeviceTensor.empty([3, 256], 'bf16');
  for (const [k, n] of [[0, 5], [1, 1], [2, 1]] as const) {
    const batch = [{ seqId: 'a', numTokens: n }, { seqId: 'b', numTokens: n === 5 ? 3 : 2 }];
    const T = batch[0]!.numTokens + batch[1]!.numTokens;
    const h = DeviceTensor.fromArray(Float32Array.from(tokens(cfg, T, 40 + k)), [T, 256], 'bf16');
    const want = fresh.layer.forward(h, batch);
    const o = T === 3 ? out : DeviceTensor.empty([T, 256], 'bf16');
    o.fill(Number.NaN);
    const got = given.layer.forward(h, batch, { out: o });
    t.equal(got, o, `step ${k}: returns \`out\` itself`);
    t.same(new Uint16Array(got.toHostSync().buffer), new Uint16Array(want.toHostSync().buffer), `step ${k}: the same bits as the allocated output`);
    want.dispose();
    if (o !== out) o.dispose();
    h.dispose();
  }
  const h = DeviceTensor.fromArray(Float32Array.from(tokens(cfg, 2, 9)), [2, 256], 'bf16');
  const batch = [{ seqId: 'a', numTokens: 1 }, { seqId: 'b', numTokens: 1 }];
  const before = given.cache.state();
  const bad: [string, unknown, string, RegExp][] = [
    ['shape', DeviceTensor.empty([3, 256], 'bf16'), 'ERR_SHAPE', /`opts\.out` must have shape \[2, 256\], got \[3, 256\]/],
    ['dtype', DeviceTensor.empty([2, 256], 'f32'), 'ERR_DTYPE', /`opts\.out` must be bf16, got f32/],
    ['strided', DeviceTensor.empty([2, 512], 'bf16').slice(1, 0, 256), 'ERR_SHAPE', /`opts\.out` must be contiguous/],
    ['not a tensor', new Float32Array(512), 'ERR_ARGUMENT', /`opts\.out` must be a DeviceTensor/],
  ];
  const disposed = DeviceTensor.empty([2, 256], 'bf16');
  disposed.dispose();
  bad.push(['disposed', disposed, 'ERR_DISPOSED', /MlaAttention\.forward: `opts\.out` was disposed/]);
  for (const [what, o, code, message] of bad) {
    t.throws(() => given.layer.forward(h, batch, { out: o as DeviceTensor }), { code, message }, what);
  }
  t.same(given.cache.state(), before, 'a refused `out` reserves nothing');
  h.dispose();
  out.dispose();
  for (const { cache, layer } of twins) {
    layer.dispose();
    cache.dispose();
  }
});

t.test('forward({ out }) is refused on the reference backend', async (t) => {
  const cfg: MlaConfig = mlaConfigFromHuggingFace({ hidden_size: 256, num_attention_heads: 4, q_lora_rank: 96, kv_lora_rank: 512, qk_nope_head_dim: 128, qk_rope_head_dim: 64, v_head_dim: 128 });
  const cache = new LatentCache({ config: cfg, numLayers: 1, numPages: 4, pageSize: 16, backend: 'reference' });
  const layer = MlaAttention.create({ config: cfg, weights: randomLayerWeights(cfg, 6), cache, layer: 0, backend: 'reference' });
  cache.addSequence('a');
  t.throws(() => layer.forward(new Float64Array(256), [{ seqId: 'a', numTokens: 1 }], { out: {} as DeviceTensor }), {
    code: 'ERR_ARGUMENT', message: /`opts\.out` is for the gpu backend/,
  });
  t.equal(cache.length('a'), 0, 'nothing reserved');
});

t.test('layers of one model share a planned step', async (t) => {
  const cache = new LatentCache({ config: TINY, numLayers: 2, numPages: 16, pageSize: 4, backend: 'reference' });
  const w1 = randomLayerWeights(TINY, 99);
  const l0 = MlaAttention.create({ config: TINY, weights: W_TINY, cache, layer: 0, backend: 'reference' });
  const l1 = MlaAttention.create({ config: TINY, weights: w1, cache, layer: 1, backend: 'reference' });
  cache.addSequence(0);
  const single0 = rig(TINY, W_TINY, 16, 4);
  const single1 = rig(TINY, w1, 16, 4);
  single0.cache.addSequence(0);
  single1.cache.addSequence(0);
  for (const n of [7, 1, 1]) {
    const x = tokens(TINY, n, 60 + n);
    const step = cache.planStep([{ seqId: 0, numTokens: n }]);
    const h = l1.forward(l0.forward(x, step), step);
    const want = single1.layer.forward(single0.layer.forward(x, [{ seqId: 0, numTokens: n }]), [{ seqId: 0, numTokens: n }]);
    t.ok(relError(h, want) < 1e-13, `${n} token(s): two layers on one plan equal two separate single-layer caches`);
  }
  t.equal(cache.length(0), 9, 'the plan reserved once for both layers');
  const old = cache.planStep([{ seqId: 0, numTokens: 1 }]);
  cache.planStep([{ seqId: 0, numTokens: 1 }]);
  t.throws(() => l0.forward(tokens(TINY, 1, 1), old), { code: 'ERR_ARGUMENT', message: /latest plan/ }, 'a stale plan is refused');
});

t.test('gpu layers on one stream plan a decode step once (the others reuse it); layers on their own streams plan their own', { skip: gpuSkip }, async (t) => {
  const cfg: MlaConfig = mlaConfigFromHuggingFace({ hidden_size: 256, num_attention_heads: 4, q_lora_rank: 96, kv_lora_rank: 512, qk_nope_head_dim: 128, qk_rope_head_dim: 64, v_head_dim: 128 });
  const weights = [0, 1, 2].map((l) => randomLayerWeights(cfg, 70 + l));
  const shared = new Stream();
  const apart = [new Stream(), new Stream(), new Stream()];
  // Two models over identical caches and inputs: all layers on `shared`, or each on its own stream.
  const model = (streams: readonly Stream[]): { cache: LatentCache; layers: MlaAttention[] } => {
    const cache = new LatentCache({ config: cfg, numLayers: 3, numPages: 16, pageSize: 16, backend: 'gpu' });
    const layers = weights.map((w, l) => MlaAttention.create({ config: cfg, weights: w, cache, layer: l, backend: 'gpu', stream: streams[l] }));
    cache.addSequence('a');
    cache.addSequence('b');
    return { cache, layers };
  };
  const one = model([shared, shared, shared]);
  const sep = model(apart);
  const run = (m: typeof one, streams: readonly Stream[], batch: BatchEntry[], seed: number): Uint16Array => {
    const T = batch.reduce((n, e) => n + e.numTokens, 0);
    const step = m.cache.planStep(batch);
    let h = DeviceTensor.fromArray(Float32Array.from(tokens(cfg, T, seed)), [T, 256], 'bf16');
    m.layers.forEach((layer, l) => {
      const next = layer.forward(h, step);
      streams[l]!.synchronize(); // the next layer may run on another stream
      h.dispose();
      h = next;
    });
    const bits = new Uint16Array(h.toHostSync().buffer);
    h.dispose();
    return bits;
  };
  try {
    run(one, [shared, shared, shared], [{ seqId: 'a', numTokens: 21 }, { seqId: 'b', numTokens: 9 }], 80);
    run(sep, apart, [{ seqId: 'a', numTokens: 21 }, { seqId: 'b', numTokens: 9 }], 80);
    for (let k = 0; k < 3; k++) {
      const batch = [{ seqId: 'a', numTokens: 1 }, { seqId: 'b', numTokens: 1 }];
      const before = [sharedPlanCounts(one.cache, shared), ...apart.map((s) => sharedPlanCounts(sep.cache, s))];
      const got = run(one, [shared, shared, shared], batch, 81 + k);
      const want = run(sep, apart, batch, 81 + k);
      t.same(got, want, `decode step ${k}: three layers on one plan give the bits of three layers planning their own`);
      const after = [sharedPlanCounts(one.cache, shared), ...apart.map((s) => sharedPlanCounts(sep.cache, s))];
      const delta = after.map((c, i) => [c.planned - before[i]!.planned, c.reused - before[i]!.reused]);
      t.same(delta, [[1, 2], [1, 0], [1, 0], [1, 0]], `decode step ${k}: planned once and reused twice on the shared stream; once per layer on their own`);
    }
  } finally {
    for (const m of [one, sep]) {
      for (const l of m.layers) l.dispose();
      m.cache.dispose();
    }
    for (const s of [shared, ...apart]) s.dispose();
  }
  t.same(sharedPlanCounts(one.cache, shared), { planned: 0, reused: 0 }, 'the shared workspace went with the last layer');
});

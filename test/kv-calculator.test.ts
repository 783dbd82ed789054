// KV-cache sizes: DeepSeek-V3's MLA (576 values per token per layer) against MHA,
// GQA and MQA of the same head geometry (k 192 + v 128 per head).

import t from 'tap';
import { MLA_PRESETS } from '../lib/config.js';
import { compareKvCaches, formatBytes, kvCacheEstimate, kvGeometry, kvValuesPerToken } from '../lib/kv-calculator.js';
import { LatentCache } from '../lib/latent-cache.js';

const V3 = MLA_PRESETS['deepseek-v3'];

t.test('DeepSeek-V3 numbers', async (t) => {
  const g = kvGeometry(V3);
  t.same(g, { numHeads: 128, headDimK: 192, headDimV: 128, kvLoraRank: 512, ropeDim: 64 });
  t.equal(kvValuesPerToken('mla', g), 576);
  t.equal(kvValuesPerToken('mha', g), 40960, 'MHA: 128 heads × (192 k + 128 v)');
  t.equal(kvValuesPerToken('mqa', g), 320);
  t.equal(kvValuesPerToken('gqa', g, 8), 2560);
  const mla = kvCacheEstimate('mla', g, { dtype: 'bf16', numLayers: 61 });
  t.equal(mla.bytesPerTokenPerLayer, 1152, 'MLA bf16: 576 · 2 B per token per layer');
  t.equal(mla.bytesPerToken, 70272, '61 layers');
  const mha = kvCacheEstimate('mha', g, { dtype: 'bf16', numLayers: 61, contextLength: 32768, batch: 4 });
  t.equal(mha.bytesPerTokenPerLayer, 81920);
  t.equal(mha.bytesPerToken, 4997120);
  t.equal(mha.totalBytes, 4997120 * 32768 * 4);
  t.equal(mha.bytesPerToken / mla.bytesPerToken, 40960 / 576, 'MLA caches 71× less than MHA');
  const fp8 = kvCacheEstimate('mla', g, { dtype: 'fp8', numLayers: 61, contextLength: 4096, batch: 2 });
  t.equal(fp8.totalBytes, 576 * 61 * 4096 * 2);
  const cmp = compareKvCaches(V3, { dtype: 'bf16', numLayers: 61, groups: 16 });
  t.same(cmp.map((e) => [e.kind, e.bytesPerTokenPerLayer]), [['mha', 81920], ['gqa', 10240], ['mqa', 640], ['mla', 1152]]);
  t.same(compareKvCaches(V3, { dtype: 'f32', numLayers: 1 }).map((e) => e.kind), ['mha', 'mqa', 'mla']);
});

t.test('agrees with the bf16 LatentCache layout', async (t) => {
  // The GPU cache reports the same per-token bytes; a reference cache stores float64.
  const ref = new LatentCache({ config: V3, numLayers: 61, numPages: 1, pageSize: 1, backend: 'reference' });
  t.same(ref.bytesPerToken, { perLayer: 576 * 8, total: 576 * 8 * 61 });
  t.equal(kvCacheEstimate('mla', kvGeometry(V3), { dtype: 'f32', numLayers: 61 }).bytesPerToken * 2, ref.bytesPerToken.total);
});

t.test('errors and formatting', async (t) => {
  const g = kvGeometry(V3);
  t.throws(() => kvValuesPerToken('gqa', g), { code: 'ERR_ARGUMENT', message: /groups/ });
  t.throws(() => kvValuesPerToken('gqa', g, 3), { code: 'ERR_ARGUMENT' });
  t.throws(() => kvValuesPerToken('xxx' as 'mla', g), { code: 'ERR_ARGUMENT' });
  t.throws(() => kvCacheEstimate('mla', g, { dtype: 'f64' as 'f32', numLayers: 1 }), { code: 'ERR_DTYPE' });
  t.throws(() => kvCacheEstimate('mla', g, { dtype: 'bf16', numLayers: 0 }), { code: 'ERR_ARGUMENT', message: /numLayers/ });
  t.throws(() => kvCacheEstimate('mla', g, { dtype: 'bf16', numLayers: 1, batch: -1 }), { code: 'ERR_ARGUMENT', message: /batch/ });
  t.equal(formatBytes(1152), '1.1 KiB');
  t.equal(formatBytes(70272), '68.6 KiB');
  t.equal(formatBytes(512), '512 B');
  t.equal(formatBytes(3 * 1024 ** 3), '3.0 GiB');
});

t.test('the layer benchmark counts the cache bytes the calculator gives', async (t) => {
  const { suite, stageCost } = await import('../lib/bench/layer.js');
  const cases = suite.cases({ quick: false });
  t.equal(cases.length, 5 * 2 * 12, 'B ∈ {1, 8, 32, 64, 128} × ctx ∈ {4k, 32k} × (step + graph + 10 kernels)');
  t.same(stageCost('graph', { b: 8, ctx: 4096 }), stageCost('step', { b: 8, ctx: 4096 }), 'the captured step does the same work');
  t.ok(cases.some((c) => c.name === 'step b128 ctx32768'));
  const dec = stageCost('decode', { b: 32, ctx: 4096 });
  const mla = kvCacheEstimate('mla', kvGeometry(V3), { dtype: 'bf16', numLayers: 1, contextLength: 4096, batch: 32 });
  t.ok(dec.bytes > mla.totalBytes && dec.bytes < mla.totalBytes * 1.1, 'decode reads the whole latent cache once, plus q and out');
  const step = stageCost('step', { b: 1, ctx: 4096 });
  t.ok(step.bytes > 2 * 180e6, 'a batch-1 step is dominated by reading ~187M bf16 weights');
  t.same(suite.cases({ quick: true, grid: { stage: ['o_proj'], b: [4] } }).map((c) => c.name), ['o_proj b4 ctx4096']);
  t.throws(() => suite.cases({ quick: true, grid: { stage: ['warp'] } }), /unknown stage warp/);
});

// Loading one layer's attention weights: the fixtures, sharded checkpoints with an
// index, FP8 block dequantization, the q_proj variant, and the errors for missing or
// mis-shaped tensors.

import t from 'tap';
import type { Test } from 'tap';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { mlaConfigFromHuggingFace, MLA_PRESETS, type MlaConfig } from '../lib/config.js';
import { MlaError } from '../lib/errors.js';
import { loadLayerWeights } from '../lib/reference/index.js';
import { floatToE4m3, SafetensorsFile, writeSafetensors, type TensorToWrite } from '../lib/safetensors.js';
import { dequantizeBlocks, FP8_BLOCK, layerPrefix, loadMlaConfig, loadMlaWeights, toReferenceWeights } from '../lib/weights.js';
import { mulberry32, randnArray } from '../lib/reference/util.js';

const TINY = fileURLToPath(new URL('./fixtures/mla-tiny.safetensors', import.meta.url));

function expectMlaError(t: Test, fn: () => unknown, code: string, pattern: RegExp, label: string): void {
  let err: unknown = null;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  t.ok(err instanceof MlaError && err.code === code && pattern.test(err.message), `${label}: ${err instanceof Error ? err.message : 'no error thrown'}`);
}

// [out, in] shapes of every attention weight of a config, by short name.
function shapesOf(cfg: MlaConfig): [string, number[]][] {
  const { hiddenSize: hid, numHeads: H, qLoraRank: q, kvLoraRank: C, qkNopeHeadDim: N, qkRopeHeadDim: R, vHeadDim: V } = cfg;
  const qPart: [string, number[]][] = q === null ? [['q_proj', [H * (N + R), hid]]] : [['q_a_proj', [q, hid]], ['q_a_layernorm', [q]], ['q_b_proj', [H * (N + R), q]]];
  return [...qPart, ['kv_a_proj_with_mqa', [C + R, hid]], ['kv_a_layernorm', [C]], ['kv_b_proj', [H * (N + V), C]], ['o_proj', [hid, H * V]]];
}

function randomTensors(cfg: MlaConfig, prefix: string, seed: number, dtype: 'BF16' | 'F16' | 'F32' = 'BF16'): [string, TensorToWrite][] {
  const rng = mulberry32(seed);
  return shapesOf(cfg).map(([n, shape]) => [`${prefix}${n}.weight`, { dtype, shape, data: randnArray(shape.reduce((a, b) => a * b, 1), rng, 0.1) }]);
}

function swap(list: [string, TensorToWrite][], suffix: string, fn: (v: TensorToWrite) => TensorToWrite): [string, TensorToWrite][] {
  return list.map(([n, v]): [string, TensorToWrite] => [n, n.endsWith(suffix) || n.endsWith(`${suffix}.weight`) ? fn(v) : v]);
}

t.test('fixture weights load exactly as the reference loader reads them', async (t) => {
  const cfg = loadMlaConfig(TINY);
  t.equal(cfg.hiddenSize, 96);
  const w = loadMlaWeights(TINY, cfg, { prefix: 'weights.' });
  const f = SafetensorsFile.open(TINY);
  const ref = loadLayerWeights(f, 'weights.');
  f.close();
  const mine = toReferenceWeights(w);
  for (const k of Object.keys(ref) as (keyof typeof ref)[]) t.same(mine[k], ref[k], `${k} identical`);
  t.equal(w.qProj, null, 'q_proj absent with query compression');
  t.equal(w.kvBProj.storedDtype, 'BF16');
  t.same(w.kvBProj.shape, [3 * (24 + 20), 32]);
  t.equal(w.kvBProj.file, TINY);
});

t.test('loadMlaConfig reads config.json, a directory, or fixture metadata', async (t) => {
  const dir = t.testdir({
    'config.json': JSON.stringify({ hidden_size: 2048, num_attention_heads: 16, q_lora_rank: null, kv_lora_rank: 512, qk_nope_head_dim: 128, qk_rope_head_dim: 64, v_head_dim: 128, rope_scaling: { type: 'yarn', factor: 40, original_max_position_embeddings: 4096, mscale: 0.707, mscale_all_dim: 0.707 }, max_position_embeddings: 163840, rms_norm_eps: 1e-6, rope_theta: 10000 }),
    'bad.json': '{ not json',
    'wrong.json': JSON.stringify({ hidden_size: -1 }),
  });
  const byDir = loadMlaConfig(dir);
  t.same(byDir, MLA_PRESETS['deepseek-v2-lite'], 'a V2-Lite config.json gives the preset');
  t.same(loadMlaConfig(path.join(dir, 'config.json')), byDir);
  expectMlaError(t, () => loadMlaConfig(path.join(dir, 'bad.json')), 'ERR_FORMAT', /bad\.json is not valid JSON/, 'invalid JSON');
  expectMlaError(t, () => loadMlaConfig(path.join(dir, 'wrong.json')), 'ERR_FORMAT', /wrong\.json.*hidden_size/, 'invalid field');
  expectMlaError(t, () => loadMlaConfig(path.join(dir, 'nope.json')), 'ERR_ARGUMENT', /cannot read .*nope\.json/, 'missing file');
});

const SMALL: MlaConfig = mlaConfigFromHuggingFace({ hidden_size: 32, num_attention_heads: 2, q_lora_rank: 24, kv_lora_rank: 16, qk_nope_head_dim: 8, qk_rope_head_dim: 4, v_head_dim: 6 });
const SMALL_LITE: MlaConfig = { ...SMALL, qLoraRank: null };

t.test('sharded checkpoint: index.json weight_map, by layer index, each shard opened once', async (t) => {
  const dir = t.testdir({});
  const l0 = randomTensors(SMALL, layerPrefix(0), 1);
  const l3 = randomTensors(SMALL, layerPrefix(3), 2);
  // Layer 3 is split across two shards; a third shard holds only layer 0.
  writeSafetensors(path.join(dir, 'model-00001-of-00003.safetensors'), [...l3.slice(0, 3), ['model.embed_tokens.weight', { dtype: 'F32', shape: [4, 4], data: new Float32Array(16) }]]);
  writeSafetensors(path.join(dir, 'model-00002-of-00003.safetensors'), l3.slice(3));
  writeSafetensors(path.join(dir, 'model-00003-of-00003.safetensors'), l0);
  const weightMap: Record<string, string> = {};
  for (const [n] of l3.slice(0, 3)) weightMap[n] = 'model-00001-of-00003.safetensors';
  for (const [n] of l3.slice(3)) weightMap[n] = 'model-00002-of-00003.safetensors';
  for (const [n] of l0) weightMap[n] = 'model-00003-of-00003.safetensors';
  fs.writeFileSync(path.join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: {}, weight_map: weightMap }));
  const opened: string[] = [];
  const open = SafetensorsFile.open.bind(SafetensorsFile);
  SafetensorsFile.open = (p: string): SafetensorsFile => {
    opened.push(path.basename(p));
    return open(p);
  };
  let w;
  try {
    w = loadMlaWeights(dir, SMALL, { layer: 3 });
  } finally {
    SafetensorsFile.open = open;
  }
  t.same(opened.sort(), ['model-00001-of-00003.safetensors', 'model-00002-of-00003.safetensors'], 'only the two shards of layer 3, each opened once');
  t.equal(w.qAProj!.name, 'model.layers.3.self_attn.q_a_proj.weight');
  t.match(w.oProj.file, /model-00002-of-00003/);
  t.same(w.kvBProj.data, readStored(path.join(dir, 'model-00002-of-00003.safetensors'), 'model.layers.3.self_attn.kv_b_proj.weight'), 'kv_b_proj values');
  const w0 = loadMlaWeights(dir, SMALL, { layer: 0 });
  t.match(w0.qAProj!.file, /model-00003/);
  // Without an index every shard header is searched.
  fs.unlinkSync(path.join(dir, 'model.safetensors.index.json'));
  t.same(loadMlaWeights(dir, SMALL, { layer: 3 }).oProj.data, w.oProj.data, 'same weights without the index');
  expectMlaError(t, () => loadMlaWeights(dir, SMALL, { layer: 7 }), 'ERR_ARGUMENT', /'model\.layers\.7\.self_attn\.q_a_proj\.weight' is missing/, 'a layer the checkpoint lacks');
  // Malformed files: an index that is not JSON, one pointing outside the directory, a truncated shard.
  fs.writeFileSync(path.join(dir, 'model.safetensors.index.json'), '{"weight_map": ');
  expectMlaError(t, () => loadMlaWeights(dir, SMALL, { layer: 3 }), 'ERR_FORMAT', /cannot parse .*model\.safetensors\.index\.json/, 'broken index');
  fs.writeFileSync(path.join(dir, 'model.safetensors.index.json'), JSON.stringify({ weight_map: { x: '../evil.safetensors' } }));
  expectMlaError(t, () => loadMlaWeights(dir, SMALL, { layer: 3 }), 'ERR_FORMAT', /weight_map\['x'\] is not a shard file name/, 'shard outside the checkpoint');
  fs.unlinkSync(path.join(dir, 'model.safetensors.index.json'));
  const shard = path.join(dir, 'model-00002-of-00003.safetensors');
  fs.truncateSync(shard, fs.statSync(shard).size - 10);
  expectMlaError(t, () => loadMlaWeights(dir, SMALL, { layer: 3 }), 'ERR_FORMAT', /model-00002-of-00003\.safetensors/, 'truncated shard');
});

// Reads one tensor's values (float32) straight from a shard, for comparison.
function readStored(file: string, name: string): Float32Array {
  const f = SafetensorsFile.open(file);
  try {
    return f.readFloat32(name).data;
  } finally {
    f.close();
  }
}

t.test('q_proj checkpoints (q_lora_rank null) and stored dtypes', async (t) => {
  const dir = t.testdir({});
  const file = path.join(dir, 'lite.safetensors');
  writeSafetensors(file, [...randomTensors(SMALL_LITE, 'weights.', 3, 'F16'), ['weights.q_a_proj.weight', { dtype: 'F32', shape: [1], data: [1] }]]);
  const w = loadMlaWeights(file, SMALL_LITE, { prefix: 'weights.' });
  t.equal(w.qAProj, null, 'q_a_proj ignored when the config has no query compression');
  t.same(w.qProj!.shape, [2 * 12, 32]);
  t.equal(w.qProj!.storedDtype, 'F16');
  const ref = toReferenceWeights(w);
  t.equal(ref.qBProj, null);
  t.equal(ref.qProj!.length, 24 * 32);
});

t.test('missing and mis-shaped tensors name the tensor and the file', async (t) => {
  const dir = t.testdir({});
  const file = path.join(dir, 'w.safetensors');
  const tensors = randomTensors(SMALL, 'weights.', 4);
  writeSafetensors(file, tensors.filter(([n]) => !n.includes('kv_a_layernorm')));
  expectMlaError(t, () => loadMlaWeights(file, SMALL, { prefix: 'weights.' }), 'ERR_ARGUMENT', /'weights\.kv_a_layernorm\.weight' is missing from .*w\.safetensors/, 'missing tensor');
  const bad = path.join(dir, 'bad.safetensors');
  writeSafetensors(bad, swap(tensors, 'o_proj', (v) => ({ ...v, shape: [6 * 2, 32] })));
  expectMlaError(t, () => loadMlaWeights(bad, SMALL, { prefix: 'weights.' }), 'ERR_SHAPE', /'weights\.o_proj\.weight' in .*bad\.safetensors has shape \[12, 32\], the config needs \[32, 12\]/, 'transposed o_proj');
  expectMlaError(t, () => loadMlaWeights(file, SMALL_LITE, { prefix: 'weights.' }), 'ERR_ARGUMENT', /q_proj\.weight' is missing/, 'q_proj expected by the config');
  const i8 = path.join(dir, 'i8.safetensors');
  writeSafetensors(i8, swap(tensors, 'kv_b_proj', (v) => ({ dtype: 'I8', shape: v.shape, data: new Int8Array(v.shape[0]! * v.shape[1]!) })));
  expectMlaError(t, () => loadMlaWeights(i8, SMALL, { prefix: 'weights.' }), 'ERR_ARGUMENT', /kv_b_proj\.weight' in .*has dtype I8/, 'integer weights');
  expectMlaError(t, () => loadMlaWeights(path.join(dir, 'none'), SMALL), 'ERR_ARGUMENT', /cannot read/, 'missing path');
  expectMlaError(t, () => loadMlaWeights(file, SMALL, { layer: -1 }), 'ERR_ARGUMENT', /layer/, 'negative layer');
});

t.test('FP8 e4m3 weights with 128×128 block scale_inv are dequantized on load', async (t) => {
  // A DeepSeek-V3-style layer whose projections do not divide into whole blocks.
  const cfg: MlaConfig = mlaConfigFromHuggingFace({ hidden_size: 200, num_attention_heads: 2, q_lora_rank: 136, kv_lora_rank: 144, qk_nope_head_dim: 16, qk_rope_head_dim: 8, v_head_dim: 12 });
  const rng = mulberry32(5);
  const dir = t.testdir({});
  const entries: [string, TensorToWrite][] = [];
  const expected = new Map<string, Float32Array>();
  for (const [n, shape] of shapesOf(cfg)) {
    const name = `model.layers.0.self_attn.${n}.weight`;
    const numel = shape.reduce((a, b) => a * b, 1);
    if (shape.length === 1) {
      const v = Float32Array.from(randnArray(numel, rng));
      entries.push([name, { dtype: 'BF16', shape, data: v }]);
      continue;
    }
    const [rows, cols] = shape as [number, number];
    const sr = Math.ceil(rows / FP8_BLOCK);
    const sc = Math.ceil(cols / FP8_BLOCK);
    const scale = Float32Array.from({ length: sr * sc }, (_, i) => 2 ** -(i % 5) * (1 + i / 7));
    const codes = Uint8Array.from({ length: numel }, () => floatToE4m3((rng() * 2 - 1) * 400));
    const want = new Float32Array(numel);
    const e4m3 = new E4m3Decoder();
    for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) {
      want[r * cols + c] = Math.fround(e4m3.decode(codes[r * cols + c]!) * scale[Math.floor(r / 128) * sc + Math.floor(c / 128)]!);
    }
    expected.set(name, want);
    entries.push([name, { dtype: 'F8_E4M3', shape, data: codes }]);
    entries.push([`${name}_scale_inv`, { dtype: 'F32', shape: [sr, sc], data: scale }]);
  }
  const file = path.join(dir, 'model.safetensors');
  writeSafetensors(file, entries);
  const w = loadMlaWeights(dir, cfg, { layer: 0 });
  t.equal(w.oProj.storedDtype, 'F8_E4M3');
  for (const hw of [w.qAProj!, w.qBProj!, w.kvAProjWithMqa, w.kvBProj, w.oProj]) {
    t.same(hw.data, expected.get(hw.name), `${hw.name.split('.').slice(-2).join('.')} [${hw.shape.join(', ')}] = fp8 · scale_inv[block]`);
  }
  // Edge blocks: the last row/column block of kv_b_proj [2·28, 144] uses scale [0, 1].
  t.ok(w.kvBProj.data.some((v) => v !== 0));

  // Missing or mis-shaped scales.
  const noScale = path.join(dir, 'noscale');
  fs.mkdirSync(noScale);
  writeSafetensors(path.join(noScale, 'model.safetensors'), entries.filter(([n]) => !n.endsWith('o_proj.weight_scale_inv')));
  expectMlaError(t, () => loadMlaWeights(noScale, cfg), 'ERR_ARGUMENT', /o_proj\.weight' in .* is F8_E4M3 but its block scales 'model\.layers\.0\.self_attn\.o_proj\.weight_scale_inv' are missing/, 'missing scale_inv');
  const badScale = path.join(dir, 'badscale');
  fs.mkdirSync(badScale);
  writeSafetensors(path.join(badScale, 'model.safetensors'), swap(entries, 'kv_b_proj.weight_scale_inv', () => ({ dtype: 'F32', shape: [2, 1], data: [1, 1] })));
  expectMlaError(t, () => loadMlaWeights(badScale, cfg), 'ERR_SHAPE', /kv_b_proj\.weight_scale_inv' in .* has shape \[2, 1\].*needs \[1, 2\]/, 'mis-shaped scale_inv');

  t.same(dequantizeBlocks(Float32Array.from([1, 2, 3, 4]), 2, 2, Float32Array.from([0.5])), Float32Array.from([0.5, 1, 1.5, 2]), 'dequantizeBlocks on one block');
  t.throws(() => dequantizeBlocks(new Float32Array(4), 2, 2, new Float32Array(2)), { code: 'ERR_SHAPE' });
});

// e4m3 decoding written out independently of lib/safetensors.ts.
class E4m3Decoder {
  decode(bits: number): number {
    const s = bits & 0x80 ? -1 : 1;
    const e = (bits >> 3) & 15;
    const m = bits & 7;
    if (e === 15 && m === 7) return NaN;
    return e === 0 ? s * (m / 8) * 2 ** -6 : s * (1 + m / 8) * 2 ** (e - 7);
  }
}

t.test('checkFinite (on by default) rejects NaN / Infinity in a weight, naming tensor, index and value', async (t) => {
  const dir = t.testdir({});
  const prefix = layerPrefix(0);
  const kva = `${prefix}kv_a_proj_with_mqa.weight`;
  const [C, R, hid] = [SMALL.kvLoraRank, SMALL.qkRopeHeadDim, SMALL.hiddenSize];
  // Row 3, column 5 of kv_a_proj_with_mqa [C + R, hid]: flat index 3·hid + 5.
  const flat = 3 * hid + 5;
  const cases: [string, 'BF16' | 'F16' | 'F32', number, string][] = [
    ['nan-bf16', 'BF16', Number.NaN, 'NaN'],
    ['inf-f32', 'F32', Infinity, 'Infinity'],
    ['ninf-f16', 'F16', -Infinity, '-Infinity'],
  ];
  for (const [name, dtype, bad, shown] of cases) {
    const file = path.join(dir, `${name}.safetensors`);
    writeSafetensors(file, swap(randomTensors(SMALL, prefix, 9, dtype), 'kv_a_proj_with_mqa', (v) => {
      const data = Float64Array.from(v.data as Float64Array);
      data[flat] = bad;
      return { ...v, data };
    }));
    const pattern = new RegExp(`loadMlaWeights: weights "${kva.replace(/\./g, '\\.')}" \\(in .*${name}\\.safetensors\\) has a non-finite value ${shown} at flat index ${flat}, index \\[3, 5\\] of shape \\[${C + R}, ${hid}\\]`);
    expectMlaError(t, () => loadMlaWeights(file, SMALL), 'ERR_RANGE', pattern, `${shown} in ${dtype}`);
    const w = loadMlaWeights(file, SMALL, { checkFinite: false });
    t.ok(Object.is(w.kvAProjWithMqa.data[flat], bad), `checkFinite: false lets ${shown} through`);
  }
  // The float64 reference loader checks too (the fixture path), with the same opt-out.
  const file = path.join(dir, 'nan-bf16.safetensors');
  const f = SafetensorsFile.open(file);
  expectMlaError(t, () => loadLayerWeights(f, prefix), 'ERR_RANGE', new RegExp(`loadLayerWeights: weights "${kva.replace(/\./g, '\\.')}" has a non-finite value NaN at flat index ${flat}, index \\[3, 5\\]`), 'loadLayerWeights');
  t.ok(Number.isNaN(loadLayerWeights(f, prefix, { checkFinite: false }).kvAProjWithMqa[flat]), 'loadLayerWeights checkFinite: false');
  f.close();
  expectMlaError(t, () => loadMlaWeights(TINY, loadMlaConfig(TINY), { prefix: 'weights.', checkFinite: 'no' as unknown as boolean }), 'ERR_ARGUMENT', /`opts.checkFinite` must be a boolean/, 'a non-boolean flag');
});

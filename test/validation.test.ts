// Bad calls to the public entry points (lib/index.ts) throw MlaError with a code and a message
// naming the argument, never V8's RangeError / TypeError from deep inside (an invalid typed
// array length, a property of undefined). One table; each row is one bad call.

import t from 'tap';
import { fileURLToPath } from 'node:url';
import {
  checkWeightsFit,
  compareKvCaches,
  DeviceTensor,
  dequantizeBlocks,
  kvCacheEstimate,
  kvGeometry,
  LatentCache,
  loadMlaConfig,
  loadMlaWeights,
  MLA_PRESETS,
  MlaAttention,
  MlaError,
  reference as r,
  softmaxScale,
  toReferenceWeights,
  validateMlaConfig,
  writeSafetensors,
  type MlaConfig,
} from '../lib/index.js';
import { allocHost, MAX_HOST_ELEMENTS } from '../lib/check.js';
import { gpuSkip } from './helpers/gpu.js';
import { throwsNaming } from './helpers/validation.js';

const TINY = fileURLToPath(new URL('./fixtures/mla-tiny.safetensors', import.meta.url));
const V3 = MLA_PRESETS['deepseek-v3'];
const f64 = (n: number): Float64Array => new Float64Array(n);
const rng = r.mulberry32(1);
// Deliberately ill-typed arguments, as a JavaScript caller could pass them.
const bad = <T>(v: unknown): T => v as T;

const decodeArgs = (): Parameters<typeof r.decode>[0] => ({
  q: f64(2 * 8), cache: f64(4 * 8), pageSize: 4, blockTable: Int32Array.from([0]), seqLens: [4], qSeqLens: 1, numHeads: 2, dimLatent: 6, scale: 0.1, causal: true,
});
const table = r.ropeTable(V3, 8);
const absorbed = r.splitKvBProj(f64(2 * (3 + 4) * 5), { numHeads: 2, qkNopeHeadDim: 3, vHeadDim: 4, kvLoraRank: 5 });

// [label, call, code, argument named in backticks]
const CASES: [string, () => unknown, string, string][] = [
  // linear: sizes, types, and an output past what a typed array holds (1e12 float64 = 8 TB).
  ['linear rows negative', () => r.linear(f64(4), -1, 4, f64(4), 1), 'ERR_RANGE', 'rows'],
  ['linear rows fractional', () => r.linear(f64(4), 1.5, 4, f64(4), 1), 'ERR_ARGUMENT', 'rows'],
  ['linear rows × inFeatures past 2^53', () => r.linear(f64(4), 1e12, 1e12, f64(4), 2), 'ERR_RANGE', 'rows'],
  ['linear x missing', () => r.linear(bad(undefined), 1, 4, f64(4), 1), 'ERR_ARGUMENT', 'x'],
  ['linear x short', () => r.linear(f64(3), 1, 4, f64(4), 1), 'ERR_SHAPE', 'x'],
  ['linear output of 1e12 values', () => r.linear(f64(1e6), 1e6, 1, f64(1e6), 1e6), 'ERR_RANGE', 'rows'],
  // rmsnorm: a stride-0 input makes a huge `rows` cheap to pass; the output then cannot be allocated.
  ['rmsnorm output of 4e12 values', () => r.rmsNorm(f64(4), 1e12, 4, f64(4), 1e-6, { inStride: 0 }), 'ERR_RANGE', 'rows'],
  ['rmsnorm x missing', () => r.rmsNorm(bad(undefined), 1, 4, f64(4), 1e-6), 'ERR_ARGUMENT', 'x'],
  ['rmsnorm eps NaN', () => r.rmsNorm(f64(4), 1, 4, f64(4), NaN), 'ERR_ARGUMENT', 'eps'],
  ['rmsnorm strides null', () => r.rmsNorm(f64(4), 1, 4, f64(4), 1e-6, bad(null)), 'ERR_ARGUMENT', 'strides'],
  // decode
  ['decode args missing', () => r.decode(bad(undefined)), 'ERR_ARGUMENT', 'args'],
  ['decode seqLens not an array', () => r.decode({ ...decodeArgs(), seqLens: bad(4) }), 'ERR_ARGUMENT', 'seqLens'],
  ['decode seqLens negative', () => r.decode({ ...decodeArgs(), seqLens: [-1] }), 'ERR_RANGE', 'seqLens[0]'],
  ['decode dimLatent past the head dim', () => r.decode({ ...decodeArgs(), dimLatent: 9 }), 'ERR_SHAPE', 'dimLatent'],
  ['decode blockTable not Int32Array', () => r.decode({ ...decodeArgs(), blockTable: bad([0]) }), 'ERR_ARGUMENT', 'blockTable'],
  ['decode blockTable too short', () => r.decode({ ...decodeArgs(), seqLens: [5] }), 'ERR_RANGE', 'blockTable'],
  ['decode scale NaN', () => r.decode({ ...decodeArgs(), scale: NaN }), 'ERR_ARGUMENT', 'scale'],
  // prefill / mha
  ['prefill args null', () => r.prefill(bad(null)), 'ERR_ARGUMENT', 'args'],
  ['mha numKvHeads not dividing numHeads', () => r.mhaVarlen({ q: f64(0), k: f64(0), v: f64(0), qSeqLens: [], kvSeqLens: [], numHeads: 4, numKvHeads: 3, headDimQk: 2, headDimV: 2, scale: 1, causal: true }), 'ERR_SHAPE', 'numKvHeads'],
  ['expandLatentKv dims missing', () => r.expandLatentKv(f64(0), 0, f64(0), bad(undefined)), 'ERR_ARGUMENT', 'dims'],
  // rope
  ['ropeInvFreq odd dim', () => r.ropeInvFreq(3, 10000, null), 'ERR_SHAPE', 'dim'],
  ['ropeTable of 1e12 positions', () => r.ropeTable(V3, 1e12), 'ERR_RANGE', 'maxPos'],
  ['ropeTable cfg missing', () => r.ropeTable(bad(undefined), 8), 'ERR_ARGUMENT', 'cfg'],
  ['ropeTable cfg without ropeScaling', () => r.ropeTable({ qkRopeHeadDim: 64, ropeTheta: 1e4, ropeScaling: bad(undefined) }, 4), 'ERR_ARGUMENT', 'cfg.ropeScaling'],
  ['applyRope unknown layout', () => r.applyRope(f64(64), 1, 64, 0, 64, [0], table, bad('spiral')), 'ERR_ARGUMENT', 'layout'],
  ['applyRope position outside the table', () => r.applyRope(f64(64), 1, 64, 0, 64, [8], table, 'neox'), 'ERR_RANGE', 'positions[0]'],
  ['applyRope table missing', () => r.applyRope(f64(64), 1, 64, 0, 64, [0], bad(undefined), 'neox'), 'ERR_ARGUMENT', 'table'],
  // absorb, cache
  ['splitKvBProj dims missing', () => r.splitKvBProj(f64(4), bad(undefined)), 'ERR_ARGUMENT', 'dims'],
  ['absorbQuery tokens negative', () => r.absorbQuery(f64(0), -1, absorbed), 'ERR_RANGE', 'tokens'],
  ['absorbOutput weights without wUV', () => r.absorbOutput(f64(0), 0, { ...absorbed, wUV: bad(undefined) }), 'ERR_ARGUMENT', 'w.wUV'],
  ['gatherPagedCache view null', () => r.gatherPagedCache(bad(null), [1]), 'ERR_ARGUMENT', 'view'],
  ['reference.appendLatent args missing', () => r.appendLatent(bad(undefined)), 'ERR_ARGUMENT', 'args'],
  // helpers and the reference layer
  ['relError lengths differ', () => r.relError([1], [1, 2]), 'ERR_SHAPE', 'b'],
  ['randnArray negative n', () => r.randnArray(-1, rng), 'ERR_RANGE', 'n'],
  ['randnArray of 1e12 values', () => r.randnArray(1e12, rng), 'ERR_RANGE', 'n'],
  ['randnArray rng missing', () => r.randnArray(2, bad(undefined)), 'ERR_ARGUMENT', 'rng'],
  ['mulberry32 seed not a number', () => r.mulberry32(bad('x')), 'ERR_ARGUMENT', 'seed'],
  ['shuffledBlockTable pageSize 0', () => r.shuffledBlockTable([1], 0, rng), 'ERR_RANGE', 'pageSize'],
  ['makePagedCache rows not an array', () => r.makePagedCache(bad(f64(4)), 2, 2, rng), 'ERR_ARGUMENT', 'rows'],
  ['validateLayerWeights weights null', () => r.validateLayerWeights(V3, bad(null)), 'ERR_ARGUMENT', 'weights'],
  ['loadLayerWeights file missing', () => r.loadLayerWeights(bad(undefined)), 'ERR_ARGUMENT', 'file'],
  ['ReferenceMlaLayer batch 0', () => new r.ReferenceMlaLayer(TINY_CFG(), tinyWeights(), { batch: 0, maxSeqLen: 4 }), 'ERR_RANGE', 'opts.batch'],
  ['ReferenceMlaLayer maxSeqLen past int32 slots', () => new r.ReferenceMlaLayer(TINY_CFG(), tinyWeights(), { batch: 4, maxSeqLen: 2 ** 30 }), 'ERR_RANGE', 'opts.maxSeqLen'],
  // LatentCache
  ['LatentCache opts missing', () => new LatentCache(bad(undefined)), 'ERR_ARGUMENT', 'opts'],
  ['LatentCache numPages 1e12', () => new LatentCache({ config: V3, numLayers: 1, numPages: 1e12, backend: 'reference' }), 'ERR_RANGE', 'numPages'],
  ['LatentCache numPages 1e12 (gpu backend)', () => new LatentCache({ config: V3, numLayers: 1, numPages: 1e12, backend: 'gpu' }), 'ERR_RANGE', 'numPages'],
  ['LatentCache config missing', () => new LatentCache(bad({ numLayers: 1, numPages: 1, backend: 'reference' })), 'ERR_ARGUMENT', 'config'],
  // MlaAttention
  ['MlaAttention.create opts missing', () => MlaAttention.create(bad(undefined)), 'ERR_ARGUMENT', 'opts'],
  // kv-calculator
  ['kvGeometry cfg missing', () => kvGeometry(bad(undefined)), 'ERR_ARGUMENT', 'cfg'],
  ['kvCacheEstimate opts missing', () => kvCacheEstimate('mla', kvGeometry(V3), bad(undefined)), 'ERR_ARGUMENT', 'opts'],
  ['kvCacheEstimate dtype toString', () => kvCacheEstimate('mla', kvGeometry(V3), { dtype: bad('toString'), numLayers: 1 }), 'ERR_DTYPE', 'opts.dtype'],
  ['compareKvCaches opts missing', () => compareKvCaches(V3, bad(undefined)), 'ERR_ARGUMENT', 'opts'],
  // config and weight loaders
  ['loadMlaConfig path missing', () => loadMlaConfig(bad(undefined)), 'ERR_ARGUMENT', 'pathOrDir'],
  ['loadMlaWeights path not a string', () => loadMlaWeights(bad(42), V3), 'ERR_ARGUMENT', 'pathOrDir'],
  ['loadMlaWeights config missing', () => loadMlaWeights(TINY, bad(undefined)), 'ERR_ARGUMENT', 'config'],
  ['loadMlaWeights config invalid', () => loadMlaWeights(TINY, { ...V3, numHeads: 0 }), 'ERR_ARGUMENT', 'config'],
  ['loadMlaWeights opts null', () => loadMlaWeights(TINY, V3, bad(null)), 'ERR_ARGUMENT', 'opts'],
  // safetensors writer (reading errors are ERR_FORMAT; see test/reference/safetensors.test.ts)
  ['writeSafetensors tensors missing', () => writeSafetensors('/nonexistent/x.safetensors', bad(undefined)), 'ERR_ARGUMENT', 'tensors'],
  ['writeSafetensors unknown dtype', () => writeSafetensors('/nonexistent/x.safetensors', { w: { dtype: bad('F4'), shape: [1], data: [1] } }), 'ERR_DTYPE', "tensors['w'].dtype"],
  ['writeSafetensors negative size', () => writeSafetensors('/nonexistent/x.safetensors', { w: { dtype: 'F32', shape: [-1], data: [] } }), 'ERR_RANGE', "tensors['w'].shape[0]"],
  ['writeSafetensors data length', () => writeSafetensors('/nonexistent/x.safetensors', { w: { dtype: 'F32', shape: [2], data: [1] } }), 'ERR_SHAPE', "tensors['w'].data"],
  ['dequantizeBlocks fp8 missing', () => dequantizeBlocks(bad(undefined), 1, 1, new Float32Array(1)), 'ERR_ARGUMENT', 'fp8'],
  ['toReferenceWeights weights null', () => toReferenceWeights(bad(null)), 'ERR_ARGUMENT', 'weights'],
  ['checkWeightsFit weights missing', () => checkWeightsFit(V3, bad(undefined)), 'ERR_ARGUMENT', 'weights'],
];

function TINY_CFG(): MlaConfig {
  return { ...MLA_PRESETS['deepseek-v2-lite'], hiddenSize: 8, numHeads: 2, kvLoraRank: 4, qkNopeHeadDim: 2, qkRopeHeadDim: 2, vHeadDim: 2, qLoraRank: null };
}

function tinyWeights(): Parameters<typeof r.validateLayerWeights>[1] {
  const c = TINY_CFG();
  const qk = c.qkNopeHeadDim + c.qkRopeHeadDim;
  return {
    qAProj: null, qALayernorm: null, qBProj: null,
    qProj: f64(c.numHeads * qk * c.hiddenSize),
    kvAProjWithMqa: f64((c.kvLoraRank + c.qkRopeHeadDim) * c.hiddenSize),
    kvALayernorm: f64(c.kvLoraRank),
    kvBProj: f64(c.numHeads * (c.qkNopeHeadDim + c.vHeadDim) * c.kvLoraRank),
    oProj: f64(c.hiddenSize * c.numHeads * c.vHeadDim),
  };
}

t.test('bad calls throw MlaError with a code, naming the argument', async (t) => {
  for (const [label, fn, code, arg] of CASES) throwsNaming(t, fn, code, arg, label);
});

t.test('host allocations past a typed array say how many bytes were asked for', async (t) => {
  t.throws(() => r.linear(f64(1e6), 1e6, 1, f64(1e6), 1e6), { message: /`rows` needs a Float64Array of 1000000000000 elements \(8000000000000 bytes, 7\.3 TiB\); a typed array holds at most/ });
  // An allocation the engine refuses (simulated: a constructor that throws RangeError) is ERR_OOM.
  class Refused {
    static readonly BYTES_PER_ELEMENT = 8;
    constructor() {
      throw new RangeError('Array buffer allocation failed');
    }
  }
  t.throws(() => allocHost('f', 'n', Refused, 1024), { code: 'ERR_OOM', message: /^f: `n` needs a Refused of 1024 elements \(8192 bytes, 8\.0 KiB\): host allocation failed \(Array buffer allocation failed\)$/ });
  t.throws(() => allocHost('f', 'n', Float64Array, MAX_HOST_ELEMENTS + 1), { code: 'ERR_RANGE' });
});

t.test('config validators name the field (ConfigError is an MlaError)', async (t) => {
  for (const [label, fn] of [
    ['validateMlaConfig(undefined)', () => validateMlaConfig(bad(undefined))],
    ['validateMlaConfig ropeScaling without factor', () => validateMlaConfig({ ...V3, ropeScaling: bad({ type: 'yarn' }) })],
    ['softmaxScale(null)', () => softmaxScale(bad(null))],
  ] as const) {
    let err: unknown = null;
    try {
      fn();
    } catch (e) {
      err = e;
    }
    t.ok(err instanceof MlaError && err.code === 'ERR_ARGUMENT' && /config field '/.test(err.message), `${label}: ${String(err)}`);
  }
});

t.test('device allocations past the device: MlaError, not RangeError', { skip: gpuSkip }, async (t) => {
  for (const shape of [[1e9, 1e9, 1e9], [1e12]]) {
    try {
      DeviceTensor.zeros(shape, 'f32').dispose();
      t.fail(`[${shape.join(', ')}] allocated`);
    } catch (e) {
      t.ok(e instanceof MlaError && (e.code === 'ERR_RANGE' || e.code === 'ERR_OOM'), `[${shape.join(', ')}]: ${String(e)}`);
      t.match((e as Error).message, `DeviceTensor.empty: \`shape\` [${shape.join(', ')}] (f32, `, 'names the shape, not only a byte count');
    }
  }
  // 2^24 pages × 64 rows fit int32 slots but not the device: the cache passes the error on.
  t.throws(() => new LatentCache({ config: V3, numLayers: 1, numPages: 2 ** 24, backend: 'gpu' }), MlaError);
});

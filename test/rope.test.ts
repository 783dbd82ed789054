// RoPE table, rope / ropeQuery and the fused latent-cache writer. Validation and the table
// frequencies run everywhere (plain TensorMeta objects, host arrays); the kernels are checked
// against the float64 reference (lib/reference) on a GPU and skip with the reason elsewhere.
import t from 'tap';
import { fileURLToPath } from 'node:url';
import { MLA_PRESETS, mlaConfigFromHuggingFace } from '../lib/config.js';
import type { MlaConfig, YarnScaling } from '../lib/config.js';
import { DeviceTensor, MlaError } from '../lib/index.js';
import {
  appendLatent,
  rope,
  ropeConfigFrom,
  ropeInverseFrequencies,
  ropeQuery,
  RopeTable,
  validateAppendLatent,
  checkRopePositions,
  validateRope,
  validateRopeConfig,
  validateRopeQuery,
  checkSlotMapping,
} from '../lib/ops/rope.js';
import type { AppendLatentMeta, RopeConfig, RopeLayout, RopeTableMeta } from '../lib/ops/rope.js';
import { linear } from '../lib/reference/linear.js';
import { applyRope, ropeInvFreq, ropeTable } from '../lib/reference/rope.js';
import type { RopeTable as RefRopeTable } from '../lib/reference/rope.js';
import type { TensorMeta } from '../lib/runtime/tensor.js';
import { suite as ropeBench } from '../lib/bench/rope.js';
import { SafetensorsFile } from '../lib/safetensors.js';
import { gpuSkip, poison, randn, relError, rng } from './helpers/gpu.js';
import { meta } from './helpers/validation.js';
import * as reference from '../lib/reference/index.js';

const V3 = MLA_PRESETS['deepseek-v3'];
const V3_ROPE = ropeConfigFrom(V3);
const PLAIN_ROPE: RopeConfig = { ...V3_ROPE, scaling: null };
const LAYOUTS: RopeLayout[] = ['interleaved', 'neox'];



const TABLE64: RopeTableMeta = { rotaryDim: 64, maxPositions: 8192, layout: 'interleaved', disposed: false };

function wants(code: string, name: string): { name: string; code: string; message: RegExp } {
  return { name: 'MlaError', code, message: new RegExp(name.replace(/[.[\]]/g, '\\$&')) };
}

// ---- config and frequencies (CI) ------------------------------------------------------------

t.test('ropeConfigFrom takes the RoPE part of an MlaConfig', async (t) => {
  t.same(V3_ROPE, { rotaryDim: 64, ropeTheta: 10000, scaling: V3.ropeScaling, attentionFactor: 1, layout: 'interleaved' });
  const neox: MlaConfig = { ...V3, ropeInterleaved: false };
  t.equal(ropeConfigFrom(neox, { attentionFactor: 0.5 }).layout, 'neox');
  t.equal(ropeConfigFrom(neox, { attentionFactor: 0.5 }).attentionFactor, 0.5);
});

t.test('inverse frequencies: f32, DeepSeek YaRN correction range (10, 23) for V3', async (t) => {
  const inv = ropeInverseFrequencies(V3_ROPE);
  t.equal(inv.length, 32);
  t.same(Array.from(inv), Array.from(ropeInvFreq(64, 10000, V3.ropeScaling)));
  const f = Math.fround;
  for (let i = 0; i < 32; i++) {
    const base = f(1 / f(10000 ** f((2 * i) / 64)));
    // float64 sanity bound on the f32 base frequency
    t.ok(Math.abs(base - 10000 ** (-(2 * i) / 64)) <= 2.5e-7 * 10000 ** (-(2 * i) / 64), `base ${i}`);
    if (i <= 10) t.equal(inv[i], base, `i=${i} below the ramp keeps its frequency`);
    else if (i >= 23) t.equal(inv[i], f(base / 40), `i=${i} above the ramp is divided by the factor`);
    else t.ok(inv[i]! < base && inv[i]! > base / 40, `i=${i} is blended`);
  }
  const plain = ropeInverseFrequencies(PLAIN_ROPE);
  for (let i = 0; i < 32; i++) t.equal(plain[i], f(1 / f(10000 ** f((2 * i) / 64))));
});

t.test('validateRopeConfig names the field', async (t) => {
  t.throws(() => validateRopeConfig({ ...V3_ROPE, rotaryDim: 63 }), wants('ERR_SHAPE', '`cfg.rotaryDim`'));
  t.throws(() => validateRopeConfig({ ...V3_ROPE, rotaryDim: 0 }), wants('ERR_RANGE', '`cfg.rotaryDim`'));
  t.throws(() => validateRopeConfig({ ...V3_ROPE, ropeTheta: 1 }), wants('ERR_RANGE', '`cfg.ropeTheta`'));
  t.throws(() => validateRopeConfig({ ...V3_ROPE, attentionFactor: Number.NaN }), wants('ERR_ARGUMENT', '`cfg.attentionFactor`'));
  const bad: YarnScaling = { ...V3.ropeScaling!, betaFast: 1, betaSlow: 32 };
  t.throws(() => validateRopeConfig({ ...V3_ROPE, scaling: bad }), wants('ERR_RANGE', '`cfg.scaling.betaFast`'));
  t.throws(() => validateRopeConfig({ ...V3_ROPE, scaling: { ...V3.ropeScaling!, originalMaxPositionEmbeddings: 0 } }), wants('ERR_RANGE', 'originalMaxPositionEmbeddings'));
  t.throws(() => validateRopeConfig({ ...V3_ROPE, layout: 'gptj' as RopeLayout }), wants('ERR_ARGUMENT', '`layout`'));
  // Checked before anything touches the addon, so this runs without a GPU.
  t.throws(() => RopeTable.create(V3_ROPE, 0), wants('ERR_RANGE', '`maxPositions`'));
  t.throws(() => RopeTable.create(V3_ROPE, 2 ** 24 + 1), wants('ERR_RANGE', '`maxPositions`'));
  t.throws(() => RopeTable.create({ ...V3_ROPE, rotaryDim: 5 }, 16), wants('ERR_SHAPE', '`cfg.rotaryDim`'));
});

// ---- op validation (CI) -----------------------------------------------------------------------

t.test('validateRope', async (t) => {
  const T = 5;
  const H = 4;
  // q.slice(2, 128, 192) of a [T, H, 192] query
  const qRope = meta([T, H, 64], 'bf16', [H * 192, 192, 1]);
  const pos = meta([T], 'i32');
  t.same(validateRope(qRope, pos, TABLE64), { tokens: T, heads: H, layout: 'interleaved' });
  t.same(validateRope(meta([T, 64], 'f32', [576, 1]), pos, TABLE64, { layout: 'neox' }), { tokens: T, heads: 1, layout: 'neox' });
  t.same(validateRope(qRope, pos, { ...TABLE64, layout: 'neox' }).layout, 'neox', "default is the table's layout");
  t.throws(() => validateRope(meta([T, H, 32]), pos, TABLE64), wants('ERR_SHAPE', '`x`'));
  t.throws(() => validateRope(meta([T, H, 1, 64]), pos, TABLE64), wants('ERR_SHAPE', '`x`'));
  t.throws(() => validateRope(meta([T, H, 64], 'i32'), pos, TABLE64), wants('ERR_DTYPE', '`x`'));
  t.throws(() => validateRope(meta([T, H, 64], 'fp8e4m3'), pos, TABLE64), wants('ERR_DTYPE', '`x`'));
  t.throws(() => validateRope(meta([T, H, 64], 'bf16', [H * 128, 128, 2]), pos, TABLE64), wants('ERR_SHAPE', '`x`'));
  t.throws(() => validateRope(meta([T, H, 64], 'bf16', [64, 0, 1]), pos, TABLE64), wants('ERR_SHAPE', 'overlapping'));
  t.throws(() => validateRope(meta([T, H, 64], 'bf16', [H * 64, 32, 1]), pos, TABLE64), wants('ERR_SHAPE', 'overlapping'));
  t.throws(() => validateRope(meta([T, H, 64], 'bf16', undefined, { disposed: true }), pos, TABLE64), wants('ERR_DISPOSED', '`x`'));
  t.throws(() => validateRope(qRope, meta([T], 'f32'), TABLE64), wants('ERR_DTYPE', '`positions`'));
  t.throws(() => validateRope(qRope, meta([T + 1], 'i32'), TABLE64), wants('ERR_SHAPE', '`positions`'));
  t.throws(() => validateRope(qRope, meta([T, 1], 'i32'), TABLE64), wants('ERR_SHAPE', '`positions`'));
  t.throws(() => validateRope(qRope, pos, { ...TABLE64, disposed: true }), wants('ERR_DISPOSED', '`table`'));
  t.throws(() => validateRope(qRope, pos, { ...TABLE64, rotaryDim: 16 }), wants('ERR_SHAPE', 'rotaryDim'));
  t.throws(() => validateRope(qRope, pos, TABLE64, { layout: 'rotate_half' as RopeLayout }), wants('ERR_ARGUMENT', '`layout`'));
});

t.test('validateRopeQuery', async (t) => {
  const pos = meta([3], 'i32');
  t.same(validateRopeQuery(meta([3, 8, 192]), pos, TABLE64), { tokens: 3, heads: 8, layout: 'interleaved', nopeDim: 128 });
  t.same(validateRopeQuery(meta([3, 8, 576]), pos, TABLE64).nopeDim, 512);
  t.same(validateRopeQuery(meta([3, 192]), pos, TABLE64, { nopeDim: 0 }), { tokens: 3, heads: 1, layout: 'interleaved', nopeDim: 0 });
  t.throws(() => validateRopeQuery(meta([3, 8, 32]), pos, TABLE64), wants('ERR_SHAPE', '`q`'));
  t.throws(() => validateRopeQuery(meta([3, 8, 192]), pos, TABLE64, { nopeDim: 129 }), wants('ERR_RANGE', '`nopeDim`'));
  t.throws(() => validateRopeQuery(meta([3, 8, 192], 'u8'), pos, TABLE64), wants('ERR_DTYPE', '`q`'));
  t.throws(() => validateRopeQuery(meta([3, 8, 192]), meta([4], 'i32'), TABLE64), wants('ERR_SHAPE', '`positions`'));
});

function appendMeta(over: Partial<AppendLatentMeta> = {}): AppendLatentMeta {
  const T = 6;
  return {
    kvDown: meta([T, 576], 'bf16', [1024, 1]),
    normWeight: meta([512]),
    eps: 1e-6,
    positions: meta([T], 'i32'),
    slotMapping: meta([T], 'i32'),
    cache: meta([10, 16, 576]),
    table: TABLE64,
    ...over,
  };
}

t.test('validateAppendLatent', async (t) => {
  t.same(validateAppendLatent(appendMeta()), { tokens: 6, kvLoraRank: 512, rotaryDim: 64, numPages: 10, pageSize: 16, numSlots: 160, layout: 'interleaved' });
  t.equal(validateAppendLatent(appendMeta({ kvDown: meta([6, 576], 'f32'), normWeight: meta([512], 'bf16') })).tokens, 6);
  t.equal(validateAppendLatent(appendMeta({ cache: meta([10, 16, 576], 'f32') })).numSlots, 160);
  const tiny = { ...TABLE64, rotaryDim: 16 };
  t.same(validateAppendLatent(appendMeta({ kvDown: meta([6, 48]), normWeight: meta([32]), cache: meta([2, 4, 48]), table: tiny })).kvLoraRank, 32);
  t.throws(() => validateAppendLatent(appendMeta({ kvDown: meta([6, 512]) })), wants('ERR_SHAPE', '`kvDown`'));
  t.throws(() => validateAppendLatent(appendMeta({ kvDown: meta([6, 576], 'bf16', [576, 2]) })), wants('ERR_SHAPE', '`kvDown`'));
  t.throws(() => validateAppendLatent(appendMeta({ kvDown: meta([6, 576], 'i32') })), wants('ERR_DTYPE', '`kvDown`'));
  t.throws(() => validateAppendLatent(appendMeta({ normWeight: meta([500]) })), wants('ERR_SHAPE', '`normWeight`'));
  t.throws(() => validateAppendLatent(appendMeta({ normWeight: meta([2048]) })), wants('ERR_SHAPE', '`normWeight`'));
  t.throws(() => validateAppendLatent(appendMeta({ normWeight: meta([512], 'bf16', [2]) })), wants('ERR_SHAPE', '`normWeight`'));
  t.throws(() => validateAppendLatent(appendMeta({ normWeight: meta([512], 'f16') })), wants('ERR_DTYPE', '`normWeight`'));
  t.throws(() => validateAppendLatent(appendMeta({ cache: meta([10, 16, 512]) })), wants('ERR_SHAPE', '`cache`'));
  t.throws(() => validateAppendLatent(appendMeta({ cache: meta([160, 576]) })), wants('ERR_SHAPE', '`cache`'));
  t.throws(() => validateAppendLatent(appendMeta({ cache: meta([10, 16, 576], 'fp8e4m3') })), wants('ERR_DTYPE', '`cache`'));
  t.throws(() => validateAppendLatent(appendMeta({ cache: meta([10, 16, 576], 'f16') })), wants('ERR_DTYPE', '`cache`'));
  t.throws(() => validateAppendLatent(appendMeta({ cache: meta([10, 16, 576], 'bf16', [576, 576, 1]) })), wants('ERR_SHAPE', 'overlapping'));
  t.throws(() => validateAppendLatent(appendMeta({ cache: meta([10, 16, 576], 'bf16', [16 * 576, 576, 1], { disposed: true }) })), wants('ERR_DISPOSED', '`cache`'));
  t.throws(() => validateAppendLatent(appendMeta({ positions: meta([6], 'f32') })), wants('ERR_DTYPE', '`positions`'));
  t.throws(() => validateAppendLatent(appendMeta({ positions: meta([5], 'i32') })), wants('ERR_SHAPE', '`positions`'));
  t.throws(() => validateAppendLatent(appendMeta({ slotMapping: meta([6], 'u8') })), wants('ERR_DTYPE', '`slotMapping`'));
  t.throws(() => validateAppendLatent(appendMeta({ slotMapping: meta([7], 'i32') })), wants('ERR_SHAPE', '`slotMapping`'));
  t.throws(() => validateAppendLatent(appendMeta({ eps: -1 })), wants('ERR_RANGE', '`eps`'));
  t.throws(() => validateAppendLatent(appendMeta({ eps: Number.NaN })), wants('ERR_ARGUMENT', '`eps`'));
  t.throws(() => validateAppendLatent(appendMeta({ table: { ...TABLE64, disposed: true } })), wants('ERR_DISPOSED', '`table`'));
  t.throws(() => validateAppendLatent(appendMeta({ table: { ...TABLE64, rotaryDim: 12 } })), wants('ERR_SHAPE', '`table`'));
  t.throws(() => validateAppendLatent(appendMeta({ layout: 'x' as RopeLayout })), wants('ERR_ARGUMENT', '`layout`'));
});

t.test('host index checks', async (t) => {
  checkRopePositions('rope', [0, 5, 8191], 8192);
  t.throws(() => checkRopePositions('rope', [0, 8192], 8192), wants('ERR_RANGE', '`positions`[1] = 8192'));
  t.throws(() => checkRopePositions('rope', Int32Array.of(3, -1), 8192), wants('ERR_RANGE', '`positions`[1] = -1'));
  checkRopePositions('appendLatent', [0, 99999], 8192, (i) => i === 0);
  checkSlotMapping('appendLatent', Int32Array.of(-1, 0, 159, -1), 160);
  t.throws(() => checkSlotMapping('appendLatent', Int32Array.of(0, 160), 160), wants('ERR_RANGE', '`slotMapping`[1] = 160'));
  t.throws(() => checkSlotMapping('appendLatent', Int32Array.of(-2), 160), wants('ERR_RANGE', '`slotMapping`[0] = -2'));
  t.throws(() => checkSlotMapping('appendLatent', Int32Array.of(4, 7, 4), 160), wants('ERR_ARGUMENT', '`slotMapping`'));
});

t.test('ops reject a non-RopeTable table before touching the device', async (t) => {
  const fake = TABLE64 as unknown as RopeTable;
  const x = meta([2, 64]) as unknown as DeviceTensor;
  const p = meta([2], 'i32') as unknown as DeviceTensor;
  t.throws(() => rope(x, p, fake), wants('ERR_ARGUMENT', '`table`'));
  t.throws(() => ropeQuery(x, p, fake), wants('ERR_ARGUMENT', '`table`'));
  t.throws(() => appendLatent({ ...appendMeta(), table: fake } as unknown as Parameters<typeof appendLatent>[0]), wants('ERR_ARGUMENT', '`table`'));
});

t.test('bench suite "rope": cases and byte counts (no device needed)', async (t) => {
  t.equal(ropeBench.name, 'rope');
  const all = ropeBench.cases({ quick: false });
  t.same(all.map((c) => c.params['t']), [1, 16, 256, 4096, 65536, 1, 16, 256, 4096, 65536]);
  const c = all.find((x) => x.params['op'] === 'appendLatent' && x.params['t'] === 4096)!;
  t.equal(c.bytes, 2 * 4096 * 576 * 2 + 512 * 2 + 8 * 4096 + 4096 * 64 * 4);
  t.equal(c.flops, 0);
  const q = ropeBench.cases({ quick: true, grid: { op: ['ropeQuery'], t: [256], h: [8] } });
  t.equal(q.length, 1);
  t.equal(q[0]!.bytes, 2 * 256 * 8 * 64 * 2 + 4 * 256 + 256 * 64 * 4);
  t.throws(() => ropeBench.cases({ quick: true, grid: { dtype: ['f32'] } }), RangeError);
});

// ---- GPU -------------------------------------------------------------------------------------

const YARN_POSITIONS = [0, 1, 7, 4090, 4091, 4095, 4096, 4097, 4100, 12345, 19999, 20000];

function f64(a: ArrayLike<number>): Float64Array {
  return Float64Array.from(a);
}

function u16Bits(t: DeviceTensor): Uint16Array | Float32Array {
  return t.toHostSync() as Uint16Array | Float32Array;
}

function bitsEqual(a: ArrayLike<number>, b: ArrayLike<number>, from: number, to: number): boolean {
  for (let i = from; i < to; i++) if (a[i] !== b[i] && !(Number.isNaN(a[i]) && Number.isNaN(b[i]))) return false;
  return true;
}

const TOL: Record<'bf16' | 'f16' | 'f32', number> = { bf16: 1e-2, f16: 2e-3, f32: 1e-5 };

t.test('RopeTable matches the float64 reference table', { skip: gpuSkip }, async (t) => {
  for (const [label, cfg, m] of [['yarn', V3_ROPE, 1], ['plain', PLAIN_ROPE, 1], ['yarn m=0.75', { ...V3_ROPE, attentionFactor: 0.75 }, 0.75]] as const) {
    using table = RopeTable.create(cfg, 20001);
    const ref = ropeTable({ qkRopeHeadDim: 64, ropeTheta: cfg.ropeTheta, ropeScaling: cfg.scaling }, 20001, { attentionFactor: m });
    const got = table.table.toFloat32Sync();
    let maxErr = 0;
    for (let k = 0; k < ref.cos.length; k++) {
      maxErr = Math.max(maxErr, Math.abs(got[2 * k]! - ref.cos[k]!), Math.abs(got[2 * k + 1]! - ref.sin[k]!));
    }
    t.ok(maxErr <= 1.2e-7, `${label}: max |table − ref| = ${maxErr}`);
    t.same(table.table.shape, [20001, 32, 2]);
  }
});

interface RopeCase {
  dtype: 'bf16' | 'f16' | 'f32';
  layout: RopeLayout;
  yarn: boolean;
}

function refTableFor(cfg: RopeConfig, maxPos: number): RefRopeTable {
  return ropeTable({ qkRopeHeadDim: cfg.rotaryDim, ropeTheta: cfg.ropeTheta, ropeScaling: cfg.scaling }, maxPos, { attentionFactor: cfg.attentionFactor ?? 1 });
}

t.test('ropeQuery / rope vs reference on strided views', { skip: gpuSkip }, async (t) => {
  const T = YARN_POSITIONS.length;
  const H = 5;
  const QK = 192;
  const N = 128;
  const R = 64;
  const cases: RopeCase[] = [];
  for (const dtype of ['bf16', 'f16', 'f32'] as const) for (const layout of LAYOUTS) for (const yarn of [true, false]) cases.push({ dtype, layout, yarn });
  let seed = 11;
  for (const c of cases) {
    const cfg = c.yarn ? V3_ROPE : PLAIN_ROPE;
    using table = RopeTable.create(cfg, 20001);
    const refTab = refTableFor(cfg, 20001);
    using positions = DeviceTensor.fromArray(Int32Array.from(YARN_POSITIONS), [T], 'i32');
    const rowPos = new Int32Array(T * H);
    for (let i = 0; i < T; i++) rowPos.fill(YARN_POSITIONS[i]!, i * H, (i + 1) * H);

    // 1) ropeQuery on a [T, H, 192] tensor stored head-major ([H, T, 192] permuted).
    {
      using store = DeviceTensor.fromArray(randn(H * T * QK, seed++), [H, T, QK], c.dtype);
      const q = store.permute([1, 0, 2]);
      const before = q.contiguous();
      const init = before.toFloat32Sync();
      const initBits = u16Bits(before);
      ropeQuery(q, positions, table, { layout: c.layout });
      const after = q.contiguous();
      const got = after.toFloat32Sync();
      const gotBits = u16Bits(after);
      const ref = f64(init);
      applyRope(ref, T * H, QK, N, R, rowPos, refTab, c.layout);
      const gotRope: number[] = [];
      const refRope: number[] = [];
      let nopeSame = true;
      for (let r = 0; r < T * H; r++) {
        for (let i = 0; i < R; i++) {
          gotRope.push(got[r * QK + N + i]!);
          refRope.push(ref[r * QK + N + i]!);
        }
        nopeSame &&= bitsEqual(initBits, gotBits, r * QK, r * QK + N);
      }
      const err = relError(gotRope, refRope);
      t.ok(err < TOL[c.dtype], `ropeQuery ${JSON.stringify(c)}: rel err ${err}`);
      t.ok(nopeSame, `ropeQuery ${JSON.stringify(c)}: nope part bit-identical`);
      if (after !== q) after.dispose();
      before.dispose();
    }

    // 2) rope on the 2D rope slice of [T, 576] rows (decode key layout), misaligned start
    //    (element 511) so the scalar path runs too.
    const W = 576;
    for (const start of [512, 511]) {
      using rows = DeviceTensor.fromArray(randn(T * W, seed++), [T, W], c.dtype);
      const x = rows.slice(1, start, start + R);
      const init = rows.toFloat32Sync();
      rope(x, positions, table, { layout: c.layout });
      const got = rows.toFloat32Sync();
      const ref = f64(init);
      applyRope(ref, T, W, start, R, YARN_POSITIONS, refTab, c.layout);
      const sl = (a: ArrayLike<number>): number[] => {
        const out: number[] = [];
        for (let r = 0; r < T; r++) for (let i = 0; i < R; i++) out.push(a[r * W + start + i]!);
        return out;
      };
      const err = relError(sl(got), sl(ref));
      t.ok(err < TOL[c.dtype], `rope 2D start ${start} ${JSON.stringify(c)}: rel err ${err}`);
      let untouched = true;
      for (let r = 0; r < T; r++) {
        for (let i = 0; i < W; i++) if ((i < start || i >= start + R) && got[r * W + i] !== init[r * W + i]) untouched = false;
      }
      t.ok(untouched, `rope 2D start ${start}: elements outside the slice untouched`);
    }
  }
});

t.test('rope with small / odd rotary dims (tiny fixture 16, scalar pairs 6)', { skip: gpuSkip }, async (t) => {
  for (const R of [16, 6]) {
    for (const layout of LAYOUTS) {
      const cfg: RopeConfig = { rotaryDim: R, ropeTheta: 10000, scaling: null };
      using table = RopeTable.create(cfg, 64);
      const refTab = refTableFor(cfg, 64);
      const T = 9;
      const H = 3;
      const pos = Int32Array.from({ length: T }, (_, i) => (i * 7) % 64);
      using positions = DeviceTensor.fromArray(pos, [T], 'i32');
      using x = DeviceTensor.fromArray(randn(T * H * R, 5 + R), [T, H, R], 'f32');
      const init = x.toFloat32Sync();
      rope(x, positions, table, { layout });
      const rowPos = new Int32Array(T * H);
      for (let i = 0; i < T; i++) rowPos.fill(pos[i]!, i * H, (i + 1) * H);
      const ref = f64(init);
      applyRope(ref, T * H, R, 0, R, rowPos, refTab, layout);
      const err = relError(x.toFloat32Sync(), ref);
      t.ok(err < 1e-5, `R=${R} ${layout}: rel err ${err}`);
    }
  }
});

t.test('rope rejects out-of-table positions before launching; checkIndices:false skips them', { skip: gpuSkip }, async (t) => {
  using table = RopeTable.create(V3_ROPE, 100);
  using x = DeviceTensor.fromArray(randn(3 * 64, 3), [3, 64], 'f32');
  const init = x.toFloat32Sync();
  using positions = DeviceTensor.fromArray(Int32Array.of(5, 100, 7), [3], 'i32');
  t.throws(() => rope(x, positions, table), wants('ERR_RANGE', '`positions`[1] = 100'));
  t.same(Array.from(x.toFloat32Sync()), Array.from(init), 'nothing written');
  rope(x, positions, table, { checkIndices: false });
  const got = x.toFloat32Sync();
  t.same(Array.from(got.subarray(64, 128)), Array.from(init.subarray(64, 128)), 'the bad token is skipped');
  t.not(got[0], init[0], 'the others are rotated');
});

interface AppendCase {
  kv: 'bf16' | 'f16' | 'f32';
  w: 'bf16' | 'f16' | 'f32';
  cache: 'bf16' | 'f16' | 'f32';
  layout: RopeLayout;
  yarn: boolean;
  rowStride: number;
  /** First element of the row inside the stored row: non-zero misaligns (scalar path). */
  offset: number;
}

function coarsest(dts: ReadonlyArray<'bf16' | 'f16' | 'f32'>): 'bf16' | 'f16' | 'f32' {
  return dts.includes('bf16') ? 'bf16' : dts.includes('f16') ? 'f16' : 'f32';
}

t.test('appendLatent vs reference.appendLatent', { skip: gpuSkip }, async (t) => {
  const C = 512;
  const R = 64;
  const D = C + R;
  const pageSize = 16;
  const numPages = 6;
  const numSlots = numPages * pageSize;
  const cases: AppendCase[] = [
    { kv: 'bf16', w: 'bf16', cache: 'bf16', layout: 'interleaved', yarn: true, rowStride: 576, offset: 0 },
    { kv: 'bf16', w: 'bf16', cache: 'bf16', layout: 'neox', yarn: true, rowStride: 640, offset: 64 },
    { kv: 'bf16', w: 'f32', cache: 'bf16', layout: 'interleaved', yarn: false, rowStride: 581, offset: 3 },
    { kv: 'bf16', w: 'bf16', cache: 'bf16', layout: 'neox', yarn: false, rowStride: 584, offset: 1 },
    { kv: 'f16', w: 'f16', cache: 'f16', layout: 'neox', yarn: false, rowStride: 576, offset: 0 },
    { kv: 'f32', w: 'bf16', cache: 'bf16', layout: 'interleaved', yarn: true, rowStride: 600, offset: 8 },
    { kv: 'f32', w: 'f32', cache: 'f32', layout: 'interleaved', yarn: true, rowStride: 576, offset: 0 },
    { kv: 'f32', w: 'f32', cache: 'f32', layout: 'neox', yarn: false, rowStride: 579, offset: 2 },
    { kv: 'bf16', w: 'bf16', cache: 'f32', layout: 'neox', yarn: true, rowStride: 576, offset: 0 },
  ];
  const rand = rng(99);
  let seed = 100;
  for (const c of cases) {
    const cfg = c.yarn ? V3_ROPE : PLAIN_ROPE;
    using table = RopeTable.create(cfg, 20001);
    const refTab = refTableFor(cfg, 20001);
    const T = YARN_POSITIONS.length + 3;
    const pos = Int32Array.from({ length: T }, (_, i) => YARN_POSITIONS[i] ?? Math.floor(rand() * 20001));
    // Distinct slots spread over shuffled pages, with padding tokens (−1) in between.
    const perm = Array.from({ length: numSlots }, (_, i) => i).sort(() => rand() - 0.5);
    const slots = Int32Array.from({ length: T }, (_, i) => (i % 5 === 3 ? -1 : perm[i]!));
    using positions = DeviceTensor.fromArray(pos, [T], 'i32');
    using slotMapping = DeviceTensor.fromArray(slots, [T], 'i32');
    using kvStore = DeviceTensor.fromArray(randn(T * c.rowStride, seed++, 2), [T, c.rowStride], c.kv);
    const kvDown = kvStore.slice(1, c.offset, c.offset + D);
    using normWeight = DeviceTensor.fromArray(randn(C, seed++, 0.5).map((v) => 1 + v), [C], c.w);
    using cache = DeviceTensor.empty([numPages, pageSize, D], c.cache);
    poison(cache);
    const initBits = u16Bits(cache);
    appendLatent({ kvDown, normWeight, eps: 1e-6, positions, slotMapping, cache, table, layout: c.layout });
    const gotBits = u16Bits(cache);
    const got = cache.toFloat32Sync();
    const refCache = new Float64Array(numSlots * D);
    reference.appendLatent({
      kvDown: f64(kvStore.toFloat32Sync()).filter((_, k) => k % c.rowStride >= c.offset && k % c.rowStride < c.offset + D),
      normWeight: f64(normWeight.toFloat32Sync()),
      eps: 1e-6,
      positions: pos,
      slotMapping: slots,
      cache: refCache,
      pageSize,
      ropeTable: refTab,
      layout: c.layout,
    });
    const gotRows: number[] = [];
    const refRows: number[] = [];
    const gotRope: number[] = [];
    const refRope: number[] = [];
    const written = new Set<number>();
    for (let i = 0; i < T; i++) {
      const s = slots[i]!;
      if (s < 0) continue;
      written.add(s);
      for (let k = 0; k < C; k++) {
        gotRows.push(got[s * D + k]!);
        refRows.push(refCache[s * D + k]!);
      }
      for (let k = C; k < D; k++) {
        gotRope.push(got[s * D + k]!);
        refRope.push(refCache[s * D + k]!);
      }
    }
    const tol = TOL[coarsest([c.kv, c.w, c.cache])];
    const e1 = relError(gotRows, refRows);
    const e2 = relError(gotRope, refRope);
    t.ok(e1 < tol, `${JSON.stringify(c)} latent rel err ${e1}`);
    t.ok(e2 < tol, `${JSON.stringify(c)} rope rel err ${e2}`);
    let untouched = true;
    for (let s = 0; s < numSlots; s++) if (!written.has(s) && !bitsEqual(initBits, gotBits, s * D, (s + 1) * D)) untouched = false;
    t.ok(untouched, `${JSON.stringify(c)}: slots not in the mapping stay bit-identical (poisoned)`);
  }
});

t.test('appendLatent index checks and in-kernel guards', { skip: gpuSkip }, async (t) => {
  using table = RopeTable.create(V3_ROPE, 64);
  const T = 4;
  using kvDown = DeviceTensor.fromArray(randn(T * 576, 7), [T, 576], 'bf16');
  using normWeight = DeviceTensor.fromArray(randn(512, 8), [512], 'bf16');
  using cache = DeviceTensor.empty([2, 4, 576], 'bf16');
  poison(cache);
  const init = u16Bits(cache);
  using positions = DeviceTensor.fromArray(Int32Array.of(0, 1, 64, 3), [T], 'i32');
  using goodPositions = DeviceTensor.fromArray(Int32Array.of(0, 1, 2, 3), [T], 'i32');
  using badSlots = DeviceTensor.fromArray(Int32Array.of(0, 8, 2, 3), [T], 'i32');
  using slots = DeviceTensor.fromArray(Int32Array.of(0, 1, 2, 3), [T], 'i32');
  const args = { kvDown, normWeight, eps: 1e-6, cache, table };
  t.throws(() => appendLatent({ ...args, positions: goodPositions, slotMapping: badSlots }), wants('ERR_RANGE', '`slotMapping`[1] = 8'));
  t.throws(() => appendLatent({ ...args, positions, slotMapping: slots }), wants('ERR_RANGE', '`positions`[2] = 64'));
  t.same(Array.from(u16Bits(cache)), Array.from(init), 'nothing written after a rejected call');
  // Unchecked: slot 8 and position 64 are out of range; those tokens are skipped, not clamped.
  using both = DeviceTensor.fromArray(Int32Array.of(0, 8, 2, -1), [T], 'i32');
  appendLatent({ ...args, positions, slotMapping: both, checkIndices: false });
  const got = u16Bits(cache);
  t.ok(!bitsEqual(init, got, 0, 576), 'token 0 written to slot 0');
  t.ok(bitsEqual(init, got, 576, 8 * 576), 'slots 1..7 untouched (bad slot, bad position, padding)');
});

// ---- golden fixtures ----------------------------------------------------------------------------

function fixture(name: string): SafetensorsFile {
  return SafetensorsFile.open(fileURLToPath(new URL(`./fixtures/${name}.safetensors`, import.meta.url)));
}

function metaNum(f: SafetensorsFile, key: string): number {
  const v = f.metadata[key];
  if (v === undefined) throw new Error(`fixture metadata lacks ${key}`);
  return Number(v);
}

for (const name of ['mla-tiny', 'mla-v3slim']) {
  t.test(`fixture ${name}: cache.latent / cache.rope via appendLatent, q_rope via ropeQuery`, { skip: gpuSkip }, async (t) => {
    using f = fixture(name);
    const cfg = mlaConfigFromHuggingFace(JSON.parse(f.metadata['config']!));
    const B = metaNum(f, 'batch');
    const P = metaNum(f, 'prefill_len');
    const K = metaNum(f, 'decode_steps');
    const start = metaNum(f, 'start_pos');
    const L = P + K;
    const { hiddenSize: hid, kvLoraRank: C, qkRopeHeadDim: R, qkNopeHeadDim: N, numHeads: H } = cfg;
    const D = C + R;
    const QK = N + R;
    using table = RopeTable.create(ropeConfigFrom(cfg), start + L);
    // Token rows in (b, s) order: prefill s < P, then decode step s − P.
    const xPre = f.readFloat64('x.prefill').data;
    const x = new Float64Array(B * L * hid);
    for (let b = 0; b < B; b++) {
      x.set(xPre.subarray(b * P * hid, (b + 1) * P * hid), b * L * hid);
      for (let k = 0; k < K; k++) x.set(f.readFloat64(`x.decode.${k}`).data.subarray(b * hid, (b + 1) * hid), (b * L + P + k) * hid);
    }
    const T = B * L;
    const kvDownHost = linear(x, T, hid, f.readFloat64('weights.kv_a_proj_with_mqa.weight').data, D);
    const pageSize = 4;
    const numPages = Math.ceil(T / pageSize) + 2;
    // Reverse page order so a kernel ignoring the mapping would not line up.
    const slots = Int32Array.from({ length: T }, (_, i) => (numPages - 1 - Math.floor(i / pageSize)) * pageSize + (i % pageSize));
    const pos = Int32Array.from({ length: T }, (_, i) => start + (i % L));
    using positions = DeviceTensor.fromArray(pos, [T], 'i32');
    using slotMapping = DeviceTensor.fromArray(slots, [T], 'i32');
    const wantLatent = f.readFloat64('cache.latent').data;
    const wantRope = f.readFloat64('cache.rope').data;
    for (const dt of ['f32', 'bf16'] as const) {
      using kvDown = DeviceTensor.fromArray(Float32Array.from(kvDownHost), [T, D], dt);
      using normWeight = DeviceTensor.fromArray(Float32Array.from(f.readFloat64('weights.kv_a_layernorm.weight').data), [C], dt);
      using cache = DeviceTensor.empty([numPages, pageSize, D], dt);
      poison(cache);
      appendLatent({ kvDown, normWeight, eps: cfg.rmsNormEps, positions, slotMapping, cache, table });
      const got = cache.toFloat32Sync();
      const latent = new Float64Array(T * C);
      const ropeK = new Float64Array(T * R);
      for (let i = 0; i < T; i++) {
        const s = slots[i]!;
        latent.set(got.subarray(s * D, s * D + C), i * C);
        ropeK.set(got.subarray(s * D + C, (s + 1) * D), i * R);
      }
      const e1 = relError(latent, wantLatent);
      const e2 = relError(ropeK, wantRope);
      t.ok(e1 < TOL[dt], `${dt} cache.latent rel err ${e1}`);
      t.ok(e2 < TOL[dt], `${dt} cache.rope rel err ${e2}`);
    }
    // Query: q_a_proj → q_a_layernorm → q_b_proj on the host (float64), rope on the device.
    for (let k = 0; k < K; k++) {
      const xd = f.readFloat64(`x.decode.${k}`).data;
      let q: Float64Array;
      if (cfg.qLoraRank !== null) {
        const qa = linear(xd, B, hid, f.readFloat64('weights.q_a_proj.weight').data, cfg.qLoraRank);
        reference.rmsNorm(qa, B, cfg.qLoraRank, f.readFloat64('weights.q_a_layernorm.weight').data, cfg.rmsNormEps, { out: qa });
        q = linear(qa, B, cfg.qLoraRank, f.readFloat64('weights.q_b_proj.weight').data, H * QK);
      } else {
        q = linear(xd, B, hid, f.readFloat64('weights.q_proj.weight').data, H * QK);
      }
      using qDev = DeviceTensor.fromArray(Float32Array.from(q), [B, H, QK], 'f32');
      using qPos = DeviceTensor.fromArray(new Int32Array(B).fill(start + P + k), [B], 'i32');
      ropeQuery(qDev, qPos, table);
      const got = qDev.toFloat32Sync();
      const qRope = new Float64Array(B * H * R);
      for (let r = 0; r < B * H; r++) qRope.set(got.subarray(r * QK + N, (r + 1) * QK), r * R);
      const err = relError(qRope, f.readFloat64(`q_rope.decode.${k}`).data);
      t.ok(err < 1e-5, `q_rope.decode.${k} rel err ${err}`);
    }
  });
}

t.test('errors are MlaError instances', async (t) => {
  try {
    checkRopePositions('rope', [-5], 10);
    t.fail('did not throw');
  } catch (err) {
    t.ok(err instanceof MlaError);
  }
});

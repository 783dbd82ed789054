import t from 'tap';
import { MLA_PRESETS, type MlaConfig, type YarnScaling } from '../../lib/config.js';
import {
  applyRope,
  ropeInvFreq,
  ropeTable,
  yarnFindCorrectionRange,
  yarnLinearRamp,
  type RopeLayout,
  type RopeTable,
} from '../../lib/reference/rope.js';
import { mulberry32, randnArray } from '../../lib/reference/util.js';

const V3 = MLA_PRESETS['deepseek-v3'];
const LAYOUTS: RopeLayout[] = ['interleaved', 'neox'];

function dot(a: Float64Array, b: Float64Array): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i]! * b[i]!;
  return s;
}

// A table with float64 angles: isolates applyRope's algebra from the float32
// rounding of the angles that ropeTable reproduces.
function exactTable(invFreq: Float64Array, maxPos: number): RopeTable {
  const half = invFreq.length;
  const cos = new Float64Array(maxPos * half);
  const sin = new Float64Array(maxPos * half);
  for (let p = 0; p < maxPos; p++) {
    for (let i = 0; i < half; i++) {
      cos[p * half + i] = Math.cos(p * invFreq[i]!);
      sin[p * half + i] = Math.sin(p * invFreq[i]!);
    }
  }
  return { dim: 2 * half, half, maxPos, invFreq, cos, sin, attentionFactor: 1 };
}

function rotated(x: Float64Array, pos: number, table: RopeTable, layout: RopeLayout): Float64Array {
  const y = Float64Array.from(x);
  applyRope(y, 1, y.length, 0, y.length, [pos], table, layout);
  return y;
}

t.test('YaRN correction range and frequencies for V3', async (t) => {
  t.same(yarnFindCorrectionRange(32, 1, 64, 10000, 4096), [10, 23], 'survey: (10.47 → 10, 22.51 → 23)');
  const plain = ropeInvFreq(64, 10000, null);
  const yarn = ropeInvFreq(64, 10000, V3.ropeScaling);
  let allF32 = true;
  for (let i = 0; i < 32; i++) {
    const want = 1 / Math.pow(10000, (2 * i) / 64);
    if (Math.abs(plain[i]! - want) > want * 2 ** -23) t.fail(`plain freq ${i}: ${plain[i]} vs ${want}`);
    allF32 &&= plain[i] === Math.fround(plain[i]!) && yarn[i] === Math.fround(yarn[i]!);
  }
  t.ok(allF32, 'plain and YaRN frequencies are float32 values within 1 ulp of 1/θ^(2i/d)');
  t.same([...yarn.subarray(0, 11)], [...plain.subarray(0, 11)], 'dims up to low = 10 keep their frequency');
  for (let i = 23; i < 32; i++) {
    const want = Math.fround(plain[i]! / 40);
    if (Math.abs(yarn[i]! - want) > want * 2 ** -22) t.fail(`dim ${i} not divided by the factor`);
  }
  for (let i = 11; i < 23; i++) {
    const ramp = (i - 10) / 13;
    const want = (plain[i]! / 40) * ramp + plain[i]! * (1 - ramp);
    if (Math.abs(yarn[i]! - want) > want * 1e-6) t.fail(`dim ${i} blend ${yarn[i]} vs ${want}`);
  }
  t.pass('blend region follows the linear ramp');
  const ramp = yarnLinearRamp(3, 3, 6);
  t.same([...ramp].map((v) => (v > 0 && v < 1 ? 'mid' : v)), [0, 0, 0, 0, 1, 1], 'min == max gets +0.001');
});

t.test('YaRN off equals plain RoPE', async (t) => {
  const plain = ropeInvFreq(64, 10000, null);
  const off = ropeTable({ ...V3, ropeScaling: null }, 50);
  t.same([...off.invFreq], [...plain], 'rope_scaling null gives the plain frequencies');
  const factor1: YarnScaling = { ...(V3.ropeScaling as YarnScaling), factor: 1 };
  const f1 = ropeInvFreq(64, 10000, factor1);
  let worst = 0;
  for (let i = 0; i < 32; i++) worst = Math.max(worst, Math.abs(f1[i]! - plain[i]!) / plain[i]!);
  t.ok(worst <= 2 ** -23, `factor 1: frequencies equal plain to float32 rounding (worst rel ${worst.toExponential(2)})`);
  for (let p = 0; p < 50; p++) {
    const angle = Math.fround(p * plain[5]!);
    if (off.cos[p * 32 + 5] !== Math.cos(angle)) t.fail(`cos table at ${p}`);
  }
  t.pass('cos table is cos of the float32 angle');
});

t.test('RoPE preserves norms', async (t) => {
  const rng = mulberry32(3);
  for (const layout of LAYOUTS) {
    for (const cfg of [V3, { ...V3, ropeScaling: null }] as MlaConfig[]) {
      const table = ropeTable(cfg, 5000);
      let worst = 0;
      for (let trial = 0; trial < 50; trial++) {
        const x = randnArray(64, rng);
        const pos = Math.floor(rng() * 5000);
        const y = rotated(x, pos, table, layout);
        worst = Math.max(worst, Math.abs(Math.sqrt(dot(y, y)) - Math.sqrt(dot(x, x))) / Math.sqrt(dot(x, x)));
      }
      t.ok(worst < 1e-14, `${layout} yarn=${cfg.ropeScaling !== null}: worst norm change ${worst.toExponential(2)}`);
    }
  }
  const scaled = ropeTable(V3, 10, { attentionFactor: 1.25 });
  const x = randnArray(64, rng);
  const y = rotated(x, 7, scaled, 'interleaved');
  t.ok(Math.abs(Math.sqrt(dot(y, y) / dot(x, x)) - 1.25) < 1e-14, 'attentionFactor scales the norm');
});

t.test('q·k after RoPE depends only on the position difference', async (t) => {
  const rng = mulberry32(4);
  for (const layout of LAYOUTS) {
    for (const scaling of [V3.ropeScaling, null]) {
      const invFreq = ropeInvFreq(64, 10000, scaling);
      const exact = exactTable(invFreq, 4000);
      const real = ropeTable({ ...V3, ropeScaling: scaling }, 300);
      let worstExact = 0;
      let worstReal = 0;
      for (let trial = 0; trial < 40; trial++) {
        const q = randnArray(64, rng);
        const k = randnArray(64, rng);
        const m = Math.floor(rng() * 1000);
        const n = Math.floor(rng() * 1000);
        const shift = Math.floor(rng() * 2000);
        const norm = Math.sqrt(dot(q, q) * dot(k, k));
        const a = dot(rotated(q, m, exact, layout), rotated(k, n, exact, layout));
        const b = dot(rotated(q, m + shift, exact, layout), rotated(k, n + shift, exact, layout));
        worstExact = Math.max(worstExact, Math.abs(a - b) / norm);
        // The float32 angles break exact shift invariance only by their rounding
        // (half an ulp of a position below 300: < 2^-16 rad).
        const m2 = m % 100;
        const n2 = n % 100;
        const s2 = shift % 200;
        const c = dot(rotated(q, m2, real, layout), rotated(k, n2, real, layout));
        const d = dot(rotated(q, m2 + s2, real, layout), rotated(k, n2 + s2, real, layout));
        worstReal = Math.max(worstReal, Math.abs(c - d) / norm);
      }
      const tag = `${layout} yarn=${scaling !== null}`;
      t.ok(worstExact < 1e-12, `${tag}, float64 angles: worst |Δ(q·k)|/(|q||k|) ${worstExact.toExponential(2)}`);
      t.ok(worstReal < 2e-5, `${tag}, float32 angles: worst ${worstReal.toExponential(2)}`);
    }
  }
});

t.test('layouts are the same rotation up to a fixed permutation', async (t) => {
  const rng = mulberry32(5);
  const table = ropeTable(V3, 100);
  const x = randnArray(64, rng);
  // de-interleave: (x0, x1, x2, x3, ...) -> (x0, x2, ..., x1, x3, ...)
  const perm = (v: Float64Array): Float64Array => {
    const o = new Float64Array(64);
    for (let i = 0; i < 32; i++) {
      o[i] = v[2 * i]!;
      o[32 + i] = v[2 * i + 1]!;
    }
    return o;
  };
  const a = perm(rotated(x, 37, table, 'interleaved'));
  const b = rotated(perm(x), 37, table, 'neox');
  t.same([...a], [...b]);
});

t.test('applyRope on a strided buffer touches only the rope slice', async (t) => {
  const rng = mulberry32(6);
  const table = ropeTable(V3, 64);
  const rows = 5;
  const stride = 192 + 3;
  const x = randnArray(rows * stride, rng);
  const orig = Float64Array.from(x);
  const positions = [0, 3, 63, 17, 1];
  applyRope(x, rows, stride, 128, 64, positions, table, 'interleaved');
  let untouched = true;
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < stride; c++) {
      const inRope = c >= 128 && c < 192;
      if (!inRope && x[r * stride + c] !== orig[r * stride + c]) untouched = false;
    }
    const want = rotated(orig.slice(r * stride + 128, r * stride + 192), positions[r]!, table, 'interleaved');
    t.same([...x.subarray(r * stride + 128, r * stride + 192)], [...want], `row ${r} rotated by its own position`);
  }
  t.ok(untouched, 'nope part and padding unchanged');
  t.same([...x.subarray(128, 192)], [...orig.subarray(128, 192)], 'position 0 is the identity');
  t.throws(() => applyRope(x, rows, stride, 128, 64, [0, 0, 64, 0, 0], table, 'interleaved'), /position 64/);
  t.throws(() => applyRope(x, rows, 100, 128, 64, positions, table, 'neox'), /stride/);
  t.throws(() => applyRope(x, rows, stride, 128, 32, positions, table, 'neox'), { code: 'ERR_SHAPE', message: /`dim` = 32/ });
});

// PTX conformance: mma.sync, ldmatrix, cp.async, shuffles and votes run through the real
// wrappers (csrc/kernels/primitives.cu) and are compared bit for bit with the ISA's definitions
// (lib/reference/primitives.ts). The same file runs on a GPU and on the emulated device; with
// MLA_PRIMITIVES_DUMP=<file> every raw output is also written as hex, so scripts/gpu-check.sh can
// `cmp` a GPU run against an emulator run and neither can share a misreading with the kernels.
import './helpers/emulated-devices.js';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { cpAsyncConformance, ldmatrixConformance, mbarrierConformance, mmaConformance, shuffleConformance, tmaConformance, voteConformance, wgmmaConformance } from '../lib/ops/primitives.js';
import type { ShflOpName, ShuffleCase, SwizzleSpan, WgmmaCase } from '../lib/ops/primitives.js';
import { cpAsyncReference, halfBitsToNumber, ldmatrixReference, mbarrierReference, mmaReference, shuffleReference, swizzleAddress, tmaReference, voteReference, wgmmaReference } from '../lib/reference/primitives.js';
import { cuda } from '../lib/index.js';
import { deviceLabel, emulated, gpuSkip, rng } from './helpers/gpu.js';
import { throwsNaming } from './helpers/validation.js';

const dump = new Map<string, string>();
const hex = (u: Uint32Array): string => Array.from(u, (x) => x.toString(16).padStart(8, '0')).join(' ');
const bitsOf = (f: Float32Array): Uint32Array => new Uint32Array(f.buffer.slice(f.byteOffset, f.byteOffset + f.byteLength));
function record(key: string, u: Uint32Array): Uint32Array {
  dump.set(key, hex(u));
  return u;
}

/** Exact 16-bit encoding of a value the dtype represents exactly (throws otherwise). */
function halfBits(x: number, dtype: 'bf16' | 'f16'): number {
  let h: number;
  if (dtype === 'bf16') {
    h = bitsOf(new Float32Array([x]))[0]! >>> 16;
  } else {
    const a = Math.abs(x), e = a === 0 ? -15 : Math.max(Math.floor(Math.log2(a)), -14);
    const m = a === 0 ? 0 : e === -14 && a < 2 ** -14 ? a * 2 ** 24 : a * 2 ** (10 - e) - 1024;
    h = (x < 0 || Object.is(x, -0) ? 0x8000 : 0) | (a < 2 ** -14 ? 0 : (e + 15) << 10) | m;
  }
  if (!Object.is(halfBitsToNumber(h, dtype), x)) throw new Error(`${x} is not exact in ${dtype}`);
  return h;
}

t.test('validation (no GPU needed)', async (t) => {
  const a = new Uint16Array(256), b = new Uint16Array(128), c = new Float32Array(128);
  throwsNaming(t, () => mmaConformance(new Uint16Array(255), b, c, 'bf16'), 'ERR_SHAPE', 'a');
  throwsNaming(t, () => mmaConformance(a, new Float32Array(128) as unknown as Uint16Array, c, 'bf16'), 'ERR_ARGUMENT', 'b');
  throwsNaming(t, () => mmaConformance(a, b, new Float32Array(64), 'f16'), 'ERR_SHAPE', 'c');
  throwsNaming(t, () => mmaConformance(a, b, c, 'f32' as 'bf16'), 'ERR_DTYPE', 'dtype');
  const m = new Uint16Array(256), perm = Array.from({ length: 32 }, (_, i) => i);
  throwsNaming(t, () => ldmatrixConformance(new Uint16Array(8), perm, 4, false), 'ERR_SHAPE', 'matrix');
  throwsNaming(t, () => ldmatrixConformance(m, perm.slice(1), 4, false), 'ERR_SHAPE', 'perm');
  throwsNaming(t, () => ldmatrixConformance(m, perm.map((p) => (p === 5 ? 32 : p)), 4, false), 'ERR_RANGE', 'perm[5]');
  throwsNaming(t, () => ldmatrixConformance(m, perm.map((p) => (p === 7 ? 1.5 : p)), 4, false), 'ERR_ARGUMENT', 'perm[7]');
  throwsNaming(t, () => ldmatrixConformance(m, perm, 3 as 4, false), 'ERR_RANGE', 'num');
  throwsNaming(t, () => ldmatrixConformance(m, perm, 2, 1 as unknown as boolean), 'ERR_ARGUMENT', 'trans');
  const pred = new Array<boolean>(64).fill(true);
  throwsNaming(t, () => cpAsyncConformance(new Uint32Array(255), pred), 'ERR_SHAPE', 'src');
  throwsNaming(t, () => cpAsyncConformance(new Int32Array(256) as unknown as Uint32Array, pred), 'ERR_ARGUMENT', 'src');
  throwsNaming(t, () => cpAsyncConformance(new Uint32Array(256), pred.slice(1)), 'ERR_SHAPE', 'pred');
  throwsNaming(t, () => cpAsyncConformance(new Uint32Array(256), pred.map((p, i) => (i === 9 ? 1 : p)) as boolean[]), 'ERR_ARGUMENT', 'pred[9]');
  const v = new Uint32Array(32);
  throwsNaming(t, () => shuffleConformance(new Uint32Array(31), []), 'ERR_SHAPE', 'values');
  throwsNaming(t, () => shuffleConformance(v, [{ op: 'rot' as ShflOpName, arg: 1, width: 32 }]), 'ERR_ARGUMENT', 'cases[0].op');
  throwsNaming(t, () => shuffleConformance(v, [{ op: 'idx', arg: 0, width: 32 }, { op: 'toString' as ShflOpName, arg: 0, width: 32 }]), 'ERR_ARGUMENT', 'cases[1].op');
  throwsNaming(t, () => shuffleConformance(v, [{ op: 'xor', arg: 2 ** 31, width: 32 }]), 'ERR_RANGE', 'cases[0].arg');
  throwsNaming(t, () => shuffleConformance(v, [{ op: 'up', arg: 1, width: 12 }]), 'ERR_RANGE', 'cases[0].width');
  throwsNaming(t, () => shuffleConformance(v, [{ op: 'up', arg: 1, width: 64 }]), 'ERR_RANGE', 'cases[0].width');
  throwsNaming(t, () => shuffleConformance(v, 'idx' as unknown as ShuffleCase[]), 'ERR_ARGUMENT', 'cases');
  throwsNaming(t, () => voteConformance(new Int32Array(33)), 'ERR_SHAPE', 'preds');
  throwsNaming(t, () => voteConformance(new Uint32Array(32) as unknown as Int32Array), 'ERR_ARGUMENT', 'preds');
  t.same(shuffleConformance(v, []), new Uint32Array(0), 'no cases: no launch');
  t.same(voteConformance(new Int32Array(0)), new Uint32Array(0), 'no warps: no launch');
});

t.test('reference self-checks', async (t) => {
  // f16/bf16 decoding against known encodings.
  t.same([0x3c00, 0xc000, 0x8000, 0x0001, 0x7bff].map((h) => halfBitsToNumber(h, 'f16')), [1, -2, -0, 2 ** -24, 65504]);
  t.same([0x3f80, 0xc000, 0x8000, 0x3e80].map((h) => halfBitsToNumber(h, 'bf16')), [1, -2, -0, 0.25]);
  t.equal(halfBits(-0.375, 'f16'), 0xb600);
  t.equal(halfBits(2 ** -20, 'f16'), 0x0010);
  // PTX shfl rules at a glance: width 8 idx 9 = lane 1 of the segment; xor past the segment reads
  // an earlier segment, never a later one.
  const lanes = Uint32Array.from({ length: 32 }, (_, i) => i);
  t.same(Array.from(shuffleReference(lanes, [{ op: 'idx', arg: 9, width: 8 }]).subarray(8, 16)), new Array(8).fill(9));
  t.same(Array.from(shuffleReference(lanes, [{ op: 'xor', arg: 16, width: 16 }])), [...lanes.slice(0, 16), ...lanes.slice(0, 16)]);
  t.same(Array.from(shuffleReference(lanes, [{ op: 'up', arg: 3, width: 8 }]).subarray(8, 16)), [8, 9, 10, 8, 9, 10, 11, 12]);
});

// ---- mma ----------------------------------------------------------------------------------------
interface MmaInputs {
  a: number[];
  b: number[];
  c: number[];
}

function mmaInputs(kind: 'int' | 'frac' | 'pow2' | 'zeros', seed: number): MmaInputs {
  const r = rng(seed);
  const int = (lo: number, hi: number): number => {
    const v = lo + Math.floor(r() * (hi - lo + 1));
    return v === 0 && r() < 0.5 ? -0 : v;  // both zeros, so -0 inputs are covered
  };
  const n = (len: number, f: () => number): number[] => Array.from({ length: len }, f);
  switch (kind) {
    // Every product and partial sum is an integer below 2^11: exact in fp32 in any order.
    case 'int': return { a: n(256, () => int(-8, 8)), b: n(128, () => int(-8, 8)), c: n(128, () => int(-100, 100)) };
    // Multiples of 1/8 (A, B) and 1/64 (C): partial sums are multiples of 1/64 below 2^9.
    case 'frac': return { a: n(256, () => int(-32, 32) / 8), b: n(128, () => int(-32, 32) / 8), c: n(128, () => int(-4096, 4096) / 64) };
    // Powers of two up to 2^7 times integers: wide exponents, still exact.
    case 'pow2': return { a: n(256, () => (r() < 0.5 ? -1 : 1) * 2 ** Math.floor(r() * 8)), b: n(128, () => int(-4, 4)), c: n(128, () => int(-1000, 1000) * 4) };
    // A all ±0: D must be C; where C is ±0 too only the sign of zero is left (see below).
    case 'zeros': return { a: n(256, () => (r() < 0.5 ? -0 : 0)), b: n(128, () => int(-8, 8)), c: n(128, () => (r() < 0.5 ? int(-9, 9) : r() < 0.5 ? -0 : 0)) };
  }
}

t.test(`mma16816 vs PTX ISA (${deviceLabel})`, { skip: gpuSkip }, async (t) => {
  for (const dtype of ['bf16', 'f16'] as const) {
    const cases: [string, MmaInputs][] = [];
    for (const seed of [1, 2, 3]) cases.push([`int-${seed}`, mmaInputs('int', seed)]);
    for (const seed of [4, 5]) cases.push([`frac-${seed}`, mmaInputs('frac', seed)]);
    cases.push(['pow2-6', mmaInputs('pow2', 6)], ['zeros-7', mmaInputs('zeros', 7)]);
    // A a scaled permutation (A[i][perm[i]] = i + 1): D row i = (i + 1)·B row perm[i] + C row i,
    // so a fragment index mix-up names itself.
    const perm = [3, 14, 0, 9, 7, 1, 12, 5, 15, 2, 10, 6, 13, 4, 11, 8];
    cases.push(['perm', {
      a: Array.from({ length: 256 }, (_, i) => (perm[i >> 4] === (i & 15) ? 1 + (i >> 4) : 0)),
      b: Array.from({ length: 128 }, (_, i) => (i >> 3) * 8 + (i & 7) - 64),
      c: Array.from({ length: 128 }, (_, i) => i * 1024),
    }]);
    for (const [name, x] of cases) {
      const a = Uint16Array.from(x.a, (v) => halfBits(v, dtype)), b = Uint16Array.from(x.b, (v) => halfBits(v, dtype));
      const c = Float32Array.from(x.c);
      const got = record(`mma/${dtype}/${name}`, bitsOf(mmaConformance(a, b, c, dtype)));
      const want = bitsOf(mmaReference(a, b, c, dtype));
      // An exactly-zero D may be +0 or -0: the ISA fixes neither order nor signed-zero handling of
      // the fused sum. Compared as 0 here; the GPU/emulator dump still diffs the raw sign.
      const signs = Array.from(want).filter((w, i) => (w & 0x7fffffff) === 0 && got[i] !== w).length;
      const canon = (u: Uint32Array): Uint32Array => u.map((v, i) => ((want[i]! & 0x7fffffff) === 0 && (v & 0x7fffffff) === 0 ? 0 : v));
      t.same(canon(got), canon(want), `${dtype} ${name}: D bit for bit`);
      if (signs) t.comment(`${dtype} ${name}: ${signs} zero result(s) with the other sign than C-first IEEE summation`);
    }
  }
});

// ---- ldmatrix -----------------------------------------------------------------------------------
t.test(`ldmatrix x1/x2/x4 (.trans) vs PTX ISA (${deviceLabel})`, { skip: gpuSkip }, async (t) => {
  const r = rng(11);
  const matrix = Uint16Array.from({ length: 256 }, () => Math.floor(r() * 65536));
  const shuffled = Array.from({ length: 32 }, (_, i) => i);
  for (let i = 31; i > 0; i--) {
    const j = Math.floor(r() * (i + 1));
    [shuffled[i], shuffled[j]] = [shuffled[j]!, shuffled[i]!];
  }
  const perms: [string, number[]][] = [
    ['identity', Array.from({ length: 32 }, (_, i) => i)],
    ['reversed', Array.from({ length: 32 }, (_, i) => 31 - i)],
    ['shuffled', shuffled],
  ];
  for (const [pname, perm] of perms) {
    for (const num of [1, 2, 4] as const) {
      for (const trans of [false, true]) {
        const name = `x${num}${trans ? '.trans' : ''} ${pname}`;
        const got = record(`ldmatrix/${name}`, ldmatrixConformance(matrix, perm, num, trans));
        t.same(got, ldmatrixReference(matrix, perm, num, trans), `${name}: every lane's registers`);
      }
    }
  }
});

// ---- cp.async -----------------------------------------------------------------------------------
t.test(`cp.async zero fill and wait_group (${deviceLabel})`, { skip: gpuSkip }, async (t) => {
  const r = rng(21);
  const src = Uint32Array.from({ length: 256 }, () => Math.floor(r() * 2 ** 32));
  const preds: [string, boolean[]][] = [
    ['all', new Array<boolean>(64).fill(true)],
    ['none', new Array<boolean>(64).fill(false)],
    ['alternating', Array.from({ length: 64 }, (_, i) => i % 2 === 0)],
    ['group 0 only', Array.from({ length: 64 }, (_, i) => i < 32)],
    ['random', Array.from({ length: 64 }, () => r() < 0.5)],
  ];
  for (const [name, pred] of preds) {
    const got = cpAsyncConformance(src, pred);
    const want = cpAsyncReference(src, pred);
    t.same(record(`cpasync/${name}/early`, got.early), want.early, `${name}: own group-0 chunk after wait_group 1`);
    t.same(record(`cpasync/${name}/out`, got.out), want.out, `${name}: shared memory after wait_group 0`);
  }
});

// ---- shuffles and votes -------------------------------------------------------------------------
// Lane arguments inside what the CUDA guide documents: any srcLane (taken mod width), xor masks
// below width, deltas 0..31. Beyond them (xor masks >= width, which PTX lets read earlier
// segments; arguments outside [0, 31], of which PTX uses bits [4:0]) the PTX pseudo-code is
// still exact, and kernels must not silently get something else on the emulator.
const describe = (c: ShuffleCase): string => `${c.op} ${c.arg} width ${c.width}`;
function shuffleCases(): { documented: ShuffleCase[]; beyond: ShuffleCase[] } {
  const documented: ShuffleCase[] = [], beyond: ShuffleCase[] = [], seen = new Set<string>();
  const add = (ok: boolean, c: ShuffleCase): void => {
    if (!seen.has(describe(c))) (ok ? documented : beyond).push(c);
    seen.add(describe(c));
  };
  for (const width of [32, 16, 8, 4, 2, 1]) {
    for (const arg of [0, 1, 5, width - 1, width, width + 3, 31, 32, 33, -1, -5, 1000]) add(true, { op: 'idx', arg, width });
    for (const arg of [1, 2, 4, 8, 16, 3, 31, 32, 33, -1]) add(arg >= 0 && arg < width, { op: 'xor', arg, width });
    for (const op of ['down', 'up'] as const) {
      for (const arg of [0, 1, 3, width - 1, width, 31, 32, 33, 40, -1]) add(arg >= 0 && arg < 32, { op, arg, width });
    }
  }
  return { documented, beyond };
}


t.test(`__shfl*_sync vs PTX shfl.sync (${deviceLabel})`, { skip: gpuSkip }, async (t) => {
  const r = rng(31);
  // The low byte names the lane, so a wrong source lane reads off the diff.
  const values = Uint32Array.from({ length: 32 }, (_, l) => ((Math.floor(r() * 2 ** 24) << 8) | l) >>> 0);
  const { documented, beyond } = shuffleCases();
  const all = [...documented, ...beyond];
  const got = shuffleConformance(values, all), want = shuffleReference(values, all);
  const row = (u: Uint32Array, i: number): Uint32Array => u.slice(i * 32, i * 32 + 32);
  // "source lane:bits" per lane: bit for bit, and a wrong lane reads straight off the diff.
  const show = (u: Uint32Array): string[] => Array.from(u, (v) => `${v & 255}:${v.toString(16).padStart(8, '0')}`);
  const differs: string[] = [];
  all.forEach((c, i) => {
    const g = record(`shfl/${describe(c)}`, row(got, i)), w = row(want, i);
    t.same(show(g), show(w), `${describe(c)}: every lane`);
    if (g.some((v, l) => v !== w[l])) differs.push(`${describe(c)}: source lanes ${Array.from(g, (v) => v & 255).join(',')}; PTX ${Array.from(w, (v) => v & 255).join(',')}`);
  });
  for (const d of differs) t.comment(d);
});

t.test(`__ballot_sync / __any_sync / __all_sync (${deviceLabel})`, { skip: gpuSkip }, async (t) => {
  const r = rng(41);
  const warps: [string, (l: number) => number][] = [
    ['none', () => 0],
    ['all', () => 1],
    ['lane 0', (l) => (l === 0 ? 1 : 0)],
    ['lane 31', (l) => (l === 31 ? -1 : 0)],
    ['all but lane 17', (l) => (l === 17 ? 0 : 7)],
    ['odd lanes', (l) => l & 1],
    ['random ints', () => Math.floor(r() * 11) - 5],
    ['int32 extremes', (l) => [0, -(2 ** 31), 2 ** 31 - 1, 256][l % 4]!],
  ];
  const preds = new Int32Array(warps.length * 32);
  warps.forEach(([, f], i) => { for (let l = 0; l < 32; l++) preds[i * 32 + l] = f(l); });
  const got = voteConformance(preds), want = voteReference(preds);
  warps.forEach(([name], i) => {
    t.same(record(`vote/${name}`, got.slice(i * 96, i * 96 + 96)), want.slice(i * 96, i * 96 + 96), `${name}: ballot, any, all on every lane`);
  });
});

// ---- sm_90a: wgmma, TMA, mbarrier (primitives_sm90.cu) ---------------------------------------------
// Compute capability 9.0 only: elsewhere (a GPU of another kind, the emulator's sm_80/86 tiers) the
// launcher refuses before launching, with a typed error.
const cc = gpuSkip ? '' : cuda.deviceInfo(0).computeCapability;
const sm90 = cc === '9.0';
const sm90Label = `${deviceLabel}, compute capability ${cc || 'none'}`;

t.test('sm_90a validation (no GPU needed)', async (t) => {
  const spec: WgmmaCase = { dtype: 'bf16', n: 16, k: 16, swizzleA: 0, swizzleB: 0, tnspB: 0, rs: false, scaleD: true };
  const a = new Uint16Array(64 * 16), b = new Uint16Array(16 * 16), c = new Float32Array(64 * 16);
  throwsNaming(t, () => wgmmaConformance(a, b, c, { ...spec, n: 24 as 16 }), 'ERR_RANGE', 'n');
  throwsNaming(t, () => wgmmaConformance(a, b, c, { ...spec, swizzleB: 16 as SwizzleSpan }), 'ERR_RANGE', 'swizzleB');
  throwsNaming(t, () => wgmmaConformance(a, new Uint16Array(10), c, spec), 'ERR_SHAPE', 'b');
  throwsNaming(t, () => wgmmaConformance(a, b, c, { ...spec, tnspA: 2 as 1 }), 'ERR_RANGE', 'tnspA');
  throwsNaming(t, () => wgmmaConformance(a, b, c, { ...spec, tnspA: 1, rs: true }), 'ERR_ARGUMENT', 'tnspA');
  throwsNaming(t, () => tmaConformance(new Uint16Array(64), [8, 8], [8], 0, [[0, 0]]), 'ERR_SHAPE', 'box');
  throwsNaming(t, () => tmaConformance(new Uint16Array(64), [8, 8], [8, 8], 0, [[0]]), 'ERR_SHAPE', 'coords[0]');
  throwsNaming(t, () => mbarrierConformance(new Uint16Array(10)), 'ERR_SHAPE', 'src');
  throwsNaming(t, () => mbarrierConformance(new Uint16Array(512), { handover: 'bar' as 'named' }), 'ERR_ARGUMENT', 'handover');
  // The ISA's swizzle at a glance: 128B moves chunk 0 of 128-byte row 3 to chunk 3, 32B only by row parity.
  t.equal(swizzleAddress(3 * 128, 128), 3 * 128 + 3 * 16);
  t.equal(swizzleAddress(3 * 128 + 16, 32), 3 * 128);
  t.equal(swizzleAddress(5 * 128 + 32, 64), 5 * 128 + 48);
});

// On a device that is not 9.0: this one, or (from a 9.0 device) another one when there is one
// (the emulated device lists an sm_80 and an sm_86 next to its sm_90: helpers/emulated-devices).
const other = gpuSkip ? -1 : sm90 ? cuda.devices().findIndex((d) => d.computeCapability !== '9.0') : cuda.currentDevice();
t.test(`sm_90a primitives refuse a device that is not compute capability 9.0 (${sm90Label})`, { skip: gpuSkip || (other < 0 ? 'every device here is compute capability 9.0' : false) }, async (t) => {
  const spec: WgmmaCase = { dtype: 'bf16', n: 16, k: 16, swizzleA: 0, swizzleB: 0, tnspB: 0, rs: false, scaleD: true };
  const before = cuda.currentDevice();
  cuda.setDevice(other);
  try {
    t.comment(`on device ${other}: ${cuda.deviceInfo(other).name}`);
    const refused = { code: 'ERR_ARGUMENT', message: /need a compute capability 9\.0 GPU .*this device is \d+\.\d+/ };
    t.throws(() => wgmmaConformance(new Uint16Array(1024), new Uint16Array(256), new Float32Array(1024), spec), refused, 'wgmma');
    t.throws(() => mbarrierConformance(new Uint16Array(512)), refused, 'mbarrier');
  } finally {
    cuda.setDevice(before);
  }
});

function smallInts(n: number, seed: number, lo: number, hi: number): number[] {
  const r = rng(seed);
  return Array.from({ length: n }, () => lo + Math.floor(r() * (hi - lo + 1)));
}

function wgmmaCase(t: Test, name: string, spec: WgmmaCase, seed: number): void {
  const { n, k, dtype } = spec;
  // |A|, |B| <= 4, |C| <= 64, k <= 64: every partial sum is an integer below 2^11, exact in fp32.
  const a = Uint16Array.from(smallInts(64 * k, seed, -4, 4), (v) => halfBits(v, dtype));
  const b = Uint16Array.from(smallInts(k * n, seed + 1, -4, 4), (v) => halfBits(v, dtype));
  const c = Float32Array.from(smallInts(64 * n, seed + 2, -64, 64));
  const got = record(`wgmma/${name}`, bitsOf(wgmmaConformance(a, b, c, spec)));
  const want = bitsOf(wgmmaReference(a, b, c, spec));
  // Zeros compared as 0 (their sign is not fixed by the ISA; the dump keeps the raw bits).
  const canon = (u: Uint32Array): Uint32Array => u.map((v) => ((v & 0x7fffffff) === 0 ? 0 : v));
  const g = canon(got), w = canon(want);
  const bad = Array.from(g.keys()).filter((i) => g[i] !== w[i]);
  t.equal(bad.length, 0, `${name}: D bit for bit${bad.length ? `; first differences (row, col): ${bad.slice(0, 6).map((i) => `(${Math.floor(i / n)}, ${i % n})`).join(' ')}` : ''}`);
}

t.test(`wgmma m64nNk16 vs PTX ISA (${sm90Label})`, { skip: gpuSkip || (sm90 ? false : 'needs compute capability 9.0') }, async (t) => {
  let seed = 100;
  // 1. every swizzle for A and B, B K-major and MN-major, bf16 and f16, m64n16k16.
  for (const dtype of ['bf16', 'f16'] as const) {
    for (const sw of [0, 32, 64, 128] as const) {
      for (const tnspB of [0, 1] as const) {
        wgmmaCase(t, `ss ${dtype} n16 k16 swizzle ${sw} B ${tnspB ? 'MN' : 'K'}-major`, { dtype, n: 16, k: 16, swizzleA: sw, swizzleB: sw, tnspB, rs: false, scaleD: true }, seed += 3);
      }
    }
  }
  for (const tnspB of [0, 1] as const) {
    wgmmaCase(t, `ss bf16 n16 scale-d 0 B ${tnspB ? 'MN' : 'K'}-major`, { dtype: 'bf16', n: 16, k: 16, swizzleA: 128, swizzleB: 128, tnspB, rs: false, scaleD: false }, seed += 3);
  }
  // 2. The decode kernel's patterns: P·V, m64n256k16 with B MN-major 128B in 64-column groups of
  // 64 key rows (LBO 8192 bytes); Q·K^T, m64n64 over k64 as 4 k16 steps (n32 too), the descriptor
  // start advancing 32 bytes inside a 128-byte swizzled row, and its rope chunk with A from
  // registers.
  for (const dtype of ['bf16', 'f16'] as const) {
    wgmmaCase(t, `ss ${dtype} n256 B MN-major 128B LBO 8192`, { dtype, n: 256, k: 16, swizzleA: 128, swizzleB: 128, tnspB: 1, lboRows: 64, rs: false, scaleD: true }, seed += 3);
    wgmmaCase(t, `ss ${dtype} n32 k64 (4 steps) A, B K-major 128B`, { dtype, n: 32, k: 64, swizzleA: 128, swizzleB: 128, tnspB: 0, rs: false, scaleD: true }, seed += 3);
    wgmmaCase(t, `ss ${dtype} n64 k64 (4 steps) A, B K-major 128B`, { dtype, n: 64, k: 64, swizzleA: 128, swizzleB: 128, tnspB: 0, rs: false, scaleD: true }, seed += 3);
    wgmmaCase(t, `rs ${dtype} n64 k64 B K-major 128B`, { dtype, n: 64, k: 64, swizzleA: 0, swizzleB: 128, tnspB: 0, rs: true, scaleD: false }, seed += 3);
  }
  wgmmaCase(t, 'ss bf16 n32 k64 (4 steps) no swizzle', { dtype: 'bf16', n: 32, k: 64, swizzleA: 0, swizzleB: 0, tnspB: 0, rs: false, scaleD: false }, seed += 3);
  // 3. A from registers.
  for (const [swizzleB, tnspB] of [[128, 0], [0, 0], [128, 1], [32, 1]] as const) {
    wgmmaCase(t, `rs bf16 n32 k16 B ${tnspB ? 'MN' : 'K'}-major swizzle ${swizzleB}`, { dtype: 'bf16', n: 32, k: 16, swizzleA: 0, swizzleB, tnspB, rs: true, scaleD: true }, seed += 3);
  }
  wgmmaCase(t, 'rs f16 n32 k64 B K-major 128B', { dtype: 'f16', n: 32, k: 64, swizzleA: 0, swizzleB: 128, tnspB: 0, rs: true, scaleD: true }, seed += 3);
  // 4. A MN-major, as the few-rows decode kernel's O^T += V^T·P^T reads V^T straight from the K
  // tile (64 V columns of a 128-byte swizzled chunk as M, key rows as K, B = P K-major): every
  // swizzle at n16, and n32 over k64 (the descriptor start advancing 16 rows a step).
  for (const sw of [0, 32, 64, 128] as const) {
    wgmmaCase(t, `ss bf16 n16 k16 A MN-major swizzle ${sw}`, { dtype: 'bf16', n: 16, k: 16, swizzleA: sw, swizzleB: 128, tnspA: 1, tnspB: 0, rs: false, scaleD: true }, seed += 3);
  }
  for (const dtype of ['bf16', 'f16'] as const) {
    wgmmaCase(t, `ss ${dtype} n32 k64 (4 steps) A MN-major 128B, B K-major 128B`, { dtype, n: 32, k: 64, swizzleA: 128, swizzleB: 128, tnspA: 1, tnspB: 0, rs: false, scaleD: true }, seed += 3);
  }
});

t.test(`TMA tensor loads vs PTX ISA (${sm90Label})`, { skip: gpuSkip || (sm90 ? false : 'needs compute capability 9.0') }, async (t) => {
  // Distinct 16-bit patterns (raw bits: TMA copies bytes), so a misplaced element names itself.
  const tensor = (n: number): Uint16Array => Uint16Array.from({ length: n }, (_, i) => (i * 7 + 1) & 0xffff);
  const cases: [string, number[], number[], SwizzleSpan, number[][]][] = [
    // 2D [40 rows, 72 cols]: 144-byte rows (a multiple of 16).
    ['2d 128B', [40, 72], [64, 8], 128, [[0, 0], [8, 16], [-8, -3], [40, 36], [-64, 0], [0, 40]]],
    // Innermost coordinates are multiples of 16 bytes (8 elements): others fault on a GPU.
    ['2d none', [40, 72], [16, 8], 0, [[0, 0], [64, 37], [-8, -7], [8, 1]]],
    ['2d 64B', [40, 72], [32, 8], 64, [[0, 0], [48, 36]]],
    ['2d 32B', [40, 72], [16, 16], 32, [[8, 8], [-8, 30]]],
    // 3D [3, 20, 64]: a box of 64 x 8 x 2 with 128B swizzle, and unswizzled 8 x 4 x 3.
    ['3d 128B', [3, 20, 64], [64, 8, 2], 128, [[0, 0, 0], [0, 16, 2], [-16, -4, -1], [8, 2, 1]]],
    ['3d none', [3, 20, 64], [8, 4, 3], 0, [[56, 18, 0], [-8, -2, -2], [16, 4, 0]]],
  ];
  for (const [name, shape, box, swizzle, coords] of cases) {
    const src = tensor(shape.reduce((x, y) => x * y, 1));
    const got = tmaConformance(src, shape, box, swizzle, coords);
    const want = tmaReference(src, shape, box, swizzle, coords);
    const elems = box.reduce((x, y) => x * y, 1);
    coords.forEach((c, i) => {
      const g = got.slice(i * elems, (i + 1) * elems), w = want.slice(i * elems, (i + 1) * elems);
      record(`tma/${name}/${c.join(',')}`, new Uint32Array(g.buffer.slice(0, g.byteLength - (g.byteLength % 4))));
      t.same(g, w, `${name} at (${c.join(', ')}): shared bytes`);
    });
  }
});

t.test(`mbarrier phases, parity and expect_tx (${sm90Label})`, { skip: gpuSkip || (sm90 ? false : 'needs compute capability 9.0') }, async (t) => {
  const src = Uint16Array.from({ length: 512 }, (_, i) => (i * 13 + 5) & 0xffff);
  const got = mbarrierConformance(src), want = mbarrierReference(src);
  t.same(record('mbarrier/waits', got.waits), want.waits, `try_wait sequence ${Array.from(want.waits.subarray(0, 10)).join('')} on both threads`);
  t.same(got.tile, want.tile, 'the TMA box that completed the expect_tx phase, handed over through named barriers');
  // The same hand-over through mbarriers (a kernel of its own: racecheck reports name it).
  const viaMbarrier = mbarrierConformance(src, { handover: 'mbarrier' });
  t.same(record('mbarrier/handover-mbarrier/waits', viaMbarrier.waits), want.waits, 'the same try_wait sequence');
  t.same(viaMbarrier.tile, want.tile, 'the box, handed over through mbarriers');
});

// Last: everything above has recorded its outputs by now (tap runs a file's subtests in order).
t.test('raw outputs dump (MLA_PRIMITIVES_DUMP)', { skip: gpuSkip }, async (t) => {
  const env = process.env.MLA_PRIMITIVES_DUMP;
  const dir = env ? undefined : mkdtempSync(join(tmpdir(), 'mla-primitives-'));
  const file = env ?? join(dir!, 'dump.json');
  try {
    // No device name or timing: a GPU run and an emulator run must give identical files.
    writeFileSync(file, `${JSON.stringify(Object.fromEntries(dump), null, 1)}\n`);
    const back = JSON.parse(readFileSync(file, 'utf8')) as Record<string, string>;
    t.same(Object.keys(back), [...dump.keys()], `${env ? file : 'a temporary file (set MLA_PRIMITIVES_DUMP to keep one)'}: every output`);
    t.ok(dump.size > 100, `${dump.size} outputs recorded`);
    t.ok(Object.values(back).every((v) => /^[0-9a-f]{8}( [0-9a-f]{8})*$/.test(v)), 'hex words');
  } finally {
    if (dir) rmSync(dir, { recursive: true, force: true });
  }
});

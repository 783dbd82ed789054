// Bandwidth of the RoPE side of MLA: the fused latent-cache writer (appendLatent: RMSNorm of
// the 512-wide latent + RoPE of the 64-wide key, written into a paged 576-wide cache) and the
// in-place query rotation (ropeQuery on [T, H, 192]). Both do ~no arithmetic, so the figure
// of merit is bytes over time against the copy suite's ceiling (target ≥ 80% at large T).
//
// Bytes counted (fewest one call must move):
//   appendLatent: T·576·e (read kvDown) + 512·e (norm weight) + 8·T (positions, slots)
//                 + T·64·4 (each token's f32 cos/sin row) + T·576·e (write the cache)
//   ropeQuery:    2·T·H·64·e (read + write the rope slice) + 4·T + T·64·4
import { MLA_PRESETS } from '../config.js';
import { DTYPE_SIZE } from '../dtype.js';
import { appendLatent, ropeConfigFrom, ropeQuery, RopeTable } from '../ops/rope.js';
import { applyRope, ropeLayoutOf, ropeTable } from '../reference/rope.js';
import { DeviceTensor } from '../runtime/tensor.js';
import { HALF_TOLERANCE, withScope } from './check.js';
import type { BenchCase, BenchSuite, KernelCheck } from './types.js';
import { type HalfDType, fillRandom, gridDTypes, gridNumbers, shuffledPages, withOwned } from './suite-util.js';
import * as reference from '../reference/index.js';

const TOKENS = [1, 16, 256, 4096, 65536];
const QUICK_TOKENS = [16, 4096];
const KV_LORA = 512;
const ROPE = 64;
const NOPE = 128;
const WIDTH = KV_LORA + ROPE;
const PAGE_SIZE = 64;


const V3 = MLA_PRESETS['deepseek-v3'];
const EPS = 1e-6;

/** Slots of T tokens over shuffled pages (a fresh prefill into a fragmented cache). */
function shuffledSlots(tokens: number, numPages: number, seed: number): Int32Array {
  const pages = shuffledPages(numPages, seed);
  return Int32Array.from({ length: tokens }, (_, t) => pages[Math.floor(t / PAGE_SIZE)]! * PAGE_SIZE + (t % PAGE_SIZE));
}

/**
 * The appendLatent path: 70 tokens at positions 0..69 (two shuffled pages, DeepSeek-V3's YaRN
 * table) into a cache of random rows, against reference.appendLatent over the whole cache (so
 * a write to a wrong slot shows too). `weight` is the norm weight's dtype (the layer uses f32).
 */
export function appendLatentCheck(dtype: HalfDType, weight: HalfDType | 'f32' = dtype): KernelCheck {
  return {
    name: `appendLatent ${dtype}${weight === dtype ? '' : ` ${weight} norm weight`} (t70 page ${PAGE_SIZE})`,
    tolerance: HALF_TOLERANCE,
    run: () => withScope((sc) => {
      const T = 70, numPages = 2;
      const kvDown = sc.random([T, WIDTH], dtype, 41);
      const normWeight = sc.random([KV_LORA], weight, 42, 0.2);
      const cache = sc.random([numPages, PAGE_SIZE, WIDTH], dtype, 43);
      const positions = Int32Array.from({ length: T }, (_, i) => i);
      const slots = shuffledSlots(T, numPages, 44);
      const table = sc.own(RopeTable.create(ropeConfigFrom(V3), T));
      appendLatent({
        kvDown: kvDown.t, normWeight: normWeight.t, eps: EPS, cache: cache.t, table,
        positions: sc.own(DeviceTensor.fromArray(positions, [T], 'i32')),
        slotMapping: sc.own(DeviceTensor.fromArray(slots, [T], 'i32')),
      });
      const want = Float64Array.from(cache.host);
      reference.appendLatent({
        kvDown: kvDown.host, normWeight: normWeight.host, eps: EPS, positions, slotMapping: slots, cache: want,
        pageSize: PAGE_SIZE, ropeTable: ropeTable(V3, T), layout: ropeLayoutOf(V3),
      });
      return [{ name: 'cache', got: cache.t.toFloat32Sync(), want }];
    }),
  };
}

/** The ropeQuery path: [5, 16, 192] queries at scattered positions, rope slice rotated in place vs applyRope. */
export function ropeQueryCheck(dtype: HalfDType): KernelCheck {
  return {
    name: `ropeQuery ${dtype} (t5 h16)`,
    tolerance: HALF_TOLERANCE,
    run: () => withScope((sc) => {
      const T = 5, H = 16, QK = NOPE + ROPE, maxPos = 4096;
      const q = sc.random([T, H, QK], dtype, 45);
      const positions = Int32Array.of(0, 1, 77, 1000, 4095);
      const table = sc.own(RopeTable.create(ropeConfigFrom(V3), maxPos));
      ropeQuery(q.t, sc.own(DeviceTensor.fromArray(positions, [T], 'i32')), table);
      const want = Float64Array.from(q.host);
      const rowPositions = Int32Array.from({ length: T * H }, (_, r) => positions[Math.floor(r / H)]!);
      applyRope(want, T * H, QK, NOPE, ROPE, rowPositions, ropeTable(V3, maxPos), ropeLayoutOf(V3));
      return [{ name: 'q', got: q.t.toFloat32Sync(), want }];
    }),
  };
}

export function appendLatentCase(tokens: number, dtype: HalfDType = 'bf16'): BenchCase {
  const e = DTYPE_SIZE[dtype];
  const numPages = Math.ceil(tokens / PAGE_SIZE);
  const tableBytes = tokens * ROPE * 4;
  const bytes = 2 * tokens * WIDTH * e + KV_LORA * e + 8 * tokens + tableBytes;
  return {
    name: `appendLatent t${tokens} ${dtype}`,
    params: { op: 'appendLatent', t: tokens, dtype, kvLora: KV_LORA, rope: ROPE, pageSize: PAGE_SIZE },
    flops: 0,
    bytes,
    footprintBytes: tokens * WIDTH * e + numPages * PAGE_SIZE * WIDTH * e + KV_LORA * e + 8 * tokens + tableBytes,
    checks: [appendLatentCheck(dtype)],
    setup: () => withOwned((owned) => {
      // Positions 0..T−1 (a prefill): every token reads its own table row.
      const table = RopeTable.create(ropeConfigFrom(V3), tokens);
      owned.push(table);
      const kvDown = DeviceTensor.empty([tokens, WIDTH], dtype);
      owned.push(kvDown);
      fillRandom(kvDown, 1);
      const normWeight = DeviceTensor.empty([KV_LORA], dtype);
      owned.push(normWeight);
      fillRandom(normWeight, 2);
      const cache = DeviceTensor.full([numPages, PAGE_SIZE, WIDTH], dtype, 0.5);
      owned.push(cache);
      const positions = DeviceTensor.fromArray(Int32Array.from({ length: tokens }, (_, i) => i), [tokens], 'i32');
      owned.push(positions);
      const slotMapping = DeviceTensor.fromArray(shuffledSlots(tokens, numPages, 3), [tokens], 'i32');
      owned.push(slotMapping);
      return {
        // checkIndices: false — the host round trip is not what is being measured.
        run: (stream) => appendLatent({ kvDown, normWeight, eps: 1e-6, positions, slotMapping, cache, table, stream, checkIndices: false }),
      };
    }),
  };
}

export function ropeQueryCase(tokens: number, heads: number, dtype: HalfDType = 'bf16'): BenchCase {
  const e = DTYPE_SIZE[dtype];
  const qk = NOPE + ROPE;
  const tableBytes = tokens * ROPE * 4;
  return {
    name: `ropeQuery t${tokens} h${heads} ${dtype}`,
    params: { op: 'ropeQuery', t: tokens, h: heads, dtype, rope: ROPE },
    flops: 0,
    bytes: 2 * tokens * heads * ROPE * e + 4 * tokens + tableBytes,
    footprintBytes: tokens * heads * qk * e + 4 * tokens + tableBytes,
    checks: [ropeQueryCheck(dtype)],
    setup: () => withOwned((owned) => {
      const table = RopeTable.create(ropeConfigFrom(V3), tokens);
      owned.push(table);
      const q = DeviceTensor.empty([tokens, heads, qk], dtype);
      owned.push(q);
      fillRandom(q, 4);
      const positions = DeviceTensor.fromArray(Int32Array.from({ length: tokens }, (_, i) => i), [tokens], 'i32');
      owned.push(positions);
      // Rotating repeatedly is fine: the values stay bounded (|cos|, |sin| ≤ 1 rotations).
      return {
        run: (stream) => ropeQuery(q, positions, table, { stream, checkIndices: false }),
      };
    }),
  };
}

export const suite: BenchSuite = {
  name: 'rope',
  description: 'appendLatent (RMSNorm + RoPE into the paged 576-wide cache) and ropeQuery bandwidth (grid keys: op, t, h, dtype)',
  cases(opts) {
    const tokens = gridNumbers('rope', opts, 't', opts.quick ? QUICK_TOKENS : TOKENS);
    const heads = gridNumbers('rope', opts, 'h', [16]);
    const ops = (opts.grid?.['op'] ?? ['appendLatent', 'ropeQuery']).map(String);
    for (const op of ops) if (op !== 'appendLatent' && op !== 'ropeQuery') throw new RangeError(`rope: op must be appendLatent or ropeQuery, got ${op}`);
    const dtypes = gridDTypes('rope', opts);
    const out: BenchCase[] = [];
    for (const dtype of dtypes) {
      if (ops.includes('appendLatent')) for (const t of tokens) out.push(appendLatentCase(t, dtype));
      if (ops.includes('ropeQuery')) for (const t of tokens) for (const h of heads) out.push(ropeQueryCase(t, h, dtype));
    }
    return out;
  },
};

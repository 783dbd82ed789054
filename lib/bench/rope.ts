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
import { mulberry32 } from '../reference/util.js';
import { DeviceTensor } from '../runtime/tensor.js';
import type { BenchCase, BenchSuite } from './types.js';
import { type HalfDType, disposeAll, fillRandom, gridDTypes, gridNumbers } from './suite-util.js';

const TOKENS = [1, 16, 256, 4096, 65536];
const QUICK_TOKENS = [16, 4096];
const KV_LORA = 512;
const ROPE = 64;
const NOPE = 128;
const WIDTH = KV_LORA + ROPE;
const PAGE_SIZE = 64;


/** Slots of T tokens over shuffled pages (a fresh prefill into a fragmented cache). */
function shuffledSlots(tokens: number, numPages: number, seed: number): Int32Array {
  const rand = mulberry32(seed);
  const pages = Int32Array.from({ length: numPages }, (_, i) => i);
  for (let i = numPages - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [pages[i], pages[j]] = [pages[j]!, pages[i]!];
  }
  return Int32Array.from({ length: tokens }, (_, t) => pages[Math.floor(t / PAGE_SIZE)]! * PAGE_SIZE + (t % PAGE_SIZE));
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
    setup() {
      const owned: Array<{ dispose(): void }> = [];
      try {
        // Positions 0..T−1 (a prefill): every token reads its own table row.
        const table = RopeTable.create(ropeConfigFrom(MLA_PRESETS['deepseek-v3']), tokens);
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
          dispose: () => disposeAll(owned),
        };
      } catch (err) {
        disposeAll(owned);
        throw err;
      }
    },
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
    setup() {
      const owned: Array<{ dispose(): void }> = [];
      try {
        const table = RopeTable.create(ropeConfigFrom(MLA_PRESETS['deepseek-v3']), tokens);
        owned.push(table);
        const q = DeviceTensor.empty([tokens, heads, qk], dtype);
        owned.push(q);
        fillRandom(q, 4);
        const positions = DeviceTensor.fromArray(Int32Array.from({ length: tokens }, (_, i) => i), [tokens], 'i32');
        owned.push(positions);
        // Rotating repeatedly is fine: the values stay bounded (|cos|, |sin| ≤ 1 rotations).
        return {
          run: (stream) => ropeQuery(q, positions, table, { stream, checkIndices: false }),
          dispose: () => disposeAll(owned),
        };
      } catch (err) {
        disposeAll(owned);
        throw err;
      }
    },
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

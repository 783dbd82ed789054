// Prefill throughput: one request of n new tokens (no cached prefix) with H heads.
//   run():     the whole prefill() call (reusing a PrefillWorkspace, so no scratch allocation;
//              the per-call plan upload and its free, which synchronises, are included):
//              gather from the paged cache, K/V recompute
//              (latent · kv_b_projᵀ, one GEMM per chunk), causal attention per chunk, LSE merges.
//   runMain(): the causal attention kernel alone (prefillAttention) on precomputed K_nope / V,
//              one launch over all n keys.
//
// FLOPs (both timings use the same count, so run()'s TFLOP/s is an "effective" rate that
// charges the recompute to the attention):
//   flops = 2 · H · (192 + 128) · n(n + 1)/2
// i.e. 2 FLOP per multiply-add of Q·Kᵀ (192) and P·V (128) over the unmasked (query, key)
// pairs of a bottom-right causal mask (attentionPairs), ≈ half of the full n² square.
// The recompute (not counted above) is params.recomputeFlops = 2 · n · 512 · H · 256.
// Bytes (fewest the whole call must move): q n·H·192·e + out n·H·128·e + lse n·H·4
//   + cache rows n·576·e + kv_b_proj H·256·512·e.
import { DTYPE_SIZE } from '../dtype.js';
import { linear } from '../ops/linear.js';
import { prefill, prefillAttention, PREFILL_DEFAULT_CHUNK_TOKENS, PrefillWorkspace } from '../ops/prefill.js';
import { DeviceTensor } from '../runtime/tensor.js';
import { HALF_TOLERANCE, withScope } from './check.js';
import { attentionFlops } from './formulas.js';
import type { BenchCase, BenchSuite, KernelCheck } from './types.js';
import { type HalfDType, fillRandom, gridDTypes, gridNumbers, withOwned } from './suite-util.js';
import * as reference from '../reference/index.js';

const LENGTHS = [512, 1024, 2048, 4096, 8192, 16384, 32768];
const QUICK_LENGTHS = [512, 4096];
const HEADS = [128, 16];
const QUICK_HEADS = [16];
const PAGE_SIZE = 64;
const NOPE = 128;
const ROPE = 64;
const V = 128;
const KV_LORA = 512;
const WIDTH = KV_LORA + ROPE;


const DIMS = { qkNopeHeadDim: NOPE, qkRopeHeadDim: ROPE, vHeadDim: V, kvLoraRank: KV_LORA };

/**
 * The prefill paths of a case on 90 tokens of 16 heads: the whole prefill() call (gather from a
 * two-page cache, K/V recompute, chunks of 64 so the LSE merge runs too) against
 * reference.prefill, and prefillAttention (runMain's kernel) against reference.mhaVarlen.
 */
export function prefillCheck(dtype: HalfDType, path: 'prefill' | 'attention'): KernelCheck {
  return {
    name: `${path === 'prefill' ? 'prefill' : 'prefillAttention'} ${dtype} (n90 h16${path === 'prefill' ? ' chunk64' : ''})`,
    tolerance: HALF_TOLERANCE,
    run: () => withScope((sc) => {
      const n = 90, H = 16, pages = 2, scale = 1 / Math.sqrt(NOPE + ROPE);
      const q = sc.random([n, H, NOPE + ROPE], dtype, 61);
      const rows = sc.random([n, WIDTH], dtype, 62);
      const out = sc.own(DeviceTensor.empty([n, H, V], dtype));
      const lse = sc.own(DeviceTensor.empty([n, H], 'f32'));
      const lens = Int32Array.of(n);
      if (path === 'prefill') {
        const kvBProj = sc.random([H * (NOPE + V), KV_LORA], dtype, 63, 1 / Math.sqrt(KV_LORA));
        // Logical page p lives in physical page tableHost[p]: out of order, as in a served cache.
        const tableHost = Int32Array.of(1, 0);
        const paged = sc.own(DeviceTensor.zeros([pages, PAGE_SIZE, WIDTH], dtype));
        for (let p = 0; p < pages; p++) {
          const lo = p * PAGE_SIZE, hi = Math.min(n, lo + PAGE_SIZE);
          paged.select(0, tableHost[p]!).slice(0, 0, hi - lo).copyFrom(rows.t.slice(0, lo, hi));
        }
        prefill({
          q: q.t, cache: paged, blockTable: sc.own(DeviceTensor.fromArray(tableHost, [1, pages], 'i32')), blockTableHost: tableHost,
          seqLens: lens, qSeqLens: lens, weights: { kvBProj: kvBProj.t }, scale, out, lse, chunkTokens: 64,
        });
        const want = reference.prefill({ ...DIMS, numHeads: H, q: q.host, kv: rows.host, kvBProj: kvBProj.host, qSeqLens: lens, kvSeqLens: lens, scale });
        return [{ name: 'out', got: out.toFloat32Sync(), want: want.out }, { name: 'lse', got: lse.toFloat32Sync(), want: want.lse }];
      }
      const kNope = sc.random([n, H, NOPE], dtype, 64);
      const v = sc.random([n, H, V], dtype, 65);
      const kRope = rows.t.slice(1, KV_LORA, WIDTH);
      prefillAttention({ q: q.t, kNope: kNope.t, kRope, v: v.t, qSeqLens: lens, kvSeqLens: lens, scale, out, lse });
      // K = [K_nope ; k_rope] per head, the rope key shared by all heads.
      const k = new Float64Array(n * H * (NOPE + ROPE));
      for (let t = 0; t < n; t++) {
        for (let h = 0; h < H; h++) {
          k.set(kNope.host.subarray((t * H + h) * NOPE, (t * H + h + 1) * NOPE), (t * H + h) * (NOPE + ROPE));
          k.set(rows.host.subarray(t * WIDTH + KV_LORA, (t + 1) * WIDTH), (t * H + h) * (NOPE + ROPE) + NOPE);
        }
      }
      const want = reference.mhaVarlen({ q: q.host, k, v: v.host, qSeqLens: lens, kvSeqLens: lens, numHeads: H, headDimQk: NOPE + ROPE, headDimV: V, scale, causal: true });
      return [{ name: 'out', got: out.toFloat32Sync(), want: want.out }, { name: 'lse', got: lse.toFloat32Sync(), want: want.lse }];
    }),
  };
}

export function prefillFlops(n: number, heads: number): number {
  return attentionFlops({ b: 1, hQ: heads, sQ: n, sK: n, dQK: NOPE + ROPE, dV: V, causal: true });
}

export function prefillCase(n: number, heads: number, dtype: HalfDType = 'bf16', chunkTokens = PREFILL_DEFAULT_CHUNK_TOKENS): BenchCase {
  const e = DTYPE_SIZE[dtype];
  const pages = Math.ceil(n / PAGE_SIZE);
  const qBytes = n * heads * (NOPE + ROPE) * e;
  const outBytes = n * heads * V * e + n * heads * 4;
  const cacheBytes = pages * PAGE_SIZE * WIDTH * e;
  const wBytes = heads * (NOPE + V) * KV_LORA * e;
  const upBytes = n * heads * (NOPE + V) * e; // runMain's precomputed K_nope | V
  const chunk = Math.min(n, chunkTokens);
  const scratchBytes = chunk * (WIDTH + heads * (NOPE + V)) * e;
  return {
    name: `prefill n${n} h${heads} ${dtype}${chunkTokens === PREFILL_DEFAULT_CHUNK_TOKENS ? '' : ` chunk${chunkTokens}`}`,
    params: {
      op: 'prefill', n, h: heads, dtype, chunkTokens, pageSize: PAGE_SIZE,
      recomputeFlops: 2 * n * KV_LORA * heads * (NOPE + V),
    },
    flops: prefillFlops(n, heads),
    bytes: qBytes + outBytes + n * WIDTH * e + wBytes,
    footprintBytes: qBytes + outBytes + cacheBytes + n * WIDTH * e + wBytes + upBytes + scratchBytes,
    checks: [prefillCheck(dtype, 'prefill'), prefillCheck(dtype, 'attention')],
    setup: () => withOwned((owned) => {
      const own = <T extends { dispose(): void }>(x: T): T => {
        owned.push(x);
        return x;
      };
      const q = own(DeviceTensor.empty([n, heads, NOPE + ROPE], dtype));
      fillRandom(q, 1);
      // Context rows contiguous (for runMain) and the same rows in the paged cache, in order.
      const rows = own(DeviceTensor.empty([n, WIDTH], dtype));
      fillRandom(rows, 2);
      const cache = own(DeviceTensor.zeros([pages, PAGE_SIZE, WIDTH], dtype));
      cache.reshape([pages * PAGE_SIZE, WIDTH]).slice(0, 0, n).copyFrom(rows);
      const tableHost = Int32Array.from({ length: pages }, (_, i) => i);
      const blockTable = own(DeviceTensor.fromArray(tableHost, [1, pages], 'i32'));
      const kvBProj = own(DeviceTensor.empty([heads * (NOPE + V), KV_LORA], dtype));
      fillRandom(kvBProj, 3, 1 / Math.sqrt(KV_LORA));
      const up = own(linear(rows.slice(1, 0, KV_LORA), kvBProj)).reshape([n, heads, NOPE + V]);
      const kNope = up.slice(2, 0, NOPE);
      const v = up.slice(2, NOPE, NOPE + V);
      const kRope = rows.slice(1, KV_LORA, WIDTH);
      const out = own(DeviceTensor.empty([n, heads, V], dtype));
      const lse = own(DeviceTensor.empty([n, heads], 'f32'));
      const lens = Int32Array.of(n);
      // Scratch reused across runs, as a serving engine would (no cudaMalloc in the timing).
      const workspace = own(new PrefillWorkspace());
      const scale = 1 / Math.sqrt(NOPE + ROPE);
      return {
        run: (stream) => {
          prefill({
            q, cache, blockTable, blockTableHost: tableHost, seqLens: lens, qSeqLens: lens,
            weights: { kvBProj }, scale, out, lse, chunkTokens, workspace, stream,
          });
        },
        runMain: (stream) => {
          prefillAttention({ q, kNope, kRope, v, qSeqLens: lens, kvSeqLens: lens, scale, out, lse, stream });
        },
      };
    }),
  };
}

export const suite: BenchSuite = {
  name: 'prefill',
  description:
    'causal MLA prefill, one request of n tokens: run = whole call (gather + K/V recompute + chunked attention + merge), ' +
    'main = attention kernel alone; TFLOP/s over 2·H·320·n(n+1)/2 (grid keys: n, h, dtype, chunk)',
  cases(opts) {
    const lengths = gridNumbers('prefill', opts, 'n', opts.quick ? QUICK_LENGTHS : LENGTHS);
    const heads = gridNumbers('prefill', opts, 'h', opts.quick ? QUICK_HEADS : HEADS);
    const chunks = gridNumbers('prefill', opts, 'chunk', [PREFILL_DEFAULT_CHUNK_TOKENS]);
    const out: BenchCase[] = [];
    for (const dtype of gridDTypes('prefill', opts)) {
      for (const h of heads) for (const n of lengths) for (const c of chunks) out.push(prefillCase(n, h, dtype, c));
    }
    return out;
  },
};

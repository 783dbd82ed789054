// Sparse MLA (mla.sparse, DeepSeek-V3.2) on FlashMLA's sparse decode shapes: b = 128 requests,
// h_q = 128, s_q ∈ {1, 2}, topk = 2048 slots per query token picked from each request's s_k
// cached tokens (page 64, pages shuffled), FP8 (656 B/token) or bf16 (1,152 B/token) cache.
// FLOPs and bytes are FlashMLA's sparse formulas (lib/bench/formulas.ts): 2·H·attended·(576+512)
// and unique retrieved tokens × bytes per token. Compare with `bench decode --sk 2048` (dense
// decode at the same attended length). `run` is the whole call (plan + main + combine,
// checkIndices false); `runMain` the main kernel alone.
import { DTYPE_SIZE } from '../dtype.js';
import { DecodeWorkspace } from '../ops/decode.js';
import { FP8_CACHE_ROW_BYTES } from '../ops/fp8-cache.js';
import { sparse } from '../ops/sparse.js';
import { mulberry32 } from '../reference/util.js';
import { DeviceTensor } from '../runtime/tensor.js';
import { mlaSparseBytes, mlaSparseFlops, MLA_DK, MLA_DV } from './formulas.js';
import type { BenchCase, BenchSuite } from './types.js';
import { disposeAll, fillRandom, gridNumbers } from './suite-util.js';

const PAGE_SIZE = 64;
const SCALE = 0.1352337788608801;

export interface SparseBenchShape {
  b: number;
  h: number;
  sQ: number;
  /** Cached tokens per request the indices are drawn from (≥ topk). */
  sK: number;
  topk: number;
  cache: 'fp8' | 'model';
  seed?: number;
}

/** Per query token, topk distinct positions of its request's sK tokens (a partial Fisher-Yates). */
function sampleIndices(s: SparseBenchShape, pageOf: Int32Array): { indices: Int32Array; unique: number } {
  const rand = mulberry32(s.seed ?? 17);
  const indices = new Int32Array(s.b * s.sQ * s.topk);
  const pos = Int32Array.from({ length: s.sK }, (_, i) => i);
  const seen = new Uint8Array(s.sK);
  let unique = 0;
  const pagesPerReq = Math.ceil(s.sK / PAGE_SIZE);
  for (let b = 0; b < s.b; b++) {
    seen.fill(0);
    for (let j = 0; j < s.sQ; j++) {
      for (let k = 0; k < s.topk; k++) {
        const r = k + Math.floor(rand() * (s.sK - k));
        [pos[k], pos[r]] = [pos[r]!, pos[k]!];
        const p = pos[k]!;
        if (!seen[p]) { seen[p] = 1; unique++; }
        indices[(b * s.sQ + j) * s.topk + k] = pageOf[b * pagesPerReq + Math.floor(p / PAGE_SIZE)]! * PAGE_SIZE + (p % PAGE_SIZE);
      }
    }
  }
  return { indices, unique };
}

export function sparseCase(s: SparseBenchShape): BenchCase {
  if (s.topk > s.sK) throw new RangeError(`sparse: topk ${s.topk} exceeds sk ${s.sK}`);
  const fp8 = s.cache === 'fp8';
  const rowBytes = fp8 ? FP8_CACHE_ROW_BYTES : MLA_DK * DTYPE_SIZE.bf16;
  const pagesPerReq = Math.ceil(s.sK / PAGE_SIZE);
  const numPages = s.b * pagesPerReq;
  const tokens = s.b * s.sQ;
  // Pages handed out in a shuffled order, as a long-running server's allocator would.
  const rand = mulberry32(13);
  const pageOf = Int32Array.from({ length: numPages }, (_, i) => i);
  for (let i = numPages - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [pageOf[i], pageOf[j]] = [pageOf[j]!, pageOf[i]!];
  }
  const { indices, unique } = sampleIndices(s, pageOf);
  const attended = tokens * s.topk;
  const wsEstimate = 2 * 160 * Math.min(64, s.h) * (MLA_DV + 1) * 4;
  return {
    name: `b${s.b} h${s.h} sq${s.sQ} topk${s.topk} sk${s.sK} ${fp8 ? 'fp8-cache' : 'bf16'}`,
    params: { b: s.b, h: s.h, sq: s.sQ, sk: s.sK, topk: s.topk, cache: s.cache, pageSize: PAGE_SIZE, attended, uniqueTokens: unique },
    flops: mlaSparseFlops({ hQ: s.h, attended }),
    bytes: mlaSparseBytes({ uniqueTokens: unique, cacheRowBytes: rowBytes }),
    footprintBytes: numPages * PAGE_SIZE * rowBytes + tokens * s.h * (MLA_DK + MLA_DV) * 2 + tokens * s.h * 4 + indices.length * 4 + wsEstimate,
    setup() {
      const owned: Array<{ dispose(): void }> = [];
      try {
        const q = DeviceTensor.empty([tokens, s.h, MLA_DK], 'bf16');
        owned.push(q);
        fillRandom(q, 11, 0.5);
        const cache = DeviceTensor.empty([numPages, PAGE_SIZE, fp8 ? FP8_CACHE_ROW_BYTES : MLA_DK], fp8 ? 'u8' : 'bf16');
        owned.push(cache);
        // FP8: every byte 0x38 is a valid row (e4m3 1.0, small scales and rope); the work does not depend on values.
        if (fp8) cache.fill(0x38);
        else fillRandom(cache, 12);
        const idx = DeviceTensor.fromArray(indices, [tokens, s.topk], 'i32');
        owned.push(idx);
        const out = DeviceTensor.empty([tokens, s.h, MLA_DV], 'bf16');
        owned.push(out);
        const lse = DeviceTensor.empty([tokens, s.h], 'f32');
        owned.push(lse);
        const workspace = new DecodeWorkspace({ maxBatch: tokens, maxHeads: s.h });
        owned.push(workspace);
        const args = { q, cache, indices: idx, scale: SCALE, out, lse, workspace, checkIndices: false };
        sparse(args); // the plan runMain relies on
        return {
          run: (stream) => sparse({ ...args, stream }),
          runMain: (stream) => sparse({ ...args, stream, phases: 'main' }),
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
  name: 'sparse',
  description: "sparse MLA (DeepSeek-V3.2 top-k) on FlashMLA's sparse decode shapes (grid keys: b, h, sq, sk, topk, cache = fp8 | model)",
  cases(opts) {
    const quick = opts.quick;
    const bs = gridNumbers('sparse', opts, 'b', quick ? [16] : [128]);
    const hs = gridNumbers('sparse', opts, 'h', quick ? [16, 128] : [128]);
    const sqs = gridNumbers('sparse', opts, 'sq', quick ? [1] : [1, 2]);
    const sks = gridNumbers('sparse', opts, 'sk', quick ? [4096] : [32768]);
    const topks = gridNumbers('sparse', opts, 'topk', quick ? [512] : [2048]);
    const caches = (opts.grid?.['cache'] ?? ['fp8', 'model']).map((v): 'fp8' | 'model' => {
      if (v !== 'model' && v !== 'fp8') throw new RangeError(`sparse: cache must be model or fp8, got ${String(v)}`);
      return v;
    });
    const out: BenchCase[] = [];
    for (const cache of caches)
      for (const b of bs)
        for (const sQ of sqs)
          for (const h of hs)
            for (const sK of sks)
              for (const topk of topks) if (topk <= sK) out.push(sparseCase({ b, h, sQ, sK, topk, cache }));
    return out;
  },
};

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
import { quantizeFp8Cache } from '../reference/fp8.js';
import { mulberry32, randnArray } from '../reference/util.js';
import { DeviceTensor } from '../runtime/tensor.js';
import { HALF_TOLERANCE, withScope } from './check.js';
import { mlaSparseBytes, mlaSparseFlops, MLA_DK, MLA_DV } from './formulas.js';
import type { BenchCase, BenchSuite, KernelCheck } from './types.js';
import { fillRandom, gridChoices, gridNumbers, shuffledPages, splitKvWorkspaceBytes, withOwned } from './suite-util.js';
import * as reference from '../reference/index.js';

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

/**
 * The sparse path of a case: 4 query tokens of 16 heads, each attending 96 distinct slots of a
 * 4-page cache (bf16 q; bf16 or FP8 cache), through sparse() against the reference.
 */
export function sparseCheck(cache: 'fp8' | 'model'): KernelCheck {
  const fp8 = cache === 'fp8';
  return {
    name: `sparse bf16${fp8 ? ' fp8-cache' : ''} (t4 h16 topk96 page ${PAGE_SIZE})`,
    tolerance: HALF_TOLERANCE,
    run: () => withScope((sc) => {
      const T = 4, H = 16, topk = 96, numPages = 4, slots = numPages * PAGE_SIZE;
      const rand = mulberry32(31);
      const indices = new Int32Array(T * topk);
      for (let t = 0; t < T; t++) {
        const pick = Int32Array.from({ length: slots }, (_, i) => i);
        for (let k = 0; k < topk; k++) {
          const r = k + Math.floor(rand() * (slots - k));
          [pick[k], pick[r]] = [pick[r]!, pick[k]!];
          indices[t * topk + k] = pick[k]!;
        }
      }
      const q = sc.random([T, H, MLA_DK], 'bf16', 32, 0.5);
      const common = { q: q.host, indices, topk, numHeads: H, scale: SCALE };
      let cacheT: DeviceTensor;
      let want: { out: Float64Array; lse: Float64Array };
      if (fp8) {
        const bytes = quantizeFp8Cache(randnArray(slots * MLA_DK, mulberry32(33)), { numPages, pageSize: PAGE_SIZE });
        cacheT = sc.own(DeviceTensor.fromArray(bytes, [numPages, PAGE_SIZE, FP8_CACHE_ROW_BYTES], 'u8'));
        want = reference.sparseFp8({ ...common, cache: bytes, numPages, pageSize: PAGE_SIZE });
      } else {
        const c = sc.random([numPages, PAGE_SIZE, MLA_DK], 'bf16', 33);
        cacheT = c.t;
        want = reference.sparse({ ...common, cache: c.host, dimLatent: MLA_DV, headDim: MLA_DK });
      }
      const out = sc.own(DeviceTensor.empty([T, H, MLA_DV], 'bf16'));
      const lse = sc.own(DeviceTensor.empty([T, H], 'f32'));
      sparse({
        q: q.t, cache: cacheT, scale: SCALE, out, lse,
        indices: sc.own(DeviceTensor.fromArray(indices, [T, topk], 'i32')),
        workspace: sc.own(new DecodeWorkspace({ maxBatch: T, maxHeads: H })),
      });
      return [{ name: 'out', got: out.toFloat32Sync(), want: want.out }, { name: 'lse', got: lse.toFloat32Sync(), want: want.lse }];
    }),
  };
}

export function sparseCase(s: SparseBenchShape, smCount?: number): BenchCase {
  if (s.topk > s.sK) throw new RangeError(`sparse: topk ${s.topk} exceeds sk ${s.sK}`);
  const fp8 = s.cache === 'fp8';
  const rowBytes = fp8 ? FP8_CACHE_ROW_BYTES : MLA_DK * DTYPE_SIZE.bf16;
  const pagesPerReq = Math.ceil(s.sK / PAGE_SIZE);
  const numPages = s.b * pagesPerReq;
  const tokens = s.b * s.sQ;
  const pageOf = shuffledPages(numPages, 13);
  const { indices, unique } = sampleIndices(s, pageOf);
  const attended = tokens * s.topk;
  const wsEstimate = splitKvWorkspaceBytes(smCount, s.h, MLA_DV);
  return {
    name: `b${s.b} h${s.h} sq${s.sQ} topk${s.topk} sk${s.sK} ${fp8 ? 'fp8-cache' : 'bf16'}`,
    params: { b: s.b, h: s.h, sq: s.sQ, sk: s.sK, topk: s.topk, cache: s.cache, pageSize: PAGE_SIZE, attended, uniqueTokens: unique },
    flops: mlaSparseFlops({ hQ: s.h, attended }),
    bytes: mlaSparseBytes({ uniqueTokens: unique, cacheRowBytes: rowBytes }),
    footprintBytes: numPages * PAGE_SIZE * rowBytes + tokens * s.h * (MLA_DK + MLA_DV) * 2 + tokens * s.h * 4 + indices.length * 4 + wsEstimate,
    checks: [sparseCheck(s.cache)],
    setup: () => withOwned((owned) => {
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
      };
    }),
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
    const caches = gridChoices('sparse', opts, 'cache', ['fp8', 'model'], ['fp8', 'model']);
    const out: BenchCase[] = [];
    for (const cache of caches)
      for (const b of bs)
        for (const sQ of sqs)
          for (const h of hs)
            for (const sK of sks)
              for (const topk of topks) if (topk <= sK) out.push(sparseCase({ b, h, sQ, sK, topk, cache }, opts.smCount));
    return out;
  },
};

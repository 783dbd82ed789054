// Absorbed MLA decode (mla.decode) on FlashMLA's benchmark shapes: B = 128, h_q ∈ {16, 32,
// 64, 128} (TP 8/4/2/1), s_q ∈ {1, 2} (MTP), mean s_k ∈ {4k .. 32k}, page 64, causal, and
// optionally FlashMLA's varlen lengths normal(mean, mean/2) clamped at s_q.
// FLOPs and bytes are FlashMLA's (lib/bench/formulas.ts): s_q·Σseqlen·H·(576+512)·2 and
// (Σseqlen·576 + B·s_q·H·576 + B·s_q·H·512)·2. `run` is the whole call (plan + split-KV main +
// combine, checkIndices false), or with `plan` 'reuse' the call on a plan made once (main +
// combine: what FlashMLA's benchmark times, its scheduler metadata made outside); `runMain` is
// the main kernel alone, as FlashMLA's current test reports it.
import { DTYPE_SIZE } from '../dtype.js';
import { decode, DecodeWorkspace, type DecodeKernelChoice } from '../ops/decode.js';
import { FP8_CACHE_ROW_BYTES } from '../ops/fp8-cache.js';
import { quantizeFp8Cache } from '../reference/fp8.js';
import { shuffledBlockTable } from '../reference/testing.js';
import { mulberry32, randnArray } from '../reference/util.js';
import { DeviceTensor } from '../runtime/tensor.js';
import { HALF_TOLERANCE, withScope } from './check.js';
import { mlaDecodeBytes, mlaDecodeFlops, MLA_DK, MLA_DV } from './formulas.js';
import type { BenchCase, BenchSuite, KernelCheck } from './types.js';
import { type HalfDType, fillRandom, gridBooleans, gridChoices, gridDTypes, gridNumbers, shuffledPages, splitKvWorkspaceBytes, withOwned } from './suite-util.js';
import * as reference from '../reference/index.js';

const PAGE_SIZE = 64;
/** DeepSeek-V3's softmax scale (192^-0.5 · mscale²). */
const SCALE = 0.1352337788608801;


export interface DecodeBenchShape {
  b: number;
  h: number;
  sQ: number;
  /** Mean cached length per request. */
  sK: number;
  varlen: boolean;
  causal: boolean;
  dtype: HalfDType;
  /** 'model': the cache in `dtype`; 'fp8': the 656-byte FP8 layout (bf16 q), bytes counted at 656 per token. */
  cache?: 'model' | 'fp8';
  /** The main kernel (decode's `kernel` option): 'auto' lets decode choose. */
  kernel?: DecodeKernelChoice;
  /** decode's `plan` option for the timed call: 'reuse' runs on the plan setup made. */
  plan?: 'compute' | 'reuse';
  /** Programmatic dependent launch of main and combine (decode's internal `pdl`; MLA_CUDA_PDL when unset). */
  pdl?: boolean;
  seed?: number;
}

/** FlashMLA's lengths: all = mean, or normal(mean, mean/2) clamped to ≥ s_q. */
export function decodeSeqLens(s: DecodeBenchShape): Int32Array {
  const out = new Int32Array(s.b);
  if (!s.varlen) return out.fill(s.sK);
  const normal = randnArray(s.b, mulberry32(s.seed ?? 7));
  for (let i = 0; i < s.b; i++) out[i] = Math.max(s.sQ, Math.round(s.sK + (s.sK / 2) * normal[i]!));
  return out;
}

/**
 * The decode path of a case: 2 requests (70 and 130 keys over shuffled pages, s_q = 2, causal,
 * 16 heads) through the same decode() call, plan + split-KV main + combine, against
 * reference.decode; with `cache` fp8 the 656-byte cache and reference.decodeFp8.
 */
export function decodeCheck(dtype: HalfDType, cache: 'model' | 'fp8' = 'model', kernel: DecodeKernelChoice = 'auto'): KernelCheck {
  const fp8 = cache === 'fp8';
  return {
    name: `decode ${dtype}${fp8 ? ' fp8-cache' : ''}${kernel === 'auto' ? '' : ` ${kernel}`} (b2 h16 sq2 sk70,130 page ${PAGE_SIZE})`,
    tolerance: HALF_TOLERANCE,
    run: () => withScope((sc) => {
      const H = 16, sQ = 2, seqLens = [70, 130], B = seqLens.length;
      const { table, maxPages, numPages } = shuffledBlockTable(seqLens, PAGE_SIZE, mulberry32(5));
      const q = sc.random([B * sQ, H, MLA_DK], dtype, 21, 0.5);
      const common = { q: q.host, pageSize: PAGE_SIZE, blockTable: table, seqLens, qSeqLens: sQ, numHeads: H, scale: SCALE, causal: true };
      let cacheT: DeviceTensor;
      let want: { out: Float64Array; lse: Float64Array };
      if (fp8) {
        const bytes = quantizeFp8Cache(randnArray(numPages * PAGE_SIZE * MLA_DK, mulberry32(22)), { numPages, pageSize: PAGE_SIZE });
        cacheT = sc.own(DeviceTensor.fromArray(bytes, [numPages, PAGE_SIZE, FP8_CACHE_ROW_BYTES], 'u8'));
        want = reference.decodeFp8({ ...common, cache: bytes, numPages });
      } else {
        const c = sc.random([numPages, PAGE_SIZE, MLA_DK], dtype, 22);
        cacheT = c.t;
        want = reference.decode({ ...common, cache: c.host, dimLatent: MLA_DV, headDim: MLA_DK });
      }
      const out = sc.own(DeviceTensor.empty([B * sQ, H, MLA_DV], dtype));
      const lse = sc.own(DeviceTensor.empty([B * sQ, H], 'f32'));
      decode({
        q: q.t, cache: cacheT, scale: SCALE, causal: true, out, lse,
        blockTable: sc.own(DeviceTensor.fromArray(table, [B, maxPages], 'i32')),
        seqLens: sc.own(DeviceTensor.fromArray(Int32Array.from(seqLens), [B], 'i32')),
        workspace: sc.own(new DecodeWorkspace({ maxBatch: B, maxHeads: H, maxQSeqLen: sQ })),
        kernel,
      });
      return [{ name: 'out', got: out.toFloat32Sync(), want: want.out }, { name: 'lse', got: lse.toFloat32Sync(), want: want.lse }];
    }),
  };
}

export function decodeCase(s: DecodeBenchShape, smCount?: number): BenchCase {
  const seqLens = decodeSeqLens(s);
  const sum = seqLens.reduce((a, b) => a + b, 0);
  const e = DTYPE_SIZE[s.dtype];
  const fp8 = s.cache === 'fp8';
  if (fp8 && s.dtype !== 'bf16') throw new RangeError('decode: the fp8 cache is read with bf16 queries (dtype bf16)');
  const kernel = s.kernel ?? 'auto';
  const plan = s.plan ?? 'compute';
  const pdl = s.pdl;
  const rowBytes = fp8 ? FP8_CACHE_ROW_BYTES : MLA_DK * e;
  const pagesOf = Array.from(seqLens, (L) => Math.ceil(L / PAGE_SIZE));
  const numPages = pagesOf.reduce((a, b) => a + b, 0);
  const maxPages = Math.max(1, ...pagesOf);
  const tokens = s.b * s.sQ;
  const shape = { b: s.b, sQ: s.sQ, hQ: s.h, sumSeqlen: sum, elemBytes: e, cacheRowBytes: rowBytes };
  const wsEstimate = splitKvWorkspaceBytes(smCount, s.h * s.sQ, MLA_DV);
  return {
    name: `b${s.b} h${s.h} sq${s.sQ} sk${s.sK}${s.varlen ? ' varlen' : ''}${s.causal ? '' : ' full'} ${s.dtype}${fp8 ? ' fp8-cache' : ''}${kernel === 'auto' ? '' : ` ${kernel}`}${plan === 'reuse' ? ' plan-reused' : ''}${pdl === undefined ? '' : pdl ? ' pdl' : ' no-pdl'}`,
    params: { b: s.b, h: s.h, sq: s.sQ, sk: s.sK, varlen: s.varlen, causal: s.causal, dtype: s.dtype, cache: fp8 ? 'fp8' : 'model', kernel, plan, pdl: pdl ?? 'env', pageSize: PAGE_SIZE, sumSeqlen: sum },
    flops: mlaDecodeFlops(shape),
    bytes: mlaDecodeBytes(shape),
    footprintBytes: numPages * PAGE_SIZE * rowBytes + tokens * s.h * (MLA_DK + MLA_DV) * e + tokens * s.h * 4 + s.b * (maxPages + 1) * 4 + wsEstimate,
    checks: [decodeCheck(s.dtype, fp8 ? 'fp8' : 'model', kernel)],
    setup: () => withOwned((owned) => {
      const q = DeviceTensor.empty([tokens, s.h, MLA_DK], s.dtype);
      owned.push(q);
      fillRandom(q, 11, 0.5);
      const cache = DeviceTensor.empty([numPages, PAGE_SIZE, fp8 ? FP8_CACHE_ROW_BYTES : MLA_DK], fp8 ? 'u8' : s.dtype);
      owned.push(cache);
      // FP8: every byte 0x38 is a valid row (e4m3 1.0, scales and rope ≈ 4.4e-5); the kernel's
      // work does not depend on the values.
      if (fp8) cache.fill(0x38);
      else fillRandom(cache, 12);
      const perm = shuffledPages(numPages, 13);
      const table = new Int32Array(s.b * maxPages);
      let next = 0;
      for (let b = 0; b < s.b; b++) for (let i = 0; i < pagesOf[b]!; i++) table[b * maxPages + i] = perm[next++]!;
      const blockTable = DeviceTensor.fromArray(table, [s.b, maxPages], 'i32');
      owned.push(blockTable);
      const lens = DeviceTensor.fromArray(seqLens, [s.b], 'i32');
      owned.push(lens);
      const out = DeviceTensor.empty([tokens, s.h, MLA_DV], s.dtype);
      owned.push(out);
      const lse = DeviceTensor.empty([tokens, s.h], 'f32');
      owned.push(lse);
      const workspace = new DecodeWorkspace({ maxBatch: s.b, maxHeads: s.h, maxQSeqLen: s.sQ });
      owned.push(workspace);
      const args = { q, cache, blockTable, seqLens: lens, scale: SCALE, causal: s.causal, out, lse, workspace, checkIndices: false, kernel, pdl };
      // One full call so the plan runMain (and plan 'reuse') relies on is in the workspace.
      decode(args);
      return {
        run: (stream) => decode({ ...args, stream, plan }),
        runMain: (stream) => decode({ ...args, stream, phases: 'main' }),
      };
    }),
  };
}

export const suite: BenchSuite = {
  name: 'decode',
  description: "absorbed MLA decode over a paged cache on FlashMLA's shapes (grid keys: b, h, sq, sk, varlen, causal, dtype, cache = model | fp8, kernel = auto | portable | hopper | hopper-wide, plan = compute | reuse, pdl = env | on | off)",
  cases(opts) {
    const quick = opts.quick;
    const bs = gridNumbers('decode', opts, 'b', quick ? [16] : [128]);
    const hs = gridNumbers('decode', opts, 'h', quick ? [16, 128] : [16, 32, 64, 128]);
    const sqs = gridNumbers('decode', opts, 'sq', quick ? [1] : [1, 2]);
    const sks = gridNumbers('decode', opts, 'sk', quick ? [1024] : [4096, 8192, 16384, 32768]);
    const varlens = gridBooleans('decode', opts, 'varlen', [false]);
    const causals = gridBooleans('decode', opts, 'causal', [true]);
    const dtypes = gridDTypes('decode', opts);
    const caches = gridChoices('decode', opts, 'cache', ['model', 'fp8'], ['model']);
    const kernels = gridChoices('decode', opts, 'kernel', ['auto', 'portable', 'hopper', 'hopper-wide'], ['auto']);
    const plans = gridChoices('decode', opts, 'plan', ['compute', 'reuse'], ['compute']);
    // Unset: decode's default (MLA_CUDA_PDL); on / off force it.
    const pdls = gridChoices('decode', opts, 'pdl', ['env', 'on', 'off'], ['env']).map((p) => (p === 'env' ? undefined : p === 'on'));
    const out: BenchCase[] = [];
    for (const cache of caches)
    for (const dtype of dtypes)
      for (const varlen of varlens)
        for (const causal of causals)
          for (const b of bs)
            for (const sQ of sqs)
              for (const h of hs)
                for (const sK of sks)
                  for (const kernel of kernels)
                    for (const plan of plans)
                      for (const pdl of pdls)
                        // The FP8 cache: bf16 queries, portable kernel only.
                        if (cache === 'model' || (dtype === 'bf16' && !kernel.startsWith('hopper'))) out.push(decodeCase({ b, h, sQ, sK, varlen, causal, dtype, cache, kernel, plan, ...(pdl === undefined ? {} : { pdl }) }, opts.smCount));
    return out;
  },
};

// Absorbed MLA decode (mla.decode) on FlashMLA's benchmark shapes: B = 128, h_q ∈ {16, 32,
// 64, 128} (TP 8/4/2/1), s_q ∈ {1, 2} (MTP), mean s_k ∈ {4k .. 32k}, page 64, causal, and
// optionally FlashMLA's varlen lengths normal(mean, mean/2) clamped at s_q.
// FLOPs and bytes are FlashMLA's (lib/bench/formulas.ts): s_q·Σseqlen·H·(576+512)·2 and
// (Σseqlen·576 + B·s_q·H·576 + B·s_q·H·512)·2. `run` is the whole call (plan + split-KV main +
// combine, checkIndices false); `runMain` is the main kernel alone, as FlashMLA's current
// test reports it.
import { DTYPE_SIZE } from '../dtype.js';
import { decode, DecodeWorkspace } from '../ops/decode.js';
import { FP8_CACHE_ROW_BYTES } from '../ops/fp8-cache.js';
import { mulberry32, randnArray } from '../reference/util.js';
import { DeviceTensor } from '../runtime/tensor.js';
import { mlaDecodeBytes, mlaDecodeFlops, MLA_DK, MLA_DV } from './formulas.js';
import type { BenchCase, BenchSuite, BenchSuiteOptions } from './types.js';
import { type HalfDType, disposeAll, fillRandom, gridNumbers } from './suite-util.js';

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

export function decodeCase(s: DecodeBenchShape): BenchCase {
  const seqLens = decodeSeqLens(s);
  const sum = seqLens.reduce((a, b) => a + b, 0);
  const e = DTYPE_SIZE[s.dtype];
  const fp8 = s.cache === 'fp8';
  if (fp8 && s.dtype !== 'bf16') throw new RangeError('decode: the fp8 cache is read with bf16 queries (dtype bf16)');
  const rowBytes = fp8 ? FP8_CACHE_ROW_BYTES : MLA_DK * e;
  const pagesOf = Array.from(seqLens, (L) => Math.ceil(L / PAGE_SIZE));
  const numPages = pagesOf.reduce((a, b) => a + b, 0);
  const maxPages = Math.max(1, ...pagesOf);
  const tokens = s.b * s.sQ;
  const shape = { b: s.b, sQ: s.sQ, hQ: s.h, sumSeqlen: sum, elemBytes: e, cacheRowBytes: rowBytes };
  // Workspace (DecodeWorkspace.partialRows): 2 · SMs · min(64, H·s_q) rows of (512 + 1) f32.
  const wsEstimate = 2 * 160 * Math.max(Math.min(64, s.h * s.sQ), 1) * (MLA_DV + 1) * 4;
  return {
    name: `b${s.b} h${s.h} sq${s.sQ} sk${s.sK}${s.varlen ? ' varlen' : ''}${s.causal ? '' : ' full'} ${s.dtype}${fp8 ? ' fp8-cache' : ''}`,
    params: { b: s.b, h: s.h, sq: s.sQ, sk: s.sK, varlen: s.varlen, causal: s.causal, dtype: s.dtype, cache: fp8 ? 'fp8' : 'model', pageSize: PAGE_SIZE, sumSeqlen: sum },
    flops: mlaDecodeFlops(shape),
    bytes: mlaDecodeBytes(shape),
    footprintBytes: numPages * PAGE_SIZE * rowBytes + tokens * s.h * (MLA_DK + MLA_DV) * e + tokens * s.h * 4 + s.b * (maxPages + 1) * 4 + wsEstimate,
    setup() {
      const owned: Array<{ dispose(): void }> = [];
      try {
        const q = DeviceTensor.empty([tokens, s.h, MLA_DK], s.dtype);
        owned.push(q);
        fillRandom(q, 11, 0.5);
        const cache = DeviceTensor.empty([numPages, PAGE_SIZE, fp8 ? FP8_CACHE_ROW_BYTES : MLA_DK], fp8 ? 'u8' : s.dtype);
        owned.push(cache);
        // FP8: every byte 0x38 is a valid row (e4m3 1.0, scales and rope ≈ 4.4e-5); the kernel's
        // work does not depend on the values.
        if (fp8) cache.fill(0x38);
        else fillRandom(cache, 12);
        // Pages handed out in a shuffled order, as a long-running server's allocator would.
        const rand = mulberry32(13);
        const perm = Int32Array.from({ length: numPages }, (_, i) => i);
        for (let i = numPages - 1; i > 0; i--) {
          const j = Math.floor(rand() * (i + 1));
          [perm[i], perm[j]] = [perm[j]!, perm[i]!];
        }
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
        const args = { q, cache, blockTable, seqLens: lens, scale: SCALE, causal: s.causal, out, lse, workspace, checkIndices: false };
        // One full call so the plan runMain relies on is in the workspace.
        decode(args);
        return {
          run: (stream) => decode({ ...args, stream }),
          runMain: (stream) => decode({ ...args, stream, phases: 'main' }),
          dispose: () => disposeAll(owned),
        };
      } catch (err) {
        disposeAll(owned);
        throw err;
      }
    },
  };
}

function gridBooleans(opts: BenchSuiteOptions, key: string, fallback: boolean[]): boolean[] {
  return (opts.grid?.[key] ?? fallback).map((v) => {
    if (typeof v === 'boolean') return v;
    if (v === 'true' || v === 1 || v === '1') return true;
    if (v === 'false' || v === 0 || v === '0') return false;
    throw new RangeError(`decode: grid ${key} must hold booleans, got ${String(v)}`);
  });
}

export const suite: BenchSuite = {
  name: 'decode',
  description: "absorbed MLA decode over a paged cache on FlashMLA's shapes (grid keys: b, h, sq, sk, varlen, causal, dtype, cache = model | fp8)",
  cases(opts) {
    const quick = opts.quick;
    const bs = gridNumbers('decode', opts, 'b', quick ? [16] : [128]);
    const hs = gridNumbers('decode', opts, 'h', quick ? [16, 128] : [16, 32, 64, 128]);
    const sqs = gridNumbers('decode', opts, 'sq', quick ? [1] : [1, 2]);
    const sks = gridNumbers('decode', opts, 'sk', quick ? [1024] : [4096, 8192, 16384, 32768]);
    const varlens = gridBooleans(opts, 'varlen', [false]);
    const causals = gridBooleans(opts, 'causal', [true]);
    const dtypes = (opts.grid?.['dtype'] ?? ['bf16']).map((v): HalfDType => {
      if (v !== 'bf16' && v !== 'f16') throw new RangeError(`decode: dtype must be bf16 or f16, got ${String(v)}`);
      return v;
    });
    const caches = (opts.grid?.['cache'] ?? ['model']).map((v): 'model' | 'fp8' => {
      if (v !== 'model' && v !== 'fp8') throw new RangeError(`decode: cache must be model or fp8, got ${String(v)}`);
      return v;
    });
    const out: BenchCase[] = [];
    for (const cache of caches)
    for (const dtype of dtypes)
      for (const varlen of varlens)
        for (const causal of causals)
          for (const b of bs)
            for (const sQ of sqs)
              for (const h of hs)
                for (const sK of sks) if (cache === 'model' || dtype === 'bf16') out.push(decodeCase({ b, h, sQ, sK, varlen, causal, dtype, cache }));
    return out;
  },
};

// Building blocks of the absorbed MLA attention kernels over a latent cache, shared by the dense
// paged decode (decode.cu) and the sparse top-k attention (sparse.cu): the device-side split plan,
// the split-KV main kernel (mma.sync m16n8k16 + cp.async row gathers), the LSE combine, and the
// host-side tile configs. Design notes: docs/decode-kernel.md, docs/sparse-mla.md. Included by
// exactly those two translation units (everything is in an anonymous namespace).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <mutex>
#include <string>
#include "core/check.h"
#include "kernels/common.cuh"
#include "kernels/decode.h"
#include "runtime/device_props.h"

namespace mla::gpu {
using namespace mla::kernels;

// Shared by the translation units that include this header (decode.cu, sparse.cu and the sm_90a
// decode_sm90.cu), so they live outside the anonymous namespace below.
// Everything the three kernels read; by value, so no device-side metadata allocation.
struct DecodeKernelArgs {
  const void* q; int64_t qTok, qHead;
  const void* cache; int64_t cPage, cRow; int numPages, pageSize, pageShift;
  const int32_t* bt; int64_t btStride; int maxPages;
  const int32_t* seqLens; int64_t seqStride;
  const int32_t* qSeqLens; int64_t qsStride; int hasQ, uniformQ, maxQ;
  void* out; int64_t oTok, oHead;
  float* lse; int64_t lTok, lHead;
  int B, H, tokens, causal;
  float scaleLog2;
  int32_t* err; int32_t* partMeta; int32_t* reqInfo; float* lsePart; float* oPart;
  int64_t maxRows;  // partial-row stride of one slot: H * maxQSeqLen of this call
  int numParts, blockN, overhead;
  // Sparse attention (sparse.cu): request b is query token b (s_q = 1) and its keys are the
  // cache slots indices[b, 0 .. min(topkLen_b, topk)); a slot outside [0, numSlots) is no key.
  int sparse;
  const int32_t* idx; int64_t idxTok; int topk;
  const int32_t* topkLen; int64_t tlStride;  // null: every row has topk entries
  const float* sink; int64_t sinkStride;     // null: no attention sink
  int64_t numSlots;
};

// Which of the three launches run (all by default; benchmarks and tests run one alone), and
// whether main and combine use programmatic dependent launch (each calls pdlWait() first; the
// plan and main kernels let their successor launch at once).
struct Phases {
  bool plan = true, main = true, combine = true, pdl = false;
};

#if MLA_HAS_SM90A
// decode_sm90.cu: the Hopper path's plan, main kernel (wgmma + TMA) and combine launches, for a
// compute capability 9.0 device. With `info`, only its config is computed and nothing launches.
constexpr int kSm90SmemBytes = 231824;
Status runDecodeSm90(DecodeKernelArgs a, DType dtype, int64_t rowsBound, bool wide, int64_t wsMaxParts, int64_t wsPartialRows,
                     const DeviceProps& dp, Phases phases, cudaStream_t s, DecodeConfigInfo* info);
#endif

namespace {

constexpr int kD = kDecodeDimQK;   // 576
constexpr int kDV = kDecodeDimV;   // 512
constexpr int kChunks = kD / 8;    // 16-byte chunks per cache / query row
constexpr int kFp8Units = 32 + 8;  // 16-byte loads per FP8 row: 32 of e4m3 (512 values), 8 of bf16 rope
constexpr int kThreads = 256;      // 8 warps in every main-kernel config
constexpr int kPlanThreads = 512;
constexpr float kLn2 = 0.69314718055994530942f;
constexpr float kLog2e = 1.44269504088896340736f;

// reqInfo fields (int32 [B][8]).
enum { kRiBlocks = 0, kRiSplits = 1, kRiSplitStart = 2, kRiQStart = 3, kRiQLen = 4, kRiSeqLen = 5, kRiBad = 6 };

// One tile shape. RG row groups of 16 query rows x CG column groups (warps = RG*CG = 8).
// A warp owns rows [16*rg, 16*rg+16) and output columns [COLS*cg, COLS*(cg+1)); for S it
// computes the n8 key tiles j = cg, cg+CG, ... of the BN-key tile (QK sharding, no redundant
// QK work), the row max is exchanged through shared memory and P goes through shared memory
// so every column group multiplies the full 16xBN P by its slice of V.
template <int BM_, int BN_, int ST_>
struct Cfg {
  static constexpr int BM = BM_, BN = BN_, ST = ST_;
  static constexpr int RG = BM / 16, CG = 8 / RG, COLS = kDV / CG;
  static constexpr int NT_ALL = BN / 8, NTS = (NT_ALL + CG - 1) / CG;
  static constexpr int PLD = BN + 8;  // padded P row: odd number of 16-byte chunks, no ldmatrix conflicts
  static constexpr int smemBytes = (BM * kD + ST * BN * kD + BM * PLD) * 2 + 128 * 4;
  // The sparse kernel adds one validity byte per K-tile row (sValid), rounded to 16 bytes.
  static constexpr int smemBytesSparse = smemBytes + (ST * BN + 15) / 16 * 16;
  static constexpr int smemFor(bool sparse) { return sparse ? smemBytesSparse : smemBytes; }
  static_assert(RG * CG == 8, "8 warps");
  static_assert(BN % 16 == 0 && kThreads % BN == 0 && kThreads % BM == 0, "tile");
};

// Q and K tiles are [rows][576] with the 16-byte chunk index XOR-ed by (row & 7): the 8 rows an
// ldmatrix phase reads (row stride 1152 B = a multiple of 128 B) land in 8 distinct bank groups.
__device__ __forceinline__ int swz(int row, int col) {
  return row * kD + ((((col >> 3) ^ (row & 7))) << 3) + (col & 7);
}

// ---- plan --------------------------------------------------------------------------------
// Per-request plan state: staged in shared memory (field-major) when the batch fits, so the
// passes below run at shared-memory latency; otherwise worked on in place in reqInfo.
constexpr int kRiFields = 7;
constexpr int kPlanSmemBatch = 1536;  // 7 * 4 * 1536 = 43 KB (+ the scan scratch), under the 48 KB default
constexpr int kPlanScanBytes = kPlanThreads / 32 * 8;
struct ReqStore {
  int32_t* base;
  int bStride, fieldStride;
  __device__ int32_t& at(int field, int b) const { return base[field * fieldStride + b * bStride]; }
};

// Exclusive prefix sum of v over the CTA (every thread calls it); *total gets the CTA's sum.
// scratch: one int64 per warp in shared memory.
__device__ __forceinline__ int64_t planScan(int64_t v, int64_t* scratch, int64_t* total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  int64_t x = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int64_t y = __shfl_up_sync(0xffffffffu, x, o);
    if (lane >= o) x += y;
  }
  __syncthreads();  // the previous scan's readers of scratch are done
  if (lane == 31) scratch[warp] = x;
  __syncthreads();
  int64_t before = 0, sum = 0;
  for (int w = 0; w < nw; ++w) {
    const int64_t t = scratch[w];
    if (w < warp) before += t;
    sum += t;
  }
  *total = sum;
  return before + x - v;
}

// One CTA. Validates every request (seqLen range, used page indices, query counts), then
// balances the work FlashMLA's way, in parallel: request b costs c_b = nBlocks_b + overhead
// units and owns [C_b, C_b + c_b) of a line of total units (C = exclusive prefix sum of c);
// part p gets [p·P, (p+1)·P), P = ceil(total / numParts), so no part holds more than P units
// plus the overhead of a request it continues. Position x maps to (b, clamp(x - C_b - overhead,
// 0, nBlocks_b)); a part starting inside b's overhead starts at b's block 0. Requests whose
// blocks land in >= 2 parts get one partial slot per part (at most 2 per part: its first and
// last segment). A single thread walking the parts (FlashMLA's metadata kernel; ours before)
// costs tens of microseconds at B = 128: every step waits on the previous one.
__global__ void __launch_bounds__(kPlanThreads) decodePlanKernel(DecodeKernelArgs a) {
  pdlLaunchDependents();
  MLA_DYNAMIC_SMEM(int64_t, planSmem, 16);
  int64_t* scan = planSmem;
  const bool staged = a.B <= kPlanSmemBatch;
  int32_t* fields = reinterpret_cast<int32_t*>(planSmem + kPlanThreads / 32);
  const ReqStore st = staged ? ReqStore{fields, 1, a.B} : ReqStore{a.reqInfo, 8, 1};
  const int tid = threadIdx.x, nt = blockDim.x;
  for (int b = tid; b < a.B; b += nt) {
    int L, sq, bad = 0;
    if (a.sparse) {
      // Sparse: one query per request; topkLength n keeps entries k < n (n <= 0: none, n >= topk: all).
      sq = 1;
      L = a.topkLen ? min(max(a.topkLen[b * a.tlStride], 0), a.topk) : a.topk;
    } else {
      L = a.seqLens[b * a.seqStride];
      sq = a.hasQ ? a.qSeqLens[b * a.qsStride] : a.uniformQ;
      if (L < 0 || int64_t(L) > int64_t(a.maxPages) * a.pageSize) bad |= kDecodeErrSeqLen;
    }
    if (sq < 0 || sq > a.maxQ) bad |= kDecodeErrQSeqLen;
    st.at(kRiQLen, b) = sq;
    st.at(kRiSeqLen, b) = L;
    st.at(kRiBad, b) = bad;
  }
  __syncthreads();
  const int warp = tid / 32, lane = tid % 32, nw = nt / 32;
  for (int b = warp; b < a.B && !a.sparse; b += nw) {  // sparse slots are checked per key instead
    if (st.at(kRiBad, b) & kDecodeErrSeqLen) continue;
    const int64_t np = (int64_t(st.at(kRiSeqLen, b)) + a.pageSize - 1) >> a.pageShift;
    const int32_t* row = a.bt + b * a.btStride;
    bool badPage = false;
#pragma unroll 4
    for (int64_t i = lane; i < np; i += 32) badPage |= unsigned(row[i]) >= unsigned(a.numPages);
    if (__any_sync(0xffffffffu, badPage) && lane == 0) st.at(kRiBad, b) |= kDecodeErrPage;
  }
  __syncthreads();

  // Query offsets: the prefix sum of the valid requests' query counts.
  int64_t queries = 0;
  for (int base = 0; base < a.B; base += nt) {
    const int b = base + tid;
    const int sq = b < a.B && !(st.at(kRiBad, b) & kDecodeErrQSeqLen) ? st.at(kRiQLen, b) : 0;
    int64_t chunk;
    const int64_t before = queries + planScan(sq, scan, &chunk);
    if (b < a.B) st.at(kRiQStart, b) = int(min(before, int64_t(INT32_MAX)));
    queries += chunk;
  }
  if (queries > a.tokens) {
    // An error (some requests' queries lie past `tokens`): in order, a request that does not
    // fit after the ones before it owns no rows. Rare, so one thread.
    __syncthreads();
    if (tid == 0) {
      int64_t qs = 0;
      for (int b = 0; b < a.B; ++b) {
        const int sq = st.at(kRiQLen, b);
        if (!(st.at(kRiBad, b) & kDecodeErrQSeqLen) && qs + sq > a.tokens) st.at(kRiBad, b) |= kDecodeErrQSeqLen;
        st.at(kRiQStart, b) = int(qs);
        if (!(st.at(kRiBad, b) & kDecodeErrQSeqLen)) qs += sq;
      }
    }
    __syncthreads();
  }

  // Blocks per request (0 for a bad or query-less one) and the total cost.
  int64_t total = 0;
  int errs = 0;
  for (int base = 0; base < a.B; base += nt) {
    const int b = base + tid;
    int nb = 0;
    if (b < a.B) {
      const int bad = st.at(kRiBad, b);
      if (bad & kDecodeErrQSeqLen) st.at(kRiQLen, b) = 0;  // owns no rows: never read or written
      nb = (bad || st.at(kRiQLen, b) == 0) ? 0 : (st.at(kRiSeqLen, b) + a.blockN - 1) / a.blockN;
      st.at(kRiBlocks, b) = nb;
      errs |= bad;
    }
    int64_t chunk;
    planScan(nb > 0 ? nb + a.overhead : 0, scan, &chunk);
    total += chunk;
  }
  if (errs) atomicOr(a.err, errs);

  // The line: each request's splits and slots, and the parts that begin inside it.
  const int numParts = a.numParts;
  const int64_t P = total > 0 ? (total + numParts - 1) / numParts : 1;
  auto setBegin = [&](int p, int b, int blk, int firstSplit) {
    int32_t* m = a.partMeta + p * 8;
    m[0] = b;
    m[1] = blk;
    m[4] = firstSplit;
    if (p > 0) {  // where part p begins, part p - 1 ends
      a.partMeta[(p - 1) * 8 + 2] = b;
      a.partMeta[(p - 1) * 8 + 3] = blk;
    }
  };
  int64_t lineBefore = 0, slotsBefore = 0;
  for (int base = 0; base < a.B; base += nt) {
    const int b = base + tid;
    const int nb = b < a.B ? st.at(kRiBlocks, b) : 0;
    const int64_t cost = nb > 0 ? nb + a.overhead : 0;
    int64_t chunk;
    const int64_t C = lineBefore + planScan(cost, scan, &chunk);
    lineBefore += chunk;
    int ns = 0, pFirst = 0;
    if (nb > 0) {
      pFirst = int(min((C + a.overhead) / P, int64_t(numParts - 1)));
      ns = int(min((C + a.overhead + nb - 1) / P, int64_t(numParts - 1))) - pFirst + 1;
    }
    const int64_t slot0 = slotsBefore + planScan(ns >= 2 ? ns : 0, scan, &chunk);
    slotsBefore += chunk;
    if (b < a.B) {
      st.at(kRiSplits, b) = ns;
      st.at(kRiSplitStart, b) = ns >= 2 ? int(slot0) : -1;
    }
    // The warp writes the parts beginning in each of its lanes' requests, 32 parts at a time
    // (one request may begin all of them).
    for (int j = 0; j < 32; ++j) {
      const int64_t Cj = __shfl_sync(0xffffffffu, C, j), costJ = __shfl_sync(0xffffffffu, cost, j);
      const int nbJ = __shfl_sync(0xffffffffu, nb, j), firstJ = __shfl_sync(0xffffffffu, pFirst, j);
      if (costJ == 0) continue;
      const int64_t pEnd = min((Cj + costJ + P - 1) / P, int64_t(numParts));
      for (int64_t p = (Cj + P - 1) / P + lane; p < pEnd; p += 32) {
        const int64_t blk = min(max(p * P - Cj - a.overhead, int64_t(0)), int64_t(nbJ));
        setBegin(int(p), base + warp * 32 + j, int(blk), max(int(p) - firstJ, 0));
      }
    }
  }
  // Parts past the line's end are empty; the last part ends past the last request.
  for (int p = tid; p < numParts; p += nt)
    if (total == 0 || int64_t(p) * P >= total) setBegin(p, a.B, 0, 0);
  if (tid == 0) {
    a.partMeta[(numParts - 1) * 8 + 2] = a.B;
    a.partMeta[(numParts - 1) * 8 + 3] = 0;
  }
  if (!staged) return;
  __syncthreads();
  for (int b = tid; b < a.B; b += nt)
#pragma unroll
    for (int f = 0; f < kRiFields; ++f) a.reqInfo[b * 8 + f] = st.at(f, b);
}

// What CTA (part, row tile) has to do for request b of its part's walk: its block range, the
// request's queries, and the partial slot (-1: the only split, finished in place). False when
// nothing: no blocks of b in this part, or no rows of b in this row tile. Both main kernels
// (decodeMainKernel, decode_sm90.cu) walk their parts through it.
struct ReqWork {
  int blk0, blk1, sq, L, qStart, rows, slot;
};
__device__ __forceinline__ bool reqWork(const DecodeKernelArgs& a, const int32_t* meta, int b, int row0, ReqWork& w) {
  const int beginReq = meta[0], beginBlk = meta[1], endReq = meta[2], endBlk = meta[3], firstSplit = meta[4];
  const int32_t* ri = a.reqInfo + b * 8;
  const int nb = ri[kRiBlocks];
  w.blk0 = b == beginReq ? beginBlk : 0;
  w.blk1 = b == endReq ? endBlk : nb;
  if (w.blk1 <= w.blk0 || w.blk1 > nb) return false;
  w.sq = ri[kRiQLen];
  w.L = ri[kRiSeqLen];
  w.qStart = ri[kRiQStart];
  w.rows = w.sq * a.H;
  if (row0 >= w.rows) return false;
  w.slot = -1;
  if (ri[kRiSplits] > 1) {
    w.slot = ri[kRiSplitStart] + (b == beginReq ? firstSplit : 0);
    if (w.slot < 0 || w.slot >= 2 * a.numParts) return false;  // cannot happen with a well-formed plan
  }
  return true;
}

// ---- main split-KV kernel ------------------------------------------------------------------
// CTA (part, rowTile) walks its part's (request, block) range; for each request it owns rows
// [BM*rowTile, BM*rowTile + BM) of the packed s_q*H rows (row = token_in_request*H + head):
//   s_t = q.K_t * scale*log2(e),   t < limit(row) = causal ? L - s_q + j + 1 : L
//   m' = max(m, max_t s_t), o = o*2^(m - m') + sum_t 2^(s_t - m') V_t, l likewise
// A single-split request is finished here (out = o/l, lse = (m + log2 l)*ln2); otherwise the
// normalised o/l and base-2 LSE go to the partial slot for the combine kernel.
// KV8: the cache is the FP8 layout (656-byte rows, docs/fp8-cache.md, T = bf16); each K-tile row
// is expanded on load, latent[i] = e4m3(byte[i]) · scale[i / 128] (exact in bf16) and the rope
// bf16 copied, into the same swizzled bf16 tile the tensor-core path reads.
// SP (sparse top-k, docs/sparse-mla.md): request b = query token b, key t = cache slot
// indices[b, t] for t < L = min(topkLength_b, topk); a slot outside [0, numSlots) is zero-filled
// and its score masked to -inf through a per-row validity byte (sValid) written with the tile;
// a single-split row applies the sink: out *= 1 / (1 + exp(sink[h] - lse)).
template <typename T, class C, bool KV8 = false, bool SP = false>
__global__ void __launch_bounds__(kThreads, 1) decodeMainKernel(DecodeKernelArgs a) {
  constexpr int BM = C::BM, BN = C::BN, ST = C::ST, CG = C::CG, COLS = C::COLS;
  constexpr int NT_ALL = C::NT_ALL, NTS = C::NTS, PLD = C::PLD, NO = COLS / 8;
  pdlWait();
  pdlLaunchDependents();
  MLA_DYNAMIC_SMEM(unsigned char, smemRaw, 128);
  T* sQ = reinterpret_cast<T*>(smemRaw);
  T* sK = sQ + BM * kD;
  T* sP = sK + ST * BN * kD;
  float* sRed = reinterpret_cast<float*>(sP + BM * PLD);  // [CG][BM] row max, then row sum
  unsigned char* sValid = reinterpret_cast<unsigned char*>(sRed + CG * BM);  // SP: [ST][BN] key has a slot

  const int part = blockIdx.x, rt = blockIdx.y;
  if (part >= a.numParts) return;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int rg = warp / CG, cg = warp % CG;
  const int g = lane >> 2, t = lane & 3;
  const T* qBase = static_cast<const T*>(a.q);
  const T* cBase = static_cast<const T*>(a.cache);
  const int32_t* meta = a.partMeta + part * 8;
  const int lastReq = min(meta[2], a.B - 1), row0 = rt * BM;

  for (int b = meta[0]; b <= lastReq; ++b) {
    ReqWork w;
    if (!reqWork(a, meta, b, row0, w)) continue;
    const int sq = w.sq, L = w.L, qStart = w.qStart, rows = w.rows, slot = w.slot;
    const int kvBegin = w.blk0 * BN, ntiles = w.blk1 - w.blk0;
    const int32_t* btRow = SP ? nullptr : a.bt + b * a.btStride;
    const int32_t* idxRow = SP ? a.idx + int64_t(b) * a.idxTok : nullptr;

    __syncthreads();  // the previous request's readers of sQ / sK / sP / sRed are done

    // Q tile: row r of the tile is packed row row0 + r; rows past s_q*H are zero-filled.
    {
      constexpr int TPR = kThreads / BM;
      const int r = tid / TPR, idx = row0 + r;
      const bool valid = idx < rows;
      const T* src = qBase;
      if (valid) {
        const int j = idx / a.H, h = idx - j * a.H;
        src = qBase + int64_t(qStart + j) * a.qTok + int64_t(h) * a.qHead;
      }
      T* dst = sQ + r * kD;
      for (int ch = tid % TPR; ch < kChunks; ch += TPR) cpAsync16(dst + ((ch ^ (r & 7)) << 3), src + ch * 8, valid);
    }
    // KV tile: one cache row per thread group, its page looked up once; keys >= L and
    // (never after a clean plan) bad pages are zero-filled so P*V stays finite.
    auto loadKV = [&](int stage, int key0) {
      constexpr int TPR = kThreads / BN;
      const int r = tid / TPR, key = key0 + r;
      bool valid = key < L;
      const T* src = cBase;
      if constexpr (SP) {
        // Every slot is guarded: out-of-range values are "no entry" by definition, never read.
        const int64_t slot = valid ? int64_t(idxRow[key]) : -1;
        valid = slot >= 0 && slot < a.numSlots;
        if (valid) {
          const int64_t off = (slot >> a.pageShift) * a.cPage + (slot & (a.pageSize - 1)) * a.cRow;
          if constexpr (KV8) src = reinterpret_cast<const T*>(static_cast<const unsigned char*>(a.cache) + off);
          else src = cBase + off;
        }
        if (tid % TPR == 0) sValid[stage * BN + r] = valid ? 1 : 0;
      } else if (valid) {
        const int pg = btRow[key >> a.pageShift];
        if (unsigned(pg) < unsigned(a.numPages)) {
          const int64_t off = int64_t(pg) * a.cPage + int64_t(key & (a.pageSize - 1)) * a.cRow;
          if constexpr (KV8) src = reinterpret_cast<const T*>(static_cast<const unsigned char*>(a.cache) + off);  // strides in bytes
          else src = cBase + off;
        } else {
          valid = false;
          if (tid % TPR == 0) atomicOr(a.err, int(kDecodeErrPage));
        }
      }
      T* dst = sK + (stage * BN + r) * kD;
      if constexpr (KV8) {
        // Plain loads + st.shared (no cp.async: the bytes change width); visible after the
        // barrier that precedes this stage's first read, like the cp.async data.
        const unsigned char* row = reinterpret_cast<const unsigned char*>(src);
        for (int u = tid % TPR; u < kFp8Units; u += TPR) {
          uint4 raw = make_uint4(0u, 0u, 0u, 0u);
          if (valid) raw = *reinterpret_cast<const uint4*>(row + (u < 32 ? u * 16 : kFp8RopeOffset + (u - 32) * 16));
          if (u < 32) {
            // 16 e4m3 values = two 16-byte bf16 chunks (2u, 2u + 1).
            const float sc = valid ? *reinterpret_cast<const float*>(row + kFp8ScaleOffset + 4 * (u >> 3)) : 0.f;
            uint4 lo, hi;
            fp8ExpandBf16(raw, sc, lo, hi);
            *reinterpret_cast<uint4*>(dst + (((2 * u) ^ (r & 7)) << 3)) = lo;
            *reinterpret_cast<uint4*>(dst + (((2 * u + 1) ^ (r & 7)) << 3)) = hi;
          } else {
            *reinterpret_cast<uint4*>(dst + (((64 + u - 32) ^ (r & 7)) << 3)) = raw;
          }
        }
      } else {
        for (int ch = tid % TPR; ch < kChunks; ch += TPR) cpAsync16(dst + ((ch ^ (r & 7)) << 3), src + ch * 8, valid);
      }
    };

    loadKV(0, kvBegin);
    cpAsyncCommit();
#pragma unroll
    for (int s = 1; s < ST - 1; ++s) {
      if (s < ntiles) loadKV(s, kvBegin + s * BN);
      cpAsyncCommit();
    }

    // Key limits of this lane's two rows (g and g+8 of the warp's 16).
    int rowLim[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int idx = row0 + rg * 16 + g + r * 8;
      const int j = idx / a.H;
      const int lim = a.causal ? L - sq + j + 1 : L;
      rowLim[r] = idx < rows ? min(lim, L) : 0;
    }

    float o[NO][4];
#pragma unroll
    for (int n = 0; n < NO; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};

    for (int it = 0; it < ntiles; ++it) {
      if (ST == 1 && it > 0) {
        loadKV(0, kvBegin + it * BN);
        cpAsyncCommit();
      }
      cpAsyncWait<(ST >= 2 ? ST - 2 : 0)>();
      __syncthreads();
      if (ST > 1) {
        const int nxt = it + ST - 1;
        if (nxt < ntiles) loadKV(nxt % ST, kvBegin + nxt * BN);
        cpAsyncCommit();
      }
      const T* sKs = sK + (it % ST) * BN * kD;
      const int key0 = kvBegin + it * BN;

      // S = Q K^T for this warp's n8 key tiles.
      float s[NTS][4];
#pragma unroll
      for (int i = 0; i < NTS; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
      {
        const int qr = rg * 16 + (lane & 15);
#pragma unroll 1
        for (int kk = 0; kk < kD; kk += 32) {
          uint32_t qa0[4], qa1[4];
          ldmatrixX4(qa0, sQ + swz(qr, kk + (lane >> 4) * 8));
          ldmatrixX4(qa1, sQ + swz(qr, kk + 16 + (lane >> 4) * 8));
#pragma unroll
          for (int i = 0; i < NTS; ++i) {
            const int j = cg + i * CG;
            if (NT_ALL % CG == 0 || j < NT_ALL) {
              uint32_t kb[4];
              ldmatrixX4(kb, sKs + swz(j * 8 + (lane & 7), kk + (lane >> 3) * 8));
              mma16816<T>(s[i], qa0, kb);
              mma16816<T>(s[i], qa1, kb + 2);
            }
          }
        }
      }

      // Mask, local row max (c0,c1: row g; c2,c3: row g+8; cols 2t, 2t+1) of the raw scores,
      // then scaled (scale > 0: max commutes; each score takes it in the exponent's FFMA). The
      // per-key test runs only on tiles that reach a row's limit, and always for sparse slots.
      const bool edge = SP || key0 + BN > min(rowLim[0], rowLim[1]);
      float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
      for (int i = 0; i < NTS; ++i) {
        const int j = cg + i * CG;
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          bool ok = j < NT_ALL;
          if (edge) {
            ok = ok && key0 + j * 8 + 2 * t + (e & 1) < rowLim[e >> 1];
            if constexpr (SP) ok = ok && sValid[(it % ST) * BN + j * 8 + 2 * t + (e & 1)] != 0;
          }
          if (!ok) s[i][e] = -INFINITY;
          mx[e >> 1] = fmaxf(mx[e >> 1], s[i][e]);
        }
      }
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
        mx[r] *= a.scaleLog2;
      }
      if (t == 0) {
        sRed[cg * BM + rg * 16 + g] = mx[0];
        sRed[cg * BM + rg * 16 + g + 8] = mx[1];
      }
      __syncthreads();

      float alpha[2], mUse[2];
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        float tm = -INFINITY;
#pragma unroll
        for (int c = 0; c < CG; ++c) tm = fmaxf(tm, sRed[c * BM + rg * 16 + g + r * 8]);
        const float mNew = fmaxf(m[r], tm);
        mUse[r] = mNew == -INFINITY ? 0.f : mNew;  // no finite score yet: keep exp2 args at -inf
        alpha[r] = exp2Ftz(m[r] - mUse[r]);
        m[r] = mNew;
        l[r] *= alpha[r];
      }
#pragma unroll
      for (int i = 0; i < NTS; ++i) {
        const int j = cg + i * CG;
        float p[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          p[e] = exp2Ftz(fmaf(s[i][e], a.scaleLog2, -mUse[e >> 1]));
          l[e >> 1] += p[e];
        }
        if (NT_ALL % CG == 0 || j < NT_ALL) {
          T* pr = sP + (rg * 16 + g) * PLD + j * 8 + 2 * t;
          *reinterpret_cast<uint32_t*>(pr) = packPair<T>(p[0], p[1]);
          *reinterpret_cast<uint32_t*>(pr + 8 * PLD) = packPair<T>(p[2], p[3]);
        }
      }
#pragma unroll
      for (int n = 0; n < NO; ++n) {
        o[n][0] *= alpha[0];
        o[n][1] *= alpha[0];
        o[n][2] *= alpha[1];
        o[n][3] *= alpha[1];
      }
      __syncthreads();

      // O[:, cg*COLS .. +COLS) += P (16 x BN) * V (BN x COLS); V = first 512 columns of K.
#pragma unroll 1
      for (int ks = 0; ks < BN / 16; ++ks) {
        uint32_t pa[4];
        ldmatrixX4(pa, sP + (rg * 16 + (lane & 15)) * PLD + ks * 16 + (lane >> 4) * 8);
        const int vr = ks * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
#pragma unroll
        for (int np = 0; np < COLS / 16; ++np) {
          uint32_t vb[4];
          ldmatrixX4Trans(vb, sKs + swz(vr, cg * COLS + np * 16 + (lane >> 4) * 8));
          mma16816<T>(o[2 * np], pa, vb);
          mma16816<T>(o[2 * np + 1], pa, vb + 2);
        }
      }
      if (ST == 1) __syncthreads();  // the next tile's loads overwrite this stage
    }
    cpAsyncWait<0>();

    // Row sums: quad lanes, then the CG column groups (sRed is free: every read of the
    // last tile's maxima happened before the P barrier).
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
      l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
    }
    __syncthreads();
    if (t == 0) {
      sRed[cg * BM + rg * 16 + g] = l[0];
      sRed[cg * BM + rg * 16 + g + 8] = l[1];
    }
    __syncthreads();
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float lt = 0.f;
#pragma unroll
      for (int c = 0; c < CG; ++c) lt += sRed[c * BM + rg * 16 + g + r * 8];
      const int idx = row0 + rg * 16 + g + r * 8;
      if (idx >= rows) continue;
      const float inv = lt > 0.f ? 1.f / lt : 0.f;
      const float lse2 = lt > 0.f ? m[r] + log2f(lt) : -INFINITY;
      const int j = idx / a.H, h = idx - j * a.H;
      if (slot < 0) {
        float outMul = inv;
        if constexpr (SP)
          if (a.sink != nullptr && lt > 0.f) outMul *= 1.f / (1.f + expf(a.sink[h * a.sinkStride] - lse2 * kLn2));
        T* orow = static_cast<T*>(a.out) + int64_t(qStart + j) * a.oTok + int64_t(h) * a.oHead + cg * COLS + 2 * t;
#pragma unroll
        for (int n = 0; n < NO; ++n)
          *reinterpret_cast<uint32_t*>(orow + n * 8) = packPair<T>(o[n][2 * r] * outMul, o[n][2 * r + 1] * outMul);
        if (cg == 0 && t == 0) a.lse[int64_t(qStart + j) * a.lTok + int64_t(h) * a.lHead] = lt > 0.f ? lse2 * kLn2 : INFINITY;
      } else {
        float* prow = a.oPart + (int64_t(slot) * a.maxRows + idx) * kDV + cg * COLS + 2 * t;
#pragma unroll
        for (int n = 0; n < NO; ++n)
          *reinterpret_cast<float2*>(prow + n * 8) = make_float2(o[n][2 * r] * inv, o[n][2 * r + 1] * inv);
        if (cg == 0 && t == 0) a.lsePart[int64_t(slot) * a.maxRows + idx] = lse2;
      }
    }
  }
}

// ---- combine -------------------------------------------------------------------------------
// One warp per (token, head) row. For a request cut into n >= 2 splits with base-2 LSEs λ_i:
//   λ = M + log2 Σ 2^(λ_i − M),  out = Σ 2^(λ_i − λ) o_i,  lse = λ·ln2.
// Rows of empty or invalid requests (and rows no request owns) get out 0, lse +inf; rows of
// single-split requests were written by the main kernel. SP: the sink scales the combined
// output by 1 / (1 + exp(sink[h] - lse)), lse unchanged.
template <typename T, bool SP = false>
__global__ void __launch_bounds__(256, 1) decodeCombineKernel(DecodeKernelArgs a) {
  pdlWait();
  const int lane = threadIdx.x & 31;
  const int64_t row = int64_t(blockIdx.x) * 8 + (threadIdx.x >> 5);
  if (row >= int64_t(a.tokens) * a.H) return;
  const int tok = int(row / a.H), h = int(row - int64_t(tok) * a.H);
  // The owning request. A uniform s_q (decode without qSeqLens; sparse) puts request b's queries
  // at b·s_q in every plan: one load instead of a search's chain of dependent ones.
  int b = -1;
  if (!a.hasQ && a.uniformQ > 0) {
    b = min(tok / a.uniformQ, a.B - 1);
  } else {
    int lo = 0, hi = a.B - 1;
    while (lo <= hi) {
      const int mid = (lo + hi) >> 1;
      if (a.reqInfo[mid * 8 + kRiQStart] <= tok) { b = mid; lo = mid + 1; } else { hi = mid - 1; }
    }
  }
  int ns = 0, idx = 0, slot0 = 0;
  if (b >= 0) {
    const int32_t* ri = a.reqInfo + b * 8;
    if (tok < ri[kRiQStart] + ri[kRiQLen]) {
      ns = ri[kRiSplits];
      idx = (tok - ri[kRiQStart]) * a.H + h;
      slot0 = ri[kRiSplitStart];
    }
  }
  if (ns == 1) return;
  T* orow = static_cast<T*>(a.out) + int64_t(tok) * a.oTok + int64_t(h) * a.oHead;
  float* lrow = a.lse + int64_t(tok) * a.lTok + int64_t(h) * a.lHead;
  // One pass over the split LSEs (one memory latency, not two): each lane an online max and
  // sum over its splits, then the warp's. Lane s keeps split s's LSE for the weights below, so
  // the first 32 splits' weights need no load before their rows' loads.
  float M = -INFINITY, sum = 0.f, mine = -INFINITY;
  if (ns >= 2) {
    for (int s = lane; s < ns; s += 32) {
      const float x = a.lsePart[int64_t(slot0 + s) * a.maxRows + idx];
      if (s == lane) mine = x;
      if (x > M) {
        sum = sum * exp2f(M - x) + 1.f;
        M = x;
      } else if (x != -INFINITY) {
        sum += exp2f(x - M);
      }
    }
    const float mLane = M;
    M = warpMax(M);
    sum = warpSum(mLane == -INFINITY ? 0.f : sum * exp2f(mLane - M));
  }
  float acc[16];
#pragma unroll
  for (int i = 0; i < 16; ++i) acc[i] = 0.f;
  float lseOut = INFINITY;
  if (M != -INFINITY) {
    const float lse2 = M + log2f(sum);
    float sinkMul = 1.f;
    if constexpr (SP)
      if (a.sink != nullptr) sinkMul = 1.f / (1.f + expf(a.sink[h * a.sinkStride] - lse2 * kLn2));
#pragma unroll 4
    for (int s = 0; s < ns; ++s) {
      const float x = s < 32 ? __shfl_sync(0xffffffffu, mine, s) : a.lsePart[int64_t(slot0 + s) * a.maxRows + idx];
      const float w = exp2f(x - lse2) * sinkMul;
      const float* src = a.oPart + (int64_t(slot0 + s) * a.maxRows + idx) * kDV;
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const float4 v = *reinterpret_cast<const float4*>(src + i * 128 + lane * 4);
        acc[i * 4 + 0] += w * v.x;
        acc[i * 4 + 1] += w * v.y;
        acc[i * 4 + 2] += w * v.z;
        acc[i * 4 + 3] += w * v.w;
      }
    }
    lseOut = lse2 * kLn2;
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    T* dst = orow + i * 128 + lane * 4;
    *reinterpret_cast<uint32_t*>(dst) = packPair<T>(acc[i * 4 + 0], acc[i * 4 + 1]);
    *reinterpret_cast<uint32_t*>(dst + 2) = packPair<T>(acc[i * 4 + 2], acc[i * 4 + 3]);
  }
  if (lane == 0) *lrow = lseOut;
}

// ---- host side -----------------------------------------------------------------------------
// Tiers by opt-in shared memory (the BN x 576 K tile dominates): 227 KB (sm_90/100) gets 64-key
// tiles, 163 KB (sm_80/87) 32-key tiles, 99 KB (sm_86/89/120) 16/32-key tiles.
using C64_T1 = Cfg<64, 64, 2>;
using C32_T1 = Cfg<32, 64, 2>;
using C16_T1 = Cfg<16, 64, 2>;
using C64_T2 = Cfg<64, 32, 2>;
using C32_T2 = Cfg<32, 32, 3>;
using C16_T2 = Cfg<16, 32, 3>;
using C64_T3 = Cfg<64, 16, 1>;
using C32_T3 = Cfg<32, 16, 3>;
using C16_T3 = Cfg<16, 32, 2>;

struct Choice {
  int bm = 0, tier = 0;
};

int pickBlockM(int64_t rowsBound) { return rowsBound <= 16 ? 16 : rowsBound <= 32 ? 32 : 64; }

int tierFor(int smemOptin, bool sparse = false) {
  if (smemOptin >= C64_T1::smemFor(sparse)) return 1;
  if (smemOptin >= C64_T2::smemFor(sparse)) return 2;
  if (smemOptin >= C64_T3::smemFor(sparse) && smemOptin >= C32_T3::smemFor(sparse) && smemOptin >= C16_T3::smemFor(sparse)) return 3;
  return 0;
}

// The plan's fixed cost of a split, in tiles of bn keys (about 5 tiles of 64 keys).
constexpr int overheadFor(int bn) { return (5 * 64 + bn - 1) / bn; }

// A main kernel's shared-memory opt-in (device_props.h) and its occupancy, both asked once per
// device (the occupancy cached here per kernel and device ordinal), so a decode call per layer
// does not repeat them.
template <auto Kernel>
Status prepareMainKernel(int smemBytes, int threads, int* ctasPerSm) {
  MLA_RETURN_IF_ERROR(optInSharedMemory<Kernel>(smemBytes, "decode"));
  static std::mutex mu;
  static int cached[kMaxCachedDevices] = {};
  int dev = 0;
  MLA_RETURN_IF_ERROR(currentDeviceIndex(&dev));
  std::lock_guard<std::mutex> lock(mu);
  if (cached[dev] == 0) {
    int n = 0;
    MLA_CUDA_TRY(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, Kernel, threads, smemBytes), "decode: occupancy");
    if (n < 1) return Status::Error(Code::Cuda, "decode: the main kernel does not fit on this device (occupancy 0)");
    cached[dev] = n;
  }
  *ctasPerSm = cached[dev];
  return Status::Ok();
}

struct Plan {
  int blockM = 0, blockN = 0, stages = 0, smem = 0, numParts = 0, rowTiles = 0, ctasPerSm = 0, overhead = 0;
};

template <typename T, class C, bool KV8 = false, bool SP = false>
Status planFor(int64_t rowsBound, int64_t wsMaxParts, const DeviceProps& dp, Plan* plan) {
  int ctas = 1;
  MLA_RETURN_IF_ERROR((prepareMainKernel<decodeMainKernel<T, C, KV8, SP>>(C::smemFor(SP), kThreads, &ctas)));
  plan->blockM = C::BM;
  plan->blockN = C::BN;
  plan->stages = C::ST;
  plan->smem = C::smemFor(SP);
  plan->ctasPerSm = ctas;
  plan->rowTiles = int((rowsBound + C::BM - 1) / C::BM);
  const int64_t parts = int64_t(dp.smCount) * ctas / std::max(1, plan->rowTiles);
  plan->numParts = int(std::max<int64_t>(1, std::min<int64_t>(parts, wsMaxParts)));
  plan->overhead = overheadFor(C::BN);
  return Status::Ok();
}

// Plan, main, combine: the three launches of every split-KV call, the main one by `launchMain`
// (each main kernel has its own grid, shared memory and arguments).
template <typename T, bool SP, class LaunchMain>
Status runSplitKv(DecodeKernelArgs a, Phases p, cudaStream_t s, LaunchMain&& launchMain) {
  if (p.plan) {
    const size_t planSmem = kPlanScanBytes + (a.B <= kPlanSmemBatch ? size_t(kRiFields) * a.B * sizeof(int32_t) : 0);
    MLA_LAUNCH_KERNEL(1, kPlanThreads, planSmem, s, decodePlanKernel)(a);
    MLA_CHECK_LAUNCH("decode: plan kernel");
  }
  if (p.main) MLA_RETURN_IF_ERROR(launchMain());
  if (p.combine) {
    const int64_t rows = int64_t(a.tokens) * a.H;
    MLA_LAUNCH_KERNEL_PDL(p.pdl, unsigned((rows + 7) / 8), 256, 0, s, decodeCombineKernel<T, SP>)(a);
    MLA_CHECK_LAUNCH("decode: combine kernel");
  }
  return Status::Ok();
}

// The last word on a plan before launching: one launch holds at most 65535 row tiles, and the
// workspace bounds the parts (each may need 2 partial slots of rowsBound rows). The plan's
// numbers then go into the kernels' arguments. Every main kernel's launcher ends here.
Status fitPlan(const char* op, int64_t wsPartialRows, int64_t rowsBound, Plan* plan, DecodeKernelArgs* a) {
  if (plan->rowTiles > 65535)
    return Status::Error(Code::Range, std::string(op) + ": too many query rows (heads x queries per request) for one launch");
  const int64_t cap = wsPartialRows / (2 * rowsBound);
  if (cap < 1)
    return Status::Error(Code::Range, std::string(op) + ": the workspace's partial buffer is too small for heads x queries per request");
  plan->numParts = int(std::min<int64_t>(plan->numParts, cap));
  a->numParts = plan->numParts;
  a->blockN = plan->blockN;
  a->overhead = plan->overhead;
  return Status::Ok();
}

// The portable split-KV launch of decode (SP false) and sparse (SP true), for withConfig: the
// tile config's plan on this device, fitted, then plan / main / combine.
template <bool SP>
struct SplitKvLauncher {
  const char* op;
  DecodeKernelArgs a;
  DType qDtype;
  bool fp8;  // the FP8 cache layout (bf16 q, checked by the caller)
  int64_t rowsBound, wsMaxParts, wsPartialRows;
  Phases phases;
  const DeviceProps* dp;
  cudaStream_t s;
  template <typename T, class C, bool KV8> Status go() {
    Plan plan;
    MLA_RETURN_IF_ERROR((planFor<T, C, KV8, SP>(rowsBound, wsMaxParts, *dp, &plan)));
    DecodeKernelArgs args = a;
    MLA_RETURN_IF_ERROR(fitPlan(op, wsPartialRows, rowsBound, &plan, &args));
    return runSplitKv<T, SP>(args, phases, s, [&]() -> Status {
      MLA_LAUNCH_KERNEL_PDL(phases.pdl, dim3(plan.numParts, plan.rowTiles), kThreads, C::smemFor(SP), s, decodeMainKernel<T, C, KV8, SP>)(args);
      MLA_CHECK_LAUNCH("decode: main kernel");
      return Status::Ok();
    });
  }
  template <class C> Status run() {
    if (fp8) return go<__nv_bfloat16, C, true>();
    return MLA_DISPATCH_HALF_TYPES(qDtype, T, [&] { return go<T, C, false>(); });
  }
};

// Calls fn.template run<C>() for the config of (bm, tier).
template <class F>
Status withConfig(int bm, int tier, F& fn) {
  switch (tier * 100 + bm) {
    case 164: return fn.template run<C64_T1>();
    case 132: return fn.template run<C32_T1>();
    case 116: return fn.template run<C16_T1>();
    case 264: return fn.template run<C64_T2>();
    case 232: return fn.template run<C32_T2>();
    case 216: return fn.template run<C16_T2>();
    case 364: return fn.template run<C64_T3>();
    case 332: return fn.template run<C32_T3>();
    case 316: return fn.template run<C16_T3>();
  }
  return Status::Error(Code::Argument, "decode: no tile config for this device");
}

// What launchDecode and launchSparse bind alike, after their own checks: the q / cache / out /
// lse pointers and strides, the page geometry, the scale, and the workspace's parts. The
// workspace's declared sizes bound the layout arithmetic, then the buffer must hold that layout
// (memory safety: the kernels write every part). `op` prefixes the messages.
Status bindSplitKv(const char* op, const TensorRef& q, const TensorRef& cache, const TensorRef& out, const TensorRef& lse,
                   float scale, const TensorRef& workspace, int64_t wsMaxBatch, int64_t wsPartialRows, int64_t wsMaxParts,
                   DecodeKernelArgs* a) {
  const std::string name(op);
  MLA_CHECK(wsMaxBatch >= 0 && wsMaxBatch <= (int64_t(1) << 31) && wsPartialRows >= 0 && wsPartialRows <= (int64_t(1) << 31) &&
                wsMaxParts >= 1 && wsMaxParts <= kDecodeMaxParts,
            Range, name + ": `workspace` has an invalid layout");
  const DecodeWorkspaceLayout lay = decodeWorkspaceLayout(wsMaxBatch, wsPartialRows, wsMaxParts);
  MLA_CHECK(workspace.dtype == DType::U8 && workspace.ndim == 1 && workspace.isContiguous() &&
                workspace.shape[0] >= lay.totalBytes && reinterpret_cast<uintptr_t>(workspace.data) % 256 == 0,
            Argument, name + ": `workspace` is not a decode workspace buffer of the declared size");
  a->q = q.data; a->qTok = q.strides[0]; a->qHead = q.strides[1];
  a->cache = cache.data; a->cPage = cache.strides[0]; a->cRow = cache.strides[1];
  a->numPages = int(cache.shape[0]); a->pageSize = int(cache.shape[1]);
  a->pageShift = 0;
  while ((int64_t(1) << a->pageShift) < cache.shape[1]) ++a->pageShift;
  a->out = out.data; a->oTok = out.strides[0]; a->oHead = out.strides[1];
  a->lse = lse.ptr<float>(); a->lTok = lse.strides[0]; a->lHead = lse.strides[1];
  a->H = int(q.shape[1]); a->tokens = int(q.shape[0]);
  a->scaleLog2 = scale * kLog2e;
  unsigned char* ws = static_cast<unsigned char*>(workspace.data);
  a->err = reinterpret_cast<int32_t*>(ws);
  a->partMeta = reinterpret_cast<int32_t*>(ws + lay.partMetaOff);
  a->reqInfo = reinterpret_cast<int32_t*>(ws + lay.reqInfoOff);
  a->lsePart = reinterpret_cast<float*>(ws + lay.lseOff);
  a->oPart = reinterpret_cast<float*>(ws + lay.oOff);
  return Status::Ok();
}


}  // namespace
}  // namespace mla::gpu

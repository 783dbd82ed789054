// Absorbed MLA decode, Hopper path (sm_90a): the split-KV main kernel on warpgroup MMA (wgmma)
// with the paged K tiles brought in by TMA. The plan, the partial buffers and the combine are the
// portable path's (decode_impl.cuh), so both paths share every rule about splits, masks, empty
// rows and errors; decode.cu's launcher picks this one on compute capability 9.0 for 16-bit
// caches (docs/decode-kernel.md, "Hopper path"). Built for sm_90a only (CMakeLists.txt).
#include <mutex>
#include <unordered_map>

#include "kernels/decode_impl.cuh"
#include "kernels/hopper.cuh"

namespace mla::gpu {
namespace {
using namespace mla::kernels::sm90;

// One CTA = two warpgroups over 64 packed query rows and 64-key tiles taken two at a time.
constexpr int kBM = 64, kBN = 64;
constexpr int kThreadsSm90 = 256;
constexpr int kNChunks = kD / 64;           // 9 column chunks of 64 values = one 128-byte swizzle row
constexpr int kVChunks = kDV / 64 / 2;      // 4 chunks of V per warpgroup (256 output columns)
constexpr int kChunkBytes = 64 * 128;       // 64 rows of one chunk: 8 KB, 1024-byte aligned
constexpr int kTileBytes = kNChunks * kChunkBytes;  // a 64 x 576 tile: 72 KB
// Shared memory from a 1024-byte aligned base: Q tile | K stage 0 | K stage 1 | P0 (64 x 64) |
// row max, scale0, scale1 [64] and row sums [2][64] f32 | 2 x 9 mbarriers (one per stage and
// chunk). P1 lives in Q's chunk 8 (the rope columns), which both warpgroups keep in registers.
// The slack realigns the base.
constexpr int kOffQ = 0, kOffK = kTileBytes, kOffP0 = 3 * kTileBytes, kOffP1 = kOffQ + 8 * kChunkBytes;
constexpr int kOffM = kOffP0 + kChunkBytes, kOffScale0 = kOffM + kBM * 4, kOffScale1 = kOffScale0 + kBM * 4;
constexpr int kOffL = kOffScale1 + kBM * 4, kOffBar = kOffL + 2 * kBM * 4;
static_assert(kOffBar + 2 * kNChunks * 8 + 1024 == kSm90SmemBytes, "decode_impl.cuh states the size for the launcher");

// Named barriers between the warpgroups (0 is __syncthreads'): "scale0 / scale1 / P0 is ready"
// and "warpgroup 1 has issued its P V products" (so sP1 is written too), each arrived at by its
// producer warpgroup and waited on by the other; and one per warpgroup for its own 128 threads.
enum : int { kBarScale0 = 1, kBarScale1 = 2, kBarP0 = 3, kBarPv1Issued = 4, kBarLocal0 = 5 };

// Byte offset of (row, col) in an R-row tile stored as 128-byte swizzled chunks: chunk col/64
// holds R rows of 128 bytes whose 16-byte units are XOR-ed with row % 8 (TMA's and wgmma's
// SWIZZLE_128B on a 1024-aligned base). K tiles and the 64-row kernel's Q have 64 rows.
template <int R = kBM>
__device__ __forceinline__ int tileOffset(int row, int col) {
  return (col >> 6) * (R * 128) + row * 128 + ((((col & 63) >> 3) ^ (row & 7)) << 4) + (col & 7) * 2;
}

// One thread: chunks [c0, c1) of the 64-key tile from key0 into `tile` (9 chunks of 8 KB), chunk
// c completing on bar[c] (box = 64 columns x min(page, 64) rows of one page). A page outside the
// cache (past the request's pages, or one the plan flagged) is sent as numPages: TMA zero-fills
// it and reads nothing.
__device__ __forceinline__ void issueKvChunks(const DecodeKernelArgs& a, const CUtensorMap* kv, unsigned char* tile, uint64_t* bar,
                                              int c0, int c1, const int32_t* btRow, int key0, int L) {
  for (int c = c0; c < c1; ++c) mbarrierArriveExpectTx(&bar[c], kChunkBytes);
  const int rowsPerBox = min(a.pageSize, kBN);
  for (int k = key0; k < key0 + kBN; k += rowsPerBox) {
    int pg = k < L ? btRow[k >> a.pageShift] : a.numPages;
    if (unsigned(pg) >= unsigned(a.numPages)) pg = a.numPages;
    const int r0 = k & (a.pageSize - 1);
#pragma unroll 1
    for (int c = c0; c < c1; ++c) tmaLoad3d(tile + c * kChunkBytes + (k - key0) * 128, kv, c * 64, r0, pg, &bar[c]);
  }
}

// Rows [first, 64) of chunks [c0, c0 + nc) of a K tile to zeros, by a warpgroup's 128 threads
// (t: the thread's index in it): the keys past a request's length in its last page, whatever the
// cache holds there (NaN included), must not meet P's zeros in P·V.
__device__ __forceinline__ void zeroKeyRows(unsigned char* tile, int c0, int nc, int first, int t) {
  for (int u = t; u < (kBN - first) * nc * 8; u += 128) {
    const int r = first + u / (nc * 8), c8 = u % (nc * 8);
    *reinterpret_cast<uint4*>(tile + tileOffset(r, c0 * 64 + c8 * 8)) = make_uint4(0u, 0u, 0u, 0u);
  }
}

// The first request from b on in which CTA (part, row tile at row0) has work (lastReq + 1 when
// none): both kernels walk their part's requests with it.
__device__ __forceinline__ int nextWork(const DecodeKernelArgs& a, const int32_t* meta, int lastReq, int row0, int b, ReqWork& w) {
  while (b <= lastReq && !reqWork(a, meta, b, row0, w)) ++b;
  return b;
}

// Rows [row0, row0 + R) of request w's packed s_q*H query rows into an R-row tile (tileOffset<R>),
// rows past them zero-filled, committed as one cp.async group: all of a thread's 16-byte copies
// in flight at once (loads into registers would be dependent round trips: a guarded load is not
// hoisted above the previous store). The caller waits, fences the proxy and syncs before wgmma.
template <typename T, int R>
__device__ __forceinline__ void loadQTile(const DecodeKernelArgs& a, unsigned char* sQ, int row0, const ReqWork& w, int tid) {
  const T* qBase = static_cast<const T*>(a.q);
  for (int u = tid; u < R * kChunks; u += kThreadsSm90) {
    const int r = u / kChunks, ch = u - r * kChunks, idx = row0 + r;
    const bool valid = idx < w.rows;
    const T* src = qBase;
    if (valid) {
      const int j = idx / a.H, h = idx - j * a.H;
      src = qBase + int64_t(w.qStart + j) * a.qTok + int64_t(h) * a.qHead + ch * 8;
    }
    cpAsync16(sQ + tileOffset<R>(r, ch * 8), src, valid);
  }
  cpAsyncCommit();
}

// CTA (part, rowTile) walks its part's (request, block) range like decodeMainKernel, taking the
// 64-key tiles two at a time: tile 2p in K stage 0, tile 2p+1 in stage 1. Warpgroup 0 owns the
// output columns [0, 256) (O_L), warpgroup 1 [256, 512) (O_R); V_L / V_R are those columns of a
// tile. FlashMLA's "seesaw" (docs/decode-kernel.md): one running max m shared through sM, and
//   WG0: S0 = Q K0^T; m0 = max(m, rowmax S0); P0 = 2^(S0 - m0); O_L = O_L 2^(m - m0) + P0 V0_L
//   WG1: S1 = Q K1^T; m1 = max(m0, rowmax S1); P1 = 2^(S1 - m1); c = 2^(m0 - m1)
//        O_R = O_R 2^(m - m1) + P1 V1_R + (c P0) V0_R
//   WG0: O_L = O_L c + P1 V1_L;  m = m1
// so one warpgroup's softmax overlaps the other's matrix products, each score is computed once
// (each warpgroup's S covers all 64 keys of its tile: wgmma m64n64, which reads half the shared
// memory per multiply-add of two n32 halves), and a chunk of K is reloaded as soon as its last
// reader is done. Keys past the request's length read as zeros in V (TMA zero-fills pages past
// the table; rows of a partial last page are cleared by the warpgroup about to use them) so P·V
// stays finite whatever the cache holds there.
template <typename T>
__global__ void __launch_bounds__(kThreadsSm90, 1) decodeMainSm90Kernel(DecodeKernelArgs a, const __grid_constant__ CUtensorMap kv) {
  pdlWait();
  pdlLaunchDependents();
  MLA_DYNAMIC_SMEM(unsigned char, smemRaw, 128);  // realigned to 1024 below
  unsigned char* smem = smemRaw + ((1024u - (sharedAddr(smemRaw) & 1023u)) & 1023u);
  unsigned char* sQ = smem + kOffQ;
  unsigned char* sK = smem + kOffK;
  unsigned char* sP0 = smem + kOffP0;
  unsigned char* sP1 = smem + kOffP1;
  float* sM = reinterpret_cast<float*>(smem + kOffM);
  float* sScale0 = reinterpret_cast<float*>(smem + kOffScale0);
  float* sScale1 = reinterpret_cast<float*>(smem + kOffScale1);
  float* sL = reinterpret_cast<float*>(smem + kOffL);
  uint64_t* bar = reinterpret_cast<uint64_t*>(smem + kOffBar);  // [stage * 9 + chunk]

  const int part = blockIdx.x, rt = blockIdx.y;
  if (part >= a.numParts) return;
  const int tid = threadIdx.x, wi = (tid >> 5) & 3, lane = tid & 31;
  // Warp-uniform by construction (a broadcast), so ptxas sees each warpgroup's branch as
  // non-divergent and keeps its wgmmas pipelined.
  const int wg = __shfl_sync(0xffffffffu, tid >> 7, 0);
  const int g = lane >> 2, q = lane & 3;
  const int32_t* meta = a.partMeta + part * 8;
  const int lastReq = min(meta[2], a.B - 1), row0 = rt * kBM;

  if (tid < 2 * kNChunks) mbarrierInit(&bar[tid], 1);
  fenceMbarrierInit();
  __syncthreads();
  // Loads this warpgroup's stage has completed: the parity of its next wait. Warpgroup w computes
  // S on stage w only, so each stage's barriers are waited on by one warpgroup.
  uint32_t phase = 0;

  auto issueChunks = [&](int stage, int c0, int c1, const int32_t* btRow, int key0, int L) {
    issueKvChunks(a, &kv, sK + stage * kTileBytes, bar + stage * kNChunks, c0, c1, btRow, key0, L);
  };
  // Rows [first, 64) of this warpgroup's V chunks of a stage to zeros, visible to its next wgmma.
  auto clearV = [&](int stage, int first) {
    zeroKeyRows(sK + stage * kTileBytes, wg * kVChunks, kVChunks, first, tid & 127);
    fenceProxyAsync();
    namedBarrierSync(kBarLocal0 + wg, 128);
  };

  const uint32_t qAddr = sharedAddr(sQ), p0Addr = sharedAddr(sP0), p1Addr = sharedAddr(sP1);
  const uint32_t vAddr0 = sharedAddr(sK) + wg * kVChunks * kChunkBytes;  // this warpgroup's V, stage 0
  // S = Q K^T of the tile in `stage` over `n` chunks from `first` (mod 9), 4 k-steps of 16
  // columns each (32 bytes inside the 128-byte row), each chunk as soon as its TMA load lands and
  // committed as its own group (warpgroup 0 waits for an older group between chunks 3 and 4);
  // chunk 8 (rope) takes A from registers; the first product overwrites S when `fresh`.
  // Warpgroup 1 starts at chunk 4: its stage's chunks 4-8 were requested long before 0-3
  // (which wait for warpgroup 0's P1 V1_L), so five chunks of work overlap that load.
  uint32_t q8[16];  // Q[rows][512, 576) as wgmma A fragments, 4 k-steps x 4 registers
  float s[32];      // S (m64n64 accumulators): key 8(i/4) + 2q + (i&1), row g or g+8 by (i&2)
  auto issueS = [&](int stage, int first, int n, bool fresh) {
    const uint32_t kAddr = sharedAddr(sK) + stage * kTileBytes;
    // Fully unrolled (first and n are constants at every call): an accumulator carried around a
    // loop makes ptxas serialise the wgmmas.
#pragma unroll
    for (int i = 0; i < kNChunks; ++i) {
      if (i >= n) continue;
      const int c = (first + i) % kNChunks;
      mbarrierWait(&bar[stage * kNChunks + c], phase & 1u);
      wgmmaFence();  // after the wait loop, so ptxas need not insert its own
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) {
        const uint32_t off = c * kChunkBytes + kk * 32;
        const int accumulate = !fresh || i > 0 || kk > 0;
        if (c < kNChunks - 1)
          wgmmaSS<T, 64, 0, 0>(s, smemDesc(qAddr + off, Swizzle::B128, 16, 1024), smemDesc(kAddr + off, Swizzle::B128, 16, 1024), accumulate);
        else
          wgmmaRS<T, 64, 0>(s, &q8[4 * kk], smemDesc(kAddr + off, Swizzle::B128, 16, 1024), accumulate);
      }
      wgmmaCommit();
    }
  };

  // Request b's first two K tiles (stage 1's chunks 4-8 first: warpgroup 1's S starts there) and
  // its Q tile. Issued once every wgmma of the previous request is done, before its outputs are
  // stored, so the stores overlap the loads.
  auto startLoads = [&](int b, const ReqWork& w) {
    const int kv0 = w.blk0 * kBN;
    const int32_t* btRow = a.bt + b * a.btStride;
    if (tid == 0) {
      issueChunks(0, 0, kNChunks, btRow, kv0, w.L);
      if (w.blk1 - w.blk0 > 1) {
        issueChunks(1, kVChunks, kNChunks, btRow, kv0 + kBN, w.L);
        issueChunks(1, 0, kVChunks, btRow, kv0 + kBN, w.L);
      }
    }
    loadQTile<T, kBM>(a, sQ, row0, w, tid);
  };

  ReqWork w;
  int b = nextWork(a, meta, lastReq, row0, meta[0], w);
  if (b <= lastReq) startLoads(b, w);
  while (b <= lastReq) {
    const int sq = w.sq, L = w.L, qStart = w.qStart, rows = w.rows, slot = w.slot;
    const int kvBegin = w.blk0 * kBN, ntiles = w.blk1 - w.blk0;
    const int32_t* btRow = a.bt + b * a.btStride;

    // Q written by the generic proxy, read by wgmma: the wait, the proxy fence, then the barrier.
    if (tid < kBM) sM[tid] = -INFINITY;
    cpAsyncWait<0>();
    fenceProxyAsync();
    __syncthreads();

    // This thread's rows: 16*wi + g and +8 of the tile (the same in both warpgroups).
    const int rowA = wi * 16 + g, rowOf[2] = {rowA, rowA + 8};
    int rowLim[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int idx = row0 + rowOf[r];
      const int lim = a.causal ? L - sq + idx / a.H + 1 : L;
      rowLim[r] = idx < rows ? min(lim, L) : 0;
    }
#pragma unroll
    for (int kk = 0; kk < 4; ++kk)
#pragma unroll
      for (int e = 0; e < 4; ++e)
        q8[4 * kk + e] = *reinterpret_cast<const uint32_t*>(sQ + tileOffset(rowOf[e & 1], 512 + 16 * kk + 8 * (e >> 1) + 2 * q));
    float o[128];
#pragma unroll
    for (int i = 0; i < 128; ++i) o[i] = 0.f;
    float l[2] = {0.f, 0.f};  // this thread's share of the row sums, relative to the running max
    uint32_t pb[16];          // this warpgroup's P as 16-bit pairs: wgmma A fragments, 4 k-steps

    // Tile t's row maxima in base-2 logits. Raw scores at or past a row's limit become -inf, on
    // the tiles that reach a limit only (a request's last, a causal edge); the scale is applied
    // to the maxima here and to each score in exponentiate's FFMA (scale > 0: max commutes).
    const float scaleLog2 = a.scaleLog2;
    const int rowLimMin = min(rowLim[0], rowLim[1]);
    auto maskScores = [&](int t, float mx[2]) {
      const int key0 = kvBegin + t * kBN;
      if (key0 + kBN > rowLimMin) {
#pragma unroll
        for (int i = 0; i < 32; ++i) {
          const int r = (i >> 1) & 1, key = key0 + (i >> 2) * 8 + 2 * q + (i & 1);
          if (key >= rowLim[r]) s[i] = -INFINITY;
        }
      }
      mx[0] = mx[1] = -INFINITY;
#pragma unroll
      for (int i = 0; i < 32; ++i) mx[(i >> 1) & 1] = fmaxf(mx[(i >> 1) & 1], s[i]);
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
        mx[r] *= scaleLog2;
      }
    };
    // s = 2^(s scale - m) (a row without a finite score yet keeps the argument at -inf), summed
    // into l, and packed as this warpgroup's P fragments.
    auto exponentiate = [&](const float mNew[2]) {
#pragma unroll
      for (int i = 0; i < 32; i += 2) {
        const int r = (i >> 1) & 1;
        const float mUse = mNew[r] == -INFINITY ? 0.f : mNew[r];
        s[i] = exp2Ftz(fmaf(s[i], scaleLog2, -mUse));
        s[i + 1] = exp2Ftz(fmaf(s[i + 1], scaleLog2, -mUse));
        l[r] += s[i] + s[i + 1];
        pb[i >> 1] = packPair<T>(s[i], s[i + 1]);
      }
    };
    auto partialFrom = [&](int t) { return kvBegin + t * kBN + kBN > L ? max(L - kvBegin - t * kBN, 0) : -1; };
    // O += P V for 64 keys: A = P (registers `pb`, or the K-major swizzled sP0 / sP1), B = this
    // warpgroup's V of `stage`, MN-major (columns contiguous in a chunk, 8-key groups 1024 bytes
    // apart, 64-column chunks 8 KB apart).
    auto issuePV = [&](int stage, const uint32_t* aRegs, uint32_t aAddr) {
      const uint32_t vAddr = vAddr0 + stage * kTileBytes;
#pragma unroll
      for (int kk = 0; kk < kBN / 16; ++kk) {
        const uint64_t vDesc = smemDesc(vAddr + kk * 16 * 128, Swizzle::B128, kChunkBytes, 1024);
        if (aRegs) wgmmaRS<T, 256, 1>(o, aRegs + 4 * kk, vDesc, 1);
        else wgmmaSS<T, 256, 0, 1>(o, smemDesc(aAddr + kk * 32, Swizzle::B128, 16, 1024), vDesc, 1);
      }
      wgmmaCommit();
    };

    // The first pair's scores.
    if (wg == 0 || ntiles > 1) {
      wgmmaFence();
      if (wg == 0) issueS(0, 0, kNChunks, true);  // constant arguments: see issueS
      else issueS(1, kVChunks, kNChunks, true);
      wgmmaWait<0>();
      wgmmaFenceOperands<32>(s);
      ++phase;
    }

    for (int t0 = 0; t0 < ntiles; t0 += 2) {
      const bool has1 = t0 + 1 < ntiles, next0 = t0 + 2 < ntiles, next1 = t0 + 3 < ntiles;
      const int part0 = partialFrom(t0), part1 = has1 ? partialFrom(t0 + 1) : -1;
      if (wg == 0) {
        // S0 -> m0, P0; O_L rescaled and P0 V0_L issued while warpgroup 1 does its softmax.
        float mx[2], mNew[2], c[2];
        maskScores(t0, mx);
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const float mOld = sM[rowOf[r]];
          mNew[r] = fmaxf(mOld, mx[r]);
          c[r] = exp2Ftz(mOld - (mNew[r] == -INFINITY ? 0.f : mNew[r]));
          l[r] *= c[r];
        }
        exponentiate(mNew);
        __syncwarp();  // the quad's other threads have read sM
        if (q == 0) {
#pragma unroll
          for (int r = 0; r < 2; ++r) sM[rowOf[r]] = mNew[r], sScale0[rowOf[r]] = c[r];
        }
        namedBarrierArrive(kBarScale0, kThreadsSm90);
#pragma unroll
        for (int i = 0; i < 128; ++i) o[i] *= c[(i >> 1) & 1];
        if (part0 >= 0) clearV(0, part0);
        wgmmaFenceOperands<128>(o);
        wgmmaFence();
        issuePV(0, pb, 0);
        wgmmaWait<0>();
        // V0_L is done with: the next tile's chunks 0-3 may load while P0 is rescaled.
        namedBarrierSync(kBarScale1, kThreadsSm90);
        if (tid == 0 && next0) issueChunks(0, 0, kVChunks, btRow, kvBegin + (t0 + 2) * kBN, L);
        // P0 rescaled to m1 for warpgroup 1 (sP0), then O_L += P1 V1_L.
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          c[r] = sScale1[rowOf[r]];
          l[r] *= c[r];
        }
#pragma unroll
        for (int i = 0; i < 32; i += 2) {
          const int r = (i >> 1) & 1, col = (i >> 2) * 8 + 2 * q;
          *reinterpret_cast<uint32_t*>(sP0 + tileOffset(rowOf[r], col)) = packPair<T>(s[i] * c[r], s[i + 1] * c[r]);
        }
        fenceProxyAsync();
        namedBarrierArrive(kBarP0, kThreadsSm90);
        wgmmaFenceOperands<128>(o);
#pragma unroll
        for (int i = 0; i < 128; ++i) o[i] *= c[(i >> 1) & 1];
        if (has1) {
          // After warpgroup 1's two P V products, so that the one freeing V0_R for the next
          // tile's load is not queued behind this one and the next S0.
          namedBarrierSync(kBarPv1Issued, kThreadsSm90);
          if (part1 >= 0) clearV(1, part1);
          wgmmaFenceOperands<128>(o);
          wgmmaFence();
          issuePV(1, nullptr, p1Addr);
        }
        // The next S0 overlaps P1 V1_L: chunks 0-3 first, then (P1 V1_L done) the tile after
        // next's chunks 0-3 into stage 1, then chunks 4-8 (loaded by warpgroup 1's thread).
        if (next0) {
          wgmmaFence();
          issueS(0, 0, kVChunks, true);
          wgmmaWait<kVChunks>();
          if (tid == 0 && next1) issueChunks(1, 0, kVChunks, btRow, kvBegin + (t0 + 3) * kBN, L);
          issueS(0, kVChunks, kNChunks - kVChunks, false);
          ++phase;
        }
        wgmmaWait<0>();
        wgmmaFenceOperands<32>(s);
        wgmmaFenceOperands<128>(o);
      } else {
        // S1 -> m1 = max(m0, rowmax S1), P1; O_R rescaled, P1 V1_R and P0 V0_R issued.
        namedBarrierSync(kBarScale0, kThreadsSm90);
        float mx[2] = {-INFINITY, -INFINITY}, mNew[2], c[2];
        if (has1) maskScores(t0 + 1, mx);
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const float m0 = sM[rowOf[r]];
          mNew[r] = fmaxf(m0, mx[r]);
          c[r] = has1 ? exp2Ftz(m0 - (mNew[r] == -INFINITY ? 0.f : mNew[r])) : 1.f;
          l[r] *= sScale0[rowOf[r]] * c[r];
        }
        if (has1) exponentiate(mNew);
        __syncwarp();  // the quad's other threads have read sM
        if (q == 0) {
#pragma unroll
          for (int r = 0; r < 2; ++r) sM[rowOf[r]] = mNew[r], sScale1[rowOf[r]] = c[r];
        }
        float cc[2];
#pragma unroll
        for (int r = 0; r < 2; ++r) cc[r] = sScale0[rowOf[r]] * c[r];
        namedBarrierArrive(kBarScale1, kThreadsSm90);
#pragma unroll
        for (int i = 0; i < 128; ++i) o[i] *= cc[(i >> 1) & 1];
        wgmmaFenceOperands<128>(o);
        if (has1) {
          // P1 for warpgroup 0 (sP1 = Q's chunk 8: its last reader, warpgroup 0's P1 V1_L of the
          // previous pair, finished before warpgroup 0 arrived at kBarScale0); visible to its
          // wgmma once it passes kBarPv1Issued.
#pragma unroll
          for (int i = 0; i < 32; i += 2) {
            const int r = (i >> 1) & 1, col = (i >> 2) * 8 + 2 * q;
            *reinterpret_cast<uint32_t*>(sP1 + tileOffset(rowOf[r], col)) = pb[i >> 1];
          }
          fenceProxyAsync();
          if (part1 >= 0) clearV(1, part1);
          wgmmaFence();
          issuePV(1, pb, 0);
        }
        namedBarrierSync(kBarP0, kThreadsSm90);
        if (part0 >= 0) clearV(0, part0);
        wgmmaFence();
        issuePV(0, nullptr, p0Addr);
        if (has1) namedBarrierArrive(kBarPv1Issued, kThreadsSm90);
        // V1_R done with: the tile after next's chunks 4-8 into stage 1; then V0_R: the next
        // tile's chunks 4-8 into stage 0.
        if (has1) {
          wgmmaWait<1>();
          if (tid == 128 && next1) issueChunks(1, kVChunks, kNChunks, btRow, kvBegin + (t0 + 3) * kBN, L);
        }
        wgmmaWait<0>();
        wgmmaFenceOperands<128>(o);
        if (tid == 128 && next0) issueChunks(0, kVChunks, kNChunks, btRow, kvBegin + (t0 + 2) * kBN, L);
        if (next1) {
          wgmmaFence();
          issueS(1, kVChunks, kNChunks, true);
          wgmmaWait<0>();
          wgmmaFenceOperands<32>(s);
          ++phase;
        }
      }
    }

    // Row sums over both warpgroups, then out = O / l (single split) or the partial slot.
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
      l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
      if (q == 0) sL[wg * kBM + rowOf[r]] = l[r];
    }
    __syncthreads();  // every wgmma of this request done: Q and both K stages are free
    ReqWork wNext;
    const int bNext = nextWork(a, meta, lastReq, row0, b + 1, wNext);
    if (bNext <= lastReq) startLoads(bNext, wNext);
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int row = rowOf[r], idx = row0 + row;
      const float lt = sL[row] + sL[kBM + row], m = sM[row];
      if (idx >= rows) continue;
      const float inv = lt > 0.f ? 1.f / lt : 0.f;
      const float lse2 = lt > 0.f ? m + log2f(lt) : -INFINITY;
      const int j = idx / a.H, h = idx - j * a.H;
      if (slot < 0) {
        T* orow = static_cast<T*>(a.out) + int64_t(qStart + j) * a.oTok + int64_t(h) * a.oHead + wg * 256 + 2 * q;
#pragma unroll
        for (int n = 0; n < 32; ++n)
          *reinterpret_cast<uint32_t*>(orow + n * 8) = packPair<T>(o[n * 4 + 2 * r] * inv, o[n * 4 + 2 * r + 1] * inv);
        if (wg == 0 && q == 0) a.lse[int64_t(qStart + j) * a.lTok + int64_t(h) * a.lHead] = lt > 0.f ? lse2 * kLn2 : INFINITY;
      } else {
        float* prow = a.oPart + (int64_t(slot) * a.maxRows + idx) * kDV + wg * 256 + 2 * q;
#pragma unroll
        for (int n = 0; n < 32; ++n)
          *reinterpret_cast<float2*>(prow + n * 8) = make_float2(o[n * 4 + 2 * r] * inv, o[n * 4 + 2 * r + 1] * inv);
        if (wg == 0 && q == 0) a.lsePart[int64_t(slot) * a.maxRows + idx] = lse2;
      }
    }
    __syncthreads();  // sM and sL read before the next request resets them
    b = bNext;
    w = wNext;
  }
}

// ---- few query rows (s_q * H <= 32) ---------------------------------------------------------
// wgmma's M is 64, so the kernel above always computes 64 query rows; at H 16, s_q 1 three
// quarters of its tensor work is padding, and on an H200 that work, not memory, bounds it (about
// 4,850 SM cycles per 64-key tile against the ~4,600 that the tile's 72 KB take at copy
// bandwidth). Here the products are transposed, so a tile's 64 keys fill M and the NR (16 or 32)
// query rows are N:
//   S^T = K Q^T        m64nNRk16 x 36: A = the K tile (K-major), B = Q (K-major)
//   O^T += V^T P^T     per 64 V columns, m64nNRk16 x 4: A = V^T, MN-major straight from the K
//                      tile; B = P, K-major, through shared memory
// NR/64 of the multiply-adds. Each warpgroup runs its own online softmax over alternate tiles
// (tile t: stage t % 2, warpgroup t % 2); a tile's row maxima go through shared memory between
// the warpgroup's 4 warps (each holds 16 of the 64 keys). At the end of a request the two
// warpgroups' (m, l, O) are merged through K stage 1 and stored row by row, while the next
// request's Q and first tile already load into the Q area and stage 0.
template <int NR>
struct Narrow {
  static constexpr int kQChunk = NR * 128;                  // 64 columns of NR rows, 128-byte swizzled
  static constexpr int kOffQ = 2 * kTileBytes;              // after the 2 K stages
  static constexpr int kOffP = kOffQ + kNChunks * kQChunk;  // P [2 warpgroups][NR rows][64 keys]
  static constexpr int kOffRed = kOffP + 2 * kQChunk;       // tile row maxima f32 [2][4 warps][NR]
  static constexpr int kOffBar = kOffRed + 2 * 4 * NR * 4;
  static constexpr int kSmem = kOffBar + 2 * kNChunks * 8 + 1024;
  // The merge, in K stage 1 (stage 0 and Q already take the next request's loads): each
  // warpgroup's scaled O f32 [NR][kPitch] for kCols columns a pass (the pad spreads a warp's
  // stores over all banks), its running maxima [NR] and row sums [4 warps][NR].
  static constexpr int kCols = NR == 16 ? kDV : kDV / 2;
  static constexpr int kPitch = kCols + 4;
  static constexpr int kOffMergeM = 2 * NR * kPitch * 4;
  static constexpr int kOffMergeL = kOffMergeM + 2 * NR * 4;
  static_assert(kOffMergeL + 2 * 4 * NR * 4 <= kTileBytes, "the merge fits in one K stage");
  static_assert(kSmem <= kSm90SmemBytes, "no more shared memory than the wide kernel");
};

template <typename T, int NR>
__global__ void __launch_bounds__(kThreadsSm90, 1) decodeNarrowSm90Kernel(DecodeKernelArgs a, const __grid_constant__ CUtensorMap kv) {
  using N = Narrow<NR>;
  // A thread's S^T / O^T accumulators of one m64nNR: s[i] is key 16 wi + g + 8 (i>>1 & 1) of the
  // tile (or V column, in O^T) and query row colOf(ci(i)); it holds NC distinct rows.
  constexpr int NS = NR / 2, NC = NR / 4;
  pdlWait();
  pdlLaunchDependents();
  MLA_DYNAMIC_SMEM(unsigned char, smemRaw, 128);  // realigned to 1024 below
  unsigned char* smem = smemRaw + ((1024u - (sharedAddr(smemRaw) & 1023u)) & 1023u);
  const int part = blockIdx.x;
  if (part >= a.numParts) return;
  const int tid = threadIdx.x, wi = (tid >> 5) & 3, lane = tid & 31, g = lane >> 2, q = lane & 3;
  const int wg = __shfl_sync(0xffffffffu, tid >> 7, 0);  // warp-uniform, as in the kernel above
  const bool issuer = (tid & 127) == 0;                   // this warpgroup's TMA thread
  unsigned char* sQ = smem + N::kOffQ;
  unsigned char* tile = smem + wg * kTileBytes;           // this warpgroup's K stage
  unsigned char* sP = smem + N::kOffP + wg * N::kQChunk;
  float* sRed = reinterpret_cast<float*>(smem + N::kOffRed) + wg * 4 * NR;
  uint64_t* bar = reinterpret_cast<uint64_t*>(smem + N::kOffBar);
  uint64_t* tileBar = bar + wg * kNChunks;
  const int32_t* meta = a.partMeta + part * 8;
  const int lastReq = min(meta[2], a.B - 1);

  if (tid < 2 * kNChunks) mbarrierInit(&bar[tid], 1);
  fenceMbarrierInit();
  __syncthreads();
  uint32_t phase = 0;  // tiles this warpgroup has consumed: the parity of its next wait
  const uint32_t qAddr = sharedAddr(sQ), pAddr = sharedAddr(sP), kAddr = sharedAddr(tile);
  auto ci = [](int i) { return 2 * (i >> 2) + (i & 1); };           // accumulator -> row slot
  auto colOf = [&](int c) { return 8 * (c >> 1) + 2 * q + (c & 1); };  // row slot -> query row
  const int keyA = 16 * wi + g;  // this thread's keys in a tile: keyA and keyA + 8
  float s[NS];
  float o[8 * NS];

  // Request b's tile t (0 or 1) into stage t, by that warpgroup's TMA thread.
  auto startTile = [&](int b, const ReqWork& w, int t) {
    if (issuer && wg == t && t < w.blk1 - w.blk0)
      issueKvChunks(a, &kv, tile, tileBar, 0, kNChunks, a.bt + b * a.btStride, (w.blk0 + t) * kBN, w.L);
  };

  ReqWork w;
  int b = nextWork(a, meta, lastReq, 0, meta[0], w);
  if (b <= lastReq) {
    startTile(b, w, 0);
    startTile(b, w, 1);
    loadQTile<T, NR>(a, sQ, 0, w, tid);
  }
  while (b <= lastReq) {
    const int sq = w.sq, L = w.L, rows = w.rows, slot = w.slot, qStart = w.qStart;
    const int kvBegin = w.blk0 * kBN, ntiles = w.blk1 - w.blk0;
    const int32_t* btRow = a.bt + b * a.btStride;
    cpAsyncWait<0>();
    fenceProxyAsync();
    __syncthreads();  // Q visible to the wgmmas

    int rowLim[NC], rowLimMin = INT32_MAX;
    float m[NC], l[NC];  // running max (base-2 logits) and this thread's share of the row sums
#pragma unroll
    for (int c = 0; c < NC; ++c) {
      const int r = colOf(c);
      const int lim = a.causal ? L - sq + r / a.H + 1 : L;
      rowLim[c] = r < rows ? min(lim, L) : 0;
      rowLimMin = min(rowLimMin, rowLim[c]);
      m[c] = -INFINITY;
      l[c] = 0.f;
    }
#pragma unroll
    for (int i = 0; i < 8 * NS; ++i) o[i] = 0.f;

    for (int t = wg; t < ntiles; t += 2) {
      const int key0 = kvBegin + t * kBN;
      const bool reload = t + 2 < ntiles;
      // S^T, each chunk as its load lands: chunk 8 first (requested a P·V earlier than 0-7).
#pragma unroll
      for (int i = 0; i < kNChunks; ++i) {
        const int c = (i + kNChunks - 1) % kNChunks;
        mbarrierWait(&tileBar[c], phase & 1u);
        wgmmaFence();
#pragma unroll
        for (int kk = 0; kk < 4; ++kk)
          wgmmaSS<T, NR, 0, 0>(s, smemDesc(kAddr + c * kChunkBytes + kk * 32, Swizzle::B128, 16, 1024),
                               smemDesc(qAddr + c * N::kQChunk + kk * 32, Swizzle::B128, 16, 1024), i > 0 || kk > 0);
      }
      wgmmaCommit();
      wgmmaWait<0>();
      wgmmaFenceOperands<NS>(s);
      ++phase;

      // Row maxima of the raw scores (masked on the tiles that reach a row's limit): the
      // thread's 2 keys, the warp's 16 (lanes of equal q), then the 4 warps' through sRed.
      if (key0 + kBN > rowLimMin) {
#pragma unroll
        for (int i = 0; i < NS; ++i)
          if (key0 + keyA + 8 * ((i >> 1) & 1) >= rowLim[ci(i)]) s[i] = -INFINITY;
      }
      float mx[NC];
#pragma unroll
      for (int c = 0; c < NC; ++c) mx[c] = -INFINITY;
#pragma unroll
      for (int i = 0; i < NS; ++i) mx[ci(i)] = fmaxf(mx[ci(i)], s[i]);
#pragma unroll
      for (int c = 0; c < NC; ++c) {
#pragma unroll
        for (int x = 4; x < 32; x <<= 1) mx[c] = fmaxf(mx[c], __shfl_xor_sync(0xffffffffu, mx[c], x));
        if (g == 0) sRed[wi * NR + colOf(c)] = mx[c];
      }
      namedBarrierSync(kBarLocal0 + wg, 128);
      // Chunk 8 (rope) is read by S only: the tile after next's may load now.
      if (issuer && reload) issueKvChunks(a, &kv, tile, tileBar, kNChunks - 1, kNChunks, btRow, key0 + 2 * kBN, L);
      const float scaleLog2 = a.scaleLog2;
      // The new running max (a row without a finite score yet keeps the exponents at -inf) and
      // the factor that rescales what was summed under the old one.
      float mUse[NC], corr[NC];
#pragma unroll
      for (int c = 0; c < NC; ++c) {
        const int r = colOf(c);
        const float tm = fmaxf(fmaxf(sRed[r], sRed[NR + r]), fmaxf(sRed[2 * NR + r], sRed[3 * NR + r])) * scaleLog2;
        const float mNew = fmaxf(m[c], tm);
        mUse[c] = mNew == -INFINITY ? 0.f : mNew;
        corr[c] = exp2Ftz(m[c] - mUse[c]);
        l[c] *= corr[c];
        m[c] = mNew;
      }
#pragma unroll
      for (int i = 0; i < 8 * NS; ++i) o[i] *= corr[ci(i % NS)];
      // P = 2^(s scale - m) as bf16 / f16 into this warpgroup's sP (row = query, col = key).
#pragma unroll
      for (int i = 0; i < NS; ++i) {
        const float p = exp2Ftz(fmaf(s[i], scaleLog2, -mUse[ci(i)]));
        l[ci(i)] += p;
        *reinterpret_cast<T*>(sP + tileOffset<NR>(colOf(ci(i)), keyA + 8 * ((i >> 1) & 1))) = fromFloat<T>(p);
      }
      // A partial last tile: its V rows past L to zeros, after S has read them.
      const int first = key0 + kBN > L ? max(L - key0, 0) : kBN;
      zeroKeyRows(tile, 0, kNChunks - 1, first, tid & 127);
      fenceProxyAsync();
      namedBarrierSync(kBarLocal0 + wg, 128);  // P and the cleared rows visible to the wgmmas

      // O^T += V^T P^T, 64 V columns (one chunk) per accumulator block.
      wgmmaFenceOperands<8 * NS>(o);
      wgmmaFence();
#pragma unroll
      for (int cb = 0; cb < 8; ++cb)
#pragma unroll
        for (int kk = 0; kk < kBN / 16; ++kk)
          wgmmaSS<T, NR, 1, 0>(o + cb * NS, smemDesc(kAddr + cb * kChunkBytes + kk * 16 * 128, Swizzle::B128, kChunkBytes, 1024),
                               smemDesc(pAddr + kk * 32, Swizzle::B128, 16, 1024), 1);
      wgmmaCommit();
      wgmmaWait<0>();
      wgmmaFenceOperands<8 * NS>(o);
      if (issuer && reload) issueKvChunks(a, &kv, tile, tileBar, 0, kNChunks - 1, btRow, key0 + 2 * kBN, L);
    }

    // The request's end: both warpgroups' last P·V done, so Q and stage 0 take the next request's
    // Q and first tile now, while this one's rows are merged through stage 1 and stored.
    __syncthreads();
    ReqWork wNext;
    const int bNext = nextWork(a, meta, lastReq, 0, b + 1, wNext);
    if (bNext <= lastReq) {
      startTile(bNext, wNext, 0);
      loadQTile<T, NR>(a, sQ, 0, wNext, tid);
    }
    // M = max(m0, m1), O = sum_w O_w 2^(m_w - M) / sum_w l_w 2^(m_w - M), per row.
    unsigned char* merge = smem + kTileBytes;
    float* sMm = reinterpret_cast<float*>(merge + N::kOffMergeM);
    float* sLm = reinterpret_cast<float*>(merge + N::kOffMergeL);
#pragma unroll
    for (int c = 0; c < NC; ++c) {
      float ls = l[c];
#pragma unroll
      for (int x = 4; x < 32; x <<= 1) ls += __shfl_xor_sync(0xffffffffu, ls, x);
      if (g == 0) sLm[(wg * 4 + wi) * NR + colOf(c)] = ls;
      if (g == 0 && wi == 0) sMm[wg * NR + colOf(c)] = m[c];
    }
    __syncthreads();
    // Row r's merged max and sum (every thread that needs them computes them).
    auto merged = [&](int r, float* mOut, float* lOut, float* f) {
      const float m0 = sMm[r], m1 = sMm[NR + r], mm = fmaxf(m0, m1), mu = mm == -INFINITY ? 0.f : mm;
      f[0] = exp2Ftz(m0 - mu);
      f[1] = exp2Ftz(m1 - mu);
      float l0 = 0.f, l1 = 0.f;
#pragma unroll
      for (int x = 0; x < 4; ++x) l0 += sLm[x * NR + r], l1 += sLm[(4 + x) * NR + r];
      *mOut = mm;
      *lOut = f[0] * l0 + f[1] * l1;
    };
    float fac[NC];
#pragma unroll
    for (int c = 0; c < NC; ++c) {
      float mm, lt, f[2];
      merged(colOf(c), &mm, &lt, f);
      fac[c] = lt > 0.f ? (wg ? f[1] : f[0]) / lt : 0.f;
    }
    const bool out16 = ((reinterpret_cast<uintptr_t>(a.out) | uintptr_t(a.oTok | a.oHead) * sizeof(T)) & 15) == 0;
    float* sO = reinterpret_cast<float*>(merge);  // [2 warpgroups][NR][kPitch], kCols columns a pass
#pragma unroll
    for (int pass = 0; pass < kDV / N::kCols; ++pass) {
      if (pass > 0) __syncthreads();  // the previous pass's rows are read
#pragma unroll
      for (int cb = pass * N::kCols / 64; cb < (pass + 1) * N::kCols / 64; ++cb)
#pragma unroll
        for (int i = 0; i < NS; ++i)
          sO[(wg * NR + colOf(ci(i))) * N::kPitch + (cb * 64 - pass * N::kCols) + keyA + 8 * ((i >> 1) & 1)] = o[cb * NS + i] * fac[ci(i)];
      __syncthreads();  // both warpgroups' halves written
      for (int u = tid; u < NR * (N::kCols / 8); u += kThreadsSm90) {
        const int r = u / (N::kCols / 8), c0 = (u % (N::kCols / 8)) * 8;
        if (r >= rows) continue;
        const float4* x0 = reinterpret_cast<const float4*>(sO + r * N::kPitch + c0);
        const float4* x1 = reinterpret_cast<const float4*>(sO + (NR + r) * N::kPitch + c0);
        const float4 a0 = x0[0], a1 = x0[1], b0 = x1[0], b1 = x1[1];
        const float v[8] = {a0.x + b0.x, a0.y + b0.y, a0.z + b0.z, a0.w + b0.w, a1.x + b1.x, a1.y + b1.y, a1.z + b1.z, a1.w + b1.w};
        const int j = r / a.H, h = r - j * a.H, col = pass * N::kCols + c0;
        if (slot < 0) {
          T* orow = static_cast<T*>(a.out) + int64_t(qStart + j) * a.oTok + int64_t(h) * a.oHead + col;
          const uint4 pk = make_uint4(packPair<T>(v[0], v[1]), packPair<T>(v[2], v[3]), packPair<T>(v[4], v[5]), packPair<T>(v[6], v[7]));
          if (out16) {
            *reinterpret_cast<uint4*>(orow) = pk;
          } else {  // out is only 4-byte aligned (launchDecode's guarantee)
            uint32_t* o4 = reinterpret_cast<uint32_t*>(orow);
            o4[0] = pk.x, o4[1] = pk.y, o4[2] = pk.z, o4[3] = pk.w;
          }
        } else {
          float4* prow = reinterpret_cast<float4*>(a.oPart + (int64_t(slot) * a.maxRows + r) * kDV + col);
          prow[0] = make_float4(v[0], v[1], v[2], v[3]);
          prow[1] = make_float4(v[4], v[5], v[6], v[7]);
        }
      }
    }
    if (tid < rows && tid < NR) {
      float mm, lt, f[2];
      merged(tid, &mm, &lt, f);
      const float lse2 = lt > 0.f ? mm + log2f(lt) : -INFINITY;
      const int j = tid / a.H, h = tid - j * a.H;
      if (slot < 0) a.lse[int64_t(qStart + j) * a.lTok + int64_t(h) * a.lHead] = lt > 0.f ? lse2 * kLn2 : INFINITY;
      else a.lsePart[int64_t(slot) * a.maxRows + tid] = lse2;
    }
    fenceProxyAsync();  // the merge's plain accesses before the TMA writes into stage 1
    __syncthreads();    // the merge is done with stage 1: the next request's second tile
    if (bNext <= lastReq) startTile(bNext, wNext, 1);
    b = bNext;
    w = wNext;
  }
}

// The cache as [numPages][pageSize][576] with its strides; one box = 64 columns of min(pageSize,
// 64) rows of one page, 128-byte swizzled (the tile layout above). Encoded once per layout:
// cuTensorMapEncodeTiled is a pure function of its arguments and would cost host time on every
// call, and a model's layers each keep their cache tensor from step to step. Bounded (cleared
// when full); the mutex is for the odd second thread, the addon runs on Node's main thread.
Status cacheTensorMap(const DecodeKernelArgs& a, bool bf16, CUtensorMap* out) {
  struct Key {
    const void* cache;
    int64_t row, page;
    int pages, pageSize;
    bool bf16;
    bool operator==(const Key& o) const {
      return cache == o.cache && row == o.row && page == o.page && pages == o.pages && pageSize == o.pageSize && bf16 == o.bf16;
    }
  };
  struct Hash {
    size_t operator()(const Key& k) const {
      size_t h = std::hash<const void*>()(k.cache);
      for (int64_t v : {k.row, k.page, int64_t(k.pages), int64_t(k.pageSize), int64_t(k.bf16)}) h = h * 1000003u ^ std::hash<int64_t>()(v);
      return h;
    }
  };
  static std::mutex mu;
  static std::unordered_map<Key, CUtensorMap, Hash> maps;
  const Key key{a.cache, a.cRow, a.cPage, a.numPages, a.pageSize, bf16};
  std::lock_guard<std::mutex> lock(mu);
  if (const auto it = maps.find(key); it != maps.end()) {
    *out = it->second;
    return Status::Ok();
  }
  const uint64_t dims[3] = {uint64_t(kD), uint64_t(a.pageSize), uint64_t(a.numPages)};
  const uint64_t strides[2] = {uint64_t(a.cRow) * 2, uint64_t(a.cPage) * 2};
  const uint32_t box[3] = {64u, uint32_t(std::min(a.pageSize, kBN)), 1u};
  MLA_RETURN_IF_ERROR(encodeTensorMapTiled(out, bf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 3,
                                           const_cast<void*>(a.cache), dims, strides, box, CU_TENSOR_MAP_SWIZZLE_128B));
  if (maps.size() >= 4096) maps.clear();
  maps.emplace(key, *out);
  return Status::Ok();
}

// The main kernel the plan was made for (the 64-row one or the few-rows one, NR = blockM) on the
// cache's tensor map, with the shared plan and combine launches around it.
template <typename T>
Status runSm90(DecodeKernelArgs a, const Plan& plan, Phases ph, cudaStream_t s) {
  int ctas = 0;
  if (plan.blockM == 16) MLA_RETURN_IF_ERROR((prepareMainKernel<decodeNarrowSm90Kernel<T, 16>>(plan.smem, kThreadsSm90, &ctas)));
  else if (plan.blockM == 32) MLA_RETURN_IF_ERROR((prepareMainKernel<decodeNarrowSm90Kernel<T, 32>>(plan.smem, kThreadsSm90, &ctas)));
  else MLA_RETURN_IF_ERROR((prepareMainKernel<decodeMainSm90Kernel<T>>(plan.smem, kThreadsSm90, &ctas)));
  CUtensorMap kv;
  MLA_RETURN_IF_ERROR(cacheTensorMap(a, std::is_same_v<T, __nv_bfloat16>, &kv));
  return runSplitKv<T, false>(a, ph, s, [&]() -> Status {
    const dim3 grid(plan.numParts, plan.rowTiles);
    if (plan.blockM == 16) MLA_LAUNCH_KERNEL_PDL(ph.pdl, grid, kThreadsSm90, size_t(plan.smem), s, decodeNarrowSm90Kernel<T, 16>)(a, kv);
    else if (plan.blockM == 32) MLA_LAUNCH_KERNEL_PDL(ph.pdl, grid, kThreadsSm90, size_t(plan.smem), s, decodeNarrowSm90Kernel<T, 32>)(a, kv);
    else MLA_LAUNCH_KERNEL_PDL(ph.pdl, grid, kThreadsSm90, size_t(plan.smem), s, decodeMainSm90Kernel<T>)(a, kv);
    MLA_CHECK_LAUNCH("decode: sm_90a main kernel");
    return Status::Ok();
  });
}

}  // namespace

Status runDecodeSm90(DecodeKernelArgs a, DType dtype, int64_t rowsBound, bool wide, int64_t wsMaxParts, int64_t wsPartialRows,
                     const DeviceProps& dp, Phases phases, cudaStream_t s, DecodeConfigInfo* info) {
  Plan plan;
  // At most 32 query rows take the transposed kernel (wide: the 64-row one regardless).
  plan.blockM = !wide && rowsBound <= 16 ? 16 : !wide && rowsBound <= 32 ? 32 : kBM;
  plan.blockN = kBN;
  plan.stages = 2;
  plan.smem = plan.blockM == 16 ? Narrow<16>::kSmem : plan.blockM == 32 ? Narrow<32>::kSmem : kSm90SmemBytes;
  plan.ctasPerSm = 1;
  plan.rowTiles = int((rowsBound + plan.blockM - 1) / plan.blockM);
  plan.numParts = int(std::max<int64_t>(1, std::min<int64_t>(int64_t(dp.smCount) / std::max(1, plan.rowTiles), wsMaxParts)));
  plan.overhead = overheadFor(kBN);
  MLA_RETURN_IF_ERROR(fitPlan("decode", wsPartialRows, rowsBound, &plan, &a));
  if (info) {
    *info = DecodeConfigInfo{plan.blockM, plan.blockN, plan.stages, plan.smem, plan.numParts, plan.rowTiles, plan.ctasPerSm};
    return Status::Ok();
  }
  if (dtype == DType::BF16) return runSm90<__nv_bfloat16>(a, plan, phases, s);
  if (dtype == DType::F16) return runSm90<__half>(a, plan, phases, s);
  return Status::Error(Code::Dtype, "decode: the sm_90a kernel takes bf16 or f16");
}

}  // namespace mla::gpu

// y = x·Wᵀ on tensor cores (mma.sync m16n8k16, fp32 accumulate), batched over heads.
//
// Two kernels share one argument block (GemmArgs), so linear (batch 1) and the absorbed
// per-head products (batch = heads) go through the same code:
//   gemmTiled   M > 16: BMx128x32 CTA tiles, 8 warps, 4-stage cp.async pipeline, ldmatrix from
//               XOR-swizzled shared memory; optional split-K into an fp32 workspace.
//   gemmSkinny  M <= 16 (decode): memory-bound, so W is streamed straight from global memory
//               into mma B fragments (no shared-memory staging), x rows 16 at a time; split-K
//               across warps of a CTA (reduced in shared memory) and across CTAs (workspace).
// Split-K partials are summed by splitKReduce, which also converts to the output dtype.
#include <climits>
#include <cstdint>
#include <string>

#include "core/check.h"
#include "kernels/common.cuh"
#include "kernels/linear.h"
#include "runtime/device_props.h"

namespace mla {
namespace {
using namespace mla::kernels;

// Row r of operand X in batch b lives at x + b·batchX + r·ldX (elements); the last dim is
// contiguous. ws, when set, receives fp32 partial sums [splits, batch, M, N] instead of c.
struct GemmArgs {
  const void* a;
  int64_t lda, batchA;
  const void* w;
  int64_t ldw, batchW;
  void* c;
  int64_t ldc, batchC;
  float* ws;
  int M, N, K, batch, splits;
  int kPerSplit;  // K elements per split: a multiple of the kernel's K step
};

template <typename OutT> __device__ __forceinline__ void storePair(OutT* p, float v0, float v1);
template <> __device__ __forceinline__ void storePair<float>(float* p, float v0, float v1) {
  *reinterpret_cast<float2*>(p) = make_float2(v0, v1);
}
template <> __device__ __forceinline__ void storePair<__half>(__half* p, float v0, float v1) {
  *reinterpret_cast<uint32_t*>(p) = packPair<__half>(v0, v1);
}
template <> __device__ __forceinline__ void storePair<__nv_bfloat16>(__nv_bfloat16* p, float v0, float v1) {
  *reinterpret_cast<uint32_t*>(p) = packPair<__nv_bfloat16>(v0, v1);
}

// ---- tiled kernel ------------------------------------------------------------------------
constexpr int kThreads = 256;  // 8 warps, 2 (M) x 4 (N)
constexpr int kBK = 32;        // K per pipeline stage: 64-byte smem rows of 4 16-byte chunks
constexpr int kGroupM = 8;     // CTA rasterisation: 8 M-tiles share each sweep over N for L2 reuse

template <int BM, int BN, int STAGES>
struct TileCfg {
  static constexpr int kWarpsM = 2, kWarpsN = 4;
  static constexpr int WM = BM / kWarpsM, WN = BN / kWarpsN;
  static constexpr int MT = WM / 16, NT = WN / 8;  // m16 / n8 mma tiles per warp
  static constexpr int kStageElems = (BM + BN) * kBK;
  static constexpr int kSmemBytes = STAGES * kStageElems * 2;
  static_assert(NT % 2 == 0, "B fragments are loaded two n8 tiles per ldmatrix.x4");
  static_assert((BM * 4) % kThreads == 0 && (BN * 4) % kThreads == 0, "whole chunks per thread");
};

// Element offset of 16-byte chunk `ch` (0..3) of smem row `row`. ldmatrix reads one chunk
// column of 8 consecutive rows; unswizzled, rows r and r+2 share banks (64-byte rows). XOR with
// (row>>1)&3 spreads the 8 rows over all 8 16-byte bank groups.
__device__ __forceinline__ int swz(int row, int ch) { return row * kBK + ((ch ^ ((row >> 1) & 3)) << 3); }

// ROWS x 32 tile of a K-contiguous operand into smem; rows >= rowLimit and k >= kEnd zero-fill.
template <typename T, int ROWS>
__device__ __forceinline__ void loadTile(T* s, const T* g, int64_t ld, int rowBase, int rowLimit, int k0, int kEnd,
                                         int tid) {
#pragma unroll
  for (int i = 0; i < ROWS * 4 / kThreads; ++i) {
    const int c = tid + i * kThreads;
    const int row = c >> 2, ch = c & 3;
    const int gr = rowBase + row, gk = k0 + ch * 8;
    const bool ok = gr < rowLimit && gk < kEnd;
    cpAsync16(s + swz(row, ch), ok ? g + static_cast<int64_t>(gr) * ld + gk : g, ok);
  }
}

// C[m, n] = Σ_k A[m, k]·W[n, k] over this CTA's K range (one split), per batch b.
// grid.x: M-tiles x N-tiles (grouped order), grid.y: batch x splits.
template <typename T, typename OutT, int BM, int BN, int STAGES>
__global__ void __launch_bounds__(kThreads) gemmTiled(GemmArgs g) {
  using C = TileCfg<BM, BN, STAGES>;
  MLA_DYNAMIC_SMEM(unsigned char, smemRaw, 16);
  T* smem = reinterpret_cast<T*>(smemRaw);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp / C::kWarpsN, wn = warp % C::kWarpsN;

  const int tilesM = (g.M + BM - 1) / BM, tilesN = (g.N + BN - 1) / BN;
  const int pid = blockIdx.x, group = kGroupM * tilesN;
  const int firstM = (pid / group) * kGroupM;
  const int groupRows = min(tilesM - firstM, kGroupM);
  const int local = pid % group;
  const int m0 = (firstM + local % groupRows) * BM, n0 = (local / groupRows) * BN;

  const int b = blockIdx.y / g.splits, split = blockIdx.y % g.splits;
  const int kBegin = split * g.kPerSplit;
  const int kEnd = min(g.K, kBegin + g.kPerSplit);
  const int kTiles = kEnd > kBegin ? (kEnd - kBegin + kBK - 1) / kBK : 0;
  const T* A = static_cast<const T*>(g.a) + b * g.batchA;
  const T* W = static_cast<const T*>(g.w) + b * g.batchW;

  auto stageA = [&](int st) { return smem + st * C::kStageElems; };
  auto stageB = [&](int st) { return smem + st * C::kStageElems + BM * kBK; };
  auto loadStage = [&](int st, int kt) {
    const int k0 = kBegin + kt * kBK;
    loadTile<T, BM>(stageA(st), A, g.lda, m0, g.M, k0, kEnd, tid);
    loadTile<T, BN>(stageB(st), W, g.ldw, n0, g.N, k0, kEnd, tid);
  };

  // One commit group per k-tile (empty past the end) keeps the wait count uniform.
#pragma unroll
  for (int st = 0; st < STAGES - 1; ++st) {
    if (st < kTiles) loadStage(st, st);
    cpAsyncCommit();
  }

  float acc[C::MT][C::NT][4];
#pragma unroll
  for (int i = 0; i < C::MT; ++i)
#pragma unroll
    for (int j = 0; j < C::NT; ++j)
#pragma unroll
      for (int r = 0; r < 4; ++r) acc[i][j][r] = 0.f;

  for (int kt = 0; kt < kTiles; ++kt) {
    // Tile kt has landed once at most STAGES-2 newer groups are pending; the barrier also
    // proves every warp is done with the stage the prefetch below overwrites (tile kt-1's).
    cpAsyncWait<STAGES - 2>();
    __syncthreads();
    if (kt + STAGES - 1 < kTiles) loadStage((kt + STAGES - 1) % STAGES, kt + STAGES - 1);
    cpAsyncCommit();

    const T* sa = stageA(kt % STAGES);
    const T* sb = stageB(kt % STAGES);
#pragma unroll
    for (int kk = 0; kk < kBK / 16; ++kk) {
      uint32_t af[C::MT][4], bf[C::NT][2];
      // A x4: lanes 0-15 address rows 0-15 at k 0-7, lanes 16-31 rows 0-15 at k 8-15, which
      // yields a0..a3 of the m16n8k16 A fragment in order.
#pragma unroll
      for (int mt = 0; mt < C::MT; ++mt)
        ldmatrixX4(af[mt], sa + swz(wm * C::WM + mt * 16 + (lane & 15), kk * 2 + (lane >> 4)));
      // W rows are B columns, so the non-transposed 8x8 tiles (rows n, cols k) are exactly B
      // fragments; matrices: (n 0-7, k 0-7) (n 0-7, k 8-15) (n 8-15, k 0-7) (n 8-15, k 8-15).
#pragma unroll
      for (int np = 0; np < C::NT / 2; ++np) {
        const int mi = lane >> 3;
        uint32_t r[4];
        ldmatrixX4(r, sb + swz(wn * C::WN + np * 16 + ((mi >> 1) << 3) + (lane & 7), kk * 2 + (mi & 1)));
        bf[2 * np][0] = r[0];
        bf[2 * np][1] = r[1];
        bf[2 * np + 1][0] = r[2];
        bf[2 * np + 1][1] = r[3];
      }
#pragma unroll
      for (int mt = 0; mt < C::MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < C::NT; ++nt) mma16816<T>(acc[mt][nt], af[mt], bf[nt]);
    }
  }
  cpAsyncWait<0>();

  // Accumulator c0,c1: (row g, cols 2q, 2q+1); c2,c3: row g+8. N % 8 == 0, so an n8 tile is
  // entirely inside or outside.
  const int gq = lane >> 2, q = lane & 3;
  OutT* out = static_cast<OutT*>(g.c) + b * g.batchC;
#pragma unroll
  for (int mt = 0; mt < C::MT; ++mt) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int row = m0 + wm * C::WM + mt * 16 + gq + half * 8;
      if (row >= g.M) continue;
#pragma unroll
      for (int nt = 0; nt < C::NT; ++nt) {
        const int col = n0 + wn * C::WN + nt * 8 + 2 * q;
        if (col >= g.N) continue;
        const float v0 = acc[mt][nt][2 * half], v1 = acc[mt][nt][2 * half + 1];
        if (g.ws) {
          float* p = g.ws + ((static_cast<int64_t>(split) * g.batch + b) * g.M + row) * g.N + col;
          *reinterpret_cast<float2*>(p) = make_float2(v0, v1);
        } else {
          storePair<OutT>(out + static_cast<int64_t>(row) * g.ldc + col, v0, v1);
        }
      }
    }
  }
}

// ---- skinny kernel (M <= 16) ---------------------------------------------------------------
constexpr int kChunk = 64;       // K per warp step: two 16-byte loads per lane and row
constexpr int kSkinnyCols = 32;  // W rows (output columns) per warp: four n8 tiles

__device__ __forceinline__ uint4 loadX(const void* p, bool ok) {
  return ok ? __ldg(static_cast<const uint4*>(p)) : make_uint4(0, 0, 0, 0);
}
// W is read exactly once: streaming (evict-first) loads keep x and the output in cache.
__device__ __forceinline__ uint4 loadW(const void* p, bool ok) {
  return ok ? __ldcs(static_cast<const uint4*>(p)) : make_uint4(0, 0, 0, 0);
}

// C[m, n] = Σ_k A[m, k]·W[n, k], M <= 16. The sum over k does not care which mma k-slot a
// product lands in, so lane (g, q) loads 8 consecutive k (one 16-byte vector) of x row g, x row
// g+8 and W row n0+g at k = base + 8q and feeds them to slots {2q, 2q+1, 2q+8, 2q+9} of two
// mma steps. A and B use the same permutation, hence the same sum, with every load 16 bytes and
// 4 lanes covering 64 contiguous bytes of a row.
// CTA: 8 warps = (8/KW) column groups of 32 x KW warps splitting this CTA's K range.
// grid: x = column blocks, y = K splits, z = batch.
template <typename T, typename OutT, int KW>
__global__ void __launch_bounds__(kThreads, 2) gemmSkinny(GemmArgs g) {
  constexpr int kGroupsN = 8 / KW;
  __shared__ float red[KW > 1 ? 8 * 16 : 1][32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int wk = warp % KW, wn = warp / KW;
  const int gq = lane >> 2, q = lane & 3;
  const int b = blockIdx.z, split = blockIdx.y;
  const int nBase = (blockIdx.x * kGroupsN + wn) * kSkinnyCols;
  const int kBegin = split * g.kPerSplit;
  const int kEnd = min(g.K, kBegin + g.kPerSplit);

  const T* A = static_cast<const T*>(g.a) + b * g.batchA;
  const T* W = static_cast<const T*>(g.w) + b * g.batchW;
  const bool row0 = gq < g.M, row1 = gq + 8 < g.M;
  const T* x0 = A + (row0 ? static_cast<int64_t>(gq) * g.lda : 0);
  const T* x1 = A + (row1 ? static_cast<int64_t>(gq + 8) * g.lda : 0);
  // W row of n8 tile nt: wRow + nt·8·ldw (offsets recomputed, not kept: registers are tight).
  const T* wRow = W + static_cast<int64_t>(nBase + gq) * g.ldw;
  const int64_t wTile = 8 * g.ldw;
  const int rowsLeft = g.N - nBase - gq;  // tile nt is in range iff nt·8 < rowsLeft

  float acc[4][4];
#pragma unroll
  for (int nt = 0; nt < 4; ++nt)
#pragma unroll
    for (int r = 0; r < 4; ++r) acc[nt][r] = 0.f;

  // W (the DRAM stream) is double-buffered in registers; x is small and cache-resident, so it
  // is loaded per chunk (double-buffering both spills at the 128-register cap).
  auto loadWChunk = [&](int k, uint4 (&ws)[4][2]) {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int kk = k + 32 * i + 8 * q;
      const bool kok = kk < kEnd;
#pragma unroll
      for (int nt = 0; nt < 4; ++nt) ws[nt][i] = loadW(wRow + nt * wTile + kk, kok && nt * 8 < rowsLeft);
    }
  };
  const int step = KW * kChunk;
  int k = kBegin + wk * kChunk;
  uint4 wb[4][2];
  loadWChunk(k, wb);
  for (; k < kEnd; k += step) {
    uint4 xa[2][2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int kk = k + 32 * i + 8 * q;
      xa[i][0] = loadX(x0 + kk, kk < kEnd && row0);
      xa[i][1] = loadX(x1 + kk, kk < kEnd && row1);
    }
    uint4 wnx[4][2];
    loadWChunk(k + step, wnx);  // next chunk in flight while this one multiplies
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const uint32_t a0[4] = {xa[i][0].x, xa[i][1].x, xa[i][0].y, xa[i][1].y};
      const uint32_t a1[4] = {xa[i][0].z, xa[i][1].z, xa[i][0].w, xa[i][1].w};
#pragma unroll
      for (int nt = 0; nt < 4; ++nt) {
        const uint32_t b0[2] = {wb[nt][i].x, wb[nt][i].y};
        const uint32_t b1[2] = {wb[nt][i].z, wb[nt][i].w};
        mma16816<T>(acc[nt], a0, b0);
        mma16816<T>(acc[nt], a1, b1);
      }
    }
#pragma unroll
    for (int nt = 0; nt < 4; ++nt)
#pragma unroll
      for (int i = 0; i < 2; ++i) wb[nt][i] = wnx[nt][i];
  }

  if constexpr (KW > 1) {
#pragma unroll
    for (int nt = 0; nt < 4; ++nt)
#pragma unroll
      for (int r = 0; r < 4; ++r) red[warp * 16 + nt * 4 + r][lane] = acc[nt][r];
    __syncthreads();
    if (wk != 0) return;
#pragma unroll
    for (int j = 1; j < KW; ++j)
#pragma unroll
      for (int nt = 0; nt < 4; ++nt)
#pragma unroll
        for (int r = 0; r < 4; ++r) acc[nt][r] += red[(warp + j) * 16 + nt * 4 + r][lane];
  }

  OutT* out = static_cast<OutT*>(g.c) + b * g.batchC;
#pragma unroll
  for (int nt = 0; nt < 4; ++nt) {
    const int col = nBase + nt * 8 + 2 * q;
    if (col >= g.N) continue;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int row = gq + half * 8;
      if (row >= g.M) continue;
      const float v0 = acc[nt][2 * half], v1 = acc[nt][2 * half + 1];
      if (g.ws) {
        float* p = g.ws + ((static_cast<int64_t>(split) * g.batch + b) * g.M + row) * g.N + col;
        *reinterpret_cast<float2*>(p) = make_float2(v0, v1);
      } else {
        storePair<OutT>(out + static_cast<int64_t>(row) * g.ldc + col, v0, v1);
      }
    }
  }
}

// out[b, m, n] = Σ_s ws[s, b, m, n], two columns per thread.
template <typename OutT>
__global__ void splitKReduce(GemmArgs g) {
  const int64_t slice = static_cast<int64_t>(g.batch) * g.M * g.N;
  const int64_t pairs = slice / 2;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < pairs;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t e = i * 2;
    const int n = static_cast<int>(e % g.N);
    const int64_t bm = e / g.N;
    const int m = static_cast<int>(bm % g.M);
    const int b = static_cast<int>(bm / g.M);
    float v0 = 0.f, v1 = 0.f;
    for (int s = 0; s < g.splits; ++s) {
      const float2 p = *reinterpret_cast<const float2*>(g.ws + s * slice + e);
      v0 += p.x;
      v1 += p.y;
    }
    storePair<OutT>(static_cast<OutT*>(g.c) + b * g.batchC + static_cast<int64_t>(m) * g.ldc + n, v0, v1);
  }
}

// ---- host side ---------------------------------------------------------------------------
// Stream-ordered scratch for split-K partials; freed on every path out of the launcher.
class Workspace {
 public:
  Workspace(cudaStream_t s, bool pools) : stream_(s), pools_(pools) {}
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;
  ~Workspace() {
    if (!ptr_) return;
    if (pools_) {
      cudaFreeAsync(ptr_, stream_);
    } else {
      cudaStreamSynchronize(stream_);  // cudaFree must not free memory a queued kernel uses
      cudaFree(ptr_);
    }
  }
  Status alloc(size_t bytes) {
    const cudaError_t err = pools_ ? cudaMallocAsync(&ptr_, bytes, stream_) : cudaMalloc(&ptr_, bytes);
    if (err != cudaSuccess) {
      ptr_ = nullptr;
      // A failed allocation also sets the runtime's last-error state; clear it, or the next
      // op's launch check (cudaGetLastError) would report this out-of-memory as its own.
      (void)cudaGetLastError();
      return gpu::fromCuda(err, "linear: split-K workspace");
    }
    return Status::Ok();
  }
  float* get() const { return static_cast<float*>(ptr_); }

 private:
  cudaStream_t stream_;
  bool pools_;
  void* ptr_ = nullptr;
};

constexpr size_t kMaxWorkspaceBytes = size_t(64) << 20;

template <typename OutT>
Status launchReduce(const GemmArgs& g, cudaStream_t s) {
  const int64_t pairs = static_cast<int64_t>(g.batch) * g.M * g.N / 2;
  const int64_t blocks = (pairs + 255) / 256;
  MLA_LAUNCH_KERNEL(static_cast<int>(blocks < 65535 ? blocks : 65535), 256, 0, s, splitKReduce<OutT>)(g);
  MLA_CHECK_LAUNCH("linear: split-K reduce");
  return Status::Ok();
}

int64_t ceilDiv64(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Splits so that about `target` CTAs run, each keeping >= minSteps K steps of `kStep`
// elements, and the workspace stays bounded. Returns kPerSplit; *splits gets the count.
int planSplits(int64_t ctas, int64_t target, int K, int kStep, int minSteps, const GemmArgs& g, int* splits) {
  const int64_t steps = ceilDiv64(K, kStep);
  int64_t s = ctas >= target ? 1 : ceilDiv64(target, ctas);
  s = std::min<int64_t>(s, std::max<int64_t>(1, steps / minSteps));
  const int64_t perSplitBytes = static_cast<int64_t>(g.batch) * g.M * g.N * 4;
  s = std::min<int64_t>(s, std::max<int64_t>(1, static_cast<int64_t>(kMaxWorkspaceBytes) / perSplitBytes));
  s = std::min<int64_t>(s, 64);
  const int64_t stepsPer = ceilDiv64(steps, s);
  *splits = static_cast<int>(ceilDiv64(steps, stepsPer));  // no empty splits
  return static_cast<int>(stepsPer * kStep);
}

template <typename T, typename OutT, int BM, int STAGES>
Status runTiled(GemmArgs g, const gpu::DeviceProps& dp, cudaStream_t s) {
  constexpr int BN = 128;
  using C = TileCfg<BM, BN, STAGES>;
  const int64_t tiles = ceilDiv64(g.M, BM) * ceilDiv64(g.N, BN);
  if (tiles > INT_MAX) return Status::Error(Code::Range, "linear: too many output tiles");
  if (C::kSmemBytes > dp.smemOptin)
    return Status::Error(Code::Argument, "linear: device shared memory per block (" + std::to_string(dp.smemOptin) +
                                             " B) is below the " + std::to_string(C::kSmemBytes) + " B the kernel needs");
  constexpr auto kernel = gemmTiled<T, OutT, BM, BN, STAGES>;
  if (C::kSmemBytes > 48 * 1024) MLA_RETURN_IF_ERROR(gpu::optInSharedMemory<kernel>(C::kSmemBytes, "linear"));

  // Too few tiles to fill the GPU (decode-sized M, or small N): split K so that about two
  // CTAs per SM stream the weight; each split keeps >= 8 k-tiles to amortise the pipeline.
  g.splits = 1;
  g.kPerSplit = static_cast<int>(ceilDiv64(g.K, kBK) * kBK);
  if (tiles * g.batch < dp.smCount)
    g.kPerSplit = planSplits(tiles * g.batch, 2 * static_cast<int64_t>(dp.smCount), g.K, kBK, 8, g, &g.splits);
  if (static_cast<int64_t>(g.batch) * g.splits > 65535) return Status::Error(Code::Range, "linear: batch too large");

  Workspace ws(s, dp.pools);
  if (g.splits > 1) {
    MLA_RETURN_IF_ERROR(ws.alloc(static_cast<size_t>(g.splits) * g.batch * g.M * g.N * 4));
    g.ws = ws.get();
  }
  MLA_LAUNCH_KERNEL(dim3(static_cast<unsigned>(tiles), g.batch * g.splits), kThreads, C::kSmemBytes, s, kernel)(g);
  MLA_CHECK_LAUNCH("linear: tiled gemm");
  if (g.splits > 1) return launchReduce<OutT>(g, s);
  return Status::Ok();
}

template <typename T, typename OutT>
Status runSkinny(GemmArgs g, const gpu::DeviceProps& dp, cudaStream_t s) {
  const int64_t chunks = ceilDiv64(g.K, kChunk);
  const int kw = chunks >= 8 ? 8 : chunks >= 4 ? 4 : chunks >= 2 ? 2 : 1;
  const int64_t colsPerCta = static_cast<int64_t>(kSkinnyCols) * (8 / kw);
  const int64_t ctasN = ceilDiv64(g.N, colsPerCta);
  // Enough CTAs that every SM streams W with ~4 CTAs' worth of loads in flight; each warp of a
  // split keeps at least one chunk.
  g.kPerSplit = planSplits(ctasN * g.batch, 4 * static_cast<int64_t>(dp.smCount), g.K, kChunk * kw, 1, g, &g.splits);
  if (g.splits > 65535 || g.batch > 65535 || ctasN > INT_MAX) return Status::Error(Code::Range, "linear: problem too large");

  Workspace ws(s, dp.pools);
  if (g.splits > 1) {
    MLA_RETURN_IF_ERROR(ws.alloc(static_cast<size_t>(g.splits) * g.batch * g.M * g.N * 4));
    g.ws = ws.get();
  }
  const dim3 grid(static_cast<unsigned>(ctasN), g.splits, g.batch);
  switch (kw) {
    case 8: MLA_LAUNCH_KERNEL(grid, kThreads, 0, s, gemmSkinny<T, OutT, 8>)(g); break;
    case 4: MLA_LAUNCH_KERNEL(grid, kThreads, 0, s, gemmSkinny<T, OutT, 4>)(g); break;
    case 2: MLA_LAUNCH_KERNEL(grid, kThreads, 0, s, gemmSkinny<T, OutT, 2>)(g); break;
    default: MLA_LAUNCH_KERNEL(grid, kThreads, 0, s, gemmSkinny<T, OutT, 1>)(g); break;
  }
  MLA_CHECK_LAUNCH("linear: skinny gemm");
  if (g.splits > 1) return launchReduce<OutT>(g, s);
  return Status::Ok();
}

template <typename T, typename OutT>
Status runGemm(const GemmArgs& g, cudaStream_t s) {
  gpu::DeviceProps dp;
  MLA_RETURN_IF_ERROR(gpu::currentDeviceProps(&dp));
  if (g.M <= 16) return runSkinny<T, OutT>(g, dp, s);
  // 128-row tiles once they alone fill the GPU and rows are mostly real (M > 64: below that a
  // 128-row tile multiplies mostly zero-filled rows); 64-row tiles (plus split-K) otherwise.
  const int64_t bigTiles = ceilDiv64(g.M, 128) * ceilDiv64(g.N, 128) * g.batch;
  // Two 128-row CTAs per SM need 2 x 64 KB at 4 stages: sm_80/90/100 have it; the 100 KB
  // parts (sm_86/89/120) drop to 3 stages (48 KB) to keep two CTAs resident.
  if (g.M > 64 && bigTiles >= dp.smCount) {
    constexpr int kFour = TileCfg<128, 128, 4>::kSmemBytes;
    if (dp.smemPerSm >= 2 * (kFour + 1024)) return runTiled<T, OutT, 128, 4>(g, dp, s);
    return runTiled<T, OutT, 128, 3>(g, dp, s);
  }
  return runTiled<T, OutT, 64, 4>(g, dp, s);
}

// Strides of size-1 dims are irrelevant (and may be anything in a view): treat them as 0.
int64_t strideOf(const TensorRef& t, int d) { return t.shape[d] == 1 ? 0 : t.strides[d]; }

Status checkOperand(const TensorRef& t, const char* name) {
  MLA_CHECK(t.data != nullptr || t.numel() == 0, Argument, std::string("linear: `") + name + "` has no data");
  MLA_CHECK(t.shape[t.ndim - 1] <= 1 || t.strides[t.ndim - 1] == 1, Shape,
            std::string("linear: `") + name + "` must have a contiguous last dimension (stride 1)");
  for (int d = 0; d < t.ndim - 1; ++d) {
    const int64_t st = strideOf(t, d);
    MLA_CHECK(st >= 0 && st % 8 == 0, Shape,
              std::string("linear: `") + name + "` must have non-negative strides that are multiples of 8 elements (dim " +
                  std::to_string(d) + " has stride " + std::to_string(t.strides[d]) + ")");
  }
  MLA_CHECK(reinterpret_cast<uintptr_t>(t.data) % 16 == 0, Shape,
            std::string("linear: `") + name + "` must start at a 16-byte aligned address (offset a multiple of 8 elements)");
  return Status::Ok();
}

}  // namespace

Status gpu::launchLinear(const LinearParams& p, StreamHandle stream) {
  // Only what memory safety needs (core/check.h); lib/ops/linear.ts validates with names first.
  const TensorRef &x = p.x, &w = p.weight, &y = p.out;
  MLA_CHECK(x.dtype == DType::BF16 || x.dtype == DType::F16, Dtype, "linear: `x` must be bf16 or f16");
  MLA_CHECK(w.dtype == x.dtype, Dtype, "linear: `weight` must have the same dtype as `x`");
  MLA_CHECK(y.dtype == DType::BF16 || y.dtype == DType::F16 || y.dtype == DType::F32, Dtype, "linear: `out` must be bf16, f16 or f32");
  MLA_CHECK(x.ndim == 2 || x.ndim == 3, Shape, "linear: `x` must be [M, K] or [M, B, K]");
  MLA_CHECK(w.ndim == x.ndim, Shape, x.ndim == 2 ? "linear: `weight` must be [N, K]" : "linear: `weight` must be [B, N, K]");
  MLA_CHECK(y.ndim == x.ndim, Shape, x.ndim == 2 ? "linear: `out` must be [M, N]" : "linear: `out` must be [M, B, N]");
  const bool batched = x.ndim == 3;
  const int64_t M = x.shape[0], K = x.shape[x.ndim - 1], B = batched ? x.shape[1] : 1;
  const int64_t N = w.shape[w.ndim - 2];
  MLA_CHECK(!batched || w.shape[0] == B, Shape, "linear: `weight` must have as many batches (dim 0) as `x` dim 1");
  MLA_CHECK(w.shape[w.ndim - 1] == K, Shape, "linear: `weight` must have the same K (last dim) as `x`");
  // The tiles load 16 bytes (8 elements) at a time along K and N.
  MLA_CHECK(K > 0 && K % 8 == 0, Shape, "linear: `x` must have K (last dim) a positive multiple of 8");
  MLA_CHECK(N > 0 && N % 8 == 0, Shape, "linear: `weight` must have N a positive multiple of 8");
  MLA_CHECK(y.shape[0] == M && y.shape[y.ndim - 1] == N && (!batched || y.shape[1] == B), Shape,
            batched ? "linear: `out` must be [M, B, N]" : "linear: `out` must be [M, N]");
  // 2^30 leaves int headroom for tile-rounded indices (m0 + row, k rounded up to a tile).
  MLA_CHECK(M <= (1 << 30) && N <= (1 << 30) && K <= (1 << 30) && B <= 65535, Range,
            "linear: `x` is too large (M, N, K <= 2^30; batch <= 65535)");
  MLA_RETURN_IF_ERROR(checkOperand(x, "x"));
  MLA_RETURN_IF_ERROR(checkOperand(w, "weight"));
  MLA_RETURN_IF_ERROR(checkOperand(y, "out"));
  if (M == 0 || B == 0) return Status::Ok();
  // Overlap of out with x or W is not checked in general, but out written in place over an
  // operand (same start address) would let CTAs overwrite rows other CTAs still read; only the
  // native side sees device addresses.
  MLA_CHECK(y.data != x.data && y.data != w.data, Argument, "linear: `out` must not alias `x` or `weight`");

  GemmArgs g{};
  g.a = x.data;
  g.lda = strideOf(x, 0);
  g.batchA = batched ? strideOf(x, 1) : 0;
  g.w = w.data;
  g.ldw = strideOf(w, w.ndim - 2);
  g.batchW = batched ? strideOf(w, 0) : 0;
  g.c = y.data;
  g.ldc = strideOf(y, 0);
  g.batchC = batched ? strideOf(y, 1) : 0;
  g.ws = nullptr;
  g.M = static_cast<int>(M);
  g.N = static_cast<int>(N);
  g.K = static_cast<int>(K);
  g.batch = static_cast<int>(B);
  g.splits = 1;
  g.kPerSplit = static_cast<int>(K);

  cudaStream_t s = static_cast<cudaStream_t>(stream);
  return MLA_DISPATCH_HALF_TYPES(x.dtype, T, [&] {
    switch (y.dtype) {
      case DType::F32: return runGemm<T, float>(g, s);
      case DType::F16: return runGemm<T, __half>(g, s);
      default: return runGemm<T, __nv_bfloat16>(g, s);
    }
  });
}

}  // namespace mla

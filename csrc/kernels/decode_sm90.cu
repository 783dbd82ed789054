// Absorbed MLA decode, Hopper path (sm_90a): the split-KV main kernel on warpgroup MMA (wgmma)
// with the paged K tiles brought in by TMA. The plan, the partial buffers and the combine are the
// portable path's (decode_impl.cuh), so both paths share every rule about splits, masks, empty
// rows and errors; decode.cu's launcher picks this one on compute capability 9.0 for 16-bit
// caches (docs/decode-kernel.md, "Hopper path"). Built for sm_90a only (CMakeLists.txt).
#include "kernels/decode_impl.cuh"
#include "kernels/hopper.cuh"

namespace mla::gpu {
namespace {
using namespace mla::kernels::sm90;

// One CTA = two warpgroups over 64 packed query rows and 64-key tiles.
constexpr int kBM = 64, kBN = 64;
constexpr int kThreadsSm90 = 256;
constexpr int kNChunks = kD / 64;           // 9 column chunks of 64 values = one 128-byte swizzle row
constexpr int kChunkBytes = 64 * 128;       // 64 rows of one chunk: 8 KB, 1024-byte aligned
constexpr int kTileBytes = kNChunks * kChunkBytes;  // a 64 x 576 tile: 72 KB
// Shared memory from a 1024-byte aligned base: Q tile | K stage 0 | K stage 1 | P (64 x 64) |
// row maxima / sums [2][64] f32 | two mbarriers. The slack realigns the base.
constexpr int kOffQ = 0, kOffK = kTileBytes, kOffP = 3 * kTileBytes, kOffRed = kOffP + kChunkBytes;
constexpr int kOffBar = kOffRed + 2 * kBM * 4;
static_assert(kOffBar + 16 + 1024 == kSm90SmemBytes, "decode_impl.cuh states the size for the launcher");

// Byte offset of (row, col) in a tile stored as 128-byte swizzled chunks: chunk col/64 holds
// rows of 128 bytes whose 16-byte units are XOR-ed with row % 8 (TMA's and wgmma's SWIZZLE_128B
// on a 1024-aligned base).
__device__ __forceinline__ int tileOffset(int row, int col) {
  return (col >> 6) * kChunkBytes + row * 128 + ((((col & 63) >> 3) ^ (row & 7)) << 4) + (col & 7) * 2;
}

// CTA (part, rowTile) walks its part's (request, block) range like decodeMainKernel. Per 64-key
// tile, warpgroup w (w = 0, 1):
//   S_w = Q K[32w, 32w + 32)^T             wgmma m64n32k16, A = Q, B = K (both K-major, smem)
//   m' = max(m, rowmax(S_0, S_1)) (through sRed), P_w = 2^(S_w·scale·log2e − m') into sP
//   O_w = O_w·2^(m − m') + P V[:, 256w, 256w + 256)   wgmma m64n256k16, A = P, B = V (MN-major)
// so each score is computed once and each warpgroup owns half of the 512 output columns. The
// next tile's TMA loads are in flight while this tile computes (two stages). Keys past the
// request's length read as zeros (TMA zero-fills pages past the table; rows of a partial last
// page are cleared) so P·V stays finite whatever the cache holds there.
template <typename T>
__global__ void __launch_bounds__(kThreadsSm90, 1) decodeMainSm90Kernel(DecodeKernelArgs a, const __grid_constant__ CUtensorMap kv) {
  MLA_DYNAMIC_SMEM(unsigned char, smemRaw, 128);  // realigned to 1024 below
  unsigned char* smem = smemRaw + ((1024u - (sharedAddr(smemRaw) & 1023u)) & 1023u);
  unsigned char* sQ = smem + kOffQ;
  unsigned char* sK = smem + kOffK;
  unsigned char* sP = smem + kOffP;
  float* sRed = reinterpret_cast<float*>(smem + kOffRed);
  uint64_t* bar = reinterpret_cast<uint64_t*>(smem + kOffBar);

  const int part = blockIdx.x, rt = blockIdx.y;
  if (part >= a.numParts) return;
  const int tid = threadIdx.x, wg = tid >> 7, wi = (tid >> 5) & 3, lane = tid & 31;
  const int g = lane >> 2, q = lane & 3;
  const T* qBase = static_cast<const T*>(a.q);
  const int32_t* meta = a.partMeta + part * 8;
  const int lastReq = min(meta[2], a.B - 1), row0 = rt * kBM;

  if (tid == 0) {
    mbarrierInit(&bar[0], 1);
    mbarrierInit(&bar[1], 1);
    fenceMbarrierInit();
  }
  __syncthreads();
  uint32_t phase[2] = {0u, 0u};  // completions waited for per stage: the next wait's parity
  int tileCount = 0;             // tiles loaded by this CTA: tile n uses stage n % 2

  // Thread 0: one tile's TMA loads (9 chunks per page, box = 64 columns x min(page, 64) rows).
  // A page index outside the cache (past the request's pages, or one the plan flagged) is sent as
  // numPages: TMA zero-fills it and reads nothing.
  auto issueTile = [&](int stage, const int32_t* btRow, int key0, int L) {
    unsigned char* dst = sK + stage * kTileBytes;
    mbarrierArriveExpectTx(&bar[stage], kTileBytes);
    const int rowsPerBox = min(a.pageSize, kBN);
    for (int k = key0; k < key0 + kBN; k += rowsPerBox) {
      int pg = k < L ? btRow[k >> a.pageShift] : a.numPages;
      if (unsigned(pg) >= unsigned(a.numPages)) pg = a.numPages;
      const int r0 = k & (a.pageSize - 1);
#pragma unroll 1
      for (int c = 0; c < kNChunks; ++c) tmaLoad3d(dst + c * kChunkBytes + (k - key0) * 128, &kv, c * 64, r0, pg, &bar[stage]);
    }
  };

  for (int b = meta[0]; b <= lastReq; ++b) {
    ReqWork w;
    if (!reqWork(a, meta, b, row0, w)) continue;
    const int sq = w.sq, L = w.L, qStart = w.qStart, rows = w.rows, slot = w.slot;
    const int kvBegin = w.blk0 * kBN, ntiles = w.blk1 - w.blk0;
    const int32_t* btRow = a.bt + b * a.btStride;

    __syncthreads();  // the previous request's readers of sQ / sK / sP / sRed are done
    if (tid == 0) issueTile(tileCount & 1, btRow, kvBegin, L);

    // Q tile, swizzled like the K tiles; rows past s_q*H are zeros. Written by ordinary stores,
    // read by wgmma: the proxy fence, then the barrier before the first S.
    for (int u = tid; u < kBM * kChunks; u += kThreadsSm90) {
      const int r = u / kChunks, ch = u - r * kChunks, idx = row0 + r;
      uint4 v = make_uint4(0u, 0u, 0u, 0u);
      if (idx < rows) {
        const int j = idx / a.H, h = idx - j * a.H;
        v = *reinterpret_cast<const uint4*>(qBase + int64_t(qStart + j) * a.qTok + int64_t(h) * a.qHead + ch * 8);
      }
      *reinterpret_cast<uint4*>(sQ + tileOffset(r, ch * 8)) = v;
    }
    fenceProxyAsync();

    // This thread's rows: 16*wi + g and +8 of the tile (the same in both warpgroups).
    int rowLim[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int idx = row0 + wi * 16 + g + r * 8;
      const int lim = a.causal ? L - sq + idx / a.H + 1 : L;
      rowLim[r] = idx < rows ? min(lim, L) : 0;
    }
    float o[128];
#pragma unroll
    for (int i = 0; i < 128; ++i) o[i] = 0.f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
    const uint32_t qAddr = sharedAddr(sQ), pAddr = sharedAddr(sP);

    for (int it = 0; it < ntiles; ++it) {
      const int stage = tileCount & 1, key0 = kvBegin + it * kBN;
      // The other stage was last read by the previous tile, finished before its closing barrier.
      if (tid == 0 && it + 1 < ntiles) issueTile((tileCount + 1) & 1, btRow, key0 + kBN, L);
      mbarrierWait(&bar[stage], phase[stage] & 1u);
      phase[stage]++;
      unsigned char* sKs = sK + stage * kTileBytes;
      const bool partial = key0 + kBN > L;
      if (partial) {
        // Rows of the last page past L: whatever the cache holds (NaN included) must not reach P·V.
        const int first = max(L - key0, 0);
        for (int u = tid; u < (kBN - first) * kChunks; u += kThreadsSm90) {
          const int r = first + u / kChunks, ch = u % kChunks;
          *reinterpret_cast<uint4*>(sKs + tileOffset(r, ch * 8)) = make_uint4(0u, 0u, 0u, 0u);
        }
        fenceProxyAsync();
      }
      // Q (first tile) and the cleared rows must be visible to both warpgroups; otherwise the
      // mbarrier wait alone orders the TMA data before this thread's wgmma.
      if (it == 0 || partial) __syncthreads();

      // S_w: 36 k-steps (9 chunks x 4 steps of 16 columns = 32 bytes inside the 128-byte row).
      float s[16];
      const uint32_t kAddr = sharedAddr(sKs) + wg * 32 * 128;
      wgmmaFence();
      // Fully unrolled: an accumulator carried around a loop makes ptxas serialise the wgmmas.
#pragma unroll
      for (int c = 0; c < kNChunks; ++c) {
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) {
          const uint32_t off = c * kChunkBytes + kk * 32;
          wgmmaSS<T, 32, 0, 0>(s, smemDesc(qAddr + off, Swizzle::B128, 16, 1024), smemDesc(kAddr + off, Swizzle::B128, 16, 1024),
                               (c | kk) != 0);
        }
      }
      wgmmaCommit();
      wgmmaWait<0>();
      wgmmaFenceOperands<16>(s);

      // Scale, mask, row max over both warpgroups. s[i]: key 32w + 8(i/4) + 2q + (i&1), row g or g+8 by (i&2).
      float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
      for (int i = 0; i < 16; ++i) {
        const int key = key0 + wg * 32 + (i >> 2) * 8 + 2 * q + (i & 1);
        s[i] = key < rowLim[(i >> 1) & 1] ? s[i] * a.scaleLog2 : -INFINITY;
        mx[(i >> 1) & 1] = fmaxf(mx[(i >> 1) & 1], s[i]);
      }
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
        if (q == 0) sRed[wg * kBM + wi * 16 + g + r * 8] = mx[r];
      }
      __syncthreads();
      float alpha[2], mUse[2];
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int row = wi * 16 + g + r * 8;
        const float mNew = fmaxf(m[r], fmaxf(sRed[row], sRed[kBM + row]));
        mUse[r] = mNew == -INFINITY ? 0.f : mNew;  // no finite score yet: keep exp2 args at -inf
        alpha[r] = exp2f(m[r] - mUse[r]);
        m[r] = mNew;
        l[r] *= alpha[r];
      }
      // P_w as 16-bit values into sP (64 rows x 64 keys, one swizzled chunk), K-major for wgmma's A.
#pragma unroll
      for (int i = 0; i < 16; i += 2) {
        const int r = (i >> 1) & 1, row = wi * 16 + g + r * 8, col = wg * 32 + (i >> 2) * 8 + 2 * q;
        const float p0 = exp2f(s[i] - mUse[r]), p1 = exp2f(s[i + 1] - mUse[r]);
        l[r] += p0 + p1;
        *reinterpret_cast<uint32_t*>(sP + tileOffset(row, col)) = packPair<T>(p0, p1);
      }
#pragma unroll
      for (int i = 0; i < 128; ++i) o[i] *= alpha[(i >> 1) & 1];
      fenceProxyAsync();
      __syncthreads();  // both halves of P written; every read of the maxima done

      // O_w += P V_w: 4 k-steps of 16 keys; B = V is MN-major (columns contiguous in a chunk,
      // 8-key groups 1024 bytes apart, 64-column chunks 8 KB apart).
      const uint32_t vAddr = sharedAddr(sKs) + wg * 4 * kChunkBytes;
      wgmmaFenceOperands<128>(o);
      wgmmaFence();
#pragma unroll
      for (int kk = 0; kk < kBN / 16; ++kk)
        wgmmaSS<T, 256, 0, 1>(o, smemDesc(pAddr + kk * 32, Swizzle::B128, 16, 1024),
                              smemDesc(vAddr + kk * 16 * 128, Swizzle::B128, kChunkBytes, 1024), 1);
      wgmmaCommit();
      wgmmaWait<0>();
      wgmmaFenceOperands<128>(o);
      __syncthreads();  // this stage and sP are free for the next loads and P
      ++tileCount;
    }

    // Row sums over both warpgroups, then out = O / l (single split) or the partial slot.
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
      l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
      if (q == 0) sRed[wg * kBM + wi * 16 + g + r * 8] = l[r];
    }
    __syncthreads();
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int row = wi * 16 + g + r * 8, idx = row0 + row;
      const float lt = sRed[row] + sRed[kBM + row];
      if (idx >= rows) continue;
      const float inv = lt > 0.f ? 1.f / lt : 0.f;
      const float lse2 = lt > 0.f ? m[r] + log2f(lt) : -INFINITY;
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
  }
}

template <typename T>
Status prepareSm90Kernel() {
  // Per device ordinal, like prepareKernel: the attribute is set once.
  static std::mutex mu;
  static bool done[64] = {};
  int dev = 0;
  MLA_CUDA_TRY(cudaGetDevice(&dev), "decode: cudaGetDevice");
  std::lock_guard<std::mutex> lock(mu);
  if (dev >= 0 && dev < 64 && done[dev]) return Status::Ok();
  MLA_CUDA_TRY(cudaFuncSetAttribute(decodeMainSm90Kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, kSm90SmemBytes),
               "decode: cudaFuncSetAttribute(MaxDynamicSharedMemorySize) for the sm_90a kernel");
  if (dev >= 0 && dev < 64) done[dev] = true;
  return Status::Ok();
}

template <typename T>
Status runSm90(DecodeKernelArgs a, const Plan& plan, Phases ph, cudaStream_t s) {
  MLA_RETURN_IF_ERROR(prepareSm90Kernel<T>());
  CUtensorMap kv;
  // The cache as [numPages][pageSize][576] with its strides; one box = 64 columns of
  // min(pageSize, 64) rows of one page, 128-byte swizzled (the tile layout above).
  const uint64_t dims[3] = {uint64_t(kD), uint64_t(a.pageSize), uint64_t(a.numPages)};
  const uint64_t strides[2] = {uint64_t(a.cRow) * 2, uint64_t(a.cPage) * 2};
  const uint32_t box[3] = {64u, uint32_t(std::min(a.pageSize, kBN)), 1u};
  MLA_RETURN_IF_ERROR(encodeTensorMapTiled(&kv, std::is_same_v<T, __nv_bfloat16> ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
                                           3, const_cast<void*>(a.cache), dims, strides, box, CU_TENSOR_MAP_SWIZZLE_128B));
  if (ph.plan) {
    const size_t planSmem = a.B <= kPlanSmemBatch ? size_t(kRiFields) * a.B * sizeof(int32_t) : 0;
    MLA_LAUNCH_KERNEL(1, kPlanThreads, planSmem, s, decodePlanKernel)(a);
    MLA_CHECK_LAUNCH("decode: plan kernel");
  }
  if (ph.main) {
    MLA_LAUNCH_KERNEL(dim3(plan.numParts, plan.rowTiles), kThreadsSm90, kSm90SmemBytes, s, decodeMainSm90Kernel<T>)(a, kv);
    MLA_CHECK_LAUNCH("decode: sm_90a main kernel");
  }
  if (ph.combine) {
    const int64_t rows = int64_t(a.tokens) * a.H;
    MLA_LAUNCH_KERNEL(unsigned((rows + 7) / 8), 256, 0, s, decodeCombineKernel<T>)(a);
    MLA_CHECK_LAUNCH("decode: combine kernel");
  }
  return Status::Ok();
}

}  // namespace

Status runDecodeSm90(DecodeKernelArgs a, DType dtype, int64_t rowsBound, int64_t wsMaxParts, int64_t wsPartialRows,
                     const DeviceProps& dp, Phases phases, cudaStream_t s, DecodeConfigInfo* info) {
  Plan plan;
  plan.blockM = kBM;
  plan.blockN = kBN;
  plan.stages = 2;
  plan.smem = kSm90SmemBytes;
  plan.ctasPerSm = 1;
  plan.rowTiles = int((rowsBound + kBM - 1) / kBM);
  plan.numParts = int(std::max<int64_t>(1, std::min<int64_t>(int64_t(dp.smCount) / std::max(1, plan.rowTiles), wsMaxParts)));
  plan.overhead = (5 * 64 + kBN - 1) / kBN;
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

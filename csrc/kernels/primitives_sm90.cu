// Conformance kernels for the sm_90a wrappers of hopper.cuh (see primitives.h): wgmma through
// shared-memory descriptors and from registers, TMA tensor loads, mbarrier phases. Operands are
// placed in shared memory by plain formulas of the canonical layouts (below), never through
// another primitive, so a wrong layout or swizzle reading shows in D. Compiled for sm_90a only
// (CMakeLists.txt: *_sm90.cu) and by the emulator build.
#include <string>

#include "core/check.h"
#include "kernels/common.cuh"
#include "kernels/hopper.cuh"
#include "kernels/primitives.h"
#include "runtime/cuda_check.h"

namespace mla {
namespace {
using namespace mla::kernels;
using namespace mla::kernels::sm90;

// ---- operand layouts -------------------------------------------------------------------------
// One 16-bit operand tile in a canonical layout (PTX ISA, wgmma "Shared Memory Matrix Layout"),
// rows = the M or N index (mn), K columns. span: swizzle width in bytes (0 = none).
//   K-major, swizzled:  (mn%8)*W + (mn/8)*SBO + 2k             with SBO = 8W, 2K <= W, LBO unused
//   K-major, none:      (mn%8)*16 + (mn/8)*SBO + (k%8)*2 + (k/8)*LBO    LBO = 128, SBO = K/8*128
//   MN-major, swizzled: (mn%(W/2))*2 + (mn/(W/2))*LBO + k*W     LBO = lboRows*W, SBO = 8W
//   MN-major, none:     (mn%8)*2 + (mn/8)*SBO + (k%8)*16 + (k/8)*LBO    SBO = 128, LBO = MN/8*128
// step: how far the descriptor start moves per k16 step.
struct Layout {
  int span, mnMajor, rows, k, lboRows;
  uint32_t lbo, sbo, step, bytes;
};
__host__ __device__ inline Layout layoutOf(int span, int mnMajor, int rows, int k, int lboRows) {
  Layout l{span, mnMajor, rows, k, lboRows, 0, 0, 0, 0};
  if (!mnMajor) {
    if (span) { l.lbo = 16; l.sbo = 8 * span; l.step = 32; l.bytes = uint32_t(rows * span); }
    else { l.lbo = 128; l.sbo = uint32_t(k / 8 * 128); l.step = 256; l.bytes = uint32_t(rows * k * 2); }
  } else {
    if (span) {
      const int groups = (rows + span / 2 - 1) / (span / 2);
      l.lbo = uint32_t(lboRows * span); l.sbo = 8 * span; l.step = 16 * span; l.bytes = uint32_t(groups) * l.lbo;
    } else {
      l.sbo = 128; l.lbo = uint32_t(rows / 8 * 128); l.step = 2 * l.lbo; l.bytes = uint32_t(rows * k * 2);
    }
  }
  return l;
}
__host__ __device__ inline uint32_t offsetOf(const Layout& l, int mn, int k) {
  const int W = l.span;
  if (!l.mnMajor)
    return W ? uint32_t((mn % 8) * W + (mn / 8) * int(l.sbo) + 2 * k)
             : uint32_t((mn % 8) * 16 + (mn / 8) * int(l.sbo) + (k % 8) * 2 + (k / 8) * int(l.lbo));
  return W ? uint32_t((mn % (W / 2)) * 2 + (mn / (W / 2)) * int(l.lbo) + k * W)
           : uint32_t((mn % 8) * 2 + (mn / 8) * int(l.sbo) + (k % 8) * 16 + (k / 8) * int(l.lbo));
}
// The swizzle on the shared address: 16-byte chunk bits [4,7) XOR the 128-byte row bits [7,10),
// as many of them as the span has chunks (128B: 3, 64B: 2, 32B: 1).
__device__ __forceinline__ uint32_t swizzled(uint32_t addr, int span) {
  const uint32_t mask = span == 128 ? 7u : span == 64 ? 3u : span == 32 ? 1u : 0u;
  return addr ^ (((addr >> 7) & mask) << 4);
}
__host__ __device__ inline Swizzle swizzleOf(int span) {
  return span == 128 ? Swizzle::B128 : span == 64 ? Swizzle::B64 : span == 32 ? Swizzle::B32 : Swizzle::None;
}

// The first 1024-byte aligned shared address in the dynamic shared memory: swizzle patterns
// repeat every 1024 bytes and descriptors here carry base offset 0.
__device__ __forceinline__ unsigned char* aligned1024(unsigned char* smem) {
  const uint32_t a = sharedAddr(smem);
  return smem + ((1024u - a % 1024u) % 1024u);
}

struct WgmmaArgs {
  int k, swizzleA, swizzleB, lboRows, scaleD, mode;
};

// One warpgroup: A, B into shared memory, D (64 x N, f32) = A·B (+ C) in k/16 wgmma steps, D out
// through the accumulator fragment layout: d[i], n8 block j = i/4, e = i%4, row 16w + g + 8(e/2),
// column 8j + 2q + e%2 (w warp, g = lane/4, q = lane%4).
// KS k16 steps (K = 16·KS) at compile time, and every A fragment (RS) loaded before the first
// wgmma: no register of a wgmma operand changes between them, so ptxas inserts no warpgroup
// arrives of its own (and prints nothing at install).
template <typename T, int N, int KS, int TA, int TB, bool RS>
__global__ void __launch_bounds__(128) wgmmaKernel(const uint16_t* a, const uint16_t* b, const float* c, float* d,
                                                   WgmmaArgs args) {
  MLA_DYNAMIC_SMEM(unsigned char, smem, 1024);
  constexpr int K = 16 * KS;
  const int tid = threadIdx.x;
  const Layout la = layoutOf(args.swizzleA, TA, 64, K, K), lb = layoutOf(args.swizzleB, TB, N, K, args.lboRows);
  unsigned char* tileA = aligned1024(smem);
  unsigned char* tileB = tileA + (la.bytes + 1023u) / 1024u * 1024u;
  const uint32_t baseA = sharedAddr(tileA), baseB = sharedAddr(tileB);
  if (!RS)
    for (int i = tid; i < 64 * K; i += 128)
      *reinterpret_cast<uint16_t*>(tileA + (swizzled(baseA + offsetOf(la, i / K, i % K), la.span) - baseA)) = a[i];
  for (int i = tid; i < K * N; i += 128)  // b is [K][N]: element (k = i/N, n = i%N)
    *reinterpret_cast<uint16_t*>(tileB + (swizzled(baseB + offsetOf(lb, i % N, i / N), lb.span) - baseB)) = b[i];
  fenceProxyAsync();  // the generic-proxy stores above, before wgmma's async-proxy reads
  __syncthreads();

  const int w = tid >> 5, lane = tid & 31, g = lane >> 2, q = lane & 3;
  auto rowOf = [&](int i) { return 16 * w + g + 8 * ((i % 4) / 2); };
  auto colOf = [&](int i) { return 8 * (i / 4) + 2 * q + (i % 2); };
  // The fault modes (1: no fence, 2: a copy into B under the wgmma) are emulator tests; on a
  // GPU they would be undefined, so only mode 0 is compiled there (the launcher refuses others).
  // Modes 3 and 4 (KS > 1) commit each k16 step as its own group, chained into one accumulator,
  // then wait_group 1, and thread 0 copies into B's first k16 slice (3: read by a group its own
  // wait completed, allowed) or its last (4: read by the group still pending, a fault).
#ifdef MLA_EMULATE
  const int mode = args.mode;
#else
  constexpr int mode = 0;
#endif
  float acc[N / 2];
#pragma unroll
  for (int i = 0; i < N / 2; ++i) acc[i] = c[rowOf(i) * N + colOf(i)];
  // A fragments (RS): a0 = A[r][2q, 2q+1], a1 = A[r+8][..], a2 = A[r][2q+8, 2q+9], a3 = A[r+8][2q+8..]
  // of k16 slice s, r = 16w + g; the lower column in the low half.
  uint32_t ar[KS][4];
#pragma unroll
  for (int s = 0; s < KS; ++s) {
    const int r = 16 * w + g, k0 = 16 * s + 2 * q;
    auto pk = [&](int row, int col) { return uint32_t(a[row * K + col]) | uint32_t(a[row * K + col + 1]) << 16; };
    ar[s][0] = RS ? pk(r, k0) : 0u;
    ar[s][1] = RS ? pk(r + 8, k0) : 0u;
    ar[s][2] = RS ? pk(r, k0 + 8) : 0u;
    ar[s][3] = RS ? pk(r + 8, k0 + 8) : 0u;
  }
  wgmmaFenceOperands<N / 2>(acc);
  if (mode != 1) wgmmaFence();
#pragma unroll
  for (int s = 0; s < KS; ++s) {
    const uint64_t descB = smemDesc(baseB + uint32_t(s) * lb.step, swizzleOf(lb.span), lb.lbo, lb.sbo);
    const int scaleD = s == 0 ? args.scaleD : 1;
    if constexpr (RS) {
      wgmmaRS<T, N, TB>(acc, ar[s], descB, scaleD);
    } else {
      const uint64_t descA = smemDesc(baseA + uint32_t(s) * la.step, swizzleOf(la.span), la.lbo, la.sbo);
      wgmmaSS<T, N, TA, TB>(acc, descA, descB, scaleD);
    }
    if (mode >= 3) wgmmaCommit();
  }
  if (mode >= 3) {
    wgmmaWait<1>();  // every group but the last one's is complete, their reads too: thread 0 may
                     // write their operands after its own wait
  }
  if (mode >= 2 && tid == 0) {  // overwrites (part of) B while the wgmma may still read it
    const int k = mode == 4 ? K - 16 : 0;  // the first element of a k16 slice of B
    cpAsync16(tileB + ((swizzled(baseB + offsetOf(lb, 0, k), lb.span) - baseB) & ~15u), b);
    cpAsyncCommit();
    cpAsyncWait<0>();
  }
  wgmmaCommit();
  wgmmaWait<0>();
  wgmmaFenceOperands<N / 2>(acc);
#pragma unroll
  for (int i = 0; i < N / 2; ++i) d[rowOf(i) * N + colOf(i)] = acc[i];
}

// TMA: `m` box loads, one after another, into one 1024-byte aligned destination; each completes
// on the mbarrier (arrive.expect_tx by thread 0, then the load), every thread waits for its phase
// and copies the raw shared bytes out.
__global__ void __launch_bounds__(128) tmaKernel(const __grid_constant__ CUtensorMap map, int rank, const int* coords,
                                                 int m, uint32_t boxBytes, uint16_t* out, int mode) {
  MLA_DYNAMIC_SMEM(unsigned char, smem, 1024);
  unsigned char* base = aligned1024(smem);
  uint64_t* bar = reinterpret_cast<uint64_t*>(base);
  unsigned char* tile = base + 1024;
  const int tid = threadIdx.x;
  if (tid == 0) {
    mbarrierInit(bar, 1);
    fenceMbarrierInit();
  }
  __syncthreads();
  for (int i = 0; i < m; ++i) {
    if (tid == 0) {
      fenceProxyAsync();  // the previous box's generic reads, before the async proxy rewrites it
      mbarrierArriveExpectTx(bar, boxBytes);
      const int* c = coords + i * rank;
      if (rank == 2) tmaLoad2d(tile, &map, c[0], c[1], bar);
      else tmaLoad3d(tile, &map, c[0], c[1], c[2], bar);
    }
    if (mode == 1 && tid < 32) {  // a read before the wait (a fault on the emulated device)
      uint32_t r[1];
      ldmatrixX1(r, tile + 16 * (tid % 8));
      out[0] = uint16_t(r[0]);
    }
    mbarrierWait(bar, uint32_t(i & 1));
    const uint16_t* t16 = reinterpret_cast<const uint16_t*>(tile);
    for (uint32_t j = tid; j < boxBytes / 2; j += blockDim.x) out[size_t(i) * (boxBytes / 2) + j] = t16[j];
    __syncthreads();
  }
}

// mbarrier phases, scripted across two warps (threads 0 and 32 arrive; count 2). waits[t][s] is
// try_wait.parity of step s as thread 0 (t = 0) and 32 (t = 1) see it; see lib/reference.
// The TMA box then leaves through a handshake: warp 0 stages each half of it in shared memory and
// signals "full"; warp 1 waits for it, writes the half out, and hands the staging buffer back by
// signalling "empty". kMbarrierHandover picks how: named barriers (bar.arrive barrier 1 / bar.sync,
// barrier 2 back; barrier 1 completes twice) or mbarriers (32 arrivals each, waited on by parity),
// as the decode kernel could hand its scales over. Both are ordered by the PTX memory model; each
// is its own kernel, so a racecheck report names the one it flags.
// Fault modes (emulator only): 1 an mbarrier wait that never completes, 2 bar.arrive and bar.sync
// on one generation with different counts, 3 a bar.sync that never completes.
constexpr int kWaitSteps = 10;
enum : int { kNamedHandover = 0, kMbarrierHandover = 1 };
template <int Handover>
__global__ void __launch_bounds__(64) mbarrierKernel(const __grid_constant__ CUtensorMap map, uint32_t boxBytes,
                                                     uint16_t* tileOut, int* waits, int mode) {
  MLA_DYNAMIC_SMEM(unsigned char, smem, 1024);
  unsigned char* base = aligned1024(smem);
  uint64_t* bar = reinterpret_cast<uint64_t*>(base);
  uint64_t* full = bar + 1;   // kMbarrierHandover: a staged half is ready
  uint64_t* empty = bar + 2;  // kMbarrierHandover: the staging buffer is free again
  unsigned char* tile = base + 1024;
  const int tid = threadIdx.x;
  int step = 0;
  auto rec = [&](bool v) {
    if (tid == 0 || tid == 32) waits[(tid / 32) * kWaitSteps + step] = v ? 1 : 0;
    ++step;
  };
#ifdef MLA_EMULATE
  const int fmode = mode;
#else
  constexpr int fmode = 0;
#endif
  if (tid == 0) {
    mbarrierInit(bar, 2);
    if (Handover == kMbarrierHandover) {
      mbarrierInit(full, 32);
      mbarrierInit(empty, 32);
    }
    fenceMbarrierInit();
  }
  __syncthreads();
  if (fmode == 2) {  // warp 0 begins a generation of 64, warp 1 joins it with 32
    if (tid < 32) namedBarrierArrive(3, 64);
    __syncthreads();
    if (tid >= 32) namedBarrierSync(3, 32);
  }
  if (fmode == 3 && tid >= 32) namedBarrierSync(4, 64);  // warp 0 never arrives
  rec(mbarrierTryWait(bar, 0));  // phase 0 in progress
  rec(mbarrierTryWait(bar, 1));  // the phase before it counts as complete
  __syncthreads();
  if (tid == 0) mbarrierArrive(bar);
  __syncthreads();
  rec(mbarrierTryWait(bar, 0));  // 1 of 2 arrivals
  if (mode == 1) mbarrierWait(bar, 0);  // the second arrival never comes: a deadlock
  __syncthreads();
  if (tid == 32) mbarrierArrive(bar);
  __syncthreads();
  rec(mbarrierTryWait(bar, 0));  // phase 0 complete
  rec(mbarrierTryWait(bar, 1));  // phase 1 in progress
  __syncthreads();
  if (tid == 0) mbarrierArriveExpectTx(bar, boxBytes);
  __syncthreads();
  if (tid == 32) mbarrierArrive(bar);
  __syncthreads();
  rec(mbarrierTryWait(bar, 1));  // both arrivals in, the transaction bytes are not
  __syncthreads();
  if (tid == 0) tmaLoad2d(tile, &map, 0, 0, bar);
  mbarrierWait(bar, 1);
  rec(mbarrierTryWait(bar, 1));  // phase 1 complete
  rec(mbarrierTryWait(bar, 0));  // phase 2 (parity 0 again) in progress
  const uint16_t* t16 = reinterpret_cast<const uint16_t*>(tile);
  uint16_t* stage = reinterpret_cast<uint16_t*>(tile + boxBytes);  // half a box
  const uint32_t half = boxBytes / 4;                               // elements
  for (uint32_t h = 0; h < 2; ++h) {
    if (tid < 32) {
      if (h > 0) {  // warp 1 is done reading the previous half
        if (Handover == kNamedHandover) namedBarrierSync(2, 64);
        else mbarrierWait(empty, 0);
      }
      for (uint32_t j = tid; j < half; j += 32) stage[j] = t16[h * half + j];
      if (Handover == kNamedHandover) namedBarrierArrive(1, 64);
      else mbarrierArrive(full);
    } else {
      if (Handover == kNamedHandover) namedBarrierSync(1, 64);
      else mbarrierWait(full, h);
      for (uint32_t j = tid - 32; j < half; j += 32) tileOut[h * half + j] = stage[j];
      if (h == 0) {
        if (Handover == kNamedHandover) namedBarrierArrive(2, 64);
        else mbarrierArrive(empty);
      }
    }
  }
  __syncthreads();
  if (tid == 0 || tid == 32) mbarrierArrive(bar);
  __syncthreads();
  rec(mbarrierTryWait(bar, 0));  // phase 2 complete
  rec(mbarrierTryWait(bar, 1));  // phase 3 in progress
}

Status need(const TensorRef& t, const char* arg, std::initializer_list<int64_t> shape, DType d0, DType d1) {
  return gpu::checkPrimitiveTensor(t, arg, shape, d0, d1);
}

template <typename T, int N, int KS, int TA, int TB, bool RS>
Status launchWgmma(const PrimitivesParams& p, cudaStream_t s) {
  const Layout la = layoutOf(p.swizzleA, TA, 64, p.k, p.k), lb = layoutOf(p.swizzleB, TB, N, p.k, p.lboRows);
  const size_t smem = 1024 + (la.bytes + 1023) / 1024 * 1024 + lb.bytes;
  MLA_CUDA_TRY(cudaFuncSetAttribute(wgmmaKernel<T, N, KS, TA, TB, RS>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    static_cast<int>(smem)),
               "primitives(wgmma)");
  MLA_LAUNCH_KERNEL(1, 128, smem, s, wgmmaKernel<T, N, KS, TA, TB, RS>)(p.a.ptr<const uint16_t>(), p.b.ptr<const uint16_t>(), p.c.ptr<const float>(),
                                             p.d.ptr<float>(),
                                             WgmmaArgs{p.k, p.swizzleA, p.swizzleB, p.lboRows, p.scaleD ? 1 : 0, p.mode});
  MLA_CHECK_LAUNCH("primitives(wgmma)");
  return Status::Ok();
}

template <typename T, int N, int KS>
Status dispatchWgmma(const PrimitivesParams& p, cudaStream_t s) {
  if (p.rs) return p.tnspB ? launchWgmma<T, N, KS, 0, 1, true>(p, s) : launchWgmma<T, N, KS, 0, 0, true>(p, s);
  if (p.tnspA) return p.tnspB ? launchWgmma<T, N, KS, 1, 1, false>(p, s) : launchWgmma<T, N, KS, 1, 0, false>(p, s);
  return p.tnspB ? launchWgmma<T, N, KS, 0, 1, false>(p, s) : launchWgmma<T, N, KS, 0, 0, false>(p, s);
}

Status encodeBf16(CUtensorMap* map, const TensorRef& src, const int* box, int swizzle) {
  const int rank = src.ndim;
  uint64_t dims[3], strides[2];
  uint32_t boxDims[3];
  for (int i = 0; i < rank; ++i) {
    dims[i] = static_cast<uint64_t>(src.shape[rank - 1 - i]);  // innermost first
    boxDims[i] = static_cast<uint32_t>(box[i]);
  }
  uint64_t stride = 2;
  for (int i = 0; i + 1 < rank; ++i) {
    stride *= dims[i];
    strides[i] = stride;
  }
  const CUtensorMapSwizzle sw = swizzle == 128 ? CU_TENSOR_MAP_SWIZZLE_128B
                                : swizzle == 64 ? CU_TENSOR_MAP_SWIZZLE_64B
                                : swizzle == 32 ? CU_TENSOR_MAP_SWIZZLE_32B
                                                : CU_TENSOR_MAP_SWIZZLE_NONE;
  return encodeTensorMapTiled(map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, static_cast<uint32_t>(rank), src.data, dims,
                              strides, boxDims, sw);
}

}  // namespace

namespace gpu {

Status launchPrimitiveSm90(const PrimitivesParams& p, StreamHandle stream) {
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const bool spanOk = [&] {
    for (int v : {p.swizzleA, p.swizzleB, p.swizzle})
      if (v != 0 && v != 32 && v != 64 && v != 128) return false;
    return true;
  }();
  MLA_CHECK(spanOk, Range, "primitives: swizzles are 0, 32, 64 or 128 (bytes)");
  const int maxMode = p.which == Primitive::Wgmma ? 4 : p.which == Primitive::Mbarrier ? 3 : 1;
  MLA_CHECK(p.mode >= 0 && p.mode <= maxMode, Range, "primitives: `mode` is out of range");
#ifndef MLA_EMULATE
  // The fault modes break the PTX rules on purpose (a read before the wait, a wait that never
  // completes): faults on the emulator, undefined or a hang on a GPU.
  MLA_CHECK(p.mode == 0, Argument, "primitives: the test modes (`mode` 1 and up) run on the emulated device only");
#endif
  switch (p.which) {
    case Primitive::Wgmma: {
      MLA_CHECK(p.n == 16 || p.n == 32 || p.n == 64 || p.n == 256, Range, "primitives: wgmma `n` must be 16, 32, 64 or 256");
      MLA_CHECK(p.k == 16 || (p.k == 64 && (p.n == 32 || p.n == 64)), Range,
                "primitives: wgmma `k` must be 16, or 64 with n 32 or 64");
      MLA_CHECK(p.tnspB == 0 || p.tnspB == 1, Range, "primitives: `tnspB` must be 0 or 1");
      MLA_CHECK(p.tnspA == 0 || (p.tnspA == 1 && !p.rs), Range, "primitives: `tnspA` must be 0, or 1 with A in shared memory");
      // The kernel's layouts keep a K-major row inside one swizzle span (no second atom along K).
      MLA_CHECK(p.tnspA == 1 || p.swizzleA == 0 || 2 * p.k <= p.swizzleA, Range, "primitives: a K-major swizzled A needs 2k <= swizzleA");
      MLA_CHECK(p.tnspB == 1 || p.swizzleB == 0 || 2 * p.k <= p.swizzleB, Range,
                "primitives: a K-major swizzled B needs 2k <= swizzleB");
      MLA_CHECK(p.lboRows >= p.k && p.lboRows <= 256, Range, "primitives: `lboRows` must be in [k, 256]");
      MLA_CHECK(p.mode < 3 || p.k > 16, Range, "primitives: wgmma `mode` 3 and 4 need k > 16 (several k16 steps)");
      MLA_RETURN_IF_ERROR(need(p.a, "a", {64, p.k}, DType::BF16, DType::F16));
      MLA_RETURN_IF_ERROR(need(p.b, "b", {p.k, p.n}, p.a.dtype, p.a.dtype));
      MLA_RETURN_IF_ERROR(need(p.c, "c", {64, p.n}, DType::F32, DType::F32));
      MLA_RETURN_IF_ERROR(need(p.d, "d", {64, p.n}, DType::F32, DType::F32));
      return MLA_DISPATCH_HALF_TYPES(p.a.dtype, T, [&] {
        if (p.n == 16) return dispatchWgmma<T, 16, 1>(p, s);
        if (p.n == 32) return p.k == 64 ? dispatchWgmma<T, 32, 4>(p, s) : dispatchWgmma<T, 32, 1>(p, s);
        if (p.n == 64) return p.k == 64 ? dispatchWgmma<T, 64, 4>(p, s) : dispatchWgmma<T, 64, 1>(p, s);
        return dispatchWgmma<T, 256, 1>(p, s);
      });
    }
    case Primitive::Tma: {
      MLA_CHECK(p.src.ndim == 2 || p.src.ndim == 3, Shape, "primitives: TMA `src` must have rank 2 or 3");
      if (p.src.ndim == 2) MLA_RETURN_IF_ERROR(need(p.src, "src", {-1, -1}, DType::BF16, DType::BF16));
      else MLA_RETURN_IF_ERROR(need(p.src, "src", {-1, -1, -1}, DType::BF16, DType::BF16));
      const int rank = p.src.ndim;
      MLA_RETURN_IF_ERROR(need(p.coords, "coords", {-1, rank}, DType::I32, DType::I32));
      const int64_t m = p.coords.shape[0];
      MLA_CHECK(m >= 1 && m <= 64, Range, "primitives: TMA `coords` must have 1 to 64 rows");
      int64_t elems = 1;
      for (int i = 0; i < rank; ++i) {
        MLA_CHECK(p.box[i] >= 1 && p.box[i] <= 256, Range, "primitives: TMA box dims are 1..256");
        elems *= p.box[i];
      }
      MLA_CHECK(elems * 2 <= 64 * 1024, Range, "primitives: TMA box larger than 64 KB");
      MLA_RETURN_IF_ERROR(need(p.out, "out", {m, elems}, DType::BF16, DType::BF16));
      CUtensorMap map;
      MLA_RETURN_IF_ERROR(encodeBf16(&map, p.src, p.box, p.swizzle));
      const size_t smem = 2048 + static_cast<size_t>(elems) * 2;
      MLA_CUDA_TRY(cudaFuncSetAttribute(tmaKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)),
                   "primitives(tma)");
      MLA_LAUNCH_KERNEL(1, 128, smem, s, tmaKernel)(map, rank, p.coords.ptr<const int>(), static_cast<int>(m),
                                                    static_cast<uint32_t>(elems * 2), p.out.ptr<uint16_t>(), p.mode);
      MLA_CHECK_LAUNCH("primitives(tma)");
      return Status::Ok();
    }
    case Primitive::Mbarrier: {
      MLA_RETURN_IF_ERROR(need(p.src, "src", {8, 64}, DType::BF16, DType::BF16));
      MLA_RETURN_IF_ERROR(need(p.tile, "tile", {8, 64}, DType::BF16, DType::BF16));
      MLA_RETURN_IF_ERROR(need(p.waits, "waits", {2, kWaitSteps}, DType::I32, DType::I32));
      CUtensorMap map;
      const int box[3] = {64, 8, 1};
      MLA_RETURN_IF_ERROR(encodeBf16(&map, p.src, box, 0));
      if (p.handover == kMbarrierHandover)
        MLA_LAUNCH_KERNEL(1, 64, 2048 + 1024 + 512, s, mbarrierKernel<kMbarrierHandover>)(map, 1024u, p.tile.ptr<uint16_t>(), p.waits.ptr<int>(), p.mode);
      else
        MLA_LAUNCH_KERNEL(1, 64, 2048 + 1024 + 512, s, mbarrierKernel<kNamedHandover>)(map, 1024u, p.tile.ptr<uint16_t>(), p.waits.ptr<int>(), p.mode);
      MLA_CHECK_LAUNCH("primitives(mbarrier)");
      return Status::Ok();
    }
    default: break;
  }
  return Status::Error(Code::Argument, "primitives: `which` is not an sm_90a primitive");
}

}  // namespace gpu
}  // namespace mla

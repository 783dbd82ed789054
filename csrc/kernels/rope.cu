// Decoupled RoPE for MLA: the cos/sin table, in-place rotation of a strided rope slice, and
// the fused latent-cache writer (RMSNorm of the latent + RoPE of the shared key, one pass).
#include <cmath>
#include <cstdint>
#include <string>
#include "core/check.h"
#include "kernels/common.cuh"
#include "kernels/rope.h"
#include "runtime/cuda_check.h"

namespace mla::gpu {
using namespace mla::kernels;

namespace {

// ---- vector access -------------------------------------------------------------------------
// 32-bit words <-> floats, packed in registers. Stores go through __stwb (a plain write-back
// store) because nvcc otherwise split the 16-byte stores of this kernel into 4-byte ones.
template <typename T> struct Words;
template <> struct Words<float> {
  static constexpr int kPerWord = 1;
  static __device__ __forceinline__ void unpack(uint32_t w, float* f) { f[0] = __uint_as_float(w); }
  static __device__ __forceinline__ uint32_t pack(const float* f) { return __float_as_uint(f[0]); }
};
template <> struct Words<__nv_bfloat16> {
  static constexpr int kPerWord = 2;
  // bf16 -> f32 is exact: the bf16 bits are the top half of the f32 bits.
  static __device__ __forceinline__ void unpack(uint32_t w, float* f) {
    f[0] = __uint_as_float(w << 16);
    f[1] = __uint_as_float(w & 0xffff0000u);
  }
  static __device__ __forceinline__ uint32_t pack(const float* f) { return packPair<__nv_bfloat16>(f[0], f[1]); }
};
template <> struct Words<__half> {
  static constexpr int kPerWord = 2;
  static __device__ __forceinline__ void unpack(uint32_t w, float* f) {
    f[0] = __half2float(__ushort_as_half(static_cast<unsigned short>(w & 0xffffu)));
    f[1] = __half2float(__ushort_as_half(static_cast<unsigned short>(w >> 16)));
  }
  static __device__ __forceinline__ uint32_t pack(const float* f) { return packPair<__half>(f[0], f[1]); }
};

// N elements of T at p. With vec the caller guarantees p is aligned to min(16, N·sizeof(T))
// bytes, so one or two 16-byte (or one 8-byte) transactions replace N scalar ones.
template <typename T, int N>
__device__ __forceinline__ void loadF(const T* p, float (&f)[N], bool vec) {
  constexpr int kBytes = N * static_cast<int>(sizeof(T));
  constexpr int kWords = kBytes / 4;
  constexpr int kPer = Words<T>::kPerWord;
  if constexpr (kBytes % 16 == 0 || kBytes == 8) {
    if (vec) {
      uint32_t w[kWords];
      if constexpr (kBytes % 16 == 0) {
#pragma unroll
        for (int k = 0; k < kWords / 4; ++k) {
          const uint4 v = reinterpret_cast<const uint4*>(p)[k];
          w[4 * k] = v.x; w[4 * k + 1] = v.y; w[4 * k + 2] = v.z; w[4 * k + 3] = v.w;
        }
      } else {
        const uint2 v = *reinterpret_cast<const uint2*>(p);
        w[0] = v.x; w[1] = v.y;
      }
#pragma unroll
      for (int k = 0; k < kWords; ++k) Words<T>::unpack(w[k], f + kPer * k);
      return;
    }
  }
#pragma unroll
  for (int i = 0; i < N; ++i) f[i] = toFloat<T>(p[i]);
}

template <typename T, int N>
__device__ __forceinline__ void storeF(T* p, const float (&f)[N], bool vec) {
  constexpr int kBytes = N * static_cast<int>(sizeof(T));
  constexpr int kWords = kBytes / 4;
  constexpr int kPer = Words<T>::kPerWord;
  if constexpr (kBytes % 16 == 0 || kBytes == 8) {
    if (vec) {
      uint32_t w[kWords];
#pragma unroll
      for (int k = 0; k < kWords; ++k) w[k] = Words<T>::pack(f + kPer * k);
      if constexpr (kBytes % 16 == 0) {
#pragma unroll
        for (int k = 0; k < kWords / 4; ++k)
          __stwb(reinterpret_cast<uint4*>(p) + k, make_uint4(w[4 * k], w[4 * k + 1], w[4 * k + 2], w[4 * k + 3]));
      } else {
        __stwb(reinterpret_cast<uint2*>(p), make_uint2(w[0], w[1]));
      }
      return;
    }
  }
#pragma unroll
  for (int i = 0; i < N; ++i) p[i] = fromFloat<T>(f[i]);
}

// Runtime weight dtype: the branch is uniform and the weight row stays in L1/L2.
template <int N>
__device__ __forceinline__ void loadAnyF(const void* p, DType t, int64_t i, float (&f)[N], bool vec) {
  switch (t) {
    case DType::BF16: loadF<__nv_bfloat16, N>(static_cast<const __nv_bfloat16*>(p) + i, f, vec); break;
    case DType::F16: loadF<__half, N>(static_cast<const __half*>(p) + i, f, vec); break;
    default: loadF<float, N>(static_cast<const float*>(p) + i, f, vec); break;
  }
}

// P (cos, sin) pairs of one table row, starting at pair i0. P = 4 reads two aligned float4.
template <int P>
__device__ __forceinline__ void loadCosSin(const float* row, int i0, float (&cs)[2 * P]) {
  const float* q = row + 2 * i0;
  if constexpr (P == 4) {
    float4 a = __ldg(reinterpret_cast<const float4*>(q));
    float4 b = __ldg(reinterpret_cast<const float4*>(q) + 1);
    cs[0] = a.x; cs[1] = a.y; cs[2] = a.z; cs[3] = a.w;
    cs[4] = b.x; cs[5] = b.y; cs[6] = b.z; cs[7] = b.w;
  } else {
#pragma unroll
    for (int k = 0; k < 2 * P; ++k) cs[k] = __ldg(q + k);
  }
}

// (a, b) <- (a·c − b·s, a·s + b·c) for P pairs, in fp32.
template <int P>
__device__ __forceinline__ void rotate(float (&a)[P], float (&b)[P], const float (&cs)[2 * P]) {
#pragma unroll
  for (int j = 0; j < P; ++j) {
    const float c = cs[2 * j], s = cs[2 * j + 1];
    const float x = a[j], y = b[j];
    a[j] = x * c - y * s;
    b[j] = x * s + y * c;
  }
}

// Loads, rotates and stores P pairs of one rope slice (base points at its element 0).
//   interleaved: pairs i0..i0+P-1 are elements [2·i0, 2·i0 + 2P) in (a, b) order
//   neox:        a = elements [i0, i0 + P), b = elements [half + i0, half + i0 + P)
template <typename TIn, typename TOut, int P>
__device__ __forceinline__ void ropeUnit(const TIn* src, TOut* dst, int half, int i0, const float* tableRow,
                                         bool neox, bool vec) {
  float cs[2 * P];
  loadCosSin<P>(tableRow, i0, cs);
  float a[P], b[P];
  if (neox) {
    loadF<TIn, P>(src + i0, a, vec);
    loadF<TIn, P>(src + half + i0, b, vec);
    rotate<P>(a, b, cs);
    storeF<TOut, P>(dst + i0, a, vec);
    storeF<TOut, P>(dst + half + i0, b, vec);
  } else {
    float e[2 * P];
    loadF<TIn, 2 * P>(src + 2 * i0, e, vec);
#pragma unroll
    for (int j = 0; j < P; ++j) { a[j] = e[2 * j]; b[j] = e[2 * j + 1]; }
    rotate<P>(a, b, cs);
#pragma unroll
    for (int j = 0; j < P; ++j) { e[2 * j] = a[j]; e[2 * j + 1] = b[j]; }
    storeF<TOut, 2 * P>(dst + 2 * i0, e, vec);
  }
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// A stride only matters for vector alignment when the dim has more than one index.
bool strideMultipleOf(const TensorRef& t, int d, int64_t m) { return t.shape[d] <= 1 || t.strides[d] % m == 0; }

int gridFor(int64_t items, int perBlock) {
  int64_t blocks = (items + perBlock - 1) / perBlock;
  if (blocks < 1) blocks = 1;
  return static_cast<int>(blocks < (1 << 20) ? blocks : (1 << 20));  // grid-stride beyond this
}

bool isFloatType(DType t) { return t == DType::F32 || t == DType::F16 || t == DType::BF16; }

// positions / slotMapping: i32 [T]; any stride.
Status checkIndexVector(const char* op, const char* name, const TensorRef& v, int64_t T) {
  MLA_CHECK(v.dtype == DType::I32, Dtype, std::string(op) + ": `" + name + "` must be i32");
  MLA_CHECK(v.ndim == 1 && v.shape[0] == T, Shape, std::string(op) + ": `" + name + "` must have shape [T] = [" + std::to_string(T) + "]");
  return Status::Ok();
}

// table: f32 [maxPos, R/2, 2], contiguous.
Status checkTable(const char* op, const TensorRef& table, int64_t R) {
  MLA_CHECK(table.dtype == DType::F32, Dtype, std::string(op) + ": `table` must be f32");
  MLA_CHECK(table.ndim == 3 && table.shape[1] * 2 == R && table.shape[2] == 2 && table.isContiguous() && table.shape[0] >= 1, Shape,
            std::string(op) + ": `table` must be a contiguous [maxPos, " + std::to_string(R / 2) + ", 2] tensor");
  MLA_CHECK(aligned16(table.data), Shape, std::string(op) + ": `table` must be 16-byte aligned");
  return Status::Ok();
}

// ---- table ----------------------------------------------------------------------------------
// angle = f32(p · invFreq[i]) exactly as torch.outer on float32 tensors (p < 2^24 is exact in
// f32, and one f32 multiply rounds the exact product once); cos/sin in double, rounded once.
__global__ void ropeTableKernel(float2* table, const float* invFreq, int64_t maxPos, int half, double m) {
  const int64_t n = maxPos * half;
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < n;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t p = k / half;
    const int i = static_cast<int>(k % half);
    const float angle = __fmul_rn(static_cast<float>(p), invFreq[i]);
    double s, c;
    sincos(static_cast<double>(angle), &s, &c);
    table[k] = make_float2(static_cast<float>(m * c), static_cast<float>(m * s));
  }
}

// ---- rope -------------------------------------------------------------------------------------
struct RopeArgs {
  void* x;
  int64_t T, H, strideT, strideH;
  const int32_t* positions;
  int64_t posStride;
  const float* table;
  int64_t maxPos;
  int R;
  bool neox, vec;
};

// One thread per P pairs of one (token, head) slice; consecutive threads walk one slice, then
// the next head, so a warp touches a few whole contiguous slices. A position outside the
// table leaves the slice untouched (the TS wrapper reports it before launch).
template <typename T, int P>
__global__ void __launch_bounds__(256) ropeKernel(RopeArgs a) {
  const int half = a.R / 2;
  const int unitsPerRow = half / P;
  const int64_t n = a.T * a.H * unitsPerRow;
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < n;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int u = static_cast<int>(k % unitsPerRow);
    const int64_t row = k / unitsPerRow;
    const int64_t h = row % a.H, t = row / a.H;
    const int32_t pos = a.positions[t * a.posStride];
    if (pos < 0 || pos >= a.maxPos) continue;
    T* base = static_cast<T*>(a.x) + t * a.strideT + h * a.strideH;
    ropeUnit<T, T, P>(base, base, half, u * P, a.table + static_cast<int64_t>(pos) * a.R, a.neox, a.vec);
  }
}

template <typename T>
Status launchRopeTyped(const RopeArgs& a, StreamHandle stream) {
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const int half = a.R / 2;
  if (half % 4 == 0) {
    const int64_t n = a.T * a.H * (half / 4);
    MLA_LAUNCH_KERNEL(gridFor(n, 256), 256, 0, s, ropeKernel<T, 4>)(a);
  } else {
    RopeArgs b = a;
    b.vec = false;  // single pairs are never worth a vector access
    const int64_t n = a.T * a.H * half;
    MLA_LAUNCH_KERNEL(gridFor(n, 256), 256, 0, s, ropeKernel<T, 1>)(b);
  }
  MLA_CHECK_LAUNCH("rope");
  return Status::Ok();
}

// ---- appendLatent ------------------------------------------------------------------------------
constexpr int kChunk = 8;  // latent elements per lane access (16 bytes of bf16)
constexpr int kPairs = 4;  // rope pairs per lane (8 elements)
constexpr int kAppendWarps = 4;

struct AppendArgs {
  const void* kvDown;
  int64_t kvStride;
  const void* weight;
  DType weightType;
  const int32_t* positions;
  int64_t posStride;
  const int32_t* slots;
  int64_t slotStride;
  void* cache;
  int64_t pageStride, rowStride, pageSize, numSlots;
  const float* table;
  int64_t maxPos;
  int64_t T;
  int C, R;
  float eps;
  bool neox, vec;
};

// One warp per token: the latent row (C ≤ 32·kChunk·kMaxChunks) stays in registers between the
// sum of squares and the scaled store, so kvDown is read exactly once; lanes 0..R/8−1 also
// rotate 4 rope pairs each.
//   cache[slot, i]      = x[i] · rsqrt(Σ x² / C + eps) · w[i]               i < C
//   cache[slot, C + ·]  = RoPE(x[C:], pos)                                   (see ropeUnit)
// A slot outside [0, numSlots) (−1 = padding) or a position outside the table skips the token.
template <typename TIn, typename TOut, int kMaxChunks>
__global__ void __launch_bounds__(kAppendWarps * 32) appendLatentKernel(AppendArgs a) {
  const int lane = threadIdx.x & 31;
  const int64_t firstWarp = blockIdx.x * static_cast<int64_t>(kAppendWarps) + (threadIdx.x >> 5);
  const int64_t numWarps = static_cast<int64_t>(gridDim.x) * kAppendWarps;
  const int nChunks = a.C / kChunk;
  const int nUnits = a.R / (2 * kPairs);
  const int half = a.R / 2;
  for (int64_t t = firstWarp; t < a.T; t += numWarps) {
    // Same address in every lane: one broadcast transaction; the skip is warp-uniform.
    const int32_t slot = a.slots[t * a.slotStride];
    const int32_t pos = a.positions[t * a.posStride];
    const TIn* src = static_cast<const TIn*>(a.kvDown) + t * a.kvStride;
    // The row and the weights are loaded before the slot is known to be valid (row t always
    // exists): the loads overlap instead of costing three memory latencies in a row, which at a
    // few thousand tokens is most of the kernel.
    float v[kMaxChunks][kChunk], w[kMaxChunks][kChunk];
#pragma unroll
    for (int k = 0; k < kMaxChunks; ++k) {
      const int c = lane + 32 * k;
      if (c < nChunks) {
        loadF<TIn, kChunk>(src + c * kChunk, v[k], a.vec);
        loadAnyF<kChunk>(a.weight, a.weightType, static_cast<int64_t>(c) * kChunk, w[k], a.vec);
      }
    }
    if (slot < 0 || slot >= a.numSlots || pos < 0 || pos >= a.maxPos) continue;
    TOut* dst = static_cast<TOut*>(a.cache) + (slot / a.pageSize) * a.pageStride + (slot % a.pageSize) * a.rowStride;

    float ss = 0.f;
#pragma unroll
    for (int k = 0; k < kMaxChunks; ++k)
      if (lane + 32 * k < nChunks)
#pragma unroll
        for (int i = 0; i < kChunk; ++i) ss += v[k][i] * v[k][i];
    // The rope key is independent of the reduction: issue it before the shuffles.
    if (lane < nUnits) ropeUnit<TIn, TOut, kPairs>(src + a.C, dst + a.C, half, lane * kPairs,
                                                    a.table + static_cast<int64_t>(pos) * a.R, a.neox, a.vec);
    ss = warpSum(ss);
    const float inv = rsqrtf(ss / static_cast<float>(a.C) + a.eps);
#pragma unroll
    for (int k = 0; k < kMaxChunks; ++k) {
      const int c = lane + 32 * k;
      if (c < nChunks) {
#pragma unroll
        for (int i = 0; i < kChunk; ++i) v[k][i] = v[k][i] * inv * w[k][i];
        storeF<TOut, kChunk>(dst + c * kChunk, v[k], a.vec);
      }
    }
  }
}

// The same writer for the FP8 cache (C = 512, R = 64; 656-byte rows, docs/fp8-cache.md): after
// RMSNorm (identical f32 arithmetic to the kernel above, so an f32 cache holds exactly the values
// quantized here) each 128-value tile gets
//   scale = 2^ceil(log2(max(amax / 448, 1e-4))),  byte[i] = e4m3_rne(x[i] / scale)
// amax over finite values only; a NaN/Inf value is stored as the e4m3 NaN. Lane l holds chunks
// l and l + 32 of 8 values, so a tile is one half-warp at one k: amax by 4 xor-shuffles.
template <typename TIn>
__global__ void __launch_bounds__(kAppendWarps * 32) appendLatentFp8Kernel(AppendArgs a) {
  constexpr int kC = 512, kTileLanes = kFp8Tile / kChunk;  // 16 lanes per tile
  const int lane = threadIdx.x & 31;
  const int64_t firstWarp = blockIdx.x * static_cast<int64_t>(kAppendWarps) + (threadIdx.x >> 5);
  const int64_t numWarps = static_cast<int64_t>(gridDim.x) * kAppendWarps;
  const int half = a.R / 2;
  for (int64_t t = firstWarp; t < a.T; t += numWarps) {
    const int32_t slot = a.slots[t * a.slotStride];
    const int32_t pos = a.positions[t * a.posStride];
    const TIn* src = static_cast<const TIn*>(a.kvDown) + t * a.kvStride;
    // Loads before the slot check, as appendLatentKernel.
    float v[2][kChunk], w[2][kChunk];
#pragma unroll
    for (int k = 0; k < 2; ++k) {
      loadF<TIn, kChunk>(src + (lane + 32 * k) * kChunk, v[k], a.vec);
      loadAnyF<kChunk>(a.weight, a.weightType, static_cast<int64_t>(lane + 32 * k) * kChunk, w[k], a.vec);
    }
    if (slot < 0 || slot >= a.numSlots || pos < 0 || pos >= a.maxPos) continue;
    // pageStride / rowStride are in bytes here (the cache is a u8 tensor).
    unsigned char* dst = static_cast<unsigned char*>(a.cache) + (slot / a.pageSize) * a.pageStride + (slot % a.pageSize) * a.rowStride;

    float ss = 0.f;
#pragma unroll
    for (int k = 0; k < 2; ++k)
#pragma unroll
      for (int i = 0; i < kChunk; ++i) ss += v[k][i] * v[k][i];
    if (lane < a.R / (2 * kPairs))
      ropeUnit<TIn, __nv_bfloat16, kPairs>(src + kC, reinterpret_cast<__nv_bfloat16*>(dst + kFp8RopeOffset), half, lane * kPairs,
                                            a.table + static_cast<int64_t>(pos) * a.R, a.neox, a.vec);
    ss = warpSum(ss);
    const float inv = rsqrtf(ss / static_cast<float>(kC) + a.eps);
#pragma unroll
    for (int k = 0; k < 2; ++k) {
      const int c = lane + 32 * k;
      float amax = 0.f;
#pragma unroll
      for (int i = 0; i < kChunk; ++i) {
        v[k][i] = v[k][i] * inv * w[k][i];
        const float m = fabsf(v[k][i]);
        if (m <= 3.402823466e38f) amax = fmaxf(amax, m);  // false for NaN and Inf
      }
#pragma unroll
      for (int o = 1; o < kTileLanes; o <<= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
      const float scale = fp8TileScale(amax);
      uint32_t lo = 0, hi = 0;
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        lo |= e4m3FromFloat(v[k][i] / scale) << (8 * i);
        hi |= e4m3FromFloat(v[k][i + 4] / scale) << (8 * i);
      }
      if (a.vec) {
        __stwb(reinterpret_cast<uint2*>(dst + c * kChunk), make_uint2(lo, hi));
      } else {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          dst[c * kChunk + i] = static_cast<unsigned char>(lo >> (8 * i));
          dst[c * kChunk + 4 + i] = static_cast<unsigned char>(hi >> (8 * i));
        }
      }
      if ((lane & (kTileLanes - 1)) == 0) {
        const int tile = c / kTileLanes;
        const uint32_t sb = __float_as_uint(scale);
#pragma unroll
        for (int i = 0; i < 4; ++i) dst[kFp8ScaleOffset + 4 * tile + i] = static_cast<unsigned char>(sb >> (8 * i));
      }
    }
  }
}

template <typename TIn, typename TOut>
Status launchAppendTyped(const AppendArgs& a, StreamHandle stream) {
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const int grid = gridFor(a.T, kAppendWarps);
  if (a.C <= 32 * kChunk * 2) MLA_LAUNCH_KERNEL(grid, kAppendWarps * 32, 0, s, appendLatentKernel<TIn, TOut, 2>)(a);
  else MLA_LAUNCH_KERNEL(grid, kAppendWarps * 32, 0, s, appendLatentKernel<TIn, TOut, 4>)(a);
  MLA_CHECK_LAUNCH("appendLatent");
  return Status::Ok();
}

template <typename TIn>
Status launchAppendOut(const AppendArgs& a, DType out, StreamHandle stream) {
  switch (out) {
    case DType::BF16: return launchAppendTyped<TIn, __nv_bfloat16>(a, stream);
    case DType::F16: return launchAppendTyped<TIn, __half>(a, stream);
    case DType::F32: return launchAppendTyped<TIn, float>(a, stream);
    default: return Status::Error(Code::Dtype, "appendLatent: `cache` must be bf16, f16 or f32");
  }
}

}  // namespace

static_assert(kAppendLatentMaxKvLora == 32 * kChunk * 4, "appendLatent register budget");

// ---- launchers ------------------------------------------------------------------------------------
// Each launcher checks only what memory safety needs (core/check.h); lib/ops/rope.ts validates
// with names first, and alone owns the value rules (maxPositions <= 2^24, a finite positive
// attentionFactor, eps >= 0, the layout name): a bad value gives wrong numbers, never a bad address.
Status launchRopeTable(const RopeTableParams& p, StreamHandle stream) {
  const char* op = "ropeTable";
  MLA_CHECK(p.table.dtype == DType::F32 && p.invFreq.dtype == DType::F32, Dtype, "ropeTable: `table` and `invFreq` must be f32");
  MLA_CHECK(p.invFreq.ndim == 1 && p.invFreq.isContiguous() && p.invFreq.shape[0] >= 1, Shape,
            "ropeTable: `invFreq` must be a contiguous [half] tensor");
  const int64_t half = p.invFreq.shape[0];
  MLA_CHECK(half <= (1 << 20), Shape, "ropeTable: `invFreq` is too long");
  MLA_RETURN_IF_ERROR(checkTable(op, p.table, 2 * half));
  const int64_t maxPos = p.table.shape[0];
  MLA_LAUNCH_KERNEL(gridFor(maxPos * half, 256), 256, 0, static_cast<cudaStream_t>(stream), ropeTableKernel)(
      static_cast<float2*>(p.table.data), p.invFreq.ptr<float>(), maxPos, static_cast<int>(half), p.attentionFactor);
  MLA_CHECK_LAUNCH("ropeTable");
  return Status::Ok();
}

Status launchRope(const RopeParams& p, StreamHandle stream) {
  const char* op = "rope";
  const TensorRef& x = p.x;
  MLA_CHECK(isFloatType(x.dtype), Dtype, "rope: `x` must be bf16, f16 or f32");
  MLA_CHECK(x.ndim == 2 || x.ndim == 3, Shape, "rope: `x` must be [T, H, rotaryDim] or [T, rotaryDim]");
  const int64_t R = x.shape[x.ndim - 1];
  MLA_CHECK(R >= 2 && R % 2 == 0 && R <= (1 << 20), Shape, "rope: `x`'s last dim (rotaryDim) must be even");
  MLA_CHECK(x.strides[x.ndim - 1] == 1, Shape, "rope: `x` must have a contiguous last dim");
  const int64_t T = x.shape[0];
  const int64_t H = x.ndim == 3 ? x.shape[1] : 1;
  MLA_RETURN_IF_ERROR(checkIndexVector(op, "positions", p.positions, T));
  MLA_RETURN_IF_ERROR(checkTable(op, p.table, R));
  if (T == 0 || H == 0) return Status::Ok();
  RopeArgs a{};
  a.x = x.data;
  a.T = T;
  a.H = H;
  a.strideT = x.strides[0];
  a.strideH = x.ndim == 3 ? x.strides[1] : 0;
  a.positions = p.positions.ptr<int32_t>();
  a.posStride = p.positions.strides[0];
  a.table = p.table.ptr<float>();
  a.maxPos = p.table.shape[0];
  a.R = static_cast<int>(R);
  a.neox = p.layout == RopeLayout::Neox;
  a.vec = aligned16(x.data) && strideMultipleOf(x, 0, 8) && (x.ndim == 2 || strideMultipleOf(x, 1, 8));
  switch (x.dtype) {
    case DType::BF16: return launchRopeTyped<__nv_bfloat16>(a, stream);
    case DType::F16: return launchRopeTyped<__half>(a, stream);
    default: return launchRopeTyped<float>(a, stream);
  }
}

Status launchAppendLatent(const AppendLatentParams& p, StreamHandle stream) {
  const char* op = "appendLatent";
  const TensorRef &kv = p.kvDown, &w = p.normWeight, &cache = p.cache;
  MLA_CHECK(isFloatType(kv.dtype), Dtype, "appendLatent: `kvDown` must be bf16, f16 or f32");
  MLA_CHECK(isFloatType(w.dtype), Dtype, "appendLatent: `normWeight` must be bf16, f16 or f32");
  const bool fp8 = cache.dtype == DType::U8;
  MLA_CHECK(isFloatType(cache.dtype) || fp8, Dtype, "appendLatent: `cache` must be bf16, f16, f32 or u8 (the FP8 layout)");
  MLA_CHECK(w.ndim == 1 && w.isContiguous(), Shape, "appendLatent: `normWeight` must be a contiguous [kvLoraRank] tensor");
  const int64_t C = w.shape[0];
  // One warp holds a latent row in registers: C and R bound its per-lane chunks.
  MLA_CHECK(C >= kChunk && C % kChunk == 0 && C <= kAppendLatentMaxKvLora, Shape,
            "appendLatent: kvLoraRank (`normWeight` length) must be a multiple of 8 in [8, 1024]");
  MLA_CHECK(kv.ndim == 2 && kv.strides[1] == 1, Shape, "appendLatent: `kvDown` must be [T, kvLoraRank + rotaryDim] with a contiguous last dim");
  const int64_t T = kv.shape[0];
  const int64_t R = kv.shape[1] - C;
  MLA_CHECK(R >= 2 * kPairs && R % (2 * kPairs) == 0 && R <= 2 * kPairs * 32, Shape,
            "appendLatent: rotaryDim (`kvDown` width − kvLoraRank) must be a multiple of 8 in [8, 256]");
  if (fp8) {
    MLA_CHECK(C == 512 && R == 64, Shape, "appendLatent: the FP8 cache layout needs kvLoraRank 512 and rotaryDim 64");
    MLA_CHECK(cache.ndim == 3 && cache.shape[2] == kFp8RowBytes && cache.strides[2] == 1 && cache.strides[1] == kFp8RowBytes &&
                  (cache.shape[0] <= 1 || (cache.strides[0] >= cache.shape[1] * kFp8RowBytes && cache.strides[0] % 16 == 0)) &&
                  aligned16(cache.data),
              Shape,
              "appendLatent: an FP8 `cache` must be a 16-byte aligned u8 [numPages, pageSize, 656] with 656-byte rows and "
              "non-overlapping pages whose stride is a multiple of 16 bytes");
  } else {
    MLA_CHECK(cache.ndim == 3 && cache.shape[2] == C + R && cache.strides[2] == 1, Shape,
              "appendLatent: `cache` must be [numPages, pageSize, " + std::to_string(C + R) + "] with a contiguous last dim");
  }
  MLA_RETURN_IF_ERROR(checkIndexVector(op, "positions", p.positions, T));
  MLA_RETURN_IF_ERROR(checkIndexVector(op, "slotMapping", p.slotMapping, T));
  MLA_RETURN_IF_ERROR(checkTable(op, p.table, R));
  if (T == 0 || cache.shape[0] == 0 || cache.shape[1] == 0) return Status::Ok();
  AppendArgs a{};
  a.kvDown = kv.data;
  a.kvStride = kv.strides[0];
  a.weight = w.data;
  a.weightType = w.dtype;
  a.positions = p.positions.ptr<int32_t>();
  a.posStride = p.positions.strides[0];
  a.slots = p.slotMapping.ptr<int32_t>();
  a.slotStride = p.slotMapping.strides[0];
  a.cache = cache.data;
  a.pageStride = cache.strides[0];
  a.rowStride = cache.strides[1];
  a.pageSize = cache.shape[1];
  a.numSlots = cache.shape[0] * cache.shape[1];
  a.table = p.table.ptr<float>();
  a.maxPos = p.table.shape[0];
  a.T = T;
  a.C = static_cast<int>(C);
  a.R = static_cast<int>(R);
  a.eps = p.eps;
  a.neox = p.layout == RopeLayout::Neox;
  // C and R are multiples of 8, so every chunk / half-unit offset inside a row is aligned
  // once the row starts are.
  a.vec = aligned16(kv.data) && strideMultipleOf(kv, 0, 8) && aligned16(w.data) && aligned16(cache.data) &&
          strideMultipleOf(cache, 0, 8) && strideMultipleOf(cache, 1, 8);
  if (fp8) {
    const int grid = gridFor(a.T, kAppendWarps);
    cudaStream_t s = static_cast<cudaStream_t>(stream);
    switch (kv.dtype) {
      case DType::BF16: MLA_LAUNCH_KERNEL(grid, kAppendWarps * 32, 0, s, appendLatentFp8Kernel<__nv_bfloat16>)(a); break;
      case DType::F16: MLA_LAUNCH_KERNEL(grid, kAppendWarps * 32, 0, s, appendLatentFp8Kernel<__half>)(a); break;
      default: MLA_LAUNCH_KERNEL(grid, kAppendWarps * 32, 0, s, appendLatentFp8Kernel<float>)(a); break;
    }
    MLA_CHECK_LAUNCH("appendLatent");
    return Status::Ok();
  }
  switch (kv.dtype) {
    case DType::BF16: return launchAppendOut<__nv_bfloat16>(a, cache.dtype, stream);
    case DType::F16: return launchAppendOut<__half>(a, cache.dtype, stream);
    default: return launchAppendOut<float>(a, cache.dtype, stream);
  }
}

}  // namespace mla::gpu

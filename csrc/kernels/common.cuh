// Device helpers shared by every kernel: element conversions, tensor-core mma.sync and
// ldmatrix wrappers, cp.async. sm_80+ only (the build never targets anything older).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>
#include <cstdint>
#include "core/dtype.h"

// Kernel launches and dynamic shared memory go through these two macros so the same sources
// also compile as host C++ for the emulated device (csrc/emu/device.h defines its own).
#ifndef MLA_EMULATE
#define MLA_LAUNCH_KERNEL(grid, block, smem, stream, ...) __VA_ARGS__<<<grid, block, smem, stream>>>
#define MLA_DYNAMIC_SMEM(T, name, align) extern __shared__ __align__(align) T name[]
// As MLA_LAUNCH_KERNEL, with programmatic dependent launch when `pdl` is set (see pdlWait).
#define MLA_LAUNCH_KERNEL_PDL(pdl, grid, block, smem, stream, ...) \
  ::mla::kernels::PdlLaunch<decltype(&__VA_ARGS__)>{&__VA_ARGS__, grid, block, smem, stream, pdl}
#endif

namespace mla::kernels {

// ---- programmatic dependent launch (sm_90+) -------------------------------------------------
// A kernel launched with the attribute may be scheduled while the previous kernel on its stream
// is still running, once every CTA of that one has called pdlLaunchDependents() (or exited):
// the next kernel's launch and CTA set-up then overlap the previous one's tail. pdlWait() returns
// when the previous kernel has completed and its memory is visible, so a kernel that calls it
// before touching global memory is ordered exactly as without the attribute. Both are no-ops
// before sm_90 and on the emulated device, which runs launches in order.
__device__ __forceinline__ void pdlWait() {
#if !defined(MLA_EMULATE) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void pdlLaunchDependents() {
#if !defined(MLA_EMULATE) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

#ifndef MLA_EMULATE
// MLA_LAUNCH_KERNEL_PDL's launcher: cudaLaunchKernelEx with cudaLaunchAttributeProgrammatic-
// StreamSerialization, or <<<>>>; a failure surfaces through cudaGetLastError (MLA_CHECK_LAUNCH).
template <class F>
struct PdlLaunch {
  F kernel;
  dim3 grid, block;
  size_t smem;
  cudaStream_t stream;
  bool pdl;
  template <class... Args>
  void operator()(Args&&... args) const {
    if (!pdl) {
      kernel<<<grid, block, smem, stream>>>(static_cast<Args&&>(args)...);
      return;
    }
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = stream;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    (void)cudaLaunchKernelEx(&cfg, kernel, static_cast<Args&&>(args)...);
  }
};
#endif

// ---- element types ---------------------------------------------------------------------
template <typename T> __device__ __forceinline__ float toFloat(T v);
template <> __device__ __forceinline__ float toFloat<float>(float v) { return v; }
template <> __device__ __forceinline__ float toFloat<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float toFloat<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }
template <> __device__ __forceinline__ float toFloat<__nv_fp8_e4m3>(__nv_fp8_e4m3 v) { return float(v); }

template <typename T> __device__ __forceinline__ T fromFloat(float v);
template <> __device__ __forceinline__ float fromFloat<float>(float v) { return v; }
template <> __device__ __forceinline__ __half fromFloat<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 fromFloat<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <> __device__ __forceinline__ __nv_fp8_e4m3 fromFloat<__nv_fp8_e4m3>(float v) { return __nv_fp8_e4m3(v); }

// Two floats packed into one 32-bit register of 16-bit elements (the mma A/B operand unit).
template <typename T> __device__ __forceinline__ uint32_t packPair(float lo, float hi);
template <> __device__ __forceinline__ uint32_t packPair<__half>(float lo, float hi) {
  __half2 h = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&h);
}
template <> __device__ __forceinline__ uint32_t packPair<__nv_bfloat16>(float lo, float hi) {
  __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&h);
}

// Runtime dtype -> compile-time type dispatch for the 16-bit float kernels.
#define MLA_DISPATCH_HALF_TYPES(DTYPE, T, ...)                        \
  [&]() -> ::mla::Status {                                            \
    if ((DTYPE) == ::mla::DType::BF16) { using T = __nv_bfloat16; return __VA_ARGS__(); } \
    if ((DTYPE) == ::mla::DType::F16) { using T = __half; return __VA_ARGS__(); }       \
    return ::mla::Status::Error(::mla::Code::Dtype, "expected bf16 or f16");            \
  }()

// ---- tensor cores ------------------------------------------------------------------------
// D (16x8 fp32) += A (16x16, row) * B (16x8, col), 16-bit inputs. Fragment layout as in the
// PTX ISA "mma.m16n8k16" figures: a[4], b[2] packed pairs, c[4] floats per lane.
// ldmatrix: each lane gives the shared address of one 16-byte row; x4 loads four 8x8 tiles.
// cp.async (global -> shared, 16 bytes, bypassing registers): with pred false the 16
// destination bytes are zero-filled and global memory is not read.
#ifdef MLA_EMULATE
// Emulated twins (csrc/emu/scheduler.cc): the call site's file and line travel with each call so
// the emulator's reports name the kernel line.
#define MLA_EMU_SITE const char* file = __builtin_FILE(), int line = __builtin_LINE()
template <typename T> inline void mma16816(float* c, const uint32_t* a, const uint32_t* b, MLA_EMU_SITE);
template <> inline void mma16816<__nv_bfloat16>(float* c, const uint32_t* a, const uint32_t* b, const char* file, int line) {
  ::mla::emu::mmaM16N8K16(::mla::emu::kMmaBF16, c, a, b, file, line);
}
template <> inline void mma16816<__half>(float* c, const uint32_t* a, const uint32_t* b, const char* file, int line) {
  ::mla::emu::mmaM16N8K16(::mla::emu::kMmaF16, c, a, b, file, line);
}
inline void ldmatrixX4(uint32_t* r, const void* p, MLA_EMU_SITE) { ::mla::emu::ldmatrix(4, false, r, p, file, line); }
inline void ldmatrixX2(uint32_t* r, const void* p, MLA_EMU_SITE) { ::mla::emu::ldmatrix(2, false, r, p, file, line); }
inline void ldmatrixX1(uint32_t* r, const void* p, MLA_EMU_SITE) { ::mla::emu::ldmatrix(1, false, r, p, file, line); }
inline void ldmatrixX4Trans(uint32_t* r, const void* p, MLA_EMU_SITE) { ::mla::emu::ldmatrix(4, true, r, p, file, line); }
inline void ldmatrixX2Trans(uint32_t* r, const void* p, MLA_EMU_SITE) { ::mla::emu::ldmatrix(2, true, r, p, file, line); }
inline void ldmatrixX1Trans(uint32_t* r, const void* p, MLA_EMU_SITE) { ::mla::emu::ldmatrix(1, true, r, p, file, line); }
inline void cpAsync16(void* smem, const void* gmem, bool pred = true, MLA_EMU_SITE) {
  ::mla::emu::cpAsync(smem, gmem, pred ? 16 : 0, file, line);
}
inline void cpAsyncCommit() { ::mla::emu::cpAsyncCommit(); }
template <int N> inline void cpAsyncWait(MLA_EMU_SITE) { ::mla::emu::cpAsyncWait(N, file, line); }
#undef MLA_EMU_SITE
#else
template <typename T> __device__ __forceinline__ void mma16816(float* c, const uint32_t* a, const uint32_t* b);
template <> __device__ __forceinline__ void mma16816<__nv_bfloat16>(float* c, const uint32_t* a, const uint32_t* b) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
template <> __device__ __forceinline__ void mma16816<__half>(float* c, const uint32_t* a, const uint32_t* b) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

__device__ __forceinline__ uint32_t smemAddr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void ldmatrixX4(uint32_t* r, const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smemAddr(p)));
}
__device__ __forceinline__ void ldmatrixX2(uint32_t* r, const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(smemAddr(p)));
}
__device__ __forceinline__ void ldmatrixX1(uint32_t* r, const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n" : "=r"(r[0]) : "r"(smemAddr(p)));
}
__device__ __forceinline__ void ldmatrixX4Trans(uint32_t* r, const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smemAddr(p)));
}
__device__ __forceinline__ void ldmatrixX2Trans(uint32_t* r, const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1]) : "r"(smemAddr(p)));
}
__device__ __forceinline__ void ldmatrixX1Trans(uint32_t* r, const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n" : "=r"(r[0]) : "r"(smemAddr(p)));
}
__device__ __forceinline__ void cpAsync16(void* smem, const void* gmem, bool pred = true) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n"
               :: "r"(smemAddr(smem)), "l"(gmem), "r"(pred ? 16 : 0));
}
__device__ __forceinline__ void cpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::); }
// "memory": the copied data becomes visible here, so no shared-memory read may move above it.
template <int N> __device__ __forceinline__ void cpAsyncWait() { asm volatile("cp.async.wait_group %0;\n" :: "n"(N) : "memory"); }

#endif  // MLA_EMULATE

// 2^x for the softmax weights of the attention loops: one MUFU.EX2 (ex2.approx.ftz). exp2f
// compiles to the non-ftz ex2.approx.f32, which wraps every MUFU in a range test and two
// multiplies to keep subnormal results: three instructions more per weight on the loops'
// critical path. A weight is relative to its row's running max (<= 1), so one below 2^-126
// flushed to 0 changes no sum it enters.
__device__ __forceinline__ float exp2Ftz(float x) {
#ifdef MLA_EMULATE
  const auto flush = [](float v) { return std::fpclassify(v) == FP_SUBNORMAL ? std::copysign(0.f, v) : v; };
  return flush(std::exp2(flush(x)));
#else
  float r;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(r) : "f"(x));
  return r;
#endif
}

__device__ __forceinline__ float warpSum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warpMax(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// ---- FP8 latent cache: DeepSeek-V3.2's 656-byte row (FlashMLA V32_FP8Sparse, docs/fp8-cache.md) --
// [0, 512) latent as e4m3 | [512, 528) 4 f32 scales (one per 128 values) | [528, 656) rope as bf16
constexpr int kFp8RowBytes = 656;
constexpr int kFp8ScaleOffset = 512;
constexpr int kFp8RopeOffset = 528;
constexpr int kFp8Tile = 128;

// e4m3 (OCP "fn") byte of x: round to nearest even, |x| > 448 saturates to ±448, NaN/±Inf give
// the NaN 0x7f with x's sign (the format has no infinity). Plain integer/float ops, so every
// architecture (and the emulator) gives the same bits as lib/reference/fp8.ts.
__device__ __forceinline__ uint32_t e4m3FromFloat(float x) {
  const uint32_t bits = __float_as_uint(x);
  const uint32_t sign = (bits >> 24) & 0x80u;
  const uint32_t mag = bits & 0x7fffffffu;
  if (mag >= 0x7f800000u) return sign | 0x7fu;
  uint32_t code;
  if (mag < 0x3c800000u) {
    // below 2^-6: subnormal steps of 2^-9 (x·512 is exact; rintf rounds ties to even; 8 is 2^-6)
    code = static_cast<uint32_t>(rintf(__uint_as_float(mag) * 512.f));
  } else {
    // round the f32 mantissa to 3 bits (ties to even; a carry bumps the exponent), rebias 127 -> 7
    code = ((mag + 0x7ffffu + ((mag >> 20) & 1u)) >> 20) - (120u << 3);
  }
  return sign | (code < 0x7eu ? code : 0x7eu);
}

// Value of an e4m3 byte (exact in f32; 0x7f / 0xff are NaN).
__device__ __forceinline__ float e4m3ToFloat(uint32_t b) {
  const uint32_t e = (b >> 3) & 15u, m = b & 7u;
  float v = e == 0 ? static_cast<float>(m) * 0.001953125f : __uint_as_float(((e + 120u) << 23) | (m << 20));
  if ((b & 0x7fu) == 0x7fu) v = __uint_as_float(0x7fc00000u);
  return (b & 0x80u) ? -v : v;
}

// 16 e4m3 bytes times their tile's scale as 16 bf16 (two 16-byte chunks). Exact: an e4m3 value
// has 4 significant bits and the scale is a power of two, so bf16 holds every product.
__device__ __forceinline__ void fp8ExpandBf16(uint4 raw, float scale, uint4& lo, uint4& hi) {
  const uint32_t w[4] = {raw.x, raw.y, raw.z, raw.w};
  uint32_t pk[8];
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const uint32_t word = w[i >> 1] >> (16 * (i & 1));
    pk[i] = packPair<__nv_bfloat16>(e4m3ToFloat(word & 0xffu) * scale, e4m3ToFloat((word >> 8) & 0xffu) * scale);
  }
  lo = make_uint4(pk[0], pk[1], pk[2], pk[3]);
  hi = make_uint4(pk[4], pk[5], pk[6], pk[7]);
}

// Tile scale 2^ceil(log2(max(amax / 448, 1e-4))). amax / 448 (IEEE division) never rounds onto a
// power of two from above, so the ceil taken from its bits is the exact one.
__device__ __forceinline__ float fp8TileScale(float amax) {
  const float x = fmaxf(amax / 448.f, 1e-4f);
  const uint32_t b = __float_as_uint(x);
  const uint32_t e = (b >> 23) + ((b & 0x7fffffu) != 0u ? 1u : 0u);
  return __uint_as_float(e << 23);
}

inline int ceilDiv(long long a, long long b) { return static_cast<int>((a + b - 1) / b); }

}  // namespace mla::kernels

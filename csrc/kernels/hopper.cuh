// Hopper (sm_90a) building blocks for the decode path of decode_sm90.cu: warpgroup MMA (wgmma)
// with shared-memory matrix descriptors, TMA bulk tensor loads that complete on an mbarrier, the
// proxy fences between them and ordinary memory accesses, and setmaxnreg. Every wrapper has an
// emulated twin (csrc/emu/hopper.cc) so the same kernel source runs in CI; PTX ISA sections:
// "Asynchronous Warpgroup Level Matrix Multiply-Accumulate", "Tensor Copy" and "mbarrier".
// Only translation units built for sm_90a include this (CMakeLists.txt: the mla_sm90a objects).
#pragma once
#include <cuda.h>  // CUtensorMap: 128 opaque bytes, passed to a kernel by value (__grid_constant__)
#include <cudaTypedefs.h>
#include <string>
#include <type_traits>
#include "core/status.h"
#include "kernels/common.cuh"

namespace mla::kernels::sm90 {

// Shared-memory matrix descriptor (PTX ISA "Matrix Descriptor Format"): start address, leading
// and stride byte offsets (all >> 4, 14 bits each), base offset 0, swizzle mode in bits 62-63.
// The canonical layouts, for 16-bit elements, T = 8 elements = 16 bytes, W = the swizzle span in
// bytes (32/64/128), the swizzle applied to the address bits afterwards (128B: bits 7-9 XOR-ed
// into bits 4-6, so tiles are 1024-byte aligned):
//   K-major, swizzled:  row r, k   -> (r%8)*W + (r/8)*SBO + (k%8)*2 + (k/8)*16
//   K-major, none:      row r, k   -> (r%8)*16 + (r/8)*SBO + (k%8)*2 + (k/8)*LBO
//   MN-major, swizzled: mn, k      -> (mn%(W/2))*2 + (mn/(W/2))*LBO + (k%8)*W + (k/8)*SBO
//   MN-major, none:     mn, k      -> (mn%8)*2 + (mn/8)*SBO + (k%8)*16 + (k/8)*LBO
enum class Swizzle : int { None = 0, B128 = 1, B64 = 2, B32 = 3 };

__device__ __forceinline__ uint64_t smemDesc(uint32_t sharedAddress, Swizzle sw, uint32_t lbo, uint32_t sbo) {
  return uint64_t((sharedAddress & 0x3ffffu) >> 4) | uint64_t((lbo >> 4) & 0x3fffu) << 16 |
         uint64_t((sbo >> 4) & 0x3fffu) << 32 | uint64_t(int(sw)) << 62;
}

#ifdef MLA_EMULATE
#define MLA_EMU_SITE const char* file = __builtin_FILE(), int line = __builtin_LINE()
// The block's shared-window address of p (offset from the start of its dynamic shared memory).
inline uint32_t sharedAddr(const void* p, MLA_EMU_SITE) { return ::mla::emu::sharedAddr(p, file, line); }

inline void wgmmaFence(MLA_EMU_SITE) { ::mla::emu::wgmmaFence(file, line); }
inline void wgmmaCommit(MLA_EMU_SITE) { ::mla::emu::wgmmaCommit(file, line); }
template <int N> inline void wgmmaWait(MLA_EMU_SITE) { ::mla::emu::wgmmaWait(N, file, line); }
template <int N> inline void wgmmaFenceOperands(float*) {}

template <typename T> constexpr ::mla::emu::WgmmaType wgmmaType() {
  return std::is_same_v<T, __nv_bfloat16> ? ::mla::emu::kWgmmaBF16 : ::mla::emu::kWgmmaF16;
}
// D (64 x N, f32) (+)= A (64 x 16) * B (16 x N). TA/TB: 0 K-major, 1 MN-major (transposed).
template <typename T, int N, int TA, int TB>
inline void wgmmaSS(float* d, uint64_t descA, uint64_t descB, int scaleD, MLA_EMU_SITE) {
  ::mla::emu::wgmma(wgmmaType<T>(), N, d, nullptr, descA, descB, scaleD != 0, 1, 1, TA, TB, file, line);
}
template <typename T, int N, int TB>
inline void wgmmaRS(float* d, const uint32_t* a, uint64_t descB, int scaleD, MLA_EMU_SITE) {
  ::mla::emu::wgmma(wgmmaType<T>(), N, d, a, 0, descB, scaleD != 0, 1, 1, 0, TB, file, line);
}

inline void mbarrierInit(uint64_t* bar, uint32_t count, MLA_EMU_SITE) { ::mla::emu::mbarrierInit(bar, count, file, line); }
inline void mbarrierArriveExpectTx(uint64_t* bar, uint32_t bytes, MLA_EMU_SITE) {
  ::mla::emu::mbarrierArrive(bar, bytes, file, line);
}
inline void mbarrierArrive(uint64_t* bar, MLA_EMU_SITE) { ::mla::emu::mbarrierArrive(bar, 0, file, line); }
inline bool mbarrierTryWait(uint64_t* bar, uint32_t parity, MLA_EMU_SITE) {
  return ::mla::emu::mbarrierTryWait(bar, parity, file, line);
}
inline void mbarrierWait(uint64_t* bar, uint32_t parity, MLA_EMU_SITE) { ::mla::emu::mbarrierWait(bar, parity, file, line); }

inline void tmaLoad2d(void* dst, const CUtensorMap* map, int c0, int c1, uint64_t* bar, MLA_EMU_SITE) {
  const int32_t c[2] = {c0, c1};
  ::mla::emu::tmaLoad(dst, map, 2, c, bar, file, line);
}
inline void tmaLoad3d(void* dst, const CUtensorMap* map, int c0, int c1, int c2, uint64_t* bar, MLA_EMU_SITE) {
  const int32_t c[3] = {c0, c1, c2};
  ::mla::emu::tmaLoad(dst, map, 3, c, bar, file, line);
}
inline void fenceProxyAsync(MLA_EMU_SITE) { ::mla::emu::fenceProxyAsync(file, line); }
inline void fenceMbarrierInit(MLA_EMU_SITE) { ::mla::emu::fenceMbarrierInit(file, line); }
// bar.sync / bar.arrive on a named barrier: id 1..15 (0 is __syncthreads'), count threads in
// whole warps. Lets the two warpgroups of a CTA hand work to each other without stopping both.
inline void namedBarrierSync(int id, int count, MLA_EMU_SITE) { ::mla::emu::namedBarrier(id, count, true, file, line); }
inline void namedBarrierArrive(int id, int count, MLA_EMU_SITE) { ::mla::emu::namedBarrier(id, count, false, file, line); }
template <int N> inline void setmaxnregInc(MLA_EMU_SITE) { ::mla::emu::setmaxnreg(N, true, file, line); }
template <int N> inline void setmaxnregDec(MLA_EMU_SITE) { ::mla::emu::setmaxnreg(N, false, file, line); }
#undef MLA_EMU_SITE
#else
__device__ __forceinline__ uint32_t sharedAddr(const void* p) { return smemAddr(p); }

__device__ __forceinline__ void wgmmaFence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmmaCommit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void wgmmaWait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Keeps the compiler from moving accumulator reads or writes across the wgmma fence/wait pair
// (the asm statements name the registers, the async hardware does not).
template <int N> __device__ __forceinline__ void wgmmaFenceOperands(float* d) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// wgmma.mma_async m64nNk16 with f32 accumulators d[0, N/2) and 16-bit A/B (bf16 or f16),
// scale-d from a register, imm-scale-a/b 1 and the transposes as immediates: ss takes A and B
// from shared-memory descriptors, rs takes A from 4 registers. Inline asm needs the accumulator
// list and the operand numbers spelled out, so MLA_WGMMA_SHAPE takes them per N: DREGS the
// "{%0, ...}" list, the placeholders of ss (descA, descB, scale-d, TA, TB) and of rs (a0..a3,
// descB, scale-d, TB), then the matching "+f" accumulator operands.
template <int N> struct WgmmaN;
// One asm per form and type; the "+f" operand list comes last (variadic: it holds commas).
#define MLA_WGMMA_SS_ASM(N, TY, DREGS, SA, SB, SP, STA, STB, ...)                                      \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, " SP ", 0;\n"                                        \
               "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." TY "." TY " " DREGS ", " SA ", " SB      \
               ", p, 1, 1, " STA ", " STB ";\n}\n"                                                       \
               : __VA_ARGS__                                                                             \
               : "l"(descA), "l"(descB), "r"(scaleD), "n"(TA), "n"(TB))
#define MLA_WGMMA_RS_ASM(N, TY, DREGS, R0, R1, R2, R3, RB, RP, RTB, ...)                                \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, " RP ", 0;\n"                                        \
               "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." TY "." TY " " DREGS ", {" R0 ", " R1    \
               ", " R2 ", " R3 "}, " RB ", p, 1, 1, " RTB ";\n}\n"                                       \
               : __VA_ARGS__                                                                             \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(descB), "r"(scaleD), "n"(TB))
#define MLA_WGMMA_SHAPE(N, DREGS, SA, SB, SP, STA, STB, R0, R1, R2, R3, RB, RP, RTB, ...)                \
  template <> struct WgmmaN<N> {                                                                         \
    template <typename T, int TA, int TB>                                                                \
    static __device__ __forceinline__ void ss(float* d, uint64_t descA, uint64_t descB, int scaleD) {    \
      if constexpr (std::is_same_v<T, __nv_bfloat16>)                                                    \
        MLA_WGMMA_SS_ASM(N, "bf16", DREGS, SA, SB, SP, STA, STB, __VA_ARGS__);                           \
      else                                                                                               \
        MLA_WGMMA_SS_ASM(N, "f16", DREGS, SA, SB, SP, STA, STB, __VA_ARGS__);                            \
    }                                                                                                    \
    template <typename T, int TB>                                                                        \
    static __device__ __forceinline__ void rs(float* d, const uint32_t* a, uint64_t descB, int scaleD) { \
      if constexpr (std::is_same_v<T, __nv_bfloat16>)                                                    \
        MLA_WGMMA_RS_ASM(N, "bf16", DREGS, R0, R1, R2, R3, RB, RP, RTB, __VA_ARGS__);                    \
      else                                                                                               \
        MLA_WGMMA_RS_ASM(N, "f16", DREGS, R0, R1, R2, R3, RB, RP, RTB, __VA_ARGS__);                     \
    }                                                                                                    \
  };
#define MLA_WGMMA_D16 "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7])
MLA_WGMMA_SHAPE(16, "{%0, %1, %2, %3, %4, %5, %6, %7}", "%8", "%9", "%10", "%11", "%12",
                "%8", "%9", "%10", "%11", "%12", "%13", "%14", MLA_WGMMA_D16)
#undef MLA_WGMMA_D16
#define MLA_WGMMA_D32 "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
MLA_WGMMA_SHAPE(32, "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}", "%16", "%17", "%18", "%19", "%20",
                "%16", "%17", "%18", "%19", "%20", "%21", "%22", MLA_WGMMA_D32)
#undef MLA_WGMMA_D32
#define MLA_WGMMA_D64 "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
MLA_WGMMA_SHAPE(64, "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}", "%32", "%33", "%34", "%35", "%36",
                "%32", "%33", "%34", "%35", "%36", "%37", "%38", MLA_WGMMA_D64)
#undef MLA_WGMMA_D64
#define MLA_WGMMA_D256 "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]), "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]), "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
MLA_WGMMA_SHAPE(256, "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}", "%128", "%129", "%130", "%131", "%132",
                "%128", "%129", "%130", "%131", "%132", "%133", "%134", MLA_WGMMA_D256)
#undef MLA_WGMMA_D256
#undef MLA_WGMMA_SHAPE
#undef MLA_WGMMA_SS_ASM
#undef MLA_WGMMA_RS_ASM

template <typename T, int N, int TA, int TB>
__device__ __forceinline__ void wgmmaSS(float* d, uint64_t descA, uint64_t descB, int scaleD) {
  WgmmaN<N>::template ss<T, TA, TB>(d, descA, descB, scaleD);
}
template <typename T, int N, int TB>
__device__ __forceinline__ void wgmmaRS(float* d, const uint32_t* a, uint64_t descB, int scaleD) {
  WgmmaN<N>::template rs<T, TB>(d, a, descB, scaleD);
}

__device__ __forceinline__ void mbarrierInit(uint64_t* bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smemAddr(bar)), "r"(count) : "memory");
}
__device__ __forceinline__ void mbarrierArriveExpectTx(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smemAddr(bar)), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbarrierArrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smemAddr(bar)) : "memory");
}
__device__ __forceinline__ bool mbarrierTryWait(uint64_t* bar, uint32_t parity) {
  uint32_t done;
  asm volatile(
      "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
      : "=r"(done) : "r"(smemAddr(bar)), "r"(parity) : "memory");
  return done != 0;
}
// Returns once the phase with this parity has completed (its arrivals and transaction bytes).
__device__ __forceinline__ void mbarrierWait(uint64_t* bar, uint32_t parity) {
  while (!mbarrierTryWait(bar, parity)) {}
}

__device__ __forceinline__ void tmaLoad2d(void* dst, const CUtensorMap* map, int c0, int c1, uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::"r"(
          smemAddr(dst)), "l"(map), "r"(c0), "r"(c1), "r"(smemAddr(bar))
      : "memory");
}
__device__ __forceinline__ void tmaLoad3d(void* dst, const CUtensorMap* map, int c0, int c1, int c2, uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4}], [%5];\n" ::"r"(
          smemAddr(dst)), "l"(map), "r"(c0), "r"(c1), "r"(c2), "r"(smemAddr(bar))
      : "memory");
}
// Orders this thread's ordinary shared-memory writes before later async-proxy accesses (wgmma
// operand reads, TMA writes) once a barrier has joined the threads.
__device__ __forceinline__ void fenceProxyAsync() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
// Makes mbarrier.init visible to the async proxy (the TMA unit's complete_tx).
__device__ __forceinline__ void fenceMbarrierInit() { asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory"); }
__device__ __forceinline__ void namedBarrierSync(int id, int count) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(count) : "memory");
}
__device__ __forceinline__ void namedBarrierArrive(int id, int count) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(count) : "memory");
}
template <int N> __device__ __forceinline__ void setmaxnregInc() { asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N)); }
template <int N> __device__ __forceinline__ void setmaxnregDec() { asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N)); }
#endif  // MLA_EMULATE

// cuTensorMapEncodeTiled through the runtime's driver entry point (no libcuda link; the emulated
// device answers with its own encoder). Fails with Code::Cuda and the driver's CUresult.
// dims: rank sizes, innermost first; stridesBytes: rank - 1 byte strides of dims 1..rank-1; box:
// rank box sizes. Out-of-bound box elements load as zeros.
inline Status encodeTensorMapTiled(CUtensorMap* map, CUtensorMapDataType type, uint32_t rank, void* global,
                                   const uint64_t* dims, const uint64_t* stridesBytes, const uint32_t* box,
                                   CUtensorMapSwizzle swizzle) {
  static const PFN_cuTensorMapEncodeTiled_v12000 encode = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &found) != cudaSuccess ||
        found != cudaDriverEntryPointSuccess) {
      (void)cudaGetLastError();
      fn = nullptr;
    }
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
  }();
  if (!encode) return Status::Error(Code::Cuda, "the CUDA driver has no cuTensorMapEncodeTiled (needs a CUDA 12 driver)");
  const cuuint32_t elementStrides[5] = {1, 1, 1, 1, 1};
  const CUresult r = encode(map, type, rank, global, dims, stridesBytes, box, elementStrides, CU_TENSOR_MAP_INTERLEAVE_NONE,
                            swizzle, CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS)
    return Status::Error(Code::Cuda, "cuTensorMapEncodeTiled failed (CUresult " + std::to_string(int(r)) + ")");
  return Status::Ok();
}

}  // namespace mla::kernels::sm90

// The emulated CUDA device, as kernel sources see it: the .cu files in csrc/kernels compile as
// host C++ (g++ -x c++ -DMLA_EMULATE) against this header, which stands in for what nvcc adds
// (built-in variables, qualifiers, warp intrinsics, atomics, launch syntax). csrc/emu/emu.cc
// runs each block as one fiber per CUDA thread; see docs/emulator.md for the model and limits.
#pragma once
#ifndef MLA_EMULATE
#define MLA_EMULATE 1
#endif

#include <cuda_runtime_api.h>  // host declarations only: types, enums, the runtime API we implement
#include <vector_types.h>
#include <vector_functions.h>
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <tuple>
#include <type_traits>
#include <utility>

// ---- qualifiers ----------------------------------------------------------------------------
// One block runs at a time on an OS thread, so a thread_local static is block-shared storage.
// (Static __shared__ arrays are therefore neither sized-checked nor poisoned: dynamic shared
// memory is, and every large tile uses it.)
#undef __shared__
#define __shared__ static thread_local
#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif
#undef __grid_constant__
#define __grid_constant__
#undef __restrict__
#define __restrict__ __restrict

namespace mla::emu {

// Kernel parameters are copied once at launch (by value, as CUDA does); every CUDA thread then
// calls the kernel with its own copy.
using KernelBody = void (*)(const void* params, const void* kernel);

struct LaunchConfig {
  dim3 grid, block;
  size_t dynamicSmem;
  const void* kernel;  // identity for cudaFuncSetAttribute limits
  cudaStream_t stream;
  const char* name;
};
// Runs the whole grid before returning (streams are in order and synchronous); sets the
// thread's last error like a real launch would.
void launch(const LaunchConfig& cfg, KernelBody body, const void* params);
// What launch() would refuse before running anything (a bad grid, block or shared-memory size).
cudaError_t launchConfigError(const LaunchConfig& cfg);

// The built-in variables of the running CUDA thread.
extern thread_local uint3* tlThreadIdx;
extern thread_local uint3 tlBlockIdx;
extern thread_local dim3 tlBlockDim;
extern thread_local dim3 tlGridDim;
void* dynamicSmem();

void syncthreads(const char* file, int line);
void syncwarp(unsigned mask, const char* file, int line);
uint64_t shfl(unsigned mask, uint64_t v, int mode, int arg, int width, const char* file, int line);
unsigned ballot(unsigned mask, bool pred, const char* file, int line);
enum ShflMode { kShflIdx = 0, kShflXor = 1, kShflDown = 2, kShflUp = 3 };

// PTX: mma.sync.m16n8k16 (f32 accumulate), ldmatrix.x{1,2,4}[.trans], cp.async.cg 16 B.
enum MmaType { kMmaBF16 = 0, kMmaF16 = 1 };
void mmaM16N8K16(MmaType type, float* c, const uint32_t* a, const uint32_t* b, const char* file, int line);
void ldmatrix(int num, bool trans, uint32_t* r, const void* rowAddr, const char* file, int line);
void cpAsync(void* dst, const void* src, int srcBytes, const char* file, int line);
void cpAsyncCommit();
void cpAsyncWait(int pending, const char* file, int line);

// PTX of sm_90a (csrc/emu/hopper.cc), behind the wrappers of csrc/kernels/hopper.cuh.
// Shared addresses are offsets into the block's dynamic shared memory (its shared window).
uint32_t sharedAddr(const void* p, const char* file, int line);
enum WgmmaType { kWgmmaBF16 = 0, kWgmmaF16 = 1 };
void wgmmaFence(const char* file, int line);
void wgmmaCommit(const char* file, int line);
void wgmmaWait(int pending, const char* file, int line);
// wgmma.mma_async m64nNk16, f32 accumulators d (N/2 per thread); a: 4 registers of A, or null for
// A from shared memory through descA; scaleA/scaleB: +1 or -1; tnspA/tnspB: 1 = MN-major.
void wgmma(WgmmaType type, int n, float* d, const uint32_t* a, uint64_t descA, uint64_t descB, bool scaleD, int scaleA,
           int scaleB, int tnspA, int tnspB, const char* file, int line);
void mbarrierInit(uint64_t* bar, uint32_t count, const char* file, int line);
// mbarrier.arrive; with txBytes > 0, mbarrier.arrive.expect_tx (the expectation first).
void mbarrierArrive(uint64_t* bar, uint32_t txBytes, const char* file, int line);
bool mbarrierTryWait(uint64_t* bar, uint32_t parity, const char* file, int line);
void mbarrierWait(uint64_t* bar, uint32_t parity, const char* file, int line);  // blocks; a never-completing phase is a deadlock
// cp.async.bulk.tensor.{rank}d.shared::cluster.global.mbarrier::complete_tx::bytes
void tmaLoad(void* dst, const void* tensorMap, int rank, const int32_t* coords, uint64_t* bar, const char* file, int line);
void fenceProxyAsync(const char* file, int line);
void fenceMbarrierInit(const char* file, int line);
void setmaxnreg(int count, bool increase, const char* file, int line);
// bar.sync (wait = true) / bar.arrive on named barrier `id` (1..15) completing at `count` threads
// (a multiple of 32): sm_70+ semantics, scheduler.cc.
void namedBarrier(int id, int count, bool wait, const char* file, int line);

// Stops the current CUDA thread with a fault (a sticky launch failure, as on a GPU).
[[noreturn]] void fault(const char* file, int line, const char* fmt, ...) __attribute__((format(printf, 3, 4)));

template <class T> inline uint64_t toBits(T v) {
  static_assert(sizeof(T) <= 8, "shuffle of a type wider than 8 bytes");
  uint64_t u = 0;
  std::memcpy(&u, &v, sizeof(T));
  return u;
}
template <class T> inline T fromBits(uint64_t u) {
  T v;
  std::memcpy(&v, &u, sizeof(T));
  return v;
}

// Stream capture (runtime_api.cc): a launch on a capturing stream becomes a graph node that
// runs, on the stream the graph is launched on, with the parameters copied at capture time.
bool capturing(cudaStream_t stream);
void recordLaunch(const LaunchConfig& cfg, std::function<void(cudaStream_t)> replay);

template <class... P>
struct Launcher {
  LaunchConfig cfg;  // cfg.kernel is the kernel
  template <class... A>
  void operator()(A&&... args) const {
    static_assert(sizeof...(A) == sizeof...(P), "kernel argument count");
    using Params = std::tuple<std::decay_t<P>...>;
    Params params(std::forward<A>(args)...);
    struct Call {
      static void run(const void* p, const void* k) {
        Params copy = *static_cast<const Params*>(p);  // each thread owns its parameters
        std::apply(reinterpret_cast<void (*)(P...)>(const_cast<void*>(k)), copy);
      }
    };
    if (capturing(cfg.stream)) {
      auto kept = std::make_shared<const Params>(std::move(params));
      recordLaunch(cfg, [at = cfg, kept](cudaStream_t s) mutable {
        at.stream = s;
        launch(at, &Call::run, kept.get());
      });
      return;
    }
    launch(cfg, &Call::run, &params);
  }
};
template <class... P>
Launcher<P...> makeLauncher(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                            const char* name) {
  return Launcher<P...>{LaunchConfig{grid, block, smem, reinterpret_cast<const void*>(kernel), stream, name}};
}

}  // namespace mla::emu

// ---- built-in variables ----------------------------------------------------------------------
#define threadIdx (*::mla::emu::tlThreadIdx)
#define blockIdx (::mla::emu::tlBlockIdx)
#define blockDim (::mla::emu::tlBlockDim)
#define gridDim (::mla::emu::tlGridDim)
constexpr int warpSize = 32;

// ---- the two spellings g++ cannot parse (see common.cuh for the nvcc side) -------------------
#define MLA_LAUNCH_KERNEL(grid, block, smem, stream, ...) \
  ::mla::emu::makeLauncher(__VA_ARGS__, grid, block, smem, stream, #__VA_ARGS__)
#define MLA_DYNAMIC_SMEM(T, name, align) T* name = reinterpret_cast<T*>(::mla::emu::dynamicSmem())
// Launches run in order here, so programmatic dependent launch changes nothing (common.cuh).
#define MLA_LAUNCH_KERNEL_PDL(pdl, grid, block, smem, stream, ...) \
  ((void)(pdl), ::mla::emu::makeLauncher(__VA_ARGS__, grid, block, smem, stream, #__VA_ARGS__))

// ---- synchronisation and warp collectives -----------------------------------------------------
#define __syncthreads() ::mla::emu::syncthreads(__FILE__, __LINE__)
#define __syncwarp(...) ::mla::emu::syncwarp(::mla::emu::maskOr(__VA_ARGS__), __FILE__, __LINE__)
#define __shfl_sync(m, v, ...) ::mla::emu::shflT(m, v, ::mla::emu::kShflIdx, __FILE__, __LINE__, __VA_ARGS__)
#define __shfl_xor_sync(m, v, ...) ::mla::emu::shflT(m, v, ::mla::emu::kShflXor, __FILE__, __LINE__, __VA_ARGS__)
#define __shfl_down_sync(m, v, ...) ::mla::emu::shflT(m, v, ::mla::emu::kShflDown, __FILE__, __LINE__, __VA_ARGS__)
#define __shfl_up_sync(m, v, ...) ::mla::emu::shflT(m, v, ::mla::emu::kShflUp, __FILE__, __LINE__, __VA_ARGS__)
#define __ballot_sync(m, p) ::mla::emu::ballot(m, (p) != 0, __FILE__, __LINE__)
#define __any_sync(m, p) ((::mla::emu::ballot(m, (p) != 0, __FILE__, __LINE__) & (m)) != 0)
#define __all_sync(m, p) ((::mla::emu::ballot(m, (p) != 0, __FILE__, __LINE__) & (m)) == (m))

namespace mla::emu {
inline unsigned maskOr() { return 0xffffffffu; }
inline unsigned maskOr(unsigned m) { return m; }
template <class T>
inline T shflT(unsigned mask, T v, int mode, const char* file, int line, int arg, int width = 32) {
  return fromBits<T>(shfl(mask, toBits(v), mode, arg, width, file, line));
}
}  // namespace mla::emu

// Fibers run one at a time and switch only at collectives, so memory is sequentially
// consistent: fences have nothing to order.
inline void __threadfence() {}
inline void __threadfence_block() {}

// ---- atomics (real atomics: kernels on different OS threads may share memory) -----------------
template <class T> inline T atomicAdd(T* p, T v) {
  if constexpr (std::is_integral_v<T>) {
    return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
  } else {
    T old = *p, next;
    do { next = old + v; } while (!__atomic_compare_exchange(p, &old, &next, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST));
    return old;
  }
}
template <class T> inline T atomicOr(T* p, T v) { return __atomic_fetch_or(p, v, __ATOMIC_SEQ_CST); }
template <class T> inline T atomicAnd(T* p, T v) { return __atomic_fetch_and(p, v, __ATOMIC_SEQ_CST); }
template <class T> inline T atomicExch(T* p, T v) { return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST); }
template <class T> inline T atomicMax(T* p, T v) {
  T old = __atomic_load_n(p, __ATOMIC_SEQ_CST);
  while (old < v && !__atomic_compare_exchange_n(p, &old, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {}
  return old;
}
template <class T> inline T atomicMin(T* p, T v) {
  T old = __atomic_load_n(p, __ATOMIC_SEQ_CST);
  while (v < old && !__atomic_compare_exchange_n(p, &old, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {}
  return old;
}
template <class T> inline T atomicCAS(T* p, T cmp, T v) {
  __atomic_compare_exchange_n(p, &cmp, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
  return cmp;
}

// ---- memory intrinsics and math ----------------------------------------------------------------
template <class T> inline T __ldg(const T* p) { return *p; }
template <class T> inline T __ldcs(const T* p) { return *p; }
template <class T> inline T __ldcg(const T* p) { return *p; }
template <class T> inline void __stwb(T* p, T v) { *p = v; }
template <class T> inline void __stcs(T* p, T v) { *p = v; }
template <class T> inline void __stcg(T* p, T v) { *p = v; }
inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned u; std::memcpy(&u, &f, 4); return u; }
inline float __int_as_float(int u) { float f; std::memcpy(&f, &u, 4); return f; }
inline int __float_as_int(float f) { int u; std::memcpy(&u, &f, 4); return u; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float x) { return 1.f / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float exp10f(float x) { return std::pow(10.f, x); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(unsigned(x)); }
template <class A, class B> inline std::common_type_t<A, B> min(A a, B b) { return b < a ? b : a; }
template <class A, class B> inline std::common_type_t<A, B> max(A a, B b) { return a < b ? b : a; }

// ---- runtime API templates cuda_runtime.h adds over cuda_runtime_api.h -------------------------
template <class T> inline cudaError_t cudaFuncSetAttribute(T* entry, cudaFuncAttribute attr, int value) {
  return ::cudaFuncSetAttribute(reinterpret_cast<const void*>(entry), attr, value);
}
template <class T>
inline cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* n, T* func, int blockSize, size_t smem) {
  return ::cudaOccupancyMaxActiveBlocksPerMultiprocessor(n, reinterpret_cast<const void*>(func), blockSize, smem);
}
template <class T> inline cudaError_t cudaMallocAsync(T** p, size_t n, cudaStream_t s) {
  return ::cudaMallocAsync(reinterpret_cast<void**>(p), n, s);
}
template <class T> inline cudaError_t cudaMalloc(T** p, size_t n) {
  return ::cudaMalloc(reinterpret_cast<void**>(p), n);
}

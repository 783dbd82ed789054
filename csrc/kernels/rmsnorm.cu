// RMSNorm: one warp per row, two passes over the row (the second one hits L1). The op is a
// rounding error next to the projections around it, so it favours generality (any dim, any
// row stride, mixed dtypes) over vector loads.
#include <climits>
#include <cmath>
#include <string>

#include "core/check.h"
#include "kernels/common.cuh"
#include "kernels/rmsnorm.h"
#include "runtime/cuda_check.h"

namespace mla {
namespace {
using namespace mla::kernels;

constexpr int kRowsPerBlock = 8;  // 8 warps

// y = x · rsqrt(Σx²/dim + eps) · w, accumulated and scaled in fp32, rounded once.
template <typename TIn, typename TW, typename TOut>
__global__ void __launch_bounds__(kRowsPerBlock * 32) rmsNormKernel(const TIn* x, int64_t ldx, const TW* w, TOut* y,
                                                                    int64_t ldy, int rows, int dim, float eps) {
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + (threadIdx.x >> 5);
  if (row >= rows) return;
  const TIn* xr = x + row * ldx;
  TOut* yr = y + row * ldy;
  float ss = 0.f;
  for (int i = lane; i < dim; i += 32) {
    const float v = toFloat<TIn>(xr[i]);
    ss = fmaf(v, v, ss);
  }
  // Every lane has read its whole share before any lane writes: safe when y aliases x.
  const float inv = rsqrtf(warpSum(ss) / static_cast<float>(dim) + eps);
  for (int i = lane; i < dim; i += 32) yr[i] = fromFloat<TOut>(toFloat<TIn>(xr[i]) * inv * toFloat<TW>(w[i]));
}

bool isFloat(DType t) { return t == DType::F32 || t == DType::F16 || t == DType::BF16; }

template <typename TIn, typename TW, typename TOut>
Status run(const RmsNormParams& p, int64_t ldx, int64_t ldy, cudaStream_t s) {
  const int rows = static_cast<int>(p.x.shape[0]), dim = static_cast<int>(p.x.shape[1]);
  // 64-bit: rows + 7 overflows int for rows near INT_MAX.
  const int64_t blocks = (static_cast<int64_t>(rows) + kRowsPerBlock - 1) / kRowsPerBlock;
  MLA_LAUNCH_KERNEL(static_cast<unsigned>(blocks), kRowsPerBlock * 32, 0, s, rmsNormKernel<TIn, TW, TOut>)(
      p.x.ptr<const TIn>(), ldx, p.weight.ptr<const TW>(), p.out.ptr<TOut>(), ldy, rows, dim, p.eps);
  MLA_CHECK_LAUNCH("rmsNorm");
  return Status::Ok();
}

template <typename TIn, typename TW>
Status dispatchOut(const RmsNormParams& p, int64_t ldx, int64_t ldy, cudaStream_t s) {
  switch (p.out.dtype) {
    case DType::F32: return run<TIn, TW, float>(p, ldx, ldy, s);
    case DType::F16: return run<TIn, TW, __half>(p, ldx, ldy, s);
    default: return run<TIn, TW, __nv_bfloat16>(p, ldx, ldy, s);
  }
}

template <typename TIn>
Status dispatchWeight(const RmsNormParams& p, int64_t ldx, int64_t ldy, cudaStream_t s) {
  switch (p.weight.dtype) {
    case DType::F32: return dispatchOut<TIn, float>(p, ldx, ldy, s);
    case DType::F16: return dispatchOut<TIn, __half>(p, ldx, ldy, s);
    default: return dispatchOut<TIn, __nv_bfloat16>(p, ldx, ldy, s);
  }
}

}  // namespace

Status gpu::launchRmsNorm(const RmsNormParams& p, StreamHandle stream) {
  // Only what memory safety needs (core/check.h); lib/ops/rmsnorm.ts validates with names first
  // (eps among them: a bad eps gives wrong numbers, never a bad address).
  const TensorRef &x = p.x, &w = p.weight, &y = p.out;
  MLA_CHECK(isFloat(x.dtype) && isFloat(w.dtype) && isFloat(y.dtype), Dtype, "rmsNorm: `x`, `weight` and `out` must be bf16, f16 or f32");
  MLA_CHECK(x.ndim == 2 && x.shape[1] > 0, Shape, "rmsNorm: `x` must be [rows, dim] with dim > 0");
  const int64_t rows = x.shape[0], dim = x.shape[1];
  // dim headroom: the kernel's `i += 32` lane loop must not overflow int.
  MLA_CHECK(rows <= INT_MAX && dim <= INT_MAX - 32, Range, "rmsNorm: `x` is too large");
  MLA_CHECK(w.ndim == 1 && w.shape[0] == dim, Shape, "rmsNorm: `weight` must be [dim]");
  MLA_CHECK(y.ndim == 2 && y.shape[0] == rows && y.shape[1] == dim, Shape, "rmsNorm: `out` must have the shape of `x`");
  MLA_CHECK(dim <= 1 || (x.strides[1] == 1 && y.strides[1] == 1 && w.strides[0] == 1), Shape,
            "rmsNorm: `x`, `out` and `weight` need a contiguous last dimension (stride 1)");
  const int64_t ldx = rows > 1 ? x.strides[0] : 0, ldy = rows > 1 ? y.strides[0] : 0;
  MLA_CHECK(ldx >= 0 && ldy >= 0, Shape, "rmsNorm: `x` and `out` must have non-negative row strides");
  if (rows == 0) return Status::Ok();
  // In place is only race-free when out is exactly x (same dtype and row stride): each lane then
  // rewrites only the elements it read itself. A different element size or row stride at the
  // same address makes lanes/warps overwrite elements others have yet to read. Kept here because
  // only the native side sees device addresses.
  MLA_CHECK(x.data != y.data || (x.dtype == y.dtype && ldx == ldy), Shape,
            "rmsNorm: `out` may alias `x` only exactly (same dtype and row stride)");
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (x.dtype) {
    case DType::F32: return dispatchWeight<float>(p, ldx, ldy, s);
    case DType::F16: return dispatchWeight<__half>(p, ldx, ldy, s);
    default: return dispatchWeight<__nv_bfloat16>(p, ldx, ldy, s);
  }
}

}  // namespace mla

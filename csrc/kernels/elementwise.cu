// fill and strided copy (with float dtype conversion) behind DeviceTensor.fill / copyFrom / to().
#include "core/check.h"
#include "kernels/common.cuh"
#include "runtime/cuda_check.h"
#include "kernels/elementwise.h"
#include "runtime/runtime.h"

namespace mla::gpu {
using namespace mla::kernels;

// Strides of up to kMaxDims dims, passed by value so the kernel needs no device metadata.
struct StridedIndex {
  int ndim;
  int64_t shape[kMaxDims];
  int64_t strides[kMaxDims];
  __device__ int64_t offset(int64_t linear) const {
    int64_t off = 0;
    for (int d = ndim - 1; d >= 0; --d) {
      off += (linear % shape[d]) * strides[d];
      linear /= shape[d];
    }
    return off;
  }
};

static StridedIndex indexOf(const TensorRef& t) {
  StridedIndex s{};
  s.ndim = t.ndim;
  for (int i = 0; i < t.ndim; ++i) {
    s.shape[i] = t.shape[i];
    s.strides[i] = t.strides[i];
  }
  return s;
}

template <typename T>
__device__ __forceinline__ float loadAs(const void* base, int64_t off) { return toFloat<T>(static_cast<const T*>(base)[off]); }

__device__ float loadFloat(DType t, const void* base, int64_t off) {
  switch (t) {
    case DType::F32: return loadAs<float>(base, off);
    case DType::F16: return loadAs<__half>(base, off);
    case DType::BF16: return loadAs<__nv_bfloat16>(base, off);
    case DType::FP8E4M3: return loadAs<__nv_fp8_e4m3>(base, off);
    case DType::I32: return static_cast<float>(static_cast<const int32_t*>(base)[off]);
    case DType::U8: return static_cast<float>(static_cast<const uint8_t*>(base)[off]);
  }
  return 0.f;
}

__device__ void storeFloat(DType t, void* base, int64_t off, float v) {
  switch (t) {
    case DType::F32: static_cast<float*>(base)[off] = v; break;
    case DType::F16: static_cast<__half*>(base)[off] = fromFloat<__half>(v); break;
    case DType::BF16: static_cast<__nv_bfloat16*>(base)[off] = fromFloat<__nv_bfloat16>(v); break;
    case DType::FP8E4M3: static_cast<__nv_fp8_e4m3*>(base)[off] = fromFloat<__nv_fp8_e4m3>(v); break;
    case DType::I32: static_cast<int32_t*>(base)[off] = static_cast<int32_t>(v); break;
    case DType::U8: static_cast<uint8_t*>(base)[off] = static_cast<uint8_t>(v); break;
  }
}

// Same-dtype copies move raw bits (exact for integers and NaN payloads); otherwise via float.
__global__ void copyKernel(void* dst, StridedIndex di, DType dt, const void* src, StridedIndex si, DType st,
                           int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    int64_t d = di.offset(i), s = si.offset(i);
    if (dt == st) {
      switch (dtypeSize(dt)) {
        case 4: static_cast<uint32_t*>(dst)[d] = static_cast<const uint32_t*>(src)[s]; break;
        case 2: static_cast<uint16_t*>(dst)[d] = static_cast<const uint16_t*>(src)[s]; break;
        default: static_cast<uint8_t*>(dst)[d] = static_cast<const uint8_t*>(src)[s]; break;
      }
    } else {
      storeFloat(dt, dst, d, loadFloat(st, src, s));
    }
  }
}

// Integer fills store the exact integer; float fills convert once on the host side of the call.
__global__ void fillKernel(void* dst, StridedIndex di, DType dt, double value, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    int64_t d = di.offset(i);
    if (dt == DType::I32) static_cast<int32_t*>(dst)[d] = static_cast<int32_t>(value);
    else if (dt == DType::U8) static_cast<uint8_t*>(dst)[d] = static_cast<uint8_t>(value);
    else storeFloat(dt, dst, d, static_cast<float>(value));
  }
}

static int gridFor(int64_t n) {
  int64_t blocks = (n + 255) / 256;
  return static_cast<int>(blocks < 65535 ? (blocks < 1 ? 1 : blocks) : 65535);
}

Status fillTensor(const TensorRef& t, double value, StreamHandle stream) {
  int64_t n = t.numel();
  if (n == 0) return Status::Ok();
  MLA_LAUNCH_KERNEL(gridFor(n), 256, 0, static_cast<cudaStream_t>(stream), fillKernel)(t.data, indexOf(t), t.dtype, value, n);
  MLA_CHECK_LAUNCH("fill");
  return Status::Ok();
}

Status copyTensor(const TensorRef& dst, const TensorRef& src, StreamHandle stream) {
  // Memory safety (core/check.h): the kernel reads src at dst's indices. Which dtypes may convert
  // is DeviceTensor.copyFrom's rule; every pair is in bounds here.
  bool same = dst.ndim == src.ndim;
  for (int i = 0; same && i < dst.ndim; ++i) same = dst.shape[i] == src.shape[i];
  MLA_CHECK(same, Shape, "copy: `src` has a different shape than `dst`");
  int64_t n = dst.numel();
  if (n == 0) return Status::Ok();
  if (dst.dtype == src.dtype && dst.isContiguous() && src.isContiguous())
    return copyDeviceToDevice(dst.data, src.data, n * dtypeSize(dst.dtype), stream);
  MLA_LAUNCH_KERNEL(gridFor(n), 256, 0, static_cast<cudaStream_t>(stream), copyKernel)(dst.data, indexOf(dst), dst.dtype, src.data,
                                                                       indexOf(src), src.dtype, n);
  MLA_CHECK_LAUNCH("copy");
  return Status::Ok();
}

}  // namespace mla::gpu

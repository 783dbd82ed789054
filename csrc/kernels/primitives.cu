// Conformance kernels (see primitives.h): one warp each, fragments packed by hand from global
// memory per the PTX ISA figures, so a check of one primitive never leans on another (the mma
// test does not go through ldmatrix). Shuffle arguments come from device memory, so nvcc cannot
// fold them: the hardware's own handling of the register operands is what gets compared.
#include <string>

#include "core/check.h"
#include "kernels/common.cuh"
#include "kernels/primitives.h"
#include "runtime/cuda_check.h"

namespace mla {
namespace {
using namespace mla::kernels;

constexpr unsigned kFull = 0xffffffffu;
constexpr int kMaxCases = 1 << 16;

template <typename T>
__global__ void __launch_bounds__(32) mmaKernel(const uint16_t* a, const uint16_t* b, const float* c, float* d) {
  const int lane = threadIdx.x, g = lane >> 2, t = lane & 3;
  // Low half = lower column (A) / lower row (B) index.
  auto pa = [&](int r, int k) { return uint32_t(a[r * 16 + k]) | uint32_t(a[r * 16 + k + 1]) << 16; };
  auto pb = [&](int k, int n) { return uint32_t(b[k * 8 + n]) | uint32_t(b[(k + 1) * 8 + n]) << 16; };
  const uint32_t af[4] = {pa(g, 2 * t), pa(g + 8, 2 * t), pa(g, 2 * t + 8), pa(g + 8, 2 * t + 8)};
  const uint32_t bf[2] = {pb(2 * t, g), pb(2 * t + 8, g)};
  const int i0 = g * 8 + 2 * t, i2 = (g + 8) * 8 + 2 * t;
  float acc[4] = {c[i0], c[i0 + 1], c[i2], c[i2 + 1]};
  mma16816<T>(acc, af, bf);
  d[i0] = acc[0];
  d[i0 + 1] = acc[1];
  d[i2] = acc[2];
  d[i2 + 1] = acc[3];
}

__global__ void __launch_bounds__(32) ldmatrixKernel(const uint16_t* matrix, const int* perm, uint32_t* frag, int num,
                                                     bool trans) {
  MLA_DYNAMIC_SMEM(uint16_t, rows, 16);  // [32][8]: 16-byte rows
  const int lane = threadIdx.x;
  for (int k = 0; k < 8; ++k) rows[lane * 8 + k] = matrix[lane * 8 + k];
  __syncthreads();
  // Every lane passes a valid row, also those the .x1/.x2 forms ignore.
  const uint16_t* row = rows + (perm[lane] & 31) * 8;
  uint32_t r[4];
  if (num == 1) trans ? ldmatrixX1Trans(r, row) : ldmatrixX1(r, row);
  else if (num == 2) trans ? ldmatrixX2Trans(r, row) : ldmatrixX2(r, row);
  else trans ? ldmatrixX4Trans(r, row) : ldmatrixX4(r, row);
  for (int m = 0; m < num; ++m) frag[lane * 4 + m] = r[m];
}

__global__ void __launch_bounds__(32) cpAsyncKernel(const uint4* src, const int* pred, uint32_t* early,
                                                    uint32_t* out) {
  MLA_DYNAMIC_SMEM(uint4, chunks, 16);  // [64]
  const int lane = threadIdx.x;
  cpAsync16(&chunks[lane], &src[lane], pred[lane] != 0);
  cpAsyncCommit();
  cpAsync16(&chunks[32 + lane], &src[32 + lane], pred[32 + lane] != 0);
  cpAsyncCommit();
  cpAsyncWait<1>();  // no barrier: each thread reads only the chunk it copied itself
  const uint32_t* mine = reinterpret_cast<const uint32_t*>(&chunks[lane]);
  for (int k = 0; k < 4; ++k) early[lane * 4 + k] = mine[k];
  cpAsyncWait<0>();
  __syncthreads();
  const uint32_t* all = reinterpret_cast<const uint32_t*>(chunks);
  for (int i = lane; i < 64 * 4; i += 32) out[i] = all[i];
}

__global__ void __launch_bounds__(32) shuffleKernel(const int* values, const int* cases, int n, int* out) {
  const int lane = threadIdx.x, v = values[lane];
  for (int i = 0; i < n; ++i) {
    const int op = cases[i * 3], arg = cases[i * 3 + 1], width = cases[i * 3 + 2];
    if (width < 1 || width > 32 || (width & (width - 1))) continue;  // undefined in CUDA
    int r;
    switch (static_cast<ShflOp>(op)) {
      case ShflOp::Idx: r = __shfl_sync(kFull, v, arg, width); break;
      case ShflOp::Xor: r = __shfl_xor_sync(kFull, v, arg, width); break;
      case ShflOp::Down: r = __shfl_down_sync(kFull, v, static_cast<unsigned>(arg), width); break;
      case ShflOp::Up: r = __shfl_up_sync(kFull, v, static_cast<unsigned>(arg), width); break;
      default: continue;
    }
    out[i * 32 + lane] = r;
  }
}

__global__ void __launch_bounds__(32) voteKernel(const int* preds, int m, int* votes) {
  const int lane = threadIdx.x;
  for (int i = 0; i < m; ++i) {
    const int p = preds[i * 32 + lane];
    // any/all promise only "non-zero"; normalised so GPU and emulator dumps compare.
    votes[(i * 3 + 0) * 32 + lane] = static_cast<int>(__ballot_sync(kFull, p));
    votes[(i * 3 + 1) * 32 + lane] = __any_sync(kFull, p) != 0;
    votes[(i * 3 + 2) * 32 + lane] = __all_sync(kFull, p) != 0;
  }
}

Status need(const TensorRef& t, const char* arg, std::initializer_list<int64_t> shape, DType d) {
  return gpu::checkPrimitiveTensor(t, arg, shape, d, d);
}
Status need(const TensorRef& t, const char* arg, std::initializer_list<int64_t> shape, DType d0, DType d1) {
  return gpu::checkPrimitiveTensor(t, arg, shape, d0, d1);
}

}  // namespace

namespace gpu {

Status checkPrimitiveTensor(const TensorRef& t, const char* arg, std::initializer_list<int64_t> shape, DType d0, DType d1) {
  MLA_CHECK(t.dtype == d0 || t.dtype == d1, Dtype,
            std::string("primitives: `") + arg + "` must be " + dtypeName(d0) + (d0 != d1 ? std::string(" or ") + dtypeName(d1) : ""));
  bool ok = t.ndim == static_cast<int>(shape.size());
  for (int i = 0; ok && i < t.ndim; ++i) ok = shape.begin()[i] < 0 || t.shape[i] == shape.begin()[i];
  MLA_CHECK(ok, Shape, std::string("primitives: `") + arg + "` has the wrong shape");
  MLA_CHECK(t.isContiguous(), Shape, std::string("primitives: `") + arg + "` must be contiguous");
  return Status::Ok();
}

Status launchPrimitive(const PrimitivesParams& p, StreamHandle stream) {
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (p.which) {
    case Primitive::Mma: {
      MLA_RETURN_IF_ERROR(need(p.a, "a", {16, 16}, DType::BF16, DType::F16));
      MLA_RETURN_IF_ERROR(need(p.b, "b", {16, 8}, p.a.dtype));
      MLA_RETURN_IF_ERROR(need(p.c, "c", {16, 8}, DType::F32));
      MLA_RETURN_IF_ERROR(need(p.d, "d", {16, 8}, DType::F32));
      return MLA_DISPATCH_HALF_TYPES(p.a.dtype, T, [&] {
        MLA_LAUNCH_KERNEL(1, 32, 0, s, mmaKernel<T>)(p.a.ptr<const uint16_t>(), p.b.ptr<const uint16_t>(),
                                                     p.c.ptr<const float>(), p.d.ptr<float>());
        MLA_CHECK_LAUNCH("primitives(mma)");
        return Status::Ok();
      });
    }
    case Primitive::Ldmatrix: {
      MLA_RETURN_IF_ERROR(need(p.matrix, "matrix", {32, 8}, DType::BF16, DType::F16));
      MLA_RETURN_IF_ERROR(need(p.perm, "perm", {32}, DType::I32));
      MLA_RETURN_IF_ERROR(need(p.frag, "frag", {32, 4}, DType::I32));
      // num is how many registers each lane writes back into its 4-wide frag row.
      MLA_CHECK(p.num == 1 || p.num == 2 || p.num == 4, Range, "primitives: `num` must be 1, 2 or 4");
      MLA_LAUNCH_KERNEL(1, 32, 32 * 8 * sizeof(uint16_t), s, ldmatrixKernel)(
          p.matrix.ptr<const uint16_t>(), p.perm.ptr<const int>(), p.frag.ptr<uint32_t>(), p.num, p.trans);
      MLA_CHECK_LAUNCH("primitives(ldmatrix)");
      return Status::Ok();
    }
    case Primitive::CpAsync: {
      MLA_RETURN_IF_ERROR(need(p.src, "src", {64, 4}, DType::I32));
      MLA_RETURN_IF_ERROR(need(p.pred, "pred", {64}, DType::I32));
      MLA_RETURN_IF_ERROR(need(p.early, "early", {32, 4}, DType::I32));
      MLA_RETURN_IF_ERROR(need(p.out, "out", {64, 4}, DType::I32));
      MLA_CHECK(reinterpret_cast<uintptr_t>(p.src.data) % 16 == 0, Shape, "primitives: `src` must be 16-byte aligned");
      MLA_LAUNCH_KERNEL(1, 32, 64 * sizeof(uint4), s, cpAsyncKernel)(
          p.src.ptr<const uint4>(), p.pred.ptr<const int>(), p.early.ptr<uint32_t>(), p.out.ptr<uint32_t>());
      MLA_CHECK_LAUNCH("primitives(cpAsync)");
      return Status::Ok();
    }
    case Primitive::Shuffle: {
      MLA_RETURN_IF_ERROR(need(p.values, "values", {32}, DType::I32));
      MLA_RETURN_IF_ERROR(need(p.cases, "cases", {-1, 3}, DType::I32));
      const int64_t n = p.cases.shape[0];
      MLA_CHECK(n <= kMaxCases, Range, "primitives: `cases` has too many rows");
      MLA_RETURN_IF_ERROR(need(p.shfl, "shfl", {n, 32}, DType::I32));
      if (n == 0) return Status::Ok();
      MLA_LAUNCH_KERNEL(1, 32, 0, s, shuffleKernel)(p.values.ptr<const int>(), p.cases.ptr<const int>(),
                                                    static_cast<int>(n), p.shfl.ptr<int>());
      MLA_CHECK_LAUNCH("primitives(shuffle)");
      return Status::Ok();
    }
    case Primitive::Vote: {
      MLA_RETURN_IF_ERROR(need(p.preds, "preds", {-1, 32}, DType::I32));
      const int64_t m = p.preds.shape[0];
      MLA_CHECK(m <= kMaxCases, Range, "primitives: `preds` has too many rows");
      MLA_RETURN_IF_ERROR(need(p.votes, "votes", {m, 3, 32}, DType::I32));
      if (m == 0) return Status::Ok();
      MLA_LAUNCH_KERNEL(1, 32, 0, s, voteKernel)(p.preds.ptr<const int>(), static_cast<int>(m), p.votes.ptr<int>());
      MLA_CHECK_LAUNCH("primitives(vote)");
      return Status::Ok();
    }
    case Primitive::Wgmma:
    case Primitive::Tma:
    case Primitive::Mbarrier: {
#if MLA_HAS_SM90A
      int dev = 0, major = 0, minor = 0;
      MLA_CUDA_TRY(cudaGetDevice(&dev), "primitives");
      MLA_CUDA_TRY(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev), "primitives");
      MLA_CUDA_TRY(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev), "primitives");
      // sm_90a code runs on compute capability 9.0 only; anywhere else the launch would fail.
      MLA_CHECK(major == 9 && minor == 0, Argument,
                "primitives: wgmma, TMA and mbarrier need a compute capability 9.0 GPU (H100, H200); this device is " +
                    std::to_string(major) + "." + std::to_string(minor));
      return launchPrimitiveSm90(p, stream);
#else
      return Status::Error(Code::Argument, "primitives: wgmma, TMA and mbarrier are not in this build (built without sm_90a)");
#endif
    }
  }
  // The binding passes any `which` through (lib/ops/primitives.ts only sends known ones).
  return Status::Error(Code::Argument, "primitives: `which` is not a primitive");
}

}  // namespace gpu
}  // namespace mla

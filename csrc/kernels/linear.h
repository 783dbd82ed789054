// Tensor-core matrix products: y = x·Wᵀ (weights stored [out, in] as in checkpoints), plain or
// batched over a middle "head" dim. One kernel family serves linear layers (batch 1) and the
// absorbed per-head MLA products (batch = heads, weights laid out per head at load time).
// Plain C++: the binding includes it.
#pragma once
#include "core/status.h"
#include "core/tensor.h"

namespace mla {

// Either
//   x [M, K], weight [N, K], out [M, N]                       (linear)
// or
//   x [M, B, K], weight [B, N, K], out [M, B, N]               (batched, per b: out = x·Wᵀ)
// x and weight: bf16 or f16 (the same); out: bf16, f16 or f32. fp32 accumulation.
// Every tensor: last dim contiguous, other strides non-negative multiples of 8 elements and
// the data pointer 16-byte aligned (cp.async / 16-byte vector loads). N and K multiples of 8.
// x and out may be strided views (e.g. a head slice of a wider buffer).
struct LinearParams {
  TensorRef x;
  TensorRef weight;
  TensorRef out;
};

namespace gpu {
Status launchLinear(const LinearParams& p, StreamHandle stream);
}  // namespace gpu

}  // namespace mla

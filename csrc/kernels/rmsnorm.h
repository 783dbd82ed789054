// RMSNorm over the last dim (DeepSeek's q_a_layernorm / kv_a_layernorm). Plain C++: the
// binding includes it.
#pragma once
#include "core/status.h"
#include "core/tensor.h"

namespace mla {

// y[r, i] = x[r, i] · rsqrt(mean_j x[r, j]² + eps) · w[i], fp32 math.
// x [rows, dim] and out [rows, dim]: bf16, f16 or f32, rows may be strided (last dim
// contiguous), out may alias x exactly (in place). weight [dim]: bf16, f16 or f32 (a checkpoint's norm weight may differ from the
// activations' dtype), contiguous.
struct RmsNormParams {
  TensorRef x;
  TensorRef weight;
  TensorRef out;
  float eps = 1e-6f;
};

namespace gpu {
Status launchRmsNorm(const RmsNormParams& p, StreamHandle stream);
}  // namespace gpu

}  // namespace mla

// Decoupled RoPE (DeepSeek MLA) and the fused latent-cache writer: params + launchers.
// Plain C++ (the binding includes it with g++).
#pragma once
#include <cstdint>
#include "core/status.h"
#include "core/tensor.h"

namespace mla::gpu {

enum class RopeLayout : int32_t {
  Interleaved = 0,  // pairs (x[2i], x[2i+1]): DeepSeek checkpoints
  Neox = 1,         // pairs (x[i], x[i + d/2])
};

// table[p, i, 0..1] = m·cos(f32(p·invFreq[i])), m·sin(...), evaluated in double and
// rounded once, so the table matches a float64 reference taking cos/sin of the f32 angle.
struct RopeTableParams {
  TensorRef table;    // f32 [maxPos, half, 2], contiguous
  TensorRef invFreq;  // f32 [half], contiguous
  double attentionFactor = 1.0;
};

// Rotates x in place: x [T, H, R] (or [T, R]) with any token/head strides, last dim stride 1.
struct RopeParams {
  TensorRef x;          // bf16 / f16 / f32
  TensorRef positions;  // i32 [T]
  TensorRef table;      // f32 [maxPos, R/2, 2]
  RopeLayout layout = RopeLayout::Interleaved;
};

// cache[slot, :C]  = RMSNorm(kvDown[t, :C]) · w
// cache[slot, C:]  = RoPE(kvDown[t, C:], positions[t])
// slot = slotMapping[t] = page·pageSize + offset; −1 (or anything out of range) skips t.
struct AppendLatentParams {
  TensorRef kvDown;       // bf16 / f16 / f32 [T, C + R], last dim stride 1
  TensorRef normWeight;   // bf16 / f16 / f32 [C], contiguous
  TensorRef positions;    // i32 [T]
  TensorRef slotMapping;  // i32 [T]
  TensorRef cache;        // bf16 / f16 / f32 [numPages, pageSize, C + R], last dim stride 1
  TensorRef table;        // f32 [maxPos, R/2, 2]
  float eps = 1e-6f;
  RopeLayout layout = RopeLayout::Interleaved;
};

// Largest latent width appendLatent keeps in registers (one warp per token).
constexpr int64_t kAppendLatentMaxKvLora = 1024;

Status launchRopeTable(const RopeTableParams& p, StreamHandle stream);
Status launchRope(const RopeParams& p, StreamHandle stream);
Status launchAppendLatent(const AppendLatentParams& p, StreamHandle stream);

}  // namespace mla::gpu

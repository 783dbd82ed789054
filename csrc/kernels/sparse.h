// Sparse MLA (DeepSeek-V3.2): every query token attends only to the cache slots its indexer
// picked (FlashMLA's flash_mla_sparse_fwd / sparse decode). Plain C++ (the binding includes it).
#pragma once
#include <cstdint>
#include "core/status.h"
#include "core/tensor.h"

namespace mla {

struct SparseParams {
  TensorRef q;           // [tokens, H, 576] bf16/f16, last dim contiguous
  TensorRef cache;       // [numPages, pageSize, 576] q's dtype, or u8 [numPages, pageSize, 656] (FP8, bf16 q)
  TensorRef indices;     // i32 [tokens, topk]: global slots page * pageSize + offset; outside [0, slots) = none
  TensorRef topkLength;  // i32 [tokens], only when hasTopkLength
  bool hasTopkLength = false;
  TensorRef attnSink;    // f32 [H], only when hasAttnSink
  bool hasAttnSink = false;
  TensorRef out;         // [tokens, H, 512], q's dtype
  TensorRef lse;         // f32 [tokens, H], natural log; +inf where no entry is valid
  float scale = 0.f;

  // A decode workspace (decode.h layout) with maxBatch >= tokens and partialRows >= 2H.
  TensorRef workspace;
  int64_t wsMaxBatch = 0, wsPartialRows = 0, wsMaxParts = 0;
  bool runPlan = true, runMain = true, runCombine = true;
  bool pdl = false;  // as DecodeParams::pdl
};

namespace gpu {
Status launchSparse(const SparseParams& p, StreamHandle stream);
}  // namespace gpu

}  // namespace mla

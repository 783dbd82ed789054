// Prefill in the non-absorbed ("naive") MLA form: per-head keys/values recomputed from the
// cached latent, causal flash attention with 192-wide keys (128 nope + 64 rope) and 128-wide
// values, long contexts processed in chunks and merged by log-sum-exp.
//
// The three kernels here are driven chunk by chunk from lib/ops/prefill.ts:
//   gather     paged cache rows of the chunk -> contiguous [rows, 576]
//   (linear)   latent · kv_b_projᵀ -> K_nope, V      (lib/ops/linear.ts, not in this file)
//   attention  causal, queries aligned to the end of each sequence, rope key read separately
//   merge      o = (o1·e^{lse1−m} + o2·e^{lse2−m}) / (e^{lse1−m} + e^{lse2−m})
//
// The plan tensor ([B, 4] i32, built on the host) describes every request:
//   plan[b] = { qStart, qLen, seqLen, kvStart }
// qStart: first row of request b in q/out; qLen: its new tokens (queries); seqLen: its keys
// (prefix + new; 0 when qLen = 0, since nobody reads them); kvStart: first row of request b in
// the virtual stream of all requests' context tokens laid back to back. A chunk is the
// stream range [g0, g1); its gathered row r is stream row g0 + r.
#pragma once
#include <cstdint>
#include "core/status.h"
#include "core/tensor.h"

namespace mla::gpu {

constexpr int kPrefillNopeDim = 128;
constexpr int kPrefillRopeDim = 64;
constexpr int kPrefillVDim = 128;
constexpr int kPrefillLatentDim = 512;
constexpr int kPrefillCacheDim = kPrefillLatentDim + kPrefillRopeDim;  // 576
constexpr int kPrefillPlanCols = 4;

struct PrefillGatherParams {
  TensorRef cache;       // [numPages, pageSize, 576] bf16/f16, last dim contiguous
  TensorRef blockTable;  // [B, maxPages] i32
  TensorRef plan;        // [B, 4] i32 (see above)
  TensorRef dst;         // [>= g1 - g0, 576], cache dtype, last dim contiguous
  int64_t g0 = 0, g1 = 0;
};

struct PrefillAttentionParams {
  TensorRef q;      // [Tq, H, 192] bf16/f16: nope then rotated rope
  TensorRef kNope;  // [Tc, H, 128] chunk row r = stream row g0 + r
  TensorRef kRope;  // [Tc, 64]     shared by all heads
  TensorRef v;      // [Tc, H, 128]
  TensorRef out;    // [R, H, 128] q dtype; q row i is written to out row i − outRowBase
  TensorRef lse;    // [R, H] f32, natural log; −inf for a row that sees no key of the chunk
  TensorRef plan;   // [B, 4] i32
  int64_t g0 = 0, g1 = 0;
  int64_t reqBegin = 0, reqCount = 0;  // requests [reqBegin, reqBegin + reqCount) of the plan
  int64_t outRowBase = 0;
  int64_t maxQLen = 0;                 // max qLen over those requests (sizes the grid)
  double scale = 0;
};

struct MergeAttnStatesParams {
  TensorRef out;      // [R, H, D] bf16/f16, read and written (running result)
  TensorRef lse;      // [R, H] f32, read and written
  TensorRef part;     // [R, H, D] same dtype as out: the partial result to fold in
  TensorRef partLse;  // [R, H] f32
};

// Shared memory the attention kernel needs (the caller can check it against the device).
int64_t prefillAttentionSmemBytes();

Status launchPrefillGather(const PrefillGatherParams& p, StreamHandle stream);
Status launchPrefillAttention(const PrefillAttentionParams& p, StreamHandle stream);
Status launchMergeAttnStates(const MergeAttnStatesParams& p, StreamHandle stream);

}  // namespace mla::gpu

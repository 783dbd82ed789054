// Sparse MLA: attention of each query token over the cache slots its indexer picked. The same
// plan / split-KV main / combine kernels as the dense decode (decode_impl.cuh), instantiated
// with SP = true: request b is query token b and its keys are the slots indices[b, k].
//   valid(b, k) = k < min(topkLength[b], topk) and 0 <= indices[b, k] < numPages * pageSize
//   s_k = scale · q[b, h] · row(indices[b, k]),  out = softmax(s) · row[:512] / (1 + e^(sink_h − lse))
// The split over the top-k list (the plan's balancing over (token, 64-key block) units) keeps the
// GPU full for few tokens and long lists. Design notes: docs/sparse-mla.md.
#include "core/check.h"
#include "kernels/decode_impl.cuh"
#include "kernels/sparse.h"

namespace mla::gpu {

Status launchSparse(const SparseParams& p, StreamHandle stream) {
  // Only what memory safety needs (core/check.h); lib/ops/sparse.ts validates with names first.
  const TensorRef &q = p.q, &cache = p.cache, &ix = p.indices, &out = p.out, &lse = p.lse;
  MLA_CHECK(q.dtype == DType::BF16 || q.dtype == DType::F16, Dtype, "sparse: `q` must be bf16 or f16");
  const bool fp8 = cache.dtype == DType::U8;
  MLA_CHECK(!fp8 || q.dtype == DType::BF16, Dtype, "sparse: an FP8 `cache` (u8, 656-byte rows) needs a bf16 `q`");
  MLA_CHECK(fp8 || cache.dtype == q.dtype, Dtype, "sparse: `cache` must have q's dtype");
  MLA_CHECK(out.dtype == q.dtype, Dtype, "sparse: `out` must have q's dtype");
  MLA_CHECK(lse.dtype == DType::F32, Dtype, "sparse: `lse` must be f32");
  MLA_CHECK(ix.dtype == DType::I32, Dtype, "sparse: `indices` must be i32");
  MLA_CHECK(!p.hasTopkLength || p.topkLength.dtype == DType::I32, Dtype, "sparse: `topkLength` must be i32");
  MLA_CHECK(!p.hasAttnSink || p.attnSink.dtype == DType::F32, Dtype, "sparse: `attnSink` must be f32");
  MLA_CHECK(q.ndim == 3 && q.shape[2] == kD, Shape, "sparse: `q` must be [tokens, H, 576]");
  MLA_CHECK(cache.ndim == 3 && cache.shape[2] == (fp8 ? kFp8RowBytes : kD), Shape,
            fp8 ? "sparse: an FP8 `cache` must be u8 [numPages, pageSize, 656]" : "sparse: `cache` must be [numPages, pageSize, 576]");
  const int64_t tokens = q.shape[0], H = q.shape[1], numPages = cache.shape[0], pageSize = cache.shape[1];
  MLA_CHECK(!fp8 || ((pageSize <= 1 || cache.strides[1] == kFp8RowBytes) && (numPages <= 1 || cache.strides[0] % 16 == 0) &&
                     reinterpret_cast<uintptr_t>(cache.data) % 16 == 0),
            Shape, "sparse: an FP8 `cache` needs 656-byte rows, a page stride that is a multiple of 16 bytes and a 16-byte aligned start");
  MLA_CHECK(H >= 1 && H <= kDecodeMaxHeads, Range, "sparse: head count must be in [1, 128]");
  MLA_CHECK(pageSize >= 1 && pageSize <= 256 && (pageSize & (pageSize - 1)) == 0, Range, "sparse: page size must be a power of two in [1, 256]");
  MLA_CHECK(numPages >= 1 && numPages <= INT32_MAX, Shape, "sparse: `cache` must have 1 .. 2^31-1 pages");
  MLA_CHECK(ix.ndim == 2 && ix.shape[0] == tokens, Shape, "sparse: `indices` must be [tokens, topk]");
  const int64_t topk = ix.shape[1];
  MLA_CHECK(topk >= 0 && topk <= (int64_t(1) << 24), Range, "sparse: topk must be in [0, 2^24]");
  MLA_CHECK(topk <= 1 || ix.strides[1] == 1, Shape, "sparse: `indices` rows must be contiguous");
  MLA_CHECK(!p.hasTopkLength || (p.topkLength.ndim == 1 && p.topkLength.shape[0] == tokens), Shape, "sparse: `topkLength` must be [tokens]");
  MLA_CHECK(!p.hasAttnSink || (p.attnSink.ndim == 1 && p.attnSink.shape[0] == H), Shape, "sparse: `attnSink` must be [H]");
  MLA_CHECK(out.ndim == 3 && out.shape[0] == tokens && out.shape[1] == H && out.shape[2] == kDV, Shape, "sparse: `out` must be [tokens, H, 512]");
  MLA_CHECK(lse.ndim == 2 && lse.shape[0] == tokens && lse.shape[1] == H, Shape, "sparse: `lse` must be [tokens, H]");
  MLA_CHECK(q.strides[2] == 1 && cache.strides[2] == 1 && out.strides[2] == 1, Shape, "sparse: `q`, `cache`, `out` need a contiguous last dim");
  MLA_CHECK(reinterpret_cast<uintptr_t>(q.data) % 16 == 0 && (tokens <= 1 || q.strides[0] % 8 == 0) && (H <= 1 || q.strides[1] % 8 == 0), Shape,
            "sparse: `q` must be 16-byte aligned with strides that are multiples of 8 elements");
  MLA_CHECK(fp8 || (reinterpret_cast<uintptr_t>(cache.data) % 16 == 0 && (numPages <= 1 || cache.strides[0] % 8 == 0) &&
                    (pageSize <= 1 || cache.strides[1] % 8 == 0)),
            Shape, "sparse: `cache` must be 16-byte aligned with strides that are multiples of 8 elements");
  MLA_CHECK(reinterpret_cast<uintptr_t>(out.data) % 4 == 0 && out.strides[0] % 2 == 0 && out.strides[1] % 2 == 0, Shape,
            "sparse: `out` must be 4-byte aligned with even strides");
  MLA_CHECK(tokens * H <= INT32_MAX / kDV && tokens <= INT32_MAX / 8, Range, "sparse: too many tokens");
  DecodeKernelArgs a{};
  MLA_RETURN_IF_ERROR(bindSplitKv("sparse", q, cache, out, lse, p.scale, p.workspace, p.wsMaxBatch, p.wsPartialRows, p.wsMaxParts, &a));
  MLA_CHECK(tokens <= p.wsMaxBatch, Range, "sparse: tokens exceed the workspace's maxBatch");
  MLA_CHECK(2 * H <= p.wsPartialRows, Range, "sparse: H exceeds the workspace's partial rows");
  if (tokens == 0) return Status::Ok();

  DeviceProps dp;
  MLA_RETURN_IF_ERROR(currentDeviceProps(&dp));
  const int tier = tierFor(dp.smemOptin, true);
  MLA_CHECK(tier != 0, Argument, "sparse: the device has too little shared memory per block (needs ~96 KB opt-in)");

  a.hasQ = 0; a.uniformQ = 1; a.maxQ = 1;
  a.B = int(tokens); a.causal = 0;
  a.sparse = 1;
  a.idx = ix.ptr<int32_t>(); a.idxTok = ix.strides[0]; a.topk = int(topk);
  a.topkLen = p.hasTopkLength ? p.topkLength.ptr<int32_t>() : nullptr;
  a.tlStride = p.hasTopkLength ? p.topkLength.strides[0] : 0;
  a.sink = p.hasAttnSink ? p.attnSink.ptr<float>() : nullptr;
  a.sinkStride = p.hasAttnSink ? p.attnSink.strides[0] : 0;
  a.numSlots = numPages * pageSize;
  a.maxRows = H;

  SplitKvLauncher<true> launcher{"sparse", a, q.dtype, fp8, H, p.wsMaxParts, p.wsPartialRows,
                                 Phases{p.runPlan, p.runMain, p.runCombine, p.pdl && dp.major >= 9}, &dp, static_cast<cudaStream_t>(stream)};
  return withConfig(pickBlockM(H), tier, launcher);
}

}  // namespace mla::gpu

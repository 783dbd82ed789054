// Sparse MLA: attention of each query token over the cache slots its indexer picked. The same
// plan / split-KV main / combine kernels as the dense decode (decode_impl.cuh), instantiated
// with SP = true: request b is query token b and its keys are the slots indices[b, k].
//   valid(b, k) = k < min(topkLength[b], topk) and 0 <= indices[b, k] < numPages * pageSize
//   s_k = scale · q[b, h] · row(indices[b, k]),  out = softmax(s) · row[:512] / (1 + e^(sink_h − lse))
// The split over the top-k list (the plan's balancing over (token, 64-key block) units) keeps the
// GPU full for few tokens and long lists. Design notes: docs/sparse-mla.md.
#include "kernels/decode_impl.cuh"
#include "kernels/sparse.h"

namespace mla::gpu {
namespace {

struct SparseLauncher {
  DecodeKernelArgs a;
  const SparseParams* p;
  const DeviceProps* dp;
  int64_t rowsBound;
  cudaStream_t s;
  template <typename T, class C, bool KV8> Status go() {
    Plan plan;
    MLA_RETURN_IF_ERROR((planFor<T, C, KV8, true>(rowsBound, p->wsMaxParts, *dp, &plan)));
    if (plan.rowTiles > 65535) return Status::Error(Code::Range, "sparse: too many heads for one launch");
    const int64_t cap = p->wsPartialRows / (2 * rowsBound);
    if (cap < 1) return Status::Error(Code::Range, "sparse: the workspace's partial buffer is too small for H");
    plan.numParts = int(std::min<int64_t>(plan.numParts, cap));
    DecodeKernelArgs args = a;
    args.numParts = plan.numParts;
    args.blockN = plan.blockN;
    args.overhead = plan.overhead;
    return runDecode<T, C, KV8, true>(args, plan, Phases{p->runPlan, p->runMain, p->runCombine}, s);
  }
  template <class C> Status run() {
    if (p->cache.dtype == DType::U8) return go<__nv_bfloat16, C, true>();
    return MLA_DISPATCH_HALF_TYPES(p->q.dtype, T, [&] { return go<T, C, false>(); });
  }
};

}  // namespace

Status launchSparse(const SparseParams& p, StreamHandle stream) {
  auto err = [](Code c, const std::string& m) { return Status::Error(c, "sparse: " + m); };
  const TensorRef &q = p.q, &cache = p.cache, &ix = p.indices, &out = p.out, &lse = p.lse;
  if (q.dtype != DType::BF16 && q.dtype != DType::F16) return err(Code::Dtype, "`q` must be bf16 or f16");
  const bool fp8 = cache.dtype == DType::U8;
  if (fp8 && q.dtype != DType::BF16) return err(Code::Dtype, "an FP8 `cache` (u8, 656-byte rows) needs a bf16 `q`");
  if (!fp8 && cache.dtype != q.dtype) return err(Code::Dtype, "`cache` must have q's dtype");
  if (out.dtype != q.dtype) return err(Code::Dtype, "`out` must have q's dtype");
  if (lse.dtype != DType::F32) return err(Code::Dtype, "`lse` must be f32");
  if (ix.dtype != DType::I32) return err(Code::Dtype, "`indices` must be i32");
  if (p.hasTopkLength && p.topkLength.dtype != DType::I32) return err(Code::Dtype, "`topkLength` must be i32");
  if (p.hasAttnSink && p.attnSink.dtype != DType::F32) return err(Code::Dtype, "`attnSink` must be f32");
  if (q.ndim != 3 || q.shape[2] != kD) return err(Code::Shape, "`q` must be [tokens, H, 576]");
  if (cache.ndim != 3 || cache.shape[2] != (fp8 ? kFp8RowBytes : kD))
    return err(Code::Shape, fp8 ? "an FP8 `cache` must be u8 [numPages, pageSize, 656]" : "`cache` must be [numPages, pageSize, 576]");
  const int64_t tokens = q.shape[0], H = q.shape[1], numPages = cache.shape[0], pageSize = cache.shape[1];
  if (fp8 && ((pageSize > 1 && cache.strides[1] != kFp8RowBytes) || (numPages > 1 && cache.strides[0] % 16 != 0) ||
              reinterpret_cast<uintptr_t>(cache.data) % 16 != 0))
    return err(Code::Shape, "an FP8 `cache` needs 656-byte rows, a page stride that is a multiple of 16 bytes and a 16-byte aligned start");
  if (H < 1 || H > 128) return err(Code::Range, "head count must be in [1, 128]");
  if (pageSize < 1 || pageSize > 256 || (pageSize & (pageSize - 1)) != 0) return err(Code::Range, "page size must be a power of two in [1, 256]");
  if (numPages < 1 || numPages > INT32_MAX) return err(Code::Shape, "`cache` must have 1 .. 2^31-1 pages");
  if (ix.ndim != 2 || ix.shape[0] != tokens) return err(Code::Shape, "`indices` must be [tokens, topk]");
  const int64_t topk = ix.shape[1];
  if (topk < 0 || topk > (int64_t(1) << 24)) return err(Code::Range, "topk must be in [0, 2^24]");
  if (topk > 1 && ix.strides[1] != 1) return err(Code::Shape, "`indices` rows must be contiguous");
  if (p.hasTopkLength && (p.topkLength.ndim != 1 || p.topkLength.shape[0] != tokens)) return err(Code::Shape, "`topkLength` must be [tokens]");
  if (p.hasAttnSink && (p.attnSink.ndim != 1 || p.attnSink.shape[0] != H)) return err(Code::Shape, "`attnSink` must be [H]");
  if (out.ndim != 3 || out.shape[0] != tokens || out.shape[1] != H || out.shape[2] != kDV) return err(Code::Shape, "`out` must be [tokens, H, 512]");
  if (lse.ndim != 2 || lse.shape[0] != tokens || lse.shape[1] != H) return err(Code::Shape, "`lse` must be [tokens, H]");
  if (q.strides[2] != 1 || cache.strides[2] != 1 || out.strides[2] != 1) return err(Code::Shape, "`q`, `cache`, `out` need a contiguous last dim");
  if (reinterpret_cast<uintptr_t>(q.data) % 16 != 0 || (tokens > 1 && q.strides[0] % 8 != 0) || (H > 1 && q.strides[1] % 8 != 0))
    return err(Code::Shape, "`q` must be 16-byte aligned with strides that are multiples of 8 elements");
  if (!fp8 && (reinterpret_cast<uintptr_t>(cache.data) % 16 != 0 || (numPages > 1 && cache.strides[0] % 8 != 0) ||
               (pageSize > 1 && cache.strides[1] % 8 != 0)))
    return err(Code::Shape, "`cache` must be 16-byte aligned with strides that are multiples of 8 elements");
  if (reinterpret_cast<uintptr_t>(out.data) % 4 != 0 || out.strides[0] % 2 != 0 || out.strides[1] % 2 != 0)
    return err(Code::Shape, "`out` must be 4-byte aligned with even strides");
  if (tokens * H > INT32_MAX / kDV || tokens > INT32_MAX / 8) return err(Code::Range, "too many tokens");
  // The declared workspace sizes bound the layout arithmetic (memory safety, as in decode.cu).
  if (p.wsMaxBatch < 0 || p.wsPartialRows < 0 || p.wsMaxParts < 1 || p.wsMaxBatch > (int64_t(1) << 31) ||
      p.wsPartialRows > (int64_t(1) << 31) || p.wsMaxParts > kDecodeMaxParts)
    return err(Code::Range, "`workspace` has an invalid layout");
  const DecodeWorkspaceLayout lay = decodeWorkspaceLayout(p.wsMaxBatch, p.wsPartialRows, p.wsMaxParts);
  if (p.workspace.dtype != DType::U8 || p.workspace.ndim != 1 || !p.workspace.isContiguous() ||
      p.workspace.shape[0] < lay.totalBytes || reinterpret_cast<uintptr_t>(p.workspace.data) % 256 != 0)
    return err(Code::Argument, "`workspace` is not a decode workspace buffer of the declared size");
  if (tokens > p.wsMaxBatch) return err(Code::Range, "tokens exceed the workspace's maxBatch");
  if (2 * H > p.wsPartialRows) return err(Code::Range, "H exceeds the workspace's partial rows");
  if (p.wsMaxParts < 1) return err(Code::Argument, "workspace has no parts");
  if (tokens == 0) return Status::Ok();

  DeviceProps dp;
  MLA_RETURN_IF_ERROR(devicePropsFor(&dp));
  const int tier = tierFor(dp.smemOptin, true);
  if (tier == 0) return err(Code::Argument, "the device has too little shared memory per block (needs ~96 KB opt-in)");

  DecodeKernelArgs a{};
  a.q = q.data; a.qTok = q.strides[0]; a.qHead = q.strides[1];
  a.cache = cache.data; a.cPage = cache.strides[0]; a.cRow = cache.strides[1];
  a.numPages = int(numPages); a.pageSize = int(pageSize);
  a.pageShift = 0;
  while ((int64_t(1) << a.pageShift) < pageSize) ++a.pageShift;
  a.hasQ = 0; a.uniformQ = 1; a.maxQ = 1;
  a.out = out.data; a.oTok = out.strides[0]; a.oHead = out.strides[1];
  a.lse = lse.ptr<float>(); a.lTok = lse.strides[0]; a.lHead = lse.strides[1];
  a.B = int(tokens); a.H = int(H); a.tokens = int(tokens); a.causal = 0;
  a.scaleLog2 = p.scale * kLog2e;
  a.sparse = 1;
  a.idx = ix.ptr<int32_t>(); a.idxTok = ix.strides[0]; a.topk = int(topk);
  a.topkLen = p.hasTopkLength ? p.topkLength.ptr<int32_t>() : nullptr;
  a.tlStride = p.hasTopkLength ? p.topkLength.strides[0] : 0;
  a.sink = p.hasAttnSink ? p.attnSink.ptr<float>() : nullptr;
  a.sinkStride = p.hasAttnSink ? p.attnSink.strides[0] : 0;
  a.numSlots = numPages * pageSize;
  unsigned char* ws = static_cast<unsigned char*>(p.workspace.data);
  a.err = reinterpret_cast<int32_t*>(ws);
  a.partMeta = reinterpret_cast<int32_t*>(ws + lay.partMetaOff);
  a.reqInfo = reinterpret_cast<int32_t*>(ws + lay.reqInfoOff);
  a.lsePart = reinterpret_cast<float*>(ws + lay.lseOff);
  a.oPart = reinterpret_cast<float*>(ws + lay.oOff);
  a.maxRows = H;

  SparseLauncher launcher{a, &p, &dp, H, static_cast<cudaStream_t>(stream)};
  return withConfig(pickBlockM(H), tier, launcher);
}

}  // namespace mla::gpu

// Absorbed MLA decode over a paged latent cache: device-side split plan, split-KV main kernel
// (mma.sync m16n8k16 + cp.async page gathers), LSE combine. The kernels live in decode_impl.cuh
// (shared with sparse.cu); design notes: docs/decode-kernel.md.
#include "core/check.h"
#include "kernels/decode_impl.cuh"

namespace mla::gpu {
namespace {

struct ConfigProbe {
  int64_t rowsBound, wsMaxParts;
  const DeviceProps* dp;
  Plan* plan;
  template <class C> Status run() { return planFor<__nv_bfloat16, C>(rowsBound, wsMaxParts, *dp, plan); }
};

// Whether this call takes the sm_90a path; forcing it where it cannot run is an error that says why.
Status pickKernel(DecodeKernel want, bool fp8, const DeviceProps& dp, bool* hopper) {
  const char* why = nullptr;
#if MLA_HAS_SM90A
  if (dp.major != 9 || dp.minor != 0) why = "needs a compute capability 9.0 GPU (H100, H200)";
  else if (fp8) why = "reads 16-bit caches only (an FP8 cache takes the portable kernel)";
  else if (dp.smemOptin < kSm90SmemBytes) why = "needs 227 KB of shared memory per block";
#else
  (void)fp8;
  (void)dp;
  why = "is not in this build (the addon was not compiled for sm_90)";
#endif
  *hopper = want != DecodeKernel::Portable && why == nullptr;
  if ((want == DecodeKernel::Hopper || want == DecodeKernel::HopperWide) && why != nullptr)
    return Status::Error(Code::Argument, std::string("decode: `kernel`: '") + (want == DecodeKernel::Hopper ? "hopper" : "hopper-wide") + "' " + why);
  return Status::Ok();
}

Status checkAligned16(const TensorRef& t, const char* name, int dims) {
  MLA_CHECK(reinterpret_cast<uintptr_t>(t.data) % 16 == 0, Shape, std::string("decode: `") + name + "` must start at a 16-byte aligned address");
  for (int d = 0; d < dims; ++d)
    MLA_CHECK(t.strides[d] % 8 == 0, Shape, std::string("decode: `") + name + "` strides must be multiples of 8 elements");
  return Status::Ok();
}

}  // namespace

Status checkedDecodeWorkspaceLayout(int64_t maxBatch, int64_t partialRows, int64_t maxParts, DecodeWorkspaceLayout* out) {
  // The bounds decode.cu's launcher puts on a workspace's declared sizes (lib/ops/decode.ts's
  // DecodeWorkspace stays well inside them).
  MLA_CHECK(maxBatch >= 0 && maxBatch <= (int64_t(1) << 31), Range, "decodeWorkspaceBytes: `maxBatch` is out of range");
  MLA_CHECK(partialRows >= 0 && partialRows <= (int64_t(1) << 31), Range, "decodeWorkspaceBytes: `partialRows` is out of range");
  MLA_CHECK(maxParts >= 1 && maxParts <= kDecodeMaxParts, Range, "decodeWorkspaceBytes: `maxParts` is out of range");
  *out = decodeWorkspaceLayout(maxBatch, partialRows, maxParts);
  return Status::Ok();
}

Status decodeConfigFor(int64_t numHeads, int64_t maxQSeqLen, int64_t wsMaxParts, DecodeKernel kernel, bool fp8Cache,
                       DecodeConfigInfo* info) {
  // The row bound numHeads * maxQSeqLen sizes the plan's tiles; lib/ops/decode.ts checks first.
  MLA_CHECK(numHeads >= 1 && numHeads <= kDecodeMaxHeads, Range, "decodeConfig: `numHeads` must be in [1, 128]");
  MLA_CHECK(maxQSeqLen >= 1 && maxQSeqLen <= (int64_t(1) << 20), Range, "decodeConfig: `maxQSeqLen` is out of range");
  MLA_CHECK(wsMaxParts >= 1 && wsMaxParts <= kDecodeMaxParts, Range, "decodeConfig: `maxParts` is out of range");
  DeviceProps dp;
  MLA_RETURN_IF_ERROR(currentDeviceProps(&dp));
  const int tier = tierFor(dp.smemOptin);
  if (tier == 0) return Status::Error(Code::Argument, "decode: the device has too little shared memory per block");
  const int64_t rowsBound = numHeads * maxQSeqLen;
  bool hopper = false;
  MLA_RETURN_IF_ERROR(pickKernel(kernel, fp8Cache, dp, &hopper));
#if MLA_HAS_SM90A
  if (hopper) {
    MLA_RETURN_IF_ERROR(runDecodeSm90(DecodeKernelArgs{}, DType::BF16, rowsBound, kernel == DecodeKernel::HopperWide, wsMaxParts, int64_t(1) << 31, dp, Phases{}, nullptr, info));
    info->hopper = true;
    return Status::Ok();
  }
#endif
  Plan plan;
  ConfigProbe probe{rowsBound, wsMaxParts, &dp, &plan};
  MLA_RETURN_IF_ERROR(withConfig(pickBlockM(rowsBound), tier, probe));
  info->blockM = plan.blockM;
  info->blockN = plan.blockN;
  info->stages = plan.stages;
  info->smemBytes = plan.smem;
  info->numParts = plan.numParts;
  info->rowTiles = plan.rowTiles;
  info->ctasPerSm = plan.ctasPerSm;
  return Status::Ok();
}

Status launchDecode(const DecodeParams& p, StreamHandle stream) {
  // Only what memory safety needs (core/check.h); lib/ops/decode.ts validates with names first.
  const TensorRef &q = p.q, &cache = p.cache, &bt = p.blockTable, &sl = p.seqLens, &out = p.out, &lse = p.lse;
  MLA_CHECK(q.dtype == DType::BF16 || q.dtype == DType::F16, Dtype, "decode: `q` must be bf16 or f16");
  const bool fp8 = cache.dtype == DType::U8;
  MLA_CHECK(!fp8 || q.dtype == DType::BF16, Dtype, "decode: an FP8 `cache` (u8, 656-byte rows) needs a bf16 `q`");
  MLA_CHECK(fp8 || cache.dtype == q.dtype, Dtype, "decode: `cache` must have q's dtype");
  MLA_CHECK(out.dtype == q.dtype, Dtype, "decode: `out` must have q's dtype");
  MLA_CHECK(lse.dtype == DType::F32, Dtype, "decode: `lse` must be f32");
  MLA_CHECK(bt.dtype == DType::I32 && sl.dtype == DType::I32, Dtype, "decode: `blockTable` and `seqLens` must be i32");
  MLA_CHECK(!p.hasQSeqLens || p.qSeqLens.dtype == DType::I32, Dtype, "decode: `qSeqLens` must be i32");
  MLA_CHECK(q.ndim == 3 && q.shape[2] == kD, Shape, "decode: `q` must be [tokens, H, 576]");
  MLA_CHECK(cache.ndim == 3 && cache.shape[2] == (fp8 ? kFp8RowBytes : kD), Shape,
            fp8 ? "decode: an FP8 `cache` must be u8 [numPages, pageSize, 656]" : "decode: `cache` must be [numPages, pageSize, 576]");
  MLA_CHECK(!fp8 || (cache.strides[1] == kFp8RowBytes && cache.strides[0] % 16 == 0 && reinterpret_cast<uintptr_t>(cache.data) % 16 == 0), Shape,
            "decode: an FP8 `cache` needs 656-byte rows, a page stride that is a multiple of 16 bytes and a 16-byte aligned start");
  const int64_t tokens = q.shape[0], H = q.shape[1], numPages = cache.shape[0], pageSize = cache.shape[1];
  MLA_CHECK(H >= 1 && H <= kDecodeMaxHeads, Range, "decode: head count must be in [1, 128]");
  MLA_CHECK(pageSize >= kDecodeMinPageSize && pageSize <= kDecodeMaxPageSize && (pageSize & (pageSize - 1)) == 0, Range,
            "decode: page size must be a power of two in [16, 256]");
  MLA_CHECK(numPages >= 1 && numPages <= INT32_MAX, Shape, "decode: `cache` must have 1 .. 2^31-1 pages");
  MLA_CHECK(bt.ndim == 2 && sl.ndim == 1 && bt.shape[0] == sl.shape[0], Shape, "decode: `blockTable` must be [B, maxPages] and `seqLens` [B]");
  const int64_t B = sl.shape[0], maxPages = bt.shape[1];
  MLA_CHECK(!p.hasQSeqLens || (p.qSeqLens.ndim == 1 && p.qSeqLens.shape[0] == B), Shape, "decode: `qSeqLens` must be [B]");
  MLA_CHECK(out.ndim == 3 && out.shape[0] == tokens && out.shape[1] == H && out.shape[2] == kDV, Shape, "decode: `out` must be [tokens, H, 512]");
  MLA_CHECK(lse.ndim == 2 && lse.shape[0] == tokens && lse.shape[1] == H, Shape, "decode: `lse` must be [tokens, H]");
  MLA_CHECK(q.strides[2] == 1 && cache.strides[2] == 1 && out.strides[2] == 1, Shape, "decode: `q`, `cache`, `out` need a contiguous last dim");
  MLA_CHECK(maxPages == 0 || bt.strides[1] == 1, Shape, "decode: `blockTable` rows must be contiguous");
  MLA_RETURN_IF_ERROR(checkAligned16(q, "q", 2));
  if (!fp8) MLA_RETURN_IF_ERROR(checkAligned16(cache, "cache", 2));
  MLA_CHECK(reinterpret_cast<uintptr_t>(out.data) % 4 == 0 && out.strides[0] % 2 == 0 && out.strides[1] % 2 == 0, Shape,
            "decode: `out` must be 4-byte aligned with even strides");
  MLA_CHECK(p.hasQSeqLens || (p.uniformQSeqLen >= 0 && tokens == B * p.uniformQSeqLen), Shape, "decode: `q` must hold B * s_q tokens");
  const int64_t maxQ = p.hasQSeqLens ? p.maxQSeqLen : p.uniformQSeqLen;
  MLA_CHECK(maxQ >= 0 && maxQ <= INT32_MAX / 128, Range, "decode: `maxQSeqLen` is out of range");
  MLA_CHECK(tokens * H <= INT32_MAX / kDV && B <= INT32_MAX / 8, Range, "decode: too many tokens or requests");
  DecodeKernelArgs a{};
  MLA_RETURN_IF_ERROR(bindSplitKv("decode", q, cache, out, lse, p.scale, p.workspace, p.wsMaxBatch, p.wsPartialRows, p.wsMaxParts, &a));
  MLA_CHECK(B <= p.wsMaxBatch, Range, "decode: batch exceeds the workspace's maxBatch");
  MLA_CHECK(2 * std::max<int64_t>(1, H * maxQ) <= p.wsPartialRows, Range, "decode: H * maxQSeqLen exceeds the workspace's partial rows");
  if (B == 0 || tokens == 0 || H * maxQ == 0) {
    if (tokens == 0 || !p.runCombine) return Status::Ok();
  }

  DeviceProps dp;
  MLA_RETURN_IF_ERROR(currentDeviceProps(&dp));
  const int tier = tierFor(dp.smemOptin);
  MLA_CHECK(tier != 0, Argument, "decode: the device has too little shared memory per block (needs ~96 KB opt-in)");
  const int64_t rowsBound = std::max<int64_t>(1, H * maxQ);
  bool hopper = false;
  MLA_RETURN_IF_ERROR(pickKernel(p.kernel, fp8, dp, &hopper));

  a.bt = bt.ptr<int32_t>(); a.btStride = bt.strides[0]; a.maxPages = int(std::min<int64_t>(maxPages, INT32_MAX / 256));
  a.seqLens = sl.ptr<int32_t>(); a.seqStride = sl.strides[0];
  a.qSeqLens = p.hasQSeqLens ? p.qSeqLens.ptr<int32_t>() : nullptr;
  a.qsStride = p.hasQSeqLens ? p.qSeqLens.strides[0] : 0;
  a.hasQ = p.hasQSeqLens ? 1 : 0; a.uniformQ = int(p.uniformQSeqLen); a.maxQ = int(maxQ);
  a.B = int(B); a.causal = p.causal ? 1 : 0;
  a.maxRows = rowsBound;

  const Phases phases{p.runPlan, p.runMain, p.runCombine, p.pdl && dp.major >= 9};
#if MLA_HAS_SM90A
  if (hopper)
    return runDecodeSm90(a, q.dtype, rowsBound, p.kernel == DecodeKernel::HopperWide, p.wsMaxParts, p.wsPartialRows, dp, phases,
                         static_cast<cudaStream_t>(stream), nullptr);
#endif
  SplitKvLauncher<false> launcher{"decode", a, q.dtype, fp8, rowsBound, p.wsMaxParts, p.wsPartialRows,
                                  phases, &dp, static_cast<cudaStream_t>(stream)};
  return withConfig(pickBlockM(rowsBound), tier, launcher);
}

}  // namespace mla::gpu

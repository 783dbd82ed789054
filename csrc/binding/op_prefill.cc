// prefillGather / prefillAttention / mergeAttnStates: the native steps of lib/ops/prefill.ts.
// The TS wrapper validates with argument names and builds the plan; the launchers re-check
// shapes, dtypes, alignment and ranges so a direct call cannot fault the GPU.
#include "binding/napi_util.h"
#include "kernels/prefill.h"

namespace mla::binding {
namespace {

// prefillGather({ cache, blockTable, plan, dst, g0, g1, stream? })
Napi::Value PrefillGather(const Napi::CallbackInfo& info) {
  ArgReader a(info, "prefillGather");
  gpu::PrefillGatherParams p;
  p.cache = a.tensor("cache");
  p.blockTable = a.tensor("blockTable");
  p.plan = a.tensor("plan");
  p.dst = a.tensor("dst");
  p.g0 = a.i64("g0");
  p.g1 = a.i64("g1");
  MLA_LAUNCH(a.env(), gpu::launchPrefillGather(p, a.stream()));
  return a.env().Undefined();
}

// prefillAttention({ q, kNope, kRope, v, out, lse, plan, g0, g1, reqBegin, reqCount,
//                    outRowBase, maxQLen, scale, stream? })
Napi::Value PrefillAttention(const Napi::CallbackInfo& info) {
  ArgReader a(info, "prefillAttention");
  gpu::PrefillAttentionParams p;
  p.q = a.tensor("q");
  p.kNope = a.tensor("kNope");
  p.kRope = a.tensor("kRope");
  p.v = a.tensor("v");
  p.out = a.tensor("out");
  p.lse = a.tensor("lse");
  p.plan = a.tensor("plan");
  p.g0 = a.i64("g0");
  p.g1 = a.i64("g1");
  p.reqBegin = a.i64("reqBegin");
  p.reqCount = a.i64("reqCount");
  p.outRowBase = a.i64("outRowBase", 0);
  p.maxQLen = a.i64("maxQLen");
  p.scale = a.f64("scale");
  MLA_LAUNCH(a.env(), gpu::launchPrefillAttention(p, a.stream()));
  return a.env().Undefined();
}

// mergeAttnStates({ out, lse, part, partLse, stream? }): out/lse updated in place.
Napi::Value MergeAttnStates(const Napi::CallbackInfo& info) {
  ArgReader a(info, "mergeAttnStates");
  gpu::MergeAttnStatesParams p;
  p.out = a.tensor("out");
  p.lse = a.tensor("lse");
  p.part = a.tensor("part");
  p.partLse = a.tensor("partLse");
  MLA_LAUNCH(a.env(), gpu::launchMergeAttnStates(p, a.stream()));
  return a.env().Undefined();
}

}  // namespace
MLA_REGISTER_OP("prefillGather", PrefillGather);
MLA_REGISTER_OP("prefillAttention", PrefillAttention);
MLA_REGISTER_OP("mergeAttnStates", MergeAttnStates);
}  // namespace mla::binding

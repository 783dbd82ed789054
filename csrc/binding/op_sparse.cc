// sparse: the native side of lib/ops/sparse.ts (sparse MLA over each token's top-k cache slots).
#include "binding/napi_util.h"
#include "kernels/sparse.h"

namespace mla::binding {
namespace {

// sparse({ q, cache, indices, topkLength?, attnSink?, out, lse, workspace, scale, wsMaxBatch,
//          wsPartialRows, wsMaxParts, runPlan?, runMain?, runCombine?, stream? })
// Converts only (core/check.h has the rule): the TS wrapper has validated everything it can
// see; the launcher re-checks what memory safety depends on, and the kernel guards every index, so a direct call cannot fault the GPU.
Napi::Value Sparse(const Napi::CallbackInfo& info) {
  ArgReader a(info, "sparse");
  SparseParams p;
  p.q = a.tensor("q");
  p.cache = a.tensor("cache");
  p.indices = a.tensor("indices");
  p.hasTopkLength = a.optionalTensor("topkLength", &p.topkLength);
  p.hasAttnSink = a.optionalTensor("attnSink", &p.attnSink);
  p.out = a.tensor("out");
  p.lse = a.tensor("lse");
  p.workspace = a.tensor("workspace");
  p.scale = static_cast<float>(a.f64("scale"));
  p.wsMaxBatch = a.i64("wsMaxBatch");
  p.wsPartialRows = a.i64("wsPartialRows");
  p.wsMaxParts = a.i64("wsMaxParts");
  p.runPlan = a.boolean("runPlan", true);
  p.runMain = a.boolean("runMain", true);
  p.runCombine = a.boolean("runCombine", true);
  MLA_LAUNCH(a.env(), gpu::launchSparse(p, a.stream()));
  return a.env().Undefined();
}

}  // namespace
MLA_REGISTER_OP("sparse", Sparse);
}  // namespace mla::binding

// sparse: the native side of lib/ops/sparse.ts (sparse MLA over each token's top-k cache slots).
#include "binding/napi_util.h"
#include "kernels/sparse.h"

namespace mla::binding {
namespace {

// sparse({ q, cache, indices, topkLength?, attnSink?, out, lse, workspace, scale, wsMaxBatch,
//          wsPartialRows, wsMaxParts, runPlan?, runMain?, runCombine?, stream? })
// The TS wrapper has validated everything it can see; the launcher re-checks what memory
// safety depends on, and the kernel guards every index, so a direct call cannot fault the GPU.
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
  const double scale = a.f64("scale");
  if (!(scale > 0) || !(scale < 1e30)) a.fail(Code::Range, "scale", "must be positive and finite");
  p.scale = static_cast<float>(scale);
  p.wsMaxBatch = a.i64("wsMaxBatch");
  p.wsPartialRows = a.i64("wsPartialRows");
  p.wsMaxParts = a.i64("wsMaxParts");
  if (p.wsMaxBatch < 0 || p.wsPartialRows < 0 || p.wsMaxParts < 1 || p.wsMaxBatch > (int64_t(1) << 31) ||
      p.wsPartialRows > (int64_t(1) << 31) || p.wsMaxParts > 65535)
    a.fail(Code::Range, "workspace", "has an invalid layout");
  p.runPlan = a.boolean("runPlan", true);
  p.runMain = a.boolean("runMain", true);
  p.runCombine = a.boolean("runCombine", true);
  MLA_LAUNCH(a.env(), gpu::launchSparse(p, a.stream()));
  return a.env().Undefined();
}

}  // namespace
MLA_REGISTER_OP("sparse", Sparse);
}  // namespace mla::binding

// sparse: the native side of lib/ops/sparse.ts (sparse MLA over each token's top-k cache slots).
#include "binding/split_kv_args.h"
#include "kernels/sparse.h"

namespace mla::binding {
namespace {

// sparse({ q, cache, indices, topkLength?, attnSink?, out, lse, workspace, scale, wsMaxBatch,
//          wsPartialRows, wsMaxParts, runPlan?, runMain?, runCombine?, pdl?, stream? })
// Converts only (core/check.h has the rule): the TS wrapper has validated everything it can
// see; the launcher re-checks what memory safety depends on, and the kernel guards every index,
// so a direct call cannot fault the GPU.
Napi::Value Sparse(const Napi::CallbackInfo& info) {
  ArgReader a(info, "sparse");
  SparseParams p;
  readSplitKvArgs(a, p);
  p.indices = a.tensor("indices");
  p.hasTopkLength = a.optionalTensor("topkLength", &p.topkLength);
  p.hasAttnSink = a.optionalTensor("attnSink", &p.attnSink);
  MLA_LAUNCH(a.env(), gpu::launchSparse(p, a.stream()));
  return a.env().Undefined();
}

}  // namespace
MLA_REGISTER_OP("sparse", Sparse);
}  // namespace mla::binding

// linear: argument reading for lib/ops/linear.ts (linear, absorbQuery, absorbOutput all land
// here; the TS side validates first, the launcher re-checks so a direct call cannot fault).
#include "binding/napi_util.h"
#include "kernels/linear.h"

namespace mla::binding {
namespace {

// linear({ x, weight, out, stream? }): out = x·weightᵀ; x [M, K] or [M, B, K],
// weight [N, K] or [B, N, K], out [M, N] or [M, B, N] (written in place).
Napi::Value LinearOp(const Napi::CallbackInfo& info) {
  ArgReader a(info, "linear");
  LinearParams p;
  p.x = a.tensor("x");
  p.weight = a.tensor("weight");
  p.out = a.tensor("out");
  MLA_LAUNCH(a.env(), gpu::launchLinear(p, a.stream()));
  return a.env().Undefined();
}

}  // namespace
MLA_REGISTER_OP("linear", LinearOp);
}  // namespace mla::binding

// rmsNorm: argument reading for lib/ops/rmsnorm.ts (which validates first; the launcher
// re-checks so a direct call cannot fault).
#include "binding/napi_util.h"
#include "kernels/rmsnorm.h"

namespace mla::binding {
namespace {

// rmsNorm({ x, weight, out, eps, stream? }): x, out [rows, dim]; weight [dim].
Napi::Value RmsNormOp(const Napi::CallbackInfo& info) {
  ArgReader a(info, "rmsNorm");
  RmsNormParams p;
  p.x = a.tensor("x");
  p.weight = a.tensor("weight");
  p.out = a.tensor("out");
  p.eps = static_cast<float>(a.f64("eps"));
  MLA_LAUNCH(a.env(), gpu::launchRmsNorm(p, a.stream()));
  return a.env().Undefined();
}

}  // namespace
MLA_REGISTER_OP("rmsNorm", RmsNormOp);
}  // namespace mla::binding

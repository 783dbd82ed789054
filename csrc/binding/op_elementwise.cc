// fill / copy: the binding of csrc/kernels/elementwise.{h,cu}, behind DeviceTensor.fill(), copyFrom() and to(dtype).
#include "binding/napi_util.h"
#include "kernels/elementwise.h"

namespace mla::binding {
namespace {

// fill({ dst, value, stream? })
Napi::Value Fill(const Napi::CallbackInfo& info) {
  ArgReader a(info, "fill");
  TensorRef dst = a.tensor("dst");
  double value = a.f64("value");
  MLA_LAUNCH(a.env(), gpu::fillTensor(dst, value, a.stream()));
  return a.env().Undefined();
}

// copy({ dst, src, stream? }): same shape (the launcher checks it); float dtypes convert, integer
// dtypes must match (DeviceTensor.copyFrom checks it).
Napi::Value Copy(const Napi::CallbackInfo& info) {
  ArgReader a(info, "copy");
  TensorRef dst = a.tensor("dst"), src = a.tensor("src");
  MLA_LAUNCH(a.env(), gpu::copyTensor(dst, src, a.stream()));
  return a.env().Undefined();
}

}  // namespace
MLA_REGISTER_OP("fill", Fill);
MLA_REGISTER_OP("copy", Copy);
}  // namespace mla::binding

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

// copy({ dst, src, stream? }): same shape; dtypes may differ between float types.
Napi::Value Copy(const Napi::CallbackInfo& info) {
  ArgReader a(info, "copy");
  TensorRef dst = a.tensor("dst"), src = a.tensor("src");
  if (dst.ndim != src.ndim) a.fail(Code::Shape, "src", "has a different rank than dst");
  for (int i = 0; i < dst.ndim; ++i)
    if (dst.shape[i] != src.shape[i]) a.fail(Code::Shape, "src", "has a different shape than dst");
  bool intDst = dst.dtype == DType::I32 || dst.dtype == DType::U8;
  bool intSrc = src.dtype == DType::I32 || src.dtype == DType::U8;
  if ((intDst || intSrc) && dst.dtype != src.dtype)
    a.fail(Code::Dtype, "src", std::string("cannot be converted from ") + dtypeName(src.dtype) + " to " + dtypeName(dst.dtype));
  MLA_LAUNCH(a.env(), gpu::copyTensor(dst, src, a.stream()));
  return a.env().Undefined();
}

}  // namespace
MLA_REGISTER_OP("fill", Fill);
MLA_REGISTER_OP("copy", Copy);
}  // namespace mla::binding

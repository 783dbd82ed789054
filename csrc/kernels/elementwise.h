// Elementwise kernels behind DeviceTensor.fill / copyFrom / to(dtype): launchers in
// elementwise.cu, binding in csrc/binding/op_elementwise.cc (ops `fill` and `copy`). Plain C++.
#pragma once
#include "core/status.h"
#include "core/tensor.h"

namespace mla::gpu {

// dst and src: same shape; dtypes may differ between float types.
Status fillTensor(const TensorRef& t, double value, StreamHandle stream);
Status copyTensor(const TensorRef& dst, const TensorRef& src, StreamHandle stream);

}  // namespace mla::gpu

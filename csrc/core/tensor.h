// TensorRef: a typed, strided window onto device memory, as the binding hands it to a
// launcher. Shapes and strides are in elements. The binding has already checked that every
// addressable element lies inside its allocation, so launchers only check semantics.
#pragma once
#include <cstdint>
#include "core/dtype.h"

namespace mla {

constexpr int kMaxDims = 8;

struct TensorRef {
  void* data = nullptr;  // points at element [0, 0, ...]
  DType dtype = DType::F32;
  int ndim = 0;
  int64_t shape[kMaxDims] = {};
  int64_t strides[kMaxDims] = {};
  int device = 0;

  int64_t numel() const {
    int64_t n = 1;
    for (int i = 0; i < ndim; ++i) n *= shape[i];
    return n;
  }
  int64_t size(int d) const { return shape[d < 0 ? d + ndim : d]; }
  int64_t stride(int d) const { return strides[d < 0 ? d + ndim : d]; }
  bool isContiguous() const {
    int64_t expect = 1;
    for (int i = ndim - 1; i >= 0; --i) {
      if (shape[i] != 1 && strides[i] != expect) return false;
      expect *= shape[i];
    }
    return true;
  }
  template <typename T> T* ptr() const { return static_cast<T*>(data); }
};

// Opaque stream handle (a cudaStream_t in CUDA builds); nullptr = the legacy default stream.
using StreamHandle = void*;

}  // namespace mla

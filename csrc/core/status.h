// Status: how every native function reports failure. Plain C++ (no CUDA, no N-API) so the
// binding, the kernels and the CPU-only stub all share it. The binding turns a failed
// Status into a JS MlaError whose `code` is errorCodeName(code).
#pragma once
#include <string>
#include <utility>

namespace mla {

enum class Code {
  Ok = 0,
  NoCuda,     // addon built without CUDA
  NoDevice,   // no driver or no device
  Cuda,       // any other CUDA error (cudaName says which)
  Oom,        // device allocation failed
  Shape,
  Dtype,
  Range,
  Disposed,
  Argument,
};

inline const char* errorCodeName(Code c) {
  switch (c) {
    case Code::Ok: return "OK";
    case Code::NoCuda: return "ERR_NO_CUDA";
    case Code::NoDevice: return "ERR_NO_DEVICE";
    case Code::Cuda: return "ERR_CUDA";
    case Code::Oom: return "ERR_OOM";
    case Code::Shape: return "ERR_SHAPE";
    case Code::Dtype: return "ERR_DTYPE";
    case Code::Range: return "ERR_RANGE";
    case Code::Disposed: return "ERR_DISPOSED";
    case Code::Argument: return "ERR_ARGUMENT";
  }
  return "ERR_ARGUMENT";
}

struct Status {
  Code code = Code::Ok;
  std::string cudaName;  // e.g. "cudaErrorIllegalAddress" for Code::Cuda
  std::string message;

  bool ok() const { return code == Code::Ok; }
  static Status Ok() { return {}; }
  static Status Error(Code c, std::string msg, std::string cuda = {}) {
    Status s;
    s.code = c;
    s.message = std::move(msg);
    s.cudaName = std::move(cuda);
    return s;
  }
};

#define MLA_RETURN_IF_ERROR(expr)            \
  do {                                       \
    ::mla::Status mla_status_ = (expr);      \
    if (!mla_status_.ok()) return mla_status_; \
  } while (0)

}  // namespace mla

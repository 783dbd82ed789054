// CUDA error -> Status mapping, for .cu files only.
#pragma once
#include <cuda_runtime.h>
#include <string>
#include "core/status.h"

namespace mla::gpu {

// Errors after which the context is unusable (a kernel faulted): every later call fails too.
inline bool contextLost(cudaError_t err) {
  switch (err) {
    case cudaErrorIllegalAddress: case cudaErrorLaunchFailure: case cudaErrorAssert:
    case cudaErrorIllegalInstruction: case cudaErrorMisalignedAddress: case cudaErrorInvalidAddressSpace:
    case cudaErrorInvalidPc: case cudaErrorHardwareStackError: case cudaErrorLaunchTimeout:
      return true;
    default:
      return false;
  }
}

inline Status fromCuda(cudaError_t err, const std::string& what) {
  if (err == cudaSuccess) return Status::Ok();
  Code code = Code::Cuda;
  if (err == cudaErrorMemoryAllocation) code = Code::Oom;
  if (err == cudaErrorInsufficientDriver || err == cudaErrorNoDevice) code = Code::NoDevice;
  return Status::Error(code,
                       what + ": " + cudaGetErrorName(err) + " (" + std::to_string(static_cast<int>(err)) +
                           "): " + cudaGetErrorString(err) +
                           (contextLost(err) ? ". The CUDA context is lost: every later GPU call in this process "
                                               "fails; restart the process"
                                             : ""),
                       cudaGetErrorName(err));
}

}  // namespace mla::gpu

// A failed call also becomes CUDA's "last error"; it is cleared here (a sticky one stays), or
// the next launch's check would report it as its own (e.g. an OOM as a failed kernel).
#define MLA_CUDA_TRY(expr, what)                                  \
  do {                                                            \
    cudaError_t mla_err_ = (expr);                                \
    if (mla_err_ != cudaSuccess) {                                \
      cudaGetLastError();                                         \
      return ::mla::gpu::fromCuda(mla_err_, what);                \
    }                                                             \
  } while (0)

// After a launch: configuration errors surface here, asynchronous faults at the next sync.
#define MLA_CHECK_LAUNCH(what) MLA_CUDA_TRY(cudaGetLastError(), what)

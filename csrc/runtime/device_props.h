// What launchers need to know about the device on every call, asked of the CUDA runtime once per
// device: an op runs per layer per decode step, and a per-call cudaFuncSetAttribute is a driver
// round trip. For .cu files (and their emulated twins) only.
#pragma once
#include <mutex>
#include <string>
#include "runtime/cuda_check.h"

namespace mla::gpu {

constexpr int kMaxCachedDevices = 64;

// The current device's ordinal, checked to index the per-device caches.
inline Status currentDeviceIndex(int* dev) {
  MLA_CUDA_TRY(cudaGetDevice(dev), "cudaGetDevice");
  if (*dev < 0 || *dev >= kMaxCachedDevices) return Status::Error(Code::Argument, "device ordinal " + std::to_string(*dev) + " is out of range");
  return Status::Ok();
}

struct DeviceProps {
  int smCount = 0, smemOptin = 0, smemPerSm = 0, major = 0, minor = 0;
  bool pools = false;  // stream-ordered allocation (cudaMallocAsync) supported
};

// The current device's properties, cached per ordinal.
inline Status currentDeviceProps(DeviceProps* out) {
  static std::mutex mu;
  static DeviceProps cache[kMaxCachedDevices];
  int dev = 0;
  MLA_RETURN_IF_ERROR(currentDeviceIndex(&dev));
  std::lock_guard<std::mutex> lock(mu);
  if (cache[dev].smCount == 0) {
    DeviceProps p;
    int pools = 0;
    MLA_CUDA_TRY(cudaDeviceGetAttribute(&p.smCount, cudaDevAttrMultiProcessorCount, dev), "device attributes (SM count)");
    MLA_CUDA_TRY(cudaDeviceGetAttribute(&p.smemOptin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev), "device attributes (shared memory)");
    MLA_CUDA_TRY(cudaDeviceGetAttribute(&p.smemPerSm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, dev), "device attributes (shared memory)");
    MLA_CUDA_TRY(cudaDeviceGetAttribute(&p.major, cudaDevAttrComputeCapabilityMajor, dev), "device attributes (compute capability)");
    MLA_CUDA_TRY(cudaDeviceGetAttribute(&p.minor, cudaDevAttrComputeCapabilityMinor, dev), "device attributes (compute capability)");
    MLA_CUDA_TRY(cudaDeviceGetAttribute(&pools, cudaDevAttrMemoryPoolsSupported, dev), "device attributes (memory pools)");
    p.pools = pools != 0;
    if (p.smCount < 1) p.smCount = 1;
    cache[dev] = p;
  }
  *out = cache[dev];
  return Status::Ok();
}

// Kernel's dynamic shared-memory limit raised to `bytes` on the current device, once per device
// (the attribute is per kernel and device; `bytes` is a constant of the kernel's instantiation).
template <auto Kernel>
Status optInSharedMemory(int bytes, const char* what) {
  static std::mutex mu;
  static bool done[kMaxCachedDevices] = {};
  int dev = 0;
  MLA_RETURN_IF_ERROR(currentDeviceIndex(&dev));
  std::lock_guard<std::mutex> lock(mu);
  if (!done[dev]) {
    MLA_CUDA_TRY(cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes), std::string(what) + ": shared memory opt-in");
    done[dev] = true;
  }
  return Status::Ok();
}

}  // namespace mla::gpu

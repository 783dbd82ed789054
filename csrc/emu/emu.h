// Emulator internals shared by scheduler.cc (blocks, fibers, PTX) and runtime_api.cc (memory,
// streams, events, devices, errors). Kernel sources never include this; they see device.h.
#pragma once
#include <cuda_runtime_api.h>
#include <cstddef>
#include <cstdint>
#include <string>

namespace mla::emu {

// What one emulated device claims to be (MLA_EMU_DEVICES, see runtime_api.cc).
struct DeviceSpec {
  std::string name;
  int major = 9, minor = 0;
  int smCount = 132;
  int smemOptin = 232448;   // cudaDevAttrMaxSharedMemoryPerBlockOptin
  int smemPerSm = 233472;   // cudaDevAttrMaxSharedMemoryPerMultiprocessor
  int l2Bytes = 50 << 20;
  size_t memoryBytes = size_t(8) << 30;
};

int deviceCount();
const DeviceSpec& device(int index);
int currentDevice();

// The thread's last error (cudaGetLastError) and the process-wide sticky fault: after a kernel
// fault every later call fails with it, as a lost CUDA context does.
void setLastError(cudaError_t err);
cudaError_t stickyError();
void raiseSticky(cudaError_t err, const std::string& message);
const char* stickyMessage();

// Global memory bookkeeping: true when [p, p + bytes) lies inside one live allocation.
bool isDeviceRange(const void* p, size_t bytes);
int maxDynamicSmem(const void* kernel);  // cudaFuncSetAttribute limit, default 48 KB
bool isLiveStream(cudaStream_t stream);   // null (the default stream) or created and not destroyed

// The emulated cuTensorMapEncodeTiled (hopper.cc), a PFN_cuTensorMapEncodeTiled_v12000, which
// cudaGetDriverEntryPointByVersion hands out: the emulated TMA reads the maps it writes.
void* tensorMapEncodeTiledEntry();

}  // namespace mla::emu

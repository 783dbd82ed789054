// The device runtime as the N-API binding sees it: plain C++ declarations, implemented by
// runtime.cu (CUDA builds) or runtime_stub.cc (CPU-only builds, every call ERR_NO_CUDA), so the
// binding compiles with g++ and never includes CUDA headers.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include "core/status.h"
#include "core/tensor.h"

namespace mla::gpu {

bool compiledWithCuda();
bool emulated();                    // the emulated-device build (csrc/emu): kernels run on the CPU
const char* compiledArchs();        // e.g. "80-real 86-real ... 120"
const char* compilerVersion();      // nvcc version used for the build
int runtimeVersion();               // CUDA runtime linked in, e.g. 13000

struct DeviceInfo {
  std::string name;
  int major = 0, minor = 0;
  int smCount = 0;
  size_t totalMemory = 0, freeMemory = 0;
  int l2CacheBytes = 0;
  int sharedMemPerBlockOptin = 0;
  int sharedMemPerSm = 0;
  int clockKHz = 0, memoryClockKHz = 0, memoryBusWidth = 0;
  std::string pciBusId;
};

// Driver version (0 when no driver is installed) and device count; never throws.
Status driverVersion(int* version);
Status deviceCount(int* count);
Status deviceInfo(int device, DeviceInfo* info);
Status setDevice(int device);
Status currentDevice(int* device);
// Fails with NoCuda / NoDevice unless a usable device exists; cheap after the first call.
Status requireDevice();

Status deviceMalloc(void** ptr, size_t bytes);
void deviceFree(void* ptr);  // errors are ignored: it runs from finalizers
Status copyHostToDevice(void* dst, const void* src, size_t bytes, StreamHandle stream);
Status copyDeviceToHost(void* dst, const void* src, size_t bytes, StreamHandle stream);
Status copyDeviceToDevice(void* dst, const void* src, size_t bytes, StreamHandle stream);
// Host -> device in `stream`'s order without waiting for the device: `src` is staged into pinned
// memory before this returns (so it may be reused at once), then copied when the stream gets
// there. copyHostToDevice instead waits for the stream's earlier work.
Status copyHostToDeviceAsync(void* dst, const void* src, size_t bytes, StreamHandle stream);
Status deviceSynchronize();

Status streamCreate(StreamHandle* stream);
Status streamDestroy(StreamHandle stream);
Status streamSynchronize(StreamHandle stream);
Status streamQuery(StreamHandle stream, bool* done);

Status eventCreate(void** event);
Status eventDestroy(void* event);
Status eventRecord(void* event, StreamHandle stream);
Status eventSynchronize(void* event);
Status eventQuery(void* event, bool* done);
Status eventElapsedMs(void* start, void* end, float* ms);
Status streamWaitEvent(StreamHandle stream, void* event);

// Benchmarks: holds `stream` on the device (a kernel that waits for the host, nvbench's
// "blocking kernel") so the work queued behind it runs back to back once released, and its
// timings exclude the host's cost of queuing it. One hold per device at a time. *held is false
// where nothing can hold (the emulated device runs each launch when it is made). The hold ends
// by itself after timeoutMs (a host that never releases cannot hang the device); streamRelease's
// *inTime says whether the release came first.
Status streamHold(StreamHandle stream, int timeoutMs, bool* held);
Status streamRelease(bool* inTime);

// The error the last launch left (after a launcher returned), as a Status.
Status lastLaunchError(const char* what);

}  // namespace mla::gpu

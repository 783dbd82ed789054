// CUDA implementation of runtime.h.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include "runtime/cuda_check.h"
#include "runtime/device_props.h"
#include "runtime/no_device.h"
#include "runtime/runtime.h"

namespace mla::gpu {

bool compiledWithCuda() { return true; }
#ifdef MLA_EMULATE
bool emulated() { return true; }
#else
bool emulated() { return false; }
#endif
const char* compiledArchs() { return MLA_CUDA_ARCHS; }
const char* compilerVersion() { return MLA_CUDA_COMPILER_VERSION; }
int runtimeVersion() {
  int v = 0;
  cudaRuntimeGetVersion(&v);
  return v;
}

Status driverVersion(int* version) {
  *version = 0;
  MLA_CUDA_TRY(cudaDriverGetVersion(version), "cudaDriverGetVersion");
  return Status::Ok();
}

Status deviceCount(int* count) {
  *count = 0;  // cudaGetDeviceCount leaves it untouched on error
  cudaError_t err = cudaGetDeviceCount(count);
  if (err != cudaSuccess) {
    *count = 0;
    cudaGetLastError();
    return fromCuda(err, "cudaGetDeviceCount");
  }
  return Status::Ok();
}

Status deviceInfo(int device, DeviceInfo* info) {
  cudaDeviceProp p{};
  MLA_CUDA_TRY(cudaGetDeviceProperties(&p, device), "cudaGetDeviceProperties");
  info->name = p.name;
  info->major = p.major;
  info->minor = p.minor;
  info->smCount = p.multiProcessorCount;
  info->totalMemory = p.totalGlobalMem;
  info->l2CacheBytes = p.l2CacheSize;
  info->sharedMemPerBlockOptin = static_cast<int>(p.sharedMemPerBlockOptin);
  info->sharedMemPerSm = static_cast<int>(p.sharedMemPerMultiprocessor);
  info->memoryBusWidth = p.memoryBusWidth;
  cudaDeviceGetAttribute(&info->clockKHz, cudaDevAttrClockRate, device);
  cudaDeviceGetAttribute(&info->memoryClockKHz, cudaDevAttrMemoryClockRate, device);
  char bus[32] = {};
  if (cudaDeviceGetPCIBusId(bus, sizeof bus, device) == cudaSuccess) info->pciBusId = bus;
  int prev = 0;
  cudaGetDevice(&prev);
  if (cudaSetDevice(device) == cudaSuccess) {
    size_t freeB = 0, totalB = 0;
    if (cudaMemGetInfo(&freeB, &totalB) == cudaSuccess) info->freeMemory = freeB;
    cudaSetDevice(prev);
  }
  cudaGetLastError();
  return Status::Ok();
}

Status setDevice(int device) {
  MLA_CUDA_TRY(cudaSetDevice(device), "cudaSetDevice(" + std::to_string(device) + ")");
  return Status::Ok();
}

Status currentDevice(int* device) {
  *device = 0;
  MLA_CUDA_TRY(cudaGetDevice(device), "cudaGetDevice");
  return Status::Ok();
}

const DeviceProblem& deviceProblem() {
  static std::once_flag once;
  static DeviceProblem cached;
  std::call_once(once, [] {
    int n = 0;
    cudaError_t err = cudaGetDeviceCount(&n);
    if (err == cudaSuccess && n > 0) return;
    cudaGetLastError();
    NoDeviceFacts f;
    if (err != cudaSuccess) {
      f.cudaName = cudaGetErrorName(err);
      f.cudaCode = static_cast<int>(err);
      f.cudaText = cudaGetErrorString(err);
    }
    cudaDriverGetVersion(&f.driverVersion);  // stays 0 without a driver
    f.runtimeVersion = runtimeVersion();
    if (const char* v = std::getenv("CUDA_VISIBLE_DEVICES")) {
      f.visibleDevicesSet = true;
      f.visibleDevices = v;
    }
    f.emulated = emulated();
    cached = explainNoDevice(f);
  });
  return cached;
}

Status requireDevice() { return deviceProblem().status; }

Status deviceMalloc(void** ptr, size_t bytes) {
  MLA_RETURN_IF_ERROR(requireDevice());
  *ptr = nullptr;
  cudaError_t err = cudaMalloc(ptr, bytes == 0 ? 1 : bytes);
  if (err != cudaSuccess) {
    cudaGetLastError();  // an allocation failure is not sticky; clear it
    *ptr = nullptr;
    return fromCuda(err, "cudaMalloc(" + std::to_string(bytes) + " bytes)");
  }
  return Status::Ok();
}

void deviceFree(void* ptr) {
  if (ptr) cudaFree(ptr);
}

static cudaStream_t S(StreamHandle s) { return static_cast<cudaStream_t>(s); }

static Status copy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, StreamHandle stream,
                   const char* what) {
  if (bytes == 0) return Status::Ok();
  MLA_CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, kind, S(stream)), what);
  if (kind != cudaMemcpyDeviceToDevice) MLA_CUDA_TRY(cudaStreamSynchronize(S(stream)), what);
  return Status::Ok();
}

Status copyHostToDevice(void* dst, const void* src, size_t bytes, StreamHandle stream) {
  return copy(dst, src, bytes, cudaMemcpyHostToDevice, stream, "copy host to device");
}
Status copyDeviceToHost(void* dst, const void* src, size_t bytes, StreamHandle stream) {
  return copy(dst, src, bytes, cudaMemcpyDeviceToHost, stream, "copy device to host");
}
Status copyDeviceToDevice(void* dst, const void* src, size_t bytes, StreamHandle stream) {
  return copy(dst, src, bytes, cudaMemcpyDeviceToDevice, stream, "copy device to device");
}

// Pinned staging for copyHostToDeviceAsync: a ring of slots per device, each reused once the copy
// that last read it has run (its event), so up to kStagingSlots uploads are in flight before one
// waits. Grown on demand (cudaMallocHost is slow, so sizes double), never shrunk or freed.
namespace {
constexpr int kStagingSlots = 4;
struct StagingSlot {
  void* host = nullptr;
  size_t bytes = 0;
  cudaEvent_t done = nullptr;
};
struct StagingRing {
  std::mutex mu;
  StagingSlot slots[kStagingSlots];
  int next = 0;
};
}  // namespace

Status copyHostToDeviceAsync(void* dst, const void* src, size_t bytes, StreamHandle stream) {
  if (bytes == 0) return Status::Ok();
  static StagingRing rings[kMaxCachedDevices];
  int dev = 0;
  MLA_RETURN_IF_ERROR(currentDeviceIndex(&dev));
  StagingRing& ring = rings[dev];
  std::lock_guard<std::mutex> lock(ring.mu);
  StagingSlot& slot = ring.slots[ring.next];
  ring.next = (ring.next + 1) % kStagingSlots;
  if (slot.done) MLA_CUDA_TRY(cudaEventSynchronize(slot.done), "copy host to device: staging slot");
  else MLA_CUDA_TRY(cudaEventCreateWithFlags(&slot.done, cudaEventDisableTiming), "copy host to device: staging event");
  if (slot.bytes < bytes) {
    const size_t grown = std::max<size_t>({bytes, 2 * slot.bytes, 4096});
    if (slot.host) cudaFreeHost(slot.host);
    slot.host = nullptr;
    slot.bytes = 0;
    MLA_CUDA_TRY(cudaMallocHost(&slot.host, grown), "copy host to device: pinned staging (" + std::to_string(grown) + " bytes)");
    slot.bytes = grown;
  }
  std::memcpy(slot.host, src, bytes);
  MLA_CUDA_TRY(cudaMemcpyAsync(dst, slot.host, bytes, cudaMemcpyHostToDevice, S(stream)), "copy host to device");
  MLA_CUDA_TRY(cudaEventRecord(slot.done, S(stream)), "copy host to device: staging event");
  return Status::Ok();
}

Status deviceSynchronize() {
  MLA_CUDA_TRY(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
  return Status::Ok();
}

Status streamCreate(StreamHandle* stream) {
  cudaStream_t s = nullptr;
  MLA_CUDA_TRY(cudaStreamCreate(&s), "cudaStreamCreate");
  *stream = s;
  return Status::Ok();
}
Status streamDestroy(StreamHandle stream) {
  MLA_CUDA_TRY(cudaStreamDestroy(S(stream)), "cudaStreamDestroy");
  return Status::Ok();
}
Status streamSynchronize(StreamHandle stream) {
  MLA_CUDA_TRY(cudaStreamSynchronize(S(stream)), "cudaStreamSynchronize");
  return Status::Ok();
}
Status streamQuery(StreamHandle stream, bool* done) {
  cudaError_t err = cudaStreamQuery(S(stream));
  *done = err == cudaSuccess;
  if (err == cudaErrorNotReady) return Status::Ok();
  MLA_CUDA_TRY(err, "cudaStreamQuery");
  return Status::Ok();
}

Status eventCreate(void** event) {
  cudaEvent_t e = nullptr;
  MLA_CUDA_TRY(cudaEventCreate(&e), "cudaEventCreate");
  *event = e;
  return Status::Ok();
}
Status eventDestroy(void* event) {
  MLA_CUDA_TRY(cudaEventDestroy(static_cast<cudaEvent_t>(event)), "cudaEventDestroy");
  return Status::Ok();
}
Status eventRecord(void* event, StreamHandle stream) {
  MLA_CUDA_TRY(cudaEventRecord(static_cast<cudaEvent_t>(event), S(stream)), "cudaEventRecord");
  return Status::Ok();
}
Status eventSynchronize(void* event) {
  MLA_CUDA_TRY(cudaEventSynchronize(static_cast<cudaEvent_t>(event)), "cudaEventSynchronize");
  return Status::Ok();
}
Status eventQuery(void* event, bool* done) {
  cudaError_t err = cudaEventQuery(static_cast<cudaEvent_t>(event));
  *done = err == cudaSuccess;
  if (err == cudaErrorNotReady) return Status::Ok();
  MLA_CUDA_TRY(err, "cudaEventQuery");
  return Status::Ok();
}
Status eventElapsedMs(void* start, void* end, float* ms) {
  MLA_CUDA_TRY(cudaEventElapsedTime(ms, static_cast<cudaEvent_t>(start), static_cast<cudaEvent_t>(end)),
               "cudaEventElapsedTime");
  return Status::Ok();
}
Status streamWaitEvent(StreamHandle stream, void* event) {
  MLA_CUDA_TRY(cudaStreamWaitEvent(S(stream), static_cast<cudaEvent_t>(event), 0), "cudaStreamWaitEvent");
  return Status::Ok();
}

// Stream holds: per device, a pair of pinned, device-mapped words (allocated once: freeing
// pinned memory synchronizes the device, which would wait for the hold itself) and an event
// recorded after the hold kernel. flags[0]: the generation the host released; flags[1]: the
// generation whose hold timed out.
namespace {
struct HoldState {
  volatile uint32_t* flags = nullptr;
  uint32_t* deviceFlags = nullptr;
  cudaEvent_t ended = nullptr;
  uint32_t generation = 0;
};
HoldState& holdState(int dev) {
  static HoldState states[kMaxCachedDevices];
  return states[dev];
}
int heldDevice = -1;  // the device of the hold in progress (one at a time per process)
std::mutex heldMu;

#ifndef MLA_EMULATE
// Spins until the host publishes `want` in flags[0], or timeoutNs of the global timer pass
// (then flags[1] = want). The sleep keeps the spinning warp off the SM's issue slots.
__global__ void holdKernel(volatile uint32_t* flags, uint32_t want, unsigned long long timeoutNs) {
  unsigned long long t0, t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
  while (flags[0] != want) {
    __nanosleep(2000);
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    if (t - t0 > timeoutNs) {
      flags[1] = want;
      return;
    }
  }
}
#endif
}  // namespace

Status streamHold(StreamHandle stream, int timeoutMs, bool* held) {
  *held = false;
  std::lock_guard<std::mutex> lock(heldMu);
  if (heldDevice >= 0) return Status::Error(Code::Argument, "hold: a stream is already held (release it first)");
#ifdef MLA_EMULATE
  (void)stream;
  return Status::Ok();
#else
  int dev = 0;
  MLA_RETURN_IF_ERROR(currentDeviceIndex(&dev));
  HoldState& h = holdState(dev);
  if (!h.flags) {
    void* host = nullptr;
    MLA_CUDA_TRY(cudaHostAlloc(&host, 2 * sizeof(uint32_t), cudaHostAllocMapped), "hold: pinned flags");
    std::memset(host, 0, 2 * sizeof(uint32_t));
    void* devPtr = nullptr;
    if (cudaHostGetDevicePointer(&devPtr, host, 0) != cudaSuccess || cudaEventCreateWithFlags(&h.ended, cudaEventDisableTiming) != cudaSuccess) {
      cudaFreeHost(host);  // nothing is queued yet: nothing to wait for
      h.ended = nullptr;
      return Status::Error(Code::Cuda, "hold: mapping the pinned flags failed");
    }
    h.flags = static_cast<volatile uint32_t*>(host);
    h.deviceFlags = static_cast<uint32_t*>(devPtr);
  }
  const uint32_t want = ++h.generation;
  holdKernel<<<1, 1, 0, S(stream)>>>(h.deviceFlags, want, static_cast<unsigned long long>(std::max(timeoutMs, 1)) * 1000000ull);
  MLA_CUDA_TRY(cudaGetLastError(), "hold: launch");
  MLA_CUDA_TRY(cudaEventRecord(h.ended, S(stream)), "hold: event");
  heldDevice = dev;
  *held = true;
  return Status::Ok();
#endif
}

Status streamRelease(bool* inTime) {
  *inTime = false;
  std::lock_guard<std::mutex> lock(heldMu);
  if (heldDevice < 0) return Status::Error(Code::Argument, "release: no stream is held");
  HoldState& h = holdState(heldDevice);
  heldDevice = -1;
  const uint32_t want = h.generation;
  std::atomic_thread_fence(std::memory_order_seq_cst);
  h.flags[0] = want;
  std::atomic_thread_fence(std::memory_order_seq_cst);
  // Only the hold kernel is waited for; the work queued behind it keeps running.
  MLA_CUDA_TRY(cudaEventSynchronize(h.ended), "release: hold event");
  *inTime = h.flags[1] != want;
  return Status::Ok();
}

Status lastLaunchError(const char* what) {
  MLA_CUDA_TRY(cudaGetLastError(), what);
  return Status::Ok();
}

}  // namespace mla::gpu

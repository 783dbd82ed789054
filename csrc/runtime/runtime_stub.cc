// CPU-only build of runtime.h: the addon loads, reports itself, and every GPU call fails
// with ERR_NO_CUDA and the fix.
#include "runtime/graph.h"
#include "runtime/no_device.h"
#include "kernels/elementwise.h"
#include "runtime/runtime.h"

namespace mla::gpu {

// The two ways to get here need different fixes, so the build says which it was.
static Status noCuda() {
#if MLA_CUDA_DISABLED
  return Status::Error(Code::NoCuda,
                       "mla-cuda was built without CUDA because MLA_CUDA_DISABLE was set at install time. "
                       "Unset it and run `npm rebuild mla-cuda`.");
#else
  return Status::Error(Code::NoCuda,
                       "mla-cuda was built without CUDA (no nvcc found at install time). Install the CUDA "
                       "toolkit (12.8+), put nvcc on PATH or set CUDACXX=/path/to/nvcc, then run "
                       "`npm rebuild mla-cuda`.");
#endif
}

bool compiledWithCuda() { return false; }
bool emulated() { return false; }
const char* compiledArchs() { return ""; }
const char* compilerVersion() { return ""; }
int runtimeVersion() { return 0; }
Status driverVersion(int* v) { *v = 0; return noCuda(); }
Status deviceCount(int* n) { *n = 0; return noCuda(); }
Status deviceInfo(int, DeviceInfo*) { return noCuda(); }
Status setDevice(int) { return noCuda(); }
Status currentDevice(int* d) { *d = 0; return noCuda(); }
const DeviceProblem& deviceProblem() {
  static const DeviceProblem p{noCuda(), "", ""};
  return p;
}
Status requireDevice() { return noCuda(); }
Status deviceMalloc(void** p, size_t) { *p = nullptr; return noCuda(); }
void deviceFree(void*) {}
Status copyHostToDevice(void*, const void*, size_t, StreamHandle) { return noCuda(); }
Status copyHostToDeviceAsync(void*, const void*, size_t, StreamHandle) { return noCuda(); }
Status copyDeviceToHost(void*, const void*, size_t, StreamHandle) { return noCuda(); }
Status copyDeviceToDevice(void*, const void*, size_t, StreamHandle) { return noCuda(); }
Status deviceSynchronize() { return noCuda(); }
Status streamCreate(StreamHandle* s) { *s = nullptr; return noCuda(); }
Status streamDestroy(StreamHandle) { return noCuda(); }
Status streamSynchronize(StreamHandle) { return noCuda(); }
Status streamQuery(StreamHandle, bool* d) { *d = true; return noCuda(); }
Status eventCreate(void** e) { *e = nullptr; return noCuda(); }
Status eventDestroy(void*) { return noCuda(); }
Status eventRecord(void*, StreamHandle) { return noCuda(); }
Status eventSynchronize(void*) { return noCuda(); }
Status eventQuery(void*, bool* d) { *d = true; return noCuda(); }
Status eventElapsedMs(void*, void*, float* ms) { *ms = 0; return noCuda(); }
Status streamWaitEvent(StreamHandle, void*) { return noCuda(); }
Status streamHold(StreamHandle, int, bool* held) { *held = false; return noCuda(); }
Status streamRelease(bool* inTime) { *inTime = false; return noCuda(); }
Status fillTensor(const TensorRef&, double, StreamHandle) { return noCuda(); }
Status copyTensor(const TensorRef&, const TensorRef&, StreamHandle) { return noCuda(); }
Status lastLaunchError(const char*) { return noCuda(); }

Status streamBeginCapture(StreamHandle) { return noCuda(); }
Status streamEndCapture(StreamHandle, void** e) { *e = nullptr; return noCuda(); }
Status streamEndCaptureInto(StreamHandle, void*, bool* u) { *u = false; return noCuda(); }
Status streamIsCapturing(StreamHandle, bool* c) { *c = false; return noCuda(); }
Status graphLaunch(void*, StreamHandle) { return noCuda(); }
void graphExecDestroy(void*) {}
}  // namespace mla::gpu

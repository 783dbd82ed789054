// DeviceBuffer: one device allocation owned by JS. Freed by free(), or by the GC finalizer
// when forgotten; a free requested while an async download still reads it is deferred.
#pragma once
#include <napi.h>
#include <string>

namespace mla::binding {

class DeviceBuffer : public Napi::ObjectWrap<DeviceBuffer> {
 public:
  static Napi::Function Define(Napi::Env env);
  explicit DeviceBuffer(const Napi::CallbackInfo& info);
  ~DeviceBuffer() override;

  void* ptr() const { return ptr_; }
  size_t bytes() const { return bytes_; }
  int device() const { return device_; }
  bool freed() const { return ptr_ == nullptr; }
  void beginUse() { ++inFlight_; }
  void endUse();

 private:
  Napi::Value Free(const Napi::CallbackInfo& info);
  Napi::Value Upload(const Napi::CallbackInfo& info);
  Napi::Value Download(const Napi::CallbackInfo& info);
  Napi::Value DownloadAsync(const Napi::CallbackInfo& info);
  Napi::Value GetBytes(const Napi::CallbackInfo& info);
  Napi::Value GetFreed(const Napi::CallbackInfo& info);
  Napi::Value GetDevice(const Napi::CallbackInfo& info);
  void release();

  void* ptr_ = nullptr;
  size_t bytes_ = 0;
  int device_ = 0;
  int inFlight_ = 0;
  bool freeRequested_ = false;
};

// While this thread captures a CUDA graph, cudaFree would break the capture (and the graph may
// still read the memory): frees, including the GC's, wait until the last capture ends.
void captureBegan();
void captureEnded();

// The native buffer behind a JS value, or a thrown ERR_ARGUMENT / ERR_DISPOSED naming the op and
// the argument.
DeviceBuffer* unwrapBuffer(Napi::Env env, Napi::Value v, const char* op, const char* arg);

}  // namespace mla::binding

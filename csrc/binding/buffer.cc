#include "binding/buffer.h"
#include <cstring>
#include <vector>
#include "binding/napi_util.h"
#include "runtime/runtime.h"

namespace mla::binding {

// Per OS thread, like CUDA's thread-local capture mode (each worker_thread has its own).
static thread_local int tlCaptures = 0;
static thread_local std::vector<void*>* tlDeferredFrees = nullptr;

static void freeDeviceMemory(void* p) {
  if (tlCaptures == 0) return gpu::deviceFree(p);
  if (!tlDeferredFrees) tlDeferredFrees = new std::vector<void*>();
  tlDeferredFrees->push_back(p);
}
void captureBegan() { ++tlCaptures; }
void captureEnded() {
  if (tlCaptures > 0 && --tlCaptures == 0 && tlDeferredFrees) {
    for (void* p : *tlDeferredFrees) gpu::deviceFree(p);
    tlDeferredFrees->clear();
  }
}

Napi::Function DeviceBuffer::Define(Napi::Env env) {
  return DefineClass(env, "DeviceBuffer",
                     {InstanceMethod<&DeviceBuffer::Free>("free"),
                      InstanceMethod<&DeviceBuffer::Upload>("upload"),
                      InstanceMethod<&DeviceBuffer::Download>("download"),
                      InstanceMethod<&DeviceBuffer::DownloadAsync>("downloadAsync"),
                      InstanceAccessor<&DeviceBuffer::GetBytes>("bytes"),
                      InstanceAccessor<&DeviceBuffer::GetFreed>("freed"),
                      InstanceAccessor<&DeviceBuffer::GetDevice>("device")});
}

// new DeviceBuffer(bytes): allocates on the current device.
DeviceBuffer::DeviceBuffer(const Napi::CallbackInfo& info) : Napi::ObjectWrap<DeviceBuffer>(info) {
  Napi::Env env = info.Env();
  napi_type_tag_object(env, info.This(), &kDeviceBufferTag);
  if (info.Length() < 1 || !info[0].IsNumber()) throwError(env, Code::Argument, "DeviceBuffer: `bytes` must be a number");
  double bytes = info[0].As<Napi::Number>().DoubleValue();
  if (!(bytes >= 0) || bytes > 1.0e15) throwError(env, Code::Range, "DeviceBuffer: `bytes` out of range");
  throwIfError(env, gpu::requireDevice());  // first: its message explains a missing driver or GPU
  throwIfError(env, gpu::currentDevice(&device_));
  void* p = nullptr;
  throwIfError(env, gpu::deviceMalloc(&p, static_cast<size_t>(bytes)));
  ptr_ = p;
  bytes_ = static_cast<size_t>(bytes);
  Napi::MemoryManagement::AdjustExternalMemory(env, static_cast<int64_t>(bytes_));
}

DeviceBuffer::~DeviceBuffer() {
  // GC finalizer path: no JS allowed, freeing device memory is fine.
  if (ptr_) freeDeviceMemory(ptr_);
  ptr_ = nullptr;
}

void DeviceBuffer::release() {
  if (!ptr_) return;
  freeDeviceMemory(ptr_);
  ptr_ = nullptr;
  Napi::MemoryManagement::AdjustExternalMemory(Env(), -static_cast<int64_t>(bytes_));
}

void DeviceBuffer::endUse() {
  if (--inFlight_ == 0 && freeRequested_) release();
}

// free(): idempotent; deferred while an async download still reads the memory.
Napi::Value DeviceBuffer::Free(const Napi::CallbackInfo& info) {
  freeRequested_ = true;
  if (inFlight_ == 0) release();
  return info.Env().Undefined();
}

static void checkRange(Napi::Env env, const DeviceBuffer* b, double offset, double bytes, const char* what) {
  if (b->freed()) throwError(env, Code::Disposed, std::string(what) + ": the buffer was disposed");
  if (!(offset >= 0) || !(bytes >= 0) || offset + bytes > static_cast<double>(b->bytes()))
    throwError(env, Code::Range, std::string(what) + ": byte range outside the buffer");
}

// upload(view: ArrayBufferView, byteOffset, stream?): host -> device copy; synchronous on the
// legacy stream, or with `stream` in its order (staged, the host does not wait for the device).
Napi::Value DeviceBuffer::Upload(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsTypedArray() || !info[1].IsNumber())
    throwError(env, Code::Argument, "upload: expected (typedArray, byteOffset)");
  Napi::TypedArray view = info[0].As<Napi::TypedArray>();
  double offset = info[1].As<Napi::Number>().DoubleValue();
  checkRange(env, this, offset, static_cast<double>(view.ByteLength()), "upload");
  StreamHandle stream = info.Length() > 2 ? streamFrom(env, info[2], "upload", "stream") : nullptr;
  const char* src = static_cast<const char*>(view.ArrayBuffer().Data()) + view.ByteOffset();
  char* dst = static_cast<char*>(ptr_) + static_cast<size_t>(offset);
  throwIfError(env, stream ? gpu::copyHostToDeviceAsync(dst, src, view.ByteLength(), stream)
                           : gpu::copyHostToDevice(dst, src, view.ByteLength(), nullptr));
  return env.Undefined();
}

// download(byteOffset, bytes): synchronous device -> host copy into a new ArrayBuffer.
Napi::Value DeviceBuffer::Download(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsNumber() || !info[1].IsNumber())
    throwError(env, Code::Argument, "download: expected (byteOffset, bytes)");
  double offset = info[0].As<Napi::Number>().DoubleValue(), bytes = info[1].As<Napi::Number>().DoubleValue();
  checkRange(env, this, offset, bytes, "download");
  Napi::ArrayBuffer out = Napi::ArrayBuffer::New(env, static_cast<size_t>(bytes));
  throwIfError(env, gpu::copyDeviceToHost(out.Data(), static_cast<char*>(ptr_) + static_cast<size_t>(offset),
                                          static_cast<size_t>(bytes), nullptr));
  return out;
}

// The copy runs on a libuv worker thread so the event loop keeps going.
class DownloadWorker : public Napi::AsyncWorker {
 public:
  // `after`: an event recorded on the caller's stream (owned by the worker from here on); the
  // copy waits for it on the worker thread. The buffer is marked in use at once, so a dispose()
  // right after downloadAsync() returns is deferred until the copy is done, however long the
  // stream's earlier work takes.
  DownloadWorker(Napi::Env env, DeviceBuffer* buf, Napi::Object owner, size_t offset, size_t bytes, void* after)
      : Napi::AsyncWorker(env, "mla-cuda:download"), deferred_(Napi::Promise::Deferred::New(env)), buf_(buf),
        src_(static_cast<char*>(buf->ptr()) + offset), bytes_(bytes), device_(buf->device()), after_(after),
        host_(bytes) {
    owner_ = Napi::Persistent(owner);
    buf_->beginUse();
  }
  ~DownloadWorker() override {
    if (after_) gpu::eventDestroy(after_);
    buf_->endUse();
  }
  Napi::Promise promise() { return deferred_.Promise(); }

  void Execute() override {
    status_ = gpu::setDevice(device_);  // the device is per host thread
    if (status_.ok() && after_) status_ = gpu::eventSynchronize(after_);
    if (status_.ok()) status_ = gpu::copyDeviceToHost(host_.data(), src_, bytes_, nullptr);
  }
  void OnOK() override {
    settlePromise(deferred_, [&] {
      Napi::Env env = Env();
      if (!status_.ok()) {
        deferred_.Reject(makeError(env, status_.code, status_.message, status_.cudaName).Value());
        return;
      }
      Napi::ArrayBuffer out = Napi::ArrayBuffer::New(env, bytes_);
      if (bytes_) std::memcpy(out.Data(), host_.data(), bytes_);
      deferred_.Resolve(out);
    });
  }
  void OnError(const Napi::Error& e) override {
    settlePromise(deferred_, [&] { deferred_.Reject(e.Value()); });
  }

 private:
  Napi::Promise::Deferred deferred_;
  Napi::ObjectReference owner_;  // keeps the buffer object (and its memory) alive meanwhile
  DeviceBuffer* buf_;
  const char* src_;
  size_t bytes_;
  int device_;
  void* after_;
  std::vector<char> host_;
  Status status_;
};

// downloadAsync(byteOffset, bytes, stream?): Promise<ArrayBuffer>. With a stream, the copy comes
// after the work queued there so far (an event marks that point, so the stream may even be
// destroyed meanwhile).
Napi::Value DeviceBuffer::DownloadAsync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsNumber() || !info[1].IsNumber())
    throwError(env, Code::Argument, "downloadAsync: expected (byteOffset, bytes)");
  double offset = info[0].As<Napi::Number>().DoubleValue(), bytes = info[1].As<Napi::Number>().DoubleValue();
  checkRange(env, this, offset, bytes, "downloadAsync");
  StreamHandle stream = info.Length() > 2 ? streamFrom(env, info[2], "toHost", "stream") : nullptr;
  void* after = nullptr;
  if (stream) {
    throwIfError(env, gpu::eventCreate(&after));
    Status st = gpu::eventRecord(after, stream);
    if (!st.ok()) {
      gpu::eventDestroy(after);
      throwIfError(env, st);
    }
  }
  auto* worker = new DownloadWorker(env, this, info.This().As<Napi::Object>(), static_cast<size_t>(offset),
                                    static_cast<size_t>(bytes), after);
  Napi::Promise p = worker->promise();
  worker->Queue();
  return p;
}

Napi::Value DeviceBuffer::GetBytes(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(bytes_));
}
Napi::Value DeviceBuffer::GetFreed(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), freed()); }
Napi::Value DeviceBuffer::GetDevice(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), device_); }

DeviceBuffer* unwrapBuffer(Napi::Env env, Napi::Value v, const char* op, const char* arg) {
  if (!hasTypeTag(env, v, kDeviceBufferTag))
    throwError(env, Code::Argument, std::string(op) + ": `" + arg + "` is not backed by a DeviceBuffer");
  DeviceBuffer* b = DeviceBuffer::Unwrap(v.As<Napi::Object>());
  if (b->freed()) throwError(env, Code::Disposed, std::string(op) + ": `" + arg + "` was disposed");
  return b;
}

}  // namespace mla::binding

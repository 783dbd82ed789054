#include "binding/stream.h"
#include "binding/napi_util.h"
#include "runtime/runtime.h"

namespace mla::binding {

Napi::Function Stream::Define(Napi::Env env) {
  return DefineClass(env, "Stream",
                     {InstanceMethod<&Stream::Synchronize>("synchronize"),
                      InstanceMethod<&Stream::SynchronizeAsync>("synchronizeAsync"),
                      InstanceMethod<&Stream::Query>("query"), InstanceMethod<&Stream::WaitEvent>("waitEvent"),
                      InstanceMethod<&Stream::Destroy>("destroy")});
}

Stream::Stream(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Stream>(info) {
  Napi::Env env = info.Env();
  throwIfError(env, gpu::requireDevice());
  throwIfError(env, gpu::currentDevice(&device_));
  throwIfError(env, gpu::streamCreate(&handle_));
}

Stream::~Stream() {
  if (!destroyed_ && handle_) gpu::streamDestroy(handle_);
}

static void checkAlive(Napi::Env env, bool destroyed) {
  if (destroyed) throwError(env, Code::Disposed, "the stream was disposed");
}

Napi::Value Stream::Synchronize(const Napi::CallbackInfo& info) {
  checkAlive(info.Env(), destroyed_);
  throwIfError(info.Env(), gpu::streamSynchronize(handle_));
  return info.Env().Undefined();
}

class StreamSyncWorker : public Napi::AsyncWorker {
 public:
  StreamSyncWorker(Napi::Env env, Napi::Object owner, StreamHandle h, int device)
      : Napi::AsyncWorker(env, "mla-cuda:stream-sync"), deferred_(Napi::Promise::Deferred::New(env)), h_(h),
        device_(device) {
    owner_ = Napi::Persistent(owner);
  }
  Napi::Promise promise() { return deferred_.Promise(); }
  void Execute() override {
    status_ = gpu::setDevice(device_);
    if (status_.ok()) status_ = gpu::streamSynchronize(h_);
  }
  void OnOK() override {
    if (status_.ok()) deferred_.Resolve(Env().Undefined());
    else deferred_.Reject(makeError(Env(), status_.code, status_.message, status_.cudaName).Value());
  }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  Napi::ObjectReference owner_;
  StreamHandle h_;
  int device_;
  Status status_;
};

// synchronizeAsync(): waits on a worker thread, resolving when the stream's work is done.
Napi::Value Stream::SynchronizeAsync(const Napi::CallbackInfo& info) {
  checkAlive(info.Env(), destroyed_);
  auto* w = new StreamSyncWorker(info.Env(), info.This().As<Napi::Object>(), handle_, device_);
  Napi::Promise p = w->promise();
  w->Queue();
  return p;
}

Napi::Value Stream::Query(const Napi::CallbackInfo& info) {
  checkAlive(info.Env(), destroyed_);
  bool done = false;
  throwIfError(info.Env(), gpu::streamQuery(handle_, &done));
  return Napi::Boolean::New(info.Env(), done);
}

Napi::Value Stream::WaitEvent(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  checkAlive(env, destroyed_);
  if (info.Length() < 1 || !info[0].IsObject() || !info[0].As<Napi::Object>().InstanceOf(addonData(env).eventClass.Value()))
    throwError(env, Code::Argument, "waitEvent: `event` must be an Event");
  Event* e = Event::Unwrap(info[0].As<Napi::Object>());
  if (!e->handle()) throwError(env, Code::Disposed, "waitEvent: `event` was disposed");
  throwIfError(env, gpu::streamWaitEvent(handle_, e->handle()));
  return env.Undefined();
}

// destroy(): idempotent. Work already queued still completes (cudaStreamDestroy semantics).
Napi::Value Stream::Destroy(const Napi::CallbackInfo& info) {
  if (!destroyed_ && handle_) gpu::streamDestroy(handle_);
  destroyed_ = true;
  return info.Env().Undefined();
}

StreamHandle streamFrom(Napi::Env env, Napi::Value v, const std::string& argName) {
  if (v.IsUndefined() || v.IsNull()) return nullptr;
  if (!v.IsObject() || !v.As<Napi::Object>().InstanceOf(addonData(env).streamClass.Value()))
    throwError(env, Code::Argument, argName + " must be a Stream");
  Stream* s = Stream::Unwrap(v.As<Napi::Object>());
  if (s->destroyed()) throwError(env, Code::Disposed, argName + " was disposed");
  return s->handle();
}

Napi::Function Event::Define(Napi::Env env) {
  return DefineClass(env, "Event",
                     {InstanceMethod<&Event::Record>("record"), InstanceMethod<&Event::Synchronize>("synchronize"),
                      InstanceMethod<&Event::Query>("query"), InstanceMethod<&Event::ElapsedMs>("elapsedMs"),
                      InstanceMethod<&Event::Destroy>("destroy")});
}

Event::Event(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Event>(info) {
  Napi::Env env = info.Env();
  throwIfError(env, gpu::requireDevice());
  throwIfError(env, gpu::eventCreate(&handle_));
}

Event::~Event() {
  if (handle_) gpu::eventDestroy(handle_);
}

void* Event::checked(Napi::Env env) const {
  if (!handle_) throwError(env, Code::Disposed, "the event was disposed");
  return handle_;
}

Napi::Value Event::Record(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  StreamHandle s = info.Length() > 0 ? streamFrom(env, info[0], "record: `stream`") : nullptr;
  throwIfError(env, gpu::eventRecord(checked(env), s));
  recorded_ = true;
  return env.Undefined();
}

Napi::Value Event::Synchronize(const Napi::CallbackInfo& info) {
  throwIfError(info.Env(), gpu::eventSynchronize(checked(info.Env())));
  return info.Env().Undefined();
}

Napi::Value Event::Query(const Napi::CallbackInfo& info) {
  bool done = false;
  throwIfError(info.Env(), gpu::eventQuery(checked(info.Env()), &done));
  return Napi::Boolean::New(info.Env(), done);
}

// a.elapsedMs(b): milliseconds from event a to event b (both recorded, b completed).
Napi::Value Event::ElapsedMs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsObject() || !info[0].As<Napi::Object>().InstanceOf(addonData(env).eventClass.Value()))
    throwError(env, Code::Argument, "elapsedMs: `end` must be an Event");
  Event* end = Event::Unwrap(info[0].As<Napi::Object>());
  if (!recorded_ || !end->recorded_) throwError(env, Code::Argument, "elapsedMs: both events must be recorded first");
  float ms = 0;
  throwIfError(env, gpu::eventElapsedMs(checked(env), end->checked(env), &ms));
  return Napi::Number::New(env, ms);
}

Napi::Value Event::Destroy(const Napi::CallbackInfo& info) {
  if (handle_) gpu::eventDestroy(handle_);
  handle_ = nullptr;
  return info.Env().Undefined();
}

}  // namespace mla::binding

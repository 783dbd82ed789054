#include "binding/stream.h"
#include "binding/buffer.h"
#include "binding/napi_util.h"
#include "runtime/graph.h"
#include "runtime/runtime.h"

namespace mla::binding {

Napi::Function Stream::Define(Napi::Env env) {
  return DefineClass(env, "Stream",
                     {InstanceMethod<&Stream::Synchronize>("synchronize"),
                      InstanceMethod<&Stream::SynchronizeAsync>("synchronizeAsync"),
                      InstanceMethod<&Stream::Query>("query"), InstanceMethod<&Stream::WaitEvent>("waitEvent"),
                      InstanceMethod<&Stream::BeginCapture>("beginCapture"),
                      InstanceMethod<&Stream::EndCapture>("endCapture"),
                      InstanceMethod<&Stream::IsCapturing>("isCapturing"),
                      InstanceMethod<&Stream::Hold>("hold"), InstanceMethod<&Stream::Release>("release"),
                      InstanceMethod<&Stream::Destroy>("destroy")});
}

Stream::Stream(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Stream>(info) {
  Napi::Env env = info.Env();
  napi_type_tag_object(env, info.This(), &kStreamTag);
  throwIfError(env, gpu::requireDevice());
  throwIfError(env, gpu::currentDevice(&device_));
  throwIfError(env, gpu::streamCreate(&handle_));
}

Stream::~Stream() {
  endHold();
  if (!destroyed_ && handle_) gpu::streamDestroy(handle_);
  endCaptureState();
}

// Whatever ends a capture (its end, a failure, the stream's destruction) releases the frees
// held back during it.
void Stream::endCaptureState() {
  if (!capturing_) return;
  capturing_ = false;
  captureEnded();
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
    settlePromise(deferred_, [&] {
      if (status_.ok()) deferred_.Resolve(Env().Undefined());
      else deferred_.Reject(makeError(Env(), status_.code, status_.message, status_.cudaName).Value());
    });
  }
  void OnError(const Napi::Error& e) override {
    settlePromise(deferred_, [&] { deferred_.Reject(e.Value()); });
  }

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
  if (info.Length() < 1 || !hasTypeTag(env, info[0], kEventTag))
    throwError(env, Code::Argument, "waitEvent: `event` must be an Event");
  Event* e = Event::Unwrap(info[0].As<Napi::Object>());
  if (!e->handle()) throwError(env, Code::Disposed, "waitEvent: `event` was disposed");
  throwIfError(env, gpu::streamWaitEvent(handle_, e->handle()));
  return env.Undefined();
}

// hold(timeoutMs): true when the device now waits for release() before running what is
// queued next on this stream; false where nothing can hold (the emulated device runs each
// launch as it is made).
Napi::Value Stream::Hold(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  checkAlive(env, destroyed_);
  if (info.Length() < 1 || !info[0].IsNumber()) throwError(env, Code::Argument, "hold: `timeoutMs` must be a number");
  bool held = false;
  throwIfError(env, gpu::streamHold(handle_, info[0].As<Napi::Number>().Int32Value(), &held));
  held_ = held;
  return Napi::Boolean::New(env, held);
}

// release(): true when the hold lasted until now, false when its timeout had ended it.
Napi::Value Stream::Release(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!held_) throwError(env, Code::Argument, "release: this stream is not held");
  held_ = false;
  bool inTime = false;
  throwIfError(env, gpu::streamRelease(&inTime));
  return Napi::Boolean::New(env, inTime);
}

Napi::Value Stream::BeginCapture(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  checkAlive(env, destroyed_);
  throwIfError(env, gpu::streamBeginCapture(handle_));
  capturing_ = true;
  captureBegan();
  return env.Undefined();
}

// endCapture(): a new Graph. endCapture(graph): updates `graph` in place and returns true, or
// returns false when the topology changed (graph unchanged). The capture ends either way.
Napi::Value Stream::EndCapture(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  checkAlive(env, destroyed_);
  Graph* into = nullptr;
  if (info.Length() > 0 && !info[0].IsUndefined()) {
    if (!hasTypeTag(env, info[0], kGraphTag))
      throwError(env, Code::Argument, "endCapture: `graph` must be a Graph");
    into = Graph::Unwrap(info[0].As<Napi::Object>());
    if (!into->handle()) throwError(env, Code::Disposed, "endCapture: `graph` was disposed");
  }
  Status s;
  bool updated = false;
  void* exec = nullptr;
  if (into) s = gpu::streamEndCaptureInto(handle_, into->handle(), &updated);
  else s = gpu::streamEndCapture(handle_, &exec);
  endCaptureState();
  throwIfError(env, s);
  if (into) return Napi::Boolean::New(env, updated);
  Napi::Object g = addonData(env).graphClass.New({});
  Graph::Unwrap(g)->adopt(exec, device_);
  return g;
}

Napi::Value Stream::IsCapturing(const Napi::CallbackInfo& info) {
  checkAlive(info.Env(), destroyed_);
  bool capturing = false;
  throwIfError(info.Env(), gpu::streamIsCapturing(handle_, &capturing));
  return Napi::Boolean::New(info.Env(), capturing);
}

// The hold ends before its stream: nothing queued behind it would ever be released.
void Stream::endHold() {
  if (!held_) return;
  held_ = false;
  bool inTime = false;
  gpu::streamRelease(&inTime);
}

// destroy(): idempotent. Work already queued still completes (cudaStreamDestroy semantics); a
// capture in progress is abandoned, a hold released.
Napi::Value Stream::Destroy(const Napi::CallbackInfo& info) {
  endHold();
  if (!destroyed_ && handle_) gpu::streamDestroy(handle_);
  destroyed_ = true;
  endCaptureState();
  return info.Env().Undefined();
}

Napi::Function Graph::Define(Napi::Env env) {
  return DefineClass(env, "Graph", {InstanceMethod<&Graph::Launch>("launch"), InstanceMethod<&Graph::Destroy>("destroy")});
}

// Made only by Stream.endCapture (it adopts the instantiated graph).
Graph::Graph(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Graph>(info) {
  napi_type_tag_object(info.Env(), info.This(), &kGraphTag);
}

Graph::~Graph() {
  if (exec_) gpu::graphExecDestroy(exec_);
}

// launch(stream): replays the graph on `stream`, ordered after earlier work there.
Napi::Value Graph::Launch(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!exec_) throwError(env, Code::Disposed, "launch: the graph was disposed");
  StreamHandle s = streamFrom(env, info.Length() > 0 ? info[0] : env.Undefined(), "launch", "stream");
  int current = 0;
  throwIfError(env, gpu::currentDevice(&current));
  if (current != device_) throwIfError(env, gpu::setDevice(device_));
  Status launched = gpu::graphLaunch(exec_, s);
  if (current != device_) gpu::setDevice(current);  // the caller's current device is theirs
  throwIfError(env, launched);
  return env.Undefined();
}

Napi::Value Graph::Destroy(const Napi::CallbackInfo& info) {
  if (exec_) gpu::graphExecDestroy(exec_);
  exec_ = nullptr;
  return info.Env().Undefined();
}

StreamHandle streamFrom(Napi::Env env, Napi::Value v, const char* op, const char* arg) {
  if (v.IsUndefined() || v.IsNull()) return nullptr;
  if (!hasTypeTag(env, v, kStreamTag)) throwError(env, Code::Argument, std::string(op) + ": `" + arg + "` must be a Stream");
  Stream* s = Stream::Unwrap(v.As<Napi::Object>());
  if (s->destroyed()) throwError(env, Code::Disposed, std::string(op) + ": `" + arg + "` was disposed");
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
  napi_type_tag_object(env, info.This(), &kEventTag);
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
  StreamHandle s = info.Length() > 0 ? streamFrom(env, info[0], "record", "stream") : nullptr;
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
  if (info.Length() < 1 || !hasTypeTag(env, info[0], kEventTag))
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

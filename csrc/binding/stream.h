// Stream and Event wrappers. A Stream orders launches; an Event marks a point in a stream for
// waiting and timing (elapsed milliseconds between two recorded events).
#pragma once
#include <napi.h>
#include "core/tensor.h"

namespace mla::binding {

class Stream : public Napi::ObjectWrap<Stream> {
 public:
  static Napi::Function Define(Napi::Env env);
  explicit Stream(const Napi::CallbackInfo& info);
  ~Stream() override;
  StreamHandle handle() const { return handle_; }
  bool destroyed() const { return destroyed_; }

 private:
  Napi::Value Synchronize(const Napi::CallbackInfo& info);
  Napi::Value SynchronizeAsync(const Napi::CallbackInfo& info);
  Napi::Value Query(const Napi::CallbackInfo& info);
  Napi::Value WaitEvent(const Napi::CallbackInfo& info);
  Napi::Value BeginCapture(const Napi::CallbackInfo& info);
  Napi::Value EndCapture(const Napi::CallbackInfo& info);
  Napi::Value IsCapturing(const Napi::CallbackInfo& info);
  Napi::Value Hold(const Napi::CallbackInfo& info);
  Napi::Value Release(const Napi::CallbackInfo& info);
  Napi::Value Destroy(const Napi::CallbackInfo& info);
  void endCaptureState();
  void endHold();
  StreamHandle handle_ = nullptr;
  int device_ = 0;
  bool destroyed_ = false;
  bool capturing_ = false;
  bool held_ = false;
};

// An instantiated CUDA graph (Stream.endCapture): launch(stream) replays everything captured.
class Graph : public Napi::ObjectWrap<Graph> {
 public:
  static Napi::Function Define(Napi::Env env);
  explicit Graph(const Napi::CallbackInfo& info);
  ~Graph() override;
  void* handle() const { return exec_; }
  void adopt(void* exec, int device) { exec_ = exec; device_ = device; }

 private:
  Napi::Value Launch(const Napi::CallbackInfo& info);
  Napi::Value Destroy(const Napi::CallbackInfo& info);
  void* exec_ = nullptr;
  int device_ = 0;
};

class Event : public Napi::ObjectWrap<Event> {
 public:
  static Napi::Function Define(Napi::Env env);
  explicit Event(const Napi::CallbackInfo& info);
  ~Event() override;
  void* handle() const { return handle_; }

 private:
  Napi::Value Record(const Napi::CallbackInfo& info);
  Napi::Value Synchronize(const Napi::CallbackInfo& info);
  Napi::Value Query(const Napi::CallbackInfo& info);
  Napi::Value ElapsedMs(const Napi::CallbackInfo& info);
  Napi::Value Destroy(const Napi::CallbackInfo& info);
  void* checked(Napi::Env env) const;
  void* handle_ = nullptr;
  bool recorded_ = false;
};

}  // namespace mla::binding

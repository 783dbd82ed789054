// Helpers every binding file uses: throwing MlaError, reading a named argument object,
// turning a JS tensor descriptor into a bounds-checked TensorRef, and op registration.
#pragma once
#include <napi.h>
#include <string>
#include <unordered_map>
#include <vector>
#include "core/status.h"
#include "core/tensor.h"
#include "runtime/runtime.h"

namespace mla::binding {

// Per-environment state (worker_threads get their own).
struct AddonData {
  Napi::FunctionReference errorClass;  // lib/errors.ts MlaError, handed over by setErrorClass()
  Napi::FunctionReference graphClass;  // endCapture() makes Graph objects
  // Property names the bindings read, created once (napi_get_named_property would decode and
  // internalize the UTF-8 name on every read, which was most of an op's host cost): the JS
  // strings live in one array (Node-API 8 cannot reference a string itself), by index.
  // Keyed by the literal's address (every name passed is a string literal; two copies of one
  // literal just take two slots).
  Napi::ObjectReference keyStore;
  std::unordered_map<const char*, uint32_t> keyIndex;
};
AddonData& addonData(Napi::Env env);

// Type tags of the native classes (napi_type_tag_object): cheaper than instanceof and not
// fooled by an object whose prototype was set to the class's.
extern const napi_type_tag kDeviceBufferTag, kStreamTag, kEventTag, kGraphTag;
bool hasTypeTag(Napi::Env env, Napi::Value v, const napi_type_tag& tag);

// Builds an MlaError (or a plain Error with .code before setErrorClass ran).
Napi::Error makeError(Napi::Env env, Code code, const std::string& message, const std::string& cudaName = {});
[[noreturn]] void throwError(Napi::Env env, Code code, const std::string& message);
void throwIfError(Napi::Env env, const Status& s);

// Runs an AsyncWorker's OnOK/OnError body. A worker thread terminated while the work ran (or a
// process exiting) completes the work in an environment that can no longer run JS: every N-API
// call there fails, and a Napi::Error escaping into libuv aborts the process. Nobody can await
// the promise then, so the failure is dropped; in a live environment (an allocation that failed)
// the promise is rejected with it instead of never settling.
template <class Body>
void settlePromise(Napi::Promise::Deferred& deferred, Body&& body) noexcept {
  try {
    body();
  } catch (const Napi::Error& e) {
    try {
      deferred.Reject(e.Value());
    } catch (...) {
    }
  } catch (...) {
  }
}

// Reads the single options object an op receives: reader.tensor("q"), reader.i64("pageSize").
// Every failure names the op and the argument; names are string literals (error messages are
// built only on failure, so a call that succeeds allocates nothing here).
class ArgReader {
 public:
  ArgReader(const Napi::CallbackInfo& info, const char* op);
  Napi::Env env() const { return env_; }
  bool has(const char* name) const;
  Napi::Value get(const char* name) const { return get(obj_, name); }
  Napi::Value get(const Napi::Object& o, const char* name) const { return o.Get(key(name)); }
  TensorRef tensor(const char* name) const;
  bool optionalTensor(const char* name, TensorRef* out) const;
  int64_t i64(const char* name) const;
  int64_t i64(const char* name, int64_t fallback) const;
  double f64(const char* name) const;
  double f64(const char* name, double fallback) const;
  bool boolean(const char* name, bool fallback) const;
  StreamHandle stream() const;  // "stream" key: a native Stream or undefined
  [[noreturn]] void fail(Code code, const std::string& arg, const std::string& what) const;

 private:
  Napi::Env env_;
  Napi::Object obj_;
  const char* op_;
  AddonData& data_;
  Napi::Object keys_;  // data_.keyStore's array
  // The two keys every tensor argument reads, fetched from keys_ once per call.
  mutable napi_value bufferKey_ = nullptr, descKey_ = nullptr;
  napi_value key(const char* name) const;
};

// Stream handle from a JS value (native Stream object or undefined/null); `op` and `arg` name
// it in errors ("op: `arg` must be a Stream").
StreamHandle streamFrom(Napi::Env env, Napi::Value v, const char* op, const char* arg);

// Registration of op entry points without a central list: each op's binding file ends with
// MLA_REGISTER_OP("decode", Decode); module init exports them all under `ops`.
using OpFn = Napi::Value (*)(const Napi::CallbackInfo&);
std::vector<std::pair<const char*, OpFn>>& opRegistry();
struct OpRegistration {
  OpRegistration(const char* name, OpFn fn) { opRegistry().emplace_back(name, fn); }
};
#define MLA_REGISTER_OP(name, fn) static ::mla::binding::OpRegistration mla_op_registration_##fn(name, fn)

// Calls a kernel launcher in CUDA builds; in CPU-only builds the launcher does not exist and
// the call throws ERR_NO_CUDA. Always checks for a usable device first.
#if MLA_WITH_CUDA
#define MLA_LAUNCH(env, call)                                           \
  do {                                                                  \
    ::mla::binding::throwIfError(env, ::mla::gpu::requireDevice());     \
    ::mla::binding::throwIfError(env, (call));                          \
  } while (0)
#else
#define MLA_LAUNCH(env, call) ::mla::binding::throwIfError(env, ::mla::gpu::requireDevice())
#endif

}  // namespace mla::binding

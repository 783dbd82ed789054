#include "binding/napi_util.h"
#include <cmath>
#include "binding/buffer.h"
#include "binding/stream.h"

namespace mla::binding {

AddonData& addonData(Napi::Env env) { return *env.GetInstanceData<AddonData>(); }

std::vector<std::pair<const char*, OpFn>>& opRegistry() {
  static std::vector<std::pair<const char*, OpFn>> registry;
  return registry;
}

Napi::Error makeError(Napi::Env env, Code code, const std::string& message, const std::string& cudaName) {
  AddonData* data = env.GetInstanceData<AddonData>();
  Napi::Object err;
  if (data && !data->errorClass.IsEmpty()) {
    err = data->errorClass.New({Napi::String::New(env, errorCodeName(code)), Napi::String::New(env, message)});
  } else {
    err = Napi::Error::New(env, message).Value();
    err.Set("code", Napi::String::New(env, errorCodeName(code)));
  }
  if (!cudaName.empty()) err.Set("cudaError", Napi::String::New(env, cudaName));
  return Napi::Error(env, err);
}

void throwError(Napi::Env env, Code code, const std::string& message) { throw makeError(env, code, message); }

void throwIfError(Napi::Env env, const Status& s) {
  if (!s.ok()) throw makeError(env, s.code, s.message, s.cudaName);
}

ArgReader::ArgReader(const Napi::CallbackInfo& info, const char* op) : env_(info.Env()), op_(op) {
  if (info.Length() < 1 || !info[0].IsObject())
    throwError(env_, Code::Argument, op_ + ": expected an options object");
  obj_ = info[0].As<Napi::Object>();
}

void ArgReader::fail(Code code, const std::string& arg, const std::string& what) const {
  throwError(env_, code, op_ + ": `" + arg + "` " + what);
}

bool ArgReader::has(const char* name) const {
  if (!obj_.Has(name)) return false;
  Napi::Value v = obj_.Get(name);
  return !v.IsUndefined() && !v.IsNull();
}

TensorRef ArgReader::tensor(const char* name) const {
  TensorRef t;
  if (!optionalTensor(name, &t)) fail(Code::Argument, name, "is required");
  return t;
}

static int64_t integerOf(const ArgReader& r, Napi::Value v, const std::string& name) {
  if (!v.IsNumber()) r.fail(Code::Argument, name, "must be a number");
  double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d) || d != std::floor(d) || std::fabs(d) > 9007199254740991.0)
    r.fail(Code::Argument, name, "must be an integer");
  return static_cast<int64_t>(d);
}

// A tensor descriptor is {buffer, offset, dtype, shape, strides} (lib/runtime/tensor.ts nativeRef()).
// Every element it can address must lie inside the allocation: checked here so no launch can
// be handed a window past the end of its buffer.
bool ArgReader::optionalTensor(const char* name, TensorRef* out) const {
  if (!has(name)) return false;
  Napi::Value v = obj_.Get(name);
  if (!v.IsObject()) fail(Code::Argument, name, "must be a DeviceTensor");
  Napi::Object o = v.As<Napi::Object>();
  DeviceBuffer* buf = unwrapBuffer(env_, o.Get("buffer"), op_ + ": `" + name + "`");
  std::string n(name);
  int64_t offset = integerOf(*this, o.Get("offset"), n + ".offset");
  int64_t dtype = integerOf(*this, o.Get("dtype"), n + ".dtype");
  if (dtype < 0 || dtype >= kNumDTypes) fail(Code::Dtype, name, "has an unknown dtype");
  Napi::Value sv = o.Get("shape"), tv = o.Get("strides");
  if (!sv.IsArray() || !tv.IsArray()) fail(Code::Argument, name, "needs shape and strides arrays");
  Napi::Array shape = sv.As<Napi::Array>(), strides = tv.As<Napi::Array>();
  if (shape.Length() != strides.Length() || shape.Length() > static_cast<uint32_t>(kMaxDims))
    fail(Code::Shape, name, "has inconsistent shape/strides (or more than 8 dims)");
  TensorRef t;
  t.dtype = static_cast<DType>(dtype);
  t.ndim = static_cast<int>(shape.Length());
  t.device = buf->device();
  int64_t maxOff = 0;
  bool empty = false;
  for (int i = 0; i < t.ndim; ++i) {
    t.shape[i] = integerOf(*this, shape.Get(i), n + ".shape");
    t.strides[i] = integerOf(*this, strides.Get(i), n + ".strides");
    if (t.shape[i] < 0 || t.strides[i] < 0) fail(Code::Shape, name, "has a negative size or stride");
    if (t.shape[i] == 0) empty = true;
    else maxOff += (t.shape[i] - 1) * t.strides[i];
  }
  size_t esize = dtypeSize(t.dtype);
  if (offset < 0 || (!empty && static_cast<uint64_t>(offset + maxOff + 1) * esize > buf->bytes()))
    fail(Code::Range, name, "addresses memory outside its buffer");
  t.data = static_cast<char*>(buf->ptr()) + offset * esize;
  *out = t;
  return true;
}

int64_t ArgReader::i64(const char* name) const {
  if (!has(name)) fail(Code::Argument, name, "is required");
  return integerOf(*this, obj_.Get(name), name);
}
int64_t ArgReader::i64(const char* name, int64_t fallback) const { return has(name) ? i64(name) : fallback; }

double ArgReader::f64(const char* name) const {
  if (!has(name)) fail(Code::Argument, name, "is required");
  Napi::Value v = obj_.Get(name);
  if (!v.IsNumber()) fail(Code::Argument, name, "must be a number");
  return v.As<Napi::Number>().DoubleValue();
}
double ArgReader::f64(const char* name, double fallback) const { return has(name) ? f64(name) : fallback; }

bool ArgReader::boolean(const char* name, bool fallback) const {
  if (!has(name)) return fallback;
  Napi::Value v = obj_.Get(name);
  if (!v.IsBoolean()) fail(Code::Argument, name, "must be a boolean");
  return v.As<Napi::Boolean>().Value();
}

StreamHandle ArgReader::stream() const {
  return has("stream") ? streamFrom(env_, obj_.Get("stream"), op_ + ": `stream`") : nullptr;
}

}  // namespace mla::binding

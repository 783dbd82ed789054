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

// Random 128-bit values; only their distinctness matters.
const napi_type_tag kDeviceBufferTag = {0x8f3c2a61d94b07e5ULL, 0x1b6e9d2c4a7f3051ULL};
const napi_type_tag kStreamTag = {0x8f3c2a61d94b07e5ULL, 0x52d04e8b19c6a7f3ULL};
const napi_type_tag kEventTag = {0x8f3c2a61d94b07e5ULL, 0x6a1f83c5e2b94d07ULL};
const napi_type_tag kGraphTag = {0x8f3c2a61d94b07e5ULL, 0x7c4b2e9f05d8a163ULL};

bool hasTypeTag(Napi::Env env, Napi::Value v, const napi_type_tag& tag) {
  if (!v.IsObject()) return false;
  bool is = false;
  return napi_check_object_type_tag(env, v, &tag, &is) == napi_ok && is;
}

ArgReader::ArgReader(const Napi::CallbackInfo& info, const char* op)
    : env_(info.Env()), op_(op), data_(addonData(info.Env())) {
  if (info.Length() < 1 || !info[0].IsObject())
    throwError(env_, Code::Argument, std::string(op_) + ": expected an options object");
  obj_ = info[0].As<Napi::Object>();
  if (data_.keyStore.IsEmpty()) data_.keyStore = Napi::Persistent(Napi::Array::New(env_).As<Napi::Object>());
  keys_ = data_.keyStore.Value();
}

napi_value ArgReader::key(const char* name) const {
  auto it = data_.keyIndex.find(name);
  if (it == data_.keyIndex.end()) {
    const uint32_t i = static_cast<uint32_t>(data_.keyIndex.size());
    keys_.Set(i, Napi::String::New(env_, name));
    it = data_.keyIndex.emplace(name, i).first;
  }
  return keys_.Get(it->second);
}

void ArgReader::fail(Code code, const std::string& arg, const std::string& what) const {
  throwError(env_, code, std::string(op_) + ": `" + arg + "` " + what);
}

static bool present(const Napi::Value& v) { return !v.IsUndefined() && !v.IsNull(); }

bool ArgReader::has(const char* name) const { return present(get(name)); }

TensorRef ArgReader::tensor(const char* name) const {
  TensorRef t;
  if (!optionalTensor(name, &t)) fail(Code::Argument, name, "is required");
  return t;
}

static bool isInteger(double d) { return std::isfinite(d) && d == std::floor(d) && std::fabs(d) <= 9007199254740991.0; }

static int64_t integerOf(const ArgReader& r, const Napi::Value& v, const char* name) {
  if (!v.IsNumber()) r.fail(Code::Argument, name, "must be a number");
  double d = v.As<Napi::Number>().DoubleValue();
  if (!isInteger(d)) r.fail(Code::Argument, name, "must be an integer");
  return static_cast<int64_t>(d);
}

// A tensor descriptor is {buffer, desc} (lib/runtime/tensor.ts nativeRef()), desc a Float64Array
// [offset, dtype, ndim, shape[0..ndim), strides[0..ndim)] in elements: one typed-array read
// instead of a property read per field and per dimension. Every element the descriptor can
// address must lie inside the allocation: checked here so no launch can be handed a window past
// the end of its buffer, whatever a caller forged.
bool ArgReader::optionalTensor(const char* name, TensorRef* out) const {
  Napi::Value v = get(name);
  if (!present(v)) return false;
  if (!v.IsObject()) fail(Code::Argument, name, "must be a DeviceTensor");
  Napi::Object o = v.As<Napi::Object>();
  if (!bufferKey_) {
    bufferKey_ = key("buffer");
    descKey_ = key("desc");
  }
  DeviceBuffer* buf = unwrapBuffer(env_, o.Get(bufferKey_), op_, name);
  Napi::Value dv = o.Get(descKey_);
  napi_typedarray_type type = napi_int8_array;
  size_t length = 0;
  void* data = nullptr;
  if (!dv.IsTypedArray() ||
      napi_get_typedarray_info(env_, dv, &type, &length, &data, nullptr, nullptr) != napi_ok || type != napi_float64_array)
    fail(Code::Argument, name, "needs a Float64Array descriptor");
  const double* d = static_cast<const double*>(data);
  if (length < 3 || !isInteger(d[2]) || d[2] < 0 || d[2] > kMaxDims || length != 3 + 2 * static_cast<size_t>(d[2]))
    fail(Code::Shape, name, "has an inconsistent descriptor (or more than 8 dims)");
  for (size_t i = 0; i < length; ++i)
    if (!isInteger(d[i])) fail(Code::Argument, name, "has a descriptor entry that is not an integer");
  const int64_t offset = static_cast<int64_t>(d[0]), dtype = static_cast<int64_t>(d[1]);
  if (dtype < 0 || dtype >= kNumDTypes) fail(Code::Dtype, name, "has an unknown dtype");
  TensorRef t;
  t.dtype = static_cast<DType>(dtype);
  t.ndim = static_cast<int>(d[2]);
  t.device = buf->device();
  // The last element's offset, overflow-checked: descriptor entries go up to 2^53, so a
  // product or sum could wrap past int64 into a small, "valid" window.
  int64_t last = offset;
  bool empty = false;
  for (int i = 0; i < t.ndim; ++i) {
    t.shape[i] = static_cast<int64_t>(d[3 + i]);
    t.strides[i] = static_cast<int64_t>(d[3 + t.ndim + i]);
    if (t.shape[i] < 0 || t.strides[i] < 0) fail(Code::Shape, name, "has a negative size or stride");
    int64_t span = 0;
    if (t.shape[i] == 0) empty = true;
    else if (__builtin_mul_overflow(t.shape[i] - 1, t.strides[i], &span) || __builtin_add_overflow(last, span, &last))
      fail(Code::Range, name, "addresses memory outside its buffer");
  }
  const uint64_t esize = dtypeSize(t.dtype);
  if (offset < 0 || (!empty && static_cast<uint64_t>(last) >= buf->bytes() / esize))
    fail(Code::Range, name, "addresses memory outside its buffer");
  t.data = static_cast<char*>(buf->ptr()) + offset * esize;
  *out = t;
  return true;
}

// obj[name], which must be present (not undefined or null).
static Napi::Value required(const ArgReader& r, const char* name) {
  Napi::Value v = r.get(name);
  if (!present(v)) r.fail(Code::Argument, name, "is required");
  return v;
}

int64_t ArgReader::i64(const char* name) const { return integerOf(*this, required(*this, name), name); }
int64_t ArgReader::i64(const char* name, int64_t fallback) const {
  Napi::Value v = get(name);
  return present(v) ? integerOf(*this, v, name) : fallback;
}

static double numberOf(const ArgReader& r, const Napi::Value& v, const char* name) {
  if (!v.IsNumber()) r.fail(Code::Argument, name, "must be a number");
  return v.As<Napi::Number>().DoubleValue();
}
double ArgReader::f64(const char* name) const { return numberOf(*this, required(*this, name), name); }
double ArgReader::f64(const char* name, double fallback) const {
  Napi::Value v = get(name);
  return present(v) ? numberOf(*this, v, name) : fallback;
}

bool ArgReader::boolean(const char* name, bool fallback) const {
  Napi::Value v = get(name);
  if (!present(v)) return fallback;
  if (!v.IsBoolean()) fail(Code::Argument, name, "must be a boolean");
  return v.As<Napi::Boolean>().Value();
}

StreamHandle ArgReader::stream() const { return streamFrom(env_, get("stream"), op_, "stream"); }

}  // namespace mla::binding

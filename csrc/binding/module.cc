// Module init: the classes, device information, host conversions and every registered op.
#include <napi.h>
#include <cstring>
#include "binding/buffer.h"
#include "binding/napi_util.h"
#include "binding/stream.h"
#include "host/convert.h"
#include "kernels/decode.h"
#include "runtime/no_device.h"
#include "runtime/runtime.h"

// CMakeLists.txt sets it to 1 for a CPU-only build asked for with MLA_CUDA_DISABLE, whose fix
// differs from a missing nvcc's.
#ifndef MLA_CUDA_DISABLED
#define MLA_CUDA_DISABLED 0
#endif

namespace mla::binding {
namespace {

Napi::Value SetErrorClass(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsFunction())
    throw Napi::TypeError::New(info.Env(), "setErrorClass: expected a constructor");
  addonData(info.Env()).errorClass = Napi::Persistent(info[0].As<Napi::Function>());
  return info.Env().Undefined();
}

// buildInfo(): what was compiled, no device access.
Napi::Value BuildInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("compiledWithCuda", gpu::compiledWithCuda());
  o.Set("cudaDisabled", MLA_CUDA_DISABLED != 0);
  o.Set("emulated", gpu::emulated());
  o.Set("cudaArchitectures", std::string(gpu::compiledArchs()));
#if MLA_HAS_SM90A
  o.Set("hopperDecode", true);
#else
  o.Set("hopperDecode", false);
#endif
  o.Set("nvccVersion", std::string(gpu::compilerVersion()));
  o.Set("runtimeVersion", gpu::runtimeVersion());
  o.Set("napiVersion", NAPI_VERSION);
  Napi::Array ops = Napi::Array::New(env);
  uint32_t i = 0;
  for (auto& [name, fn] : opRegistry()) ops.Set(i++, std::string(name));
  o.Set("ops", ops);
  return o;
}

// limits(): the launchers' limits and the decode error bits, from the kernel headers, so
// lib/ops validates against the values the kernels were compiled with (lib/native-contract.ts).
Napi::Value Limits(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object bits = Napi::Object::New(env);
  bits.Set("seqLens", static_cast<int>(kDecodeErrSeqLen));
  bits.Set("blockTable", static_cast<int>(kDecodeErrPage));
  bits.Set("qSeqLens", static_cast<int>(kDecodeErrQSeqLen));
  Napi::Object decode = Napi::Object::New(env);
  decode.Set("dimQK", kDecodeDimQK);
  decode.Set("dimV", kDecodeDimV);
  decode.Set("maxHeads", kDecodeMaxHeads);
  decode.Set("minPageSize", kDecodeMinPageSize);
  decode.Set("maxPageSize", kDecodeMaxPageSize);
  decode.Set("maxParts", kDecodeMaxParts);
  decode.Set("errorBits", bits);
  Napi::Object o = Napi::Object::New(env);
  o.Set("maxDims", kMaxDims);
  o.Set("decode", decode);
  return o;
}

// deviceStatus(): driver, device count, and why there is no device when there is none: the
// same message every GPU call throws (runtime/no_device.h), split into reason and fix too.
Napi::Value DeviceStatus(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  int driver = 0, count = 0;
  gpu::driverVersion(&driver);
  const gpu::DeviceProblem& problem = gpu::deviceProblem();
  const Status& s = problem.status;
  if (s.ok()) gpu::deviceCount(&count);
  o.Set("ok", s.ok());
  o.Set("code", s.ok() ? "OK" : errorCodeName(s.code));
  o.Set("cudaError", s.cudaName);
  o.Set("message", s.message);
  o.Set("reason", problem.reason);
  o.Set("fix", problem.fix);
  o.Set("deviceCount", count);
  o.Set("driverVersion", driver);
  o.Set("runtimeVersion", gpu::runtimeVersion());
  return o;
}

// explainNoDevice({ cudaError, cudaCode, cudaText, driverVersion, runtimeVersion,
// visibleDevices?, emulated? }): the pure translation behind every no-device error, for any
// facts, so tests check each situation's wording on machines that cannot produce it.
Napi::Value ExplainNoDevice(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsObject()) throwError(env, Code::Argument, "explainNoDevice: expected a facts object");
  Napi::Object a = info[0].As<Napi::Object>();
  auto str = [&](const char* k) { return a.Get(k).IsString() ? a.Get(k).As<Napi::String>().Utf8Value() : std::string(); };
  auto num = [&](const char* k) { return a.Get(k).IsNumber() ? a.Get(k).As<Napi::Number>().Int32Value() : 0; };
  gpu::NoDeviceFacts f;
  f.cudaName = str("cudaError");
  f.cudaCode = num("cudaCode");
  f.cudaText = str("cudaText");
  f.driverVersion = num("driverVersion");
  f.runtimeVersion = num("runtimeVersion");
  f.visibleDevicesSet = a.Get("visibleDevices").IsString();
  f.visibleDevices = str("visibleDevices");
  f.emulated = a.Get("emulated").ToBoolean().Value();
  const gpu::DeviceProblem p = gpu::explainNoDevice(f);
  Napi::Object o = Napi::Object::New(env);
  o.Set("code", errorCodeName(p.status.code));
  o.Set("cudaError", p.status.cudaName);
  o.Set("message", p.status.message);
  o.Set("reason", p.reason);
  o.Set("fix", p.fix);
  return o;
}

Napi::Value DeviceProperties(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsNumber()) throwError(env, Code::Argument, "deviceInfo: `device` must be a number");
  int dev = info[0].As<Napi::Number>().Int32Value();
  throwIfError(env, gpu::requireDevice());
  int count = 0;
  throwIfError(env, gpu::deviceCount(&count));
  if (dev < 0 || dev >= count)
    throwError(env, Code::Range, "deviceInfo: `device` " + std::to_string(dev) + " is not in [0, " + std::to_string(count) + ")");
  gpu::DeviceInfo d;
  throwIfError(env, gpu::deviceInfo(dev, &d));
  Napi::Object o = Napi::Object::New(env);
  o.Set("index", dev);
  o.Set("name", d.name);
  o.Set("major", d.major);
  o.Set("minor", d.minor);
  o.Set("smCount", d.smCount);
  o.Set("totalMemory", static_cast<double>(d.totalMemory));
  o.Set("freeMemory", static_cast<double>(d.freeMemory));
  o.Set("l2CacheBytes", d.l2CacheBytes);
  o.Set("sharedMemPerBlockOptin", d.sharedMemPerBlockOptin);
  o.Set("sharedMemPerSm", d.sharedMemPerSm);
  o.Set("clockKHz", d.clockKHz);
  o.Set("memoryClockKHz", d.memoryClockKHz);
  o.Set("memoryBusWidth", d.memoryBusWidth);
  o.Set("pciBusId", d.pciBusId);
  return o;
}

Napi::Value SetDevice(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsNumber()) throwError(env, Code::Argument, "setDevice: `device` must be a number");
  throwIfError(env, gpu::requireDevice());
  throwIfError(env, gpu::setDevice(info[0].As<Napi::Number>().Int32Value()));
  return env.Undefined();
}

Napi::Value CurrentDevice(const Napi::CallbackInfo& info) {
  int d = 0;
  throwIfError(info.Env(), gpu::requireDevice());
  throwIfError(info.Env(), gpu::currentDevice(&d));
  return Napi::Number::New(info.Env(), d);
}

Napi::Value Synchronize(const Napi::CallbackInfo& info) {
  throwIfError(info.Env(), gpu::requireDevice());
  throwIfError(info.Env(), gpu::deviceSynchronize());
  return info.Env().Undefined();
}

// encodeF32(Float32Array, dtype) -> ArrayBuffer of dtype elements (round to nearest even).
Napi::Value EncodeF32(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_float32_array ||
      !info[1].IsNumber())
    throwError(env, Code::Argument, "encodeF32: expected (Float32Array, dtype)");
  Napi::Float32Array src = info[0].As<Napi::Float32Array>();
  DType t = static_cast<DType>(info[1].As<Napi::Number>().Int32Value());
  size_t n = src.ElementLength();
  Napi::ArrayBuffer out = Napi::ArrayBuffer::New(env, n * dtypeSize(t));
  switch (t) {
    case DType::BF16: { auto* d = static_cast<uint16_t*>(out.Data()); for (size_t i = 0; i < n; ++i) d[i] = host::floatToBf16(src[i]); break; }
    case DType::F16: { auto* d = static_cast<uint16_t*>(out.Data()); for (size_t i = 0; i < n; ++i) d[i] = host::floatToHalf(src[i]); break; }
    case DType::FP8E4M3: { auto* d = static_cast<uint8_t*>(out.Data()); for (size_t i = 0; i < n; ++i) d[i] = host::floatToFp8e4m3(src[i]); break; }
    default: throwError(env, Code::Dtype, "encodeF32: `dtype` must be bf16, f16 or fp8e4m3");
  }
  return out;
}

// decodeToF32(bytes: TypedArray, dtype) -> Float32Array.
Napi::Value DecodeToF32(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsTypedArray() || !info[1].IsNumber())
    throwError(env, Code::Argument, "decodeToF32: expected (TypedArray, dtype)");
  Napi::TypedArray src = info[0].As<Napi::TypedArray>();
  DType t = static_cast<DType>(info[1].As<Napi::Number>().Int32Value());
  const uint8_t* bytes = static_cast<const uint8_t*>(src.ArrayBuffer().Data()) + src.ByteOffset();
  size_t esize = t == DType::FP8E4M3 ? 1 : 2;
  if (t != DType::BF16 && t != DType::F16 && t != DType::FP8E4M3)
    throwError(env, Code::Dtype, "decodeToF32: `dtype` must be bf16, f16 or fp8e4m3");
  if (src.ByteLength() % esize != 0) throwError(env, Code::Shape, "decodeToF32: byte length is not a multiple of the element size");
  size_t n = src.ByteLength() / esize;
  Napi::Float32Array out = Napi::Float32Array::New(env, n);
  for (size_t i = 0; i < n; ++i) {
    if (t == DType::FP8E4M3) {
      out[i] = host::fp8e4m3ToFloat(bytes[i]);
    } else {
      uint16_t h;
      std::memcpy(&h, bytes + 2 * i, 2);
      out[i] = t == DType::BF16 ? host::bf16ToFloat(h) : host::halfToFloat(h);
    }
  }
  return out;
}

}  // namespace

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  auto* data = new AddonData();
  env.SetInstanceData<AddonData>(data);
  Napi::Function buffer = DeviceBuffer::Define(env), stream = Stream::Define(env), event = Event::Define(env);
  data->graphClass = Napi::Persistent(Graph::Define(env));
  exports.Set("DeviceBuffer", buffer);
  exports.Set("Stream", stream);
  exports.Set("Event", event);
  exports.Set("setErrorClass", Napi::Function::New<SetErrorClass>(env, "setErrorClass"));
  exports.Set("buildInfo", Napi::Function::New<BuildInfo>(env, "buildInfo"));
  exports.Set("limits", Napi::Function::New<Limits>(env, "limits"));
  exports.Set("deviceStatus", Napi::Function::New<DeviceStatus>(env, "deviceStatus"));
  exports.Set("explainNoDevice", Napi::Function::New<ExplainNoDevice>(env, "explainNoDevice"));
  exports.Set("deviceInfo", Napi::Function::New<DeviceProperties>(env, "deviceInfo"));
  exports.Set("setDevice", Napi::Function::New<SetDevice>(env, "setDevice"));
  exports.Set("currentDevice", Napi::Function::New<CurrentDevice>(env, "currentDevice"));
  exports.Set("synchronize", Napi::Function::New<Synchronize>(env, "synchronize"));
  exports.Set("encodeF32", Napi::Function::New<EncodeF32>(env, "encodeF32"));
  exports.Set("decodeToF32", Napi::Function::New<DecodeToF32>(env, "decodeToF32"));
  Napi::Object ops = Napi::Object::New(env);
  for (auto& [name, fn] : opRegistry()) ops.Set(name, Napi::Function::New(env, fn, name));
  exports.Set("ops", ops);
  return exports;
}

}  // namespace mla::binding

static Napi::Object InitModule(Napi::Env env, Napi::Object exports) { return mla::binding::Init(env, exports); }
NODE_API_MODULE(mla_cuda, InitModule)

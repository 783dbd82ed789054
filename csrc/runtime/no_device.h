// Why no device is usable, said as the situation and its fix rather than as CUDA's error
// alone. Plain C++ (no CUDA types): runtime.cu fills the facts once per process, and every
// no-device error (Stream, DeviceBuffer, each op, deviceStatus) carries the same words.
#pragma once
#include <string>
#include "core/status.h"

namespace mla::gpu {

// What CUDA said when asked for devices, plus what the explanation depends on.
struct NoDeviceFacts {
  std::string call = "cudaGetDeviceCount";
  std::string cudaName;  // e.g. "cudaErrorInsufficientDriver"; empty: the call succeeded with 0 devices
  int cudaCode = 0;
  std::string cudaText;  // cudaGetErrorString
  int driverVersion = 0;  // cudaDriverGetVersion: 0 when libcuda.so.1 cannot be loaded
  int runtimeVersion = 0;
  bool visibleDevicesSet = false;  // CUDA_VISIBLE_DEVICES, which can hide every GPU
  std::string visibleDevices;
  bool emulated = false;
};

struct DeviceProblem {
  Status status;       // NoDevice with the full message, or Ok when a device is usable
  std::string reason;  // the situation, e.g. "no NVIDIA driver found (...)"
  std::string fix;     // what to do about it
};

// The problem this process has (computed once; Ok when a device is usable). Implemented by
// runtime.cu and runtime_stub.cc; requireDevice() returns its status.
const DeviceProblem& deviceProblem();

// 13000 -> "13.0".
inline std::string cudaVersionString(int v) {
  return v > 0 ? std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10) : "none";
}

// Oldest Linux driver branch for a CUDA major version (NVIDIA's compatibility table); the same
// table as minDriverFor in lib/cli/doctor.ts (test/no-device.test.ts checks they agree).
inline std::string minDriverBranch(int runtimeVersion) {
  const int major = runtimeVersion / 1000;
  if (major >= 13) return "580";
  if (major == 12) return "525";
  if (major == 11) return "450";
  return "a current";
}

// Pure: the facts -> the explanation. Exported to JS as explainNoDevice for tests.
inline DeviceProblem explainNoDevice(const NoDeviceFacts& f) {
  const std::string rt = cudaVersionString(f.runtimeVersion);
  const std::string drv = cudaVersionString(f.driverVersion);
  // The emulator's error string is the reason itself: name its error without repeating it.
  const std::string cudaSaid =
      f.cudaName.empty() ? f.call + " found 0 devices"
                         : f.call + ": " + f.cudaName + " (" + std::to_string(f.cudaCode) + ")" +
                               (f.emulated ? std::string() : ": " + f.cudaText);
  const std::string container = "in a container, start it with the GPU exposed (e.g. `docker run --gpus all`)";
  DeviceProblem p;
  if (f.emulated) {
    p.reason = f.cudaText.empty() ? "no emulated device" : f.cudaText;
    p.fix = "set MLA_EMU_DEVICES to a comma-separated list of sm_80, sm_86, sm_89, sm_90, sm_100 and sm_120 "
            "(optionally :<SM count>), or unset it for one sm_90 device (docs/emulator.md)";
    p.status = Status::Error(Code::NoDevice,
                             "no usable emulated device: " + p.reason + ". Fix: " + p.fix + ". (CUDA: " + cudaSaid + ".)",
                             f.cudaName);
    return p;
  }
  const bool insufficientDriver = f.cudaName == "cudaErrorInsufficientDriver";
  if (insufficientDriver && f.driverVersion == 0) {
    p.reason = "no NVIDIA driver found (libcuda.so.1 cannot be loaded)";
    p.fix = "install the NVIDIA driver, branch " + minDriverBranch(f.runtimeVersion) + " or newer (it must support CUDA " +
            rt + "; `nvidia-smi` shows what it supports); " + container;
  } else if (insufficientDriver && f.driverVersion < f.runtimeVersion) {
    p.reason = "the NVIDIA driver is too old: it supports CUDA " + drv + ", this build of mla-cuda uses the CUDA " + rt +
               " runtime";
    p.fix = "upgrade the driver to branch " + minDriverBranch(f.runtimeVersion) + " or newer (CUDA " + rt +
            "), or rebuild with a CUDA toolkit no newer than " + drv + ": `CUDACXX=/usr/local/cuda-" + drv +
            "/bin/nvcc npm rebuild mla-cuda`";
  } else if (f.cudaName == "cudaErrorSystemDriverMismatch") {
    p.reason = "the loaded NVIDIA kernel module and the driver library (libcuda) are different versions, usually "
               "after a driver update without a reboot";
    p.fix = "reboot (or reload the nvidia kernel modules); until then `nvidia-smi` says \"Driver/library version mismatch\"";
  } else if (f.cudaName.empty() || f.cudaName == "cudaErrorNoDevice") {
    if (f.visibleDevicesSet) {
      p.reason = f.visibleDevices.empty()
                     ? "no GPU is visible: CUDA_VISIBLE_DEVICES is set to \"\", which hides every GPU"
                     : "no GPU is visible with CUDA_VISIBLE_DEVICES=\"" + f.visibleDevices +
                           "\" (it names no GPU the driver sees)";
      p.fix = "unset CUDA_VISIBLE_DEVICES, or set it to indices or UUIDs that `nvidia-smi -L` lists";
    } else {
      p.reason = "the NVIDIA driver is installed (it supports CUDA " + drv + ") but sees no GPU";
      p.fix = "check that `nvidia-smi -L` lists a GPU; " + container + "; `dmesg | grep -i nvrm` shows driver faults";
    }
  } else {
    p.reason = "CUDA cannot initialise (driver CUDA " + drv + ", runtime CUDA " + rt + ")";
    p.fix = "check that `nvidia-smi` runs and lists a GPU, and that no other process holds it in exclusive mode";
  }
  p.status = Status::Error(Code::NoDevice,
                           "no usable CUDA device: " + p.reason + ". Fix: " + p.fix + ". (CUDA: " + cudaSaid +
                               ".) Run `npx mla-cuda doctor` to check the whole setup.",
                           f.cudaName);
  return p;
}

}  // namespace mla::gpu

// The CUDA runtime API subset the package calls (runtime.cu, the launchers), implemented for the
// emulated device, so runtime.cu and the kernels compile unchanged against cuda_runtime_api.h.
// Work is synchronous: a copy or launch has finished when the call returns, which is one valid
// schedule of CUDA's in-order streams (events record the host clock at that moment).
//
// MLA_EMU_DEVICES lists the emulated devices, e.g. "sm_90" (default) or "sm_90,sm_80:4,sm_86:3":
// an architecture preset (compute capability, shared memory per block and per SM), optionally
// with its SM count (small counts make split plans hold several tiles per split).
// MLA_EMU_MEMORY_MB caps each device's memory (default 8192), so OOM paths can be tested.
#include <sys/mman.h>
#include <unistd.h>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <shared_mutex>
#include <string>
#include <vector>
#include "emu/device.h"  // LaunchConfig, launch(), the capture hooks
#include "emu/emu.h"

struct CUgraph_st;
struct CUstream_st {
  int device;
  CUgraph_st* capture = nullptr;  // the graph being captured, when capturing
  bool captureInvalidated = false;  // an unsupported call broke the capture (EndCapture fails)
};
// Stream capture: each node replays one captured launch, copy, memset or event record on the
// stream the graph is launched on. A graph is a straight line, which is what one stream records.
struct GraphNode {
  enum Kind { Kernel, Copy, Memset, EventRecord, MemAlloc, MemFree } kind;
  const void* what;  // the kernel (or event) a node of an updated graph must keep
  std::function<cudaError_t(cudaStream_t)> run;
};
// cudaMallocAsync during capture: memory the graph owns, at one address for every replay (as
// CUDA's graph allocations are), released with the last graph or executable that holds it.
struct GraphMemory {
  std::vector<void*> blocks;
  GraphMemory() = default;
  GraphMemory(const GraphMemory&) = delete;
  GraphMemory& operator=(const GraphMemory&) = delete;
  ~GraphMemory();
};
struct CUgraph_st {
  std::vector<GraphNode> nodes;
  std::shared_ptr<GraphMemory> memory = std::make_shared<GraphMemory>();
};
struct CUgraphExec_st {
  std::vector<GraphNode> nodes;
  std::shared_ptr<GraphMemory> memory;
};
struct CUevent_st {
  bool recorded = false;
  std::chrono::steady_clock::time_point at;
};

namespace mla::emu {
namespace {

struct Preset {
  const char* arch;
  const char* gpu;
  int major, minor, sms, optin, perSm, l2MB;
};
// Shared-memory limits are the CUDA programming guide's per-architecture values.
constexpr Preset kPresets[] = {
    {"sm_80", "A100", 8, 0, 108, 166912, 167936, 40},
    {"sm_86", "RTX 3090", 8, 6, 82, 101376, 102400, 6},
    {"sm_89", "RTX 4090", 8, 9, 128, 101376, 102400, 72},
    {"sm_90", "H100", 9, 0, 132, 232448, 233472, 50},
    {"sm_100", "B200", 10, 0, 148, 232448, 233472, 126},
    {"sm_120", "RTX 5090", 12, 0, 170, 101376, 102400, 96},
};

constexpr size_t kMaxDevices = 64;

struct Registry {
  std::vector<DeviceSpec> devices;
  std::string configError;
  Registry() {
    const char* env = std::getenv("MLA_EMU_DEVICES");
    std::string list = env && *env ? env : "sm_90";
    const char* mem = std::getenv("MLA_EMU_MEMORY_MB");
    const size_t memBytes = size_t(mem && *mem ? std::strtoull(mem, nullptr, 10) : 8192) << 20;
    size_t pos = 0;
    while (pos <= list.size()) {
      size_t comma = list.find(',', pos);
      if (comma == std::string::npos) comma = list.size();
      std::string item = list.substr(pos, comma - pos);
      pos = comma + 1;
      if (item.empty()) continue;
      std::string arch = item, sms;
      if (size_t colon = item.find(':'); colon != std::string::npos) {
        arch = item.substr(0, colon);
        sms = item.substr(colon + 1);
      }
      const Preset* p = nullptr;
      for (const Preset& c : kPresets)
        if (arch == c.arch) p = &c;
      const int smCount = sms.empty() ? (p ? p->sms : 0) : std::atoi(sms.c_str());
      if (!p || smCount < 1 || smCount > 1024) {
        configError = "MLA_EMU_DEVICES: cannot read \"" + item +
                      "\" (expected sm_80, sm_86, sm_89, sm_90, sm_100 or sm_120, optionally :<SM count 1-1024>)";
        devices.clear();
        return;
      }
      DeviceSpec d;
      d.name = std::string("Emulated ") + p->gpu + " (" + p->arch + ", " + std::to_string(smCount) + " SMs, CPU)";
      d.major = p->major;
      d.minor = p->minor;
      d.smCount = smCount;
      d.smemOptin = p->optin;
      d.smemPerSm = p->perSm;
      d.l2Bytes = p->l2MB << 20;
      d.memoryBytes = memBytes;
      devices.push_back(d);
    }
    if (devices.size() > kMaxDevices) {  // the kernels' per-device caches hold 64
      configError = "MLA_EMU_DEVICES: at most 64 devices";
      devices.clear();
    }
  }
};
const Registry& registry() {
  static const Registry r;
  return r;
}

thread_local int tlDevice = 0;
thread_local cudaError_t tlLastError = cudaSuccess;

std::mutex stickyMu;
std::atomic<int> sticky{0};
std::string stickyText;

struct Allocation {
  size_t bytes;
  int device;
  void* mapping;  // what to unmap (guard-page allocations), else null
  size_t mapped;
};

// Device memory ends at a PROT_NONE page (the 256-byte alignment leaves at most 255 bytes of
// slack before it), so a kernel reading or writing past an allocation faults at once; the
// scheduler turns that fault into a kernel fault. Under AddressSanitizer the allocation is a
// plain heap block of the exact size instead, which ASan guards to the byte.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool kGuardPages = false;
#else
constexpr bool kGuardPages = true;
#endif
// What an allocation of `bytes` counts against the device's memory (cudaMalloc's granularity).
size_t chargedBytes(size_t bytes) { return (std::max<size_t>(bytes, 1) + 255) / 256 * 256; }
size_t pageBytes() {
  static const size_t page = size_t(sysconf(_SC_PAGESIZE));
  return page;
}
std::shared_mutex memMu;
std::map<uintptr_t, Allocation> allocations;
std::vector<size_t> inUse(kMaxDevices, 0);
// cudaMallocAsync's pool: mappings cudaFreeAsync gave back, kept for the next stream-ordered
// allocation of the same size on the same device, as CUDA's pool keeps its blocks. Ops allocate
// and free scratch (linear's split-K partials) on every call, and an mmap + mprotect + munmap
// each time was most of an op's host cost here, a cost the real runtime does not have.
// Bounded; the contents are whatever the last user left, as on a GPU.
struct PooledBlock {
  int device;
  size_t rounded, mapped;
  void* mapping;
};
std::vector<PooledBlock> pool;
size_t pooledBytes = 0;
constexpr size_t kPoolBytes = size_t(256) << 20;

std::mutex handleMu;
std::set<const void*> streams, events, graphs, graphExecs;
// Captures begun on this thread (CUDA's thread-local capture mode: this thread's synchronising
// calls and allocations would break them).
thread_local int tlCaptures = 0;
std::mutex attrMu;
std::map<const void*, int> dynSmemLimit;

cudaError_t fail(cudaError_t err) {
  tlLastError = err;
  return err;
}
bool validStream(cudaStream_t s) {
  if (!s) return true;
  std::lock_guard<std::mutex> lock(handleMu);
  return streams.count(s) != 0;
}
bool validEvent(cudaEvent_t e) {
  std::lock_guard<std::mutex> lock(handleMu);
  return e && events.count(e) != 0;
}
template <class H> bool validHandle(const std::set<const void*>& live, H* h) {
  std::lock_guard<std::mutex> lock(handleMu);
  return h && live.count(h) != 0;
}
bool capturingStream(cudaStream_t s) { return s && s->capture; }
// A call CUDA refuses during capture: it fails and the capture can only end in failure. A
// synchronising call or an allocation on a thread that is capturing breaks that thread's captures.
cudaError_t breakCapture(cudaStream_t s) {
  if (s) s->captureInvalidated = true;
  return fail(cudaErrorStreamCaptureUnsupported);
}
cudaError_t breakThreadCaptures() {
  std::lock_guard<std::mutex> lock(handleMu);
  for (const void* h : streams) {
    auto* st = const_cast<CUstream_st*>(static_cast<const CUstream_st*>(h));
    if (st->capture) st->captureInvalidated = true;
  }
  return fail(cudaErrorStreamCaptureUnsupported);
}
void recordNode(cudaStream_t s, GraphNode node) { s->capture->nodes.push_back(std::move(node)); }
// Streams and events are registered so a destroyed or foreign handle is an error, not a crash.
template <class H> cudaError_t createHandle(std::set<const void*>& live, H** out, H* h) {
  std::lock_guard<std::mutex> lock(handleMu);
  live.insert(h);
  *out = h;
  return cudaSuccess;
}
template <class H> cudaError_t destroyHandle(std::set<const void*>& live, H* h) {
  {
    std::lock_guard<std::mutex> lock(handleMu);
    if (!h || !live.erase(h)) return fail(cudaErrorInvalidResourceHandle);
  }
  delete h;
  return cudaSuccess;
}
// Precondition of every call a lost context refuses.
#define MLA_EMU_STICKY()                                      \
  do {                                                        \
    if (cudaError_t s_ = stickyError()) return fail(s_);      \
  } while (0)

}  // namespace

int deviceCount() { return int(registry().devices.size()); }
const DeviceSpec& device(int index) { return registry().devices.at(size_t(index)); }
int currentDevice() { return tlDevice; }

void setLastError(cudaError_t err) { tlLastError = err; }
cudaError_t stickyError() { return cudaError_t(sticky.load()); }
void raiseSticky(cudaError_t err, const std::string& message) {
  std::lock_guard<std::mutex> lock(stickyMu);
  if (sticky.load()) return;  // the first fault is the one that matters
  stickyText = message;
  sticky.store(int(err));
  if (std::getenv("MLA_EMU_VERBOSE")) std::fprintf(stderr, "[mla-cuda emulator] %s\n", message.c_str());
}
const char* stickyMessage() {
  std::lock_guard<std::mutex> lock(stickyMu);
  return sticky.load() ? stickyText.c_str() : nullptr;
}

// The last allocation a thread hit is cached (cp.async asks per 16 bytes); any free invalidates it.
std::atomic<uint64_t> freeGeneration{0};
bool isDeviceRange(const void* p, size_t bytes) {
  thread_local uintptr_t hitBase = 0, hitEnd = 0;
  thread_local uint64_t hitGeneration = ~0ull;
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  const uint64_t gen = freeGeneration.load(std::memory_order_acquire);
  if (gen == hitGeneration && a >= hitBase && a + bytes <= hitEnd) return true;
  std::shared_lock<std::shared_mutex> lock(memMu);
  auto it = allocations.upper_bound(a);
  if (it == allocations.begin()) return false;
  --it;
  if (a + bytes > it->first + it->second.bytes) return false;
  hitBase = it->first;
  hitEnd = it->first + it->second.bytes;
  hitGeneration = gen;
  return true;
}

bool isLiveStream(cudaStream_t stream) { return validStream(stream); }

bool capturing(cudaStream_t stream) { return validStream(stream) && capturingStream(stream); }
void recordLaunch(const LaunchConfig& cfg, std::function<void(cudaStream_t)> replay) {
  // CUDA checks the configuration when the launch is captured; a bad one breaks the capture.
  if (cudaError_t bad = launchConfigError(cfg)) {
    cfg.stream->captureInvalidated = true;
    return setLastError(bad);
  }
  recordNode(cfg.stream, GraphNode{GraphNode::Kernel, cfg.kernel, [replay](cudaStream_t s) {
    tlLastError = cudaSuccess;
    replay(s);
    cudaError_t err = tlLastError;
    tlLastError = cudaSuccess;
    return err != cudaSuccess ? err : stickyError();
  }});
}

int maxDynamicSmem(const void* kernel) {
  std::lock_guard<std::mutex> lock(attrMu);
  auto it = dynSmemLimit.find(kernel);
  return it == dynSmemLimit.end() ? 48 * 1024 : it->second;
}

}  // namespace mla::emu

using namespace mla::emu;

extern "C" {

cudaError_t cudaRuntimeGetVersion(int* v) {
  *v = CUDART_VERSION;
  return cudaSuccess;
}
cudaError_t cudaDriverGetVersion(int* v) {
  *v = CUDART_VERSION;
  return cudaSuccess;
}

cudaError_t cudaGetDeviceCount(int* n) {
  // NoDevice, whose error string is the configuration error, so the user sees what is wrong.
  if (!registry().configError.empty()) return fail(cudaErrorNoDevice);
  *n = deviceCount();
  return *n ? cudaSuccess : fail(cudaErrorNoDevice);
}
cudaError_t cudaGetDevice(int* d) {
  *d = tlDevice;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int d) {
  if (d < 0 || d >= deviceCount()) return fail(cudaErrorInvalidDevice);
  tlDevice = d;
  return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int d) {
  if (d < 0 || d >= deviceCount()) return fail(cudaErrorInvalidDevice);
  const DeviceSpec& s = device(d);
  std::memset(p, 0, sizeof *p);
  std::snprintf(p->name, sizeof p->name, "%s", s.name.c_str());
  p->major = s.major;
  p->minor = s.minor;
  p->multiProcessorCount = s.smCount;
  p->totalGlobalMem = s.memoryBytes;
  p->l2CacheSize = s.l2Bytes;
  p->sharedMemPerBlock = 48 * 1024;
  p->sharedMemPerBlockOptin = size_t(s.smemOptin);
  p->sharedMemPerMultiprocessor = size_t(s.smemPerSm);
  p->maxThreadsPerBlock = 1024;
  p->maxThreadsPerMultiProcessor = s.major == 8 && s.minor != 0 ? 1536 : 2048;
  p->warpSize = 32;
  p->memoryBusWidth = 0;  // no memory bus: the emulator is not a timing tool
  p->pciBusID = 0;
  p->pciDeviceID = d;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr attr, int d) {
  if (d < 0 || d >= deviceCount()) return fail(cudaErrorInvalidDevice);
  const DeviceSpec& s = device(d);
  switch (attr) {
    case cudaDevAttrMultiProcessorCount: *v = s.smCount; break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *v = s.smemOptin; break;
    case cudaDevAttrMaxSharedMemoryPerMultiprocessor: *v = s.smemPerSm; break;
    case cudaDevAttrMaxSharedMemoryPerBlock: *v = 48 * 1024; break;
    case cudaDevAttrComputeCapabilityMajor: *v = s.major; break;
    case cudaDevAttrComputeCapabilityMinor: *v = s.minor; break;
    case cudaDevAttrMaxThreadsPerBlock: *v = 1024; break;
    case cudaDevAttrWarpSize: *v = 32; break;
    case cudaDevAttrL2CacheSize: *v = s.l2Bytes; break;
    case cudaDevAttrMemoryPoolsSupported: *v = 1; break;  // cudaMallocAsync is synchronous here
    default: *v = 0; break;                              // clocks, bus width: nothing to report
  }
  return cudaSuccess;
}

cudaError_t cudaDeviceGetPCIBusId(char* bus, int len, int d) {
  if (d < 0 || d >= deviceCount()) return fail(cudaErrorInvalidDevice);
  std::snprintf(bus, size_t(len), "emulated:%02d", d);
  return cudaSuccess;
}

cudaError_t cudaMemGetInfo(size_t* freeBytes, size_t* total) {
  MLA_EMU_STICKY();
  const DeviceSpec& s = device(tlDevice);
  std::shared_lock<std::shared_mutex> lock(memMu);
  *total = s.memoryBytes;
  *freeBytes = s.memoryBytes - std::min(s.memoryBytes, inUse[size_t(tlDevice)]);
  return cudaSuccess;
}

cudaError_t cudaGetLastError() {
  cudaError_t e = tlLastError;
  tlLastError = cudaSuccess;
  if (e == cudaSuccess) e = stickyError();  // a sticky error is never cleared
  return e;
}
cudaError_t cudaPeekAtLastError() { return tlLastError != cudaSuccess ? tlLastError : stickyError(); }

const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorNotReady: return "cudaErrorNotReady";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    case cudaErrorInvalidDevicePointer: return "cudaErrorInvalidDevicePointer";
    case cudaErrorIllegalState: return "cudaErrorIllegalState";
    case cudaErrorStreamCaptureUnsupported: return "cudaErrorStreamCaptureUnsupported";
    case cudaErrorStreamCaptureInvalidated: return "cudaErrorStreamCaptureInvalidated";
    case cudaErrorGraphExecUpdateFailure: return "cudaErrorGraphExecUpdateFailure";
    default: return "cudaErrorUnknown";
  }
}
const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory (emulated device; MLA_EMU_MEMORY_MB sets the limit)";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorNoDevice:
      return registry().configError.empty() ? "MLA_EMU_DEVICES lists no device" : registry().configError.c_str();
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorNotReady: return "device not ready";
    case cudaErrorInvalidDevicePointer: return "invalid device pointer";
    case cudaErrorIllegalState: return "the operation is not valid in the stream's capture state";
    case cudaErrorStreamCaptureUnsupported: return "operation not permitted when stream is capturing";
    case cudaErrorStreamCaptureInvalidated: return "operation failed due to a previous error during capture";
    case cudaErrorGraphExecUpdateFailure:
      return "the graph update was not performed because it included changes which violated constraints specific to instantiated graph update";
    case cudaErrorLaunchFailure: {
      const char* m = stickyMessage();
      return m ? m : "unspecified launch failure";
    }
    default: return "unknown error";
  }
}

namespace {
cudaError_t allocDevice(void** p, size_t bytes, bool pooled = false);
cudaError_t freeDevice(void* p, bool pooled = false);
}  // namespace

GraphMemory::~GraphMemory() {
  for (void* p : blocks) freeDevice(p);
}

cudaError_t cudaMalloc(void** p, size_t bytes) {
  *p = nullptr;
  MLA_EMU_STICKY();
  if (tlCaptures > 0) return breakThreadCaptures();
  return allocDevice(p, bytes);
}

cudaError_t cudaFree(void* p) {
  if (!p) return cudaSuccess;
  if (tlCaptures > 0) return breakThreadCaptures();
  return freeDevice(p);
}

// Page-locked host memory is plain host memory here: there is nothing to lock, and copies from it
// are as synchronous as any other.
cudaError_t cudaMallocHost(void** p, size_t bytes) {
  *p = nullptr;
  MLA_EMU_STICKY();
  if (tlCaptures > 0) return breakThreadCaptures();
  *p = std::malloc(std::max<size_t>(bytes, 1));
  return *p ? cudaSuccess : fail(cudaErrorMemoryAllocation);
}
cudaError_t cudaFreeHost(void* p) {
  if (tlCaptures > 0) return breakThreadCaptures();
  std::free(p);
  return cudaSuccess;
}

namespace {
cudaError_t allocDevice(void** p, size_t bytes, bool pooled) {
  const DeviceSpec& s = device(tlDevice);
  const size_t rounded = chargedBytes(bytes);
  {
    std::shared_lock<std::shared_mutex> lock(memMu);
    if (inUse[size_t(tlDevice)] + rounded > s.memoryBytes) return fail(cudaErrorMemoryAllocation);
  }
  // 256-byte aligned like cudaMalloc; the exact size is what is registered.
  void* m = nullptr;
  void* mapping = nullptr;
  size_t mapped = 0;
  if (pooled) {
    std::unique_lock<std::shared_mutex> lock(memMu);
    for (size_t i = 0; i < pool.size(); ++i) {
      if (pool[i].device != tlDevice || pool[i].rounded != rounded) continue;
      mapping = pool[i].mapping;
      mapped = pool[i].mapped;
      pooledBytes -= mapped;
      pool[i] = pool.back();
      pool.pop_back();
      break;
    }
  }
  if (kGuardPages && !mapping) {
    const size_t page = pageBytes();
    mapped = (rounded + page - 1) / page * page + page;
    mapping = mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (mapping == MAP_FAILED) return fail(cudaErrorMemoryAllocation);
    mprotect(static_cast<char*>(mapping) + mapped - page, page, PROT_NONE);
  }
  if (mapping) {
    m = static_cast<char*>(mapping) + (mapped - pageBytes() - rounded);  // ends at the guard page
  } else {
    m = std::aligned_alloc(256, rounded);
    if (!m) return fail(cudaErrorMemoryAllocation);
  }
  std::unique_lock<std::shared_mutex> lock(memMu);
  allocations[reinterpret_cast<uintptr_t>(m)] = Allocation{bytes, tlDevice, mapping, mapped};
  inUse[size_t(tlDevice)] += rounded;
  *p = m;
  return cudaSuccess;
}

cudaError_t freeDevice(void* p, bool pooled) {
  std::unique_lock<std::shared_mutex> lock(memMu);
  auto it = allocations.find(reinterpret_cast<uintptr_t>(p));
  if (it == allocations.end()) return fail(cudaErrorInvalidDevicePointer);
  inUse[size_t(it->second.device)] -= chargedBytes(it->second.bytes);
  const Allocation a = it->second;
  allocations.erase(it);
  freeGeneration.fetch_add(1, std::memory_order_release);
  if (pooled && a.mapping && pooledBytes + a.mapped <= kPoolBytes) {
    pool.push_back(PooledBlock{a.device, chargedBytes(a.bytes), a.mapped, a.mapping});
    pooledBytes += a.mapped;
    return cudaSuccess;
  }
  lock.unlock();
  if (a.mapping) munmap(a.mapping, a.mapped);
  else std::free(p);
  return cudaSuccess;
}
}  // namespace

// Stream-ordered allocation is capture-safe: on a capturing stream it becomes graph memory.
cudaError_t cudaMallocAsync(void** p, size_t bytes, cudaStream_t s) {
  *p = nullptr;
  MLA_EMU_STICKY();
  if (!validStream(s)) return fail(cudaErrorInvalidResourceHandle);
  if (!capturingStream(s)) {
    if (tlCaptures > 0) return breakThreadCaptures();
    return allocDevice(p, bytes, /*pooled=*/true);
  }
  if (cudaError_t err = allocDevice(p, bytes)) return err;
  s->capture->memory->blocks.push_back(*p);
  recordNode(s, GraphNode{GraphNode::MemAlloc, nullptr, [](cudaStream_t) { return cudaSuccess; }});
  return cudaSuccess;
}
cudaError_t cudaFreeAsync(void* p, cudaStream_t s) {
  if (!validStream(s)) return fail(cudaErrorInvalidResourceHandle);
  if (!capturingStream(s)) {
    if (!p) return cudaSuccess;
    if (tlCaptures > 0) return breakThreadCaptures();
    return freeDevice(p, /*pooled=*/true);
  }
  const auto& owned = s->capture->memory->blocks;
  if (std::find(owned.begin(), owned.end(), p) == owned.end()) return breakCapture(s);  // not this graph's
  recordNode(s, GraphNode{GraphNode::MemFree, nullptr, [](cudaStream_t) { return cudaSuccess; }});
  return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t n, cudaMemcpyKind kind, cudaStream_t s) {
  MLA_EMU_STICKY();
  if (!validStream(s)) return fail(cudaErrorInvalidResourceHandle);
  if (n == 0) return cudaSuccess;
  // Strict about direction: a host pointer where device memory is expected is a bug here, even
  // though a real GPU with unified addressing might accept it.
  const bool dstDev = isDeviceRange(dst, n), srcDev = isDeviceRange(src, n);
  bool ok = false;
  switch (kind) {
    case cudaMemcpyHostToDevice: ok = dstDev; break;
    case cudaMemcpyDeviceToHost: ok = srcDev; break;
    case cudaMemcpyDeviceToDevice: ok = dstDev && srcDev; break;
    case cudaMemcpyHostToHost: ok = true; break;
    default: ok = dstDev || srcDev; break;
  }
  if (!ok) return fail(cudaErrorInvalidValue);
  if (capturingStream(s)) {
    // Only device-to-device copies are graph nodes here; a host buffer may be gone by replay.
    if (!(dstDev && srcDev)) return breakCapture(s);
    recordNode(s, GraphNode{GraphNode::Copy, nullptr, [dst, src, n](cudaStream_t) {
      if (cudaError_t e = stickyError()) return e;
      if (!isDeviceRange(dst, n) || !isDeviceRange(src, n)) return fail(cudaErrorInvalidValue);  // freed since
      std::memmove(dst, src, n);
      return cudaSuccess;
    }});
    return cudaSuccess;
  }
  std::memmove(dst, src, n);
  return cudaSuccess;
}
cudaError_t cudaMemcpy(void* dst, const void* src, size_t n, cudaMemcpyKind kind) {
  if (tlCaptures > 0) return breakThreadCaptures();
  return cudaMemcpyAsync(dst, src, n, kind, nullptr);
}
cudaError_t cudaMemsetAsync(void* p, int value, size_t n, cudaStream_t s) {
  MLA_EMU_STICKY();
  if (!validStream(s)) return fail(cudaErrorInvalidResourceHandle);
  if (n == 0) return cudaSuccess;
  if (!isDeviceRange(p, n)) return fail(cudaErrorInvalidValue);
  if (capturingStream(s)) {
    recordNode(s, GraphNode{GraphNode::Memset, nullptr, [p, value, n](cudaStream_t) {
      if (cudaError_t e = stickyError()) return e;
      if (!isDeviceRange(p, n)) return fail(cudaErrorInvalidValue);
      std::memset(p, value, n);
      return cudaSuccess;
    }});
    return cudaSuccess;
  }
  std::memset(p, value, n);
  return cudaSuccess;
}
cudaError_t cudaMemset(void* p, int value, size_t n) {
  if (tlCaptures > 0) return breakThreadCaptures();
  return cudaMemsetAsync(p, value, n, nullptr);
}

cudaError_t cudaDeviceSynchronize() {
  MLA_EMU_STICKY();
  if (tlCaptures > 0) return breakThreadCaptures();
  return cudaSuccess;
}

cudaError_t cudaStreamCreate(cudaStream_t* s) {
  MLA_EMU_STICKY();
  return createHandle(streams, s, new CUstream_st{tlDevice});
}
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned) { return cudaStreamCreate(s); }
cudaError_t cudaStreamDestroy(cudaStream_t s) {
  if (validStream(s) && capturingStream(s)) {  // CUDA ends the capture; the graph is dropped
    delete s->capture;
    s->capture = nullptr;
    --tlCaptures;
  }
  return destroyHandle(streams, s);
}
cudaError_t cudaStreamSynchronize(cudaStream_t s) {
  MLA_EMU_STICKY();
  if (!validStream(s)) return fail(cudaErrorInvalidResourceHandle);
  if (capturingStream(s)) return breakCapture(s);
  if (!s && tlCaptures > 0) return breakThreadCaptures();
  return cudaSuccess;
}
// Work finishes before the call that queued it returns: a query always finds it done.
cudaError_t cudaStreamQuery(cudaStream_t s) {
  MLA_EMU_STICKY();
  if (!validStream(s)) return fail(cudaErrorInvalidResourceHandle);
  return capturingStream(s) ? breakCapture(s) : cudaSuccess;
}

cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode) {
  MLA_EMU_STICKY();
  if (!validStream(s)) return fail(cudaErrorInvalidResourceHandle);
  if (!s) return fail(cudaErrorStreamCaptureUnsupported);  // the legacy stream cannot capture
  if (s->capture) return fail(cudaErrorIllegalState);
  s->capture = new CUgraph_st{};
  s->captureInvalidated = false;
  ++tlCaptures;
  return cudaSuccess;
}
cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t* graph) {
  *graph = nullptr;
  if (!validStream(s)) return fail(cudaErrorInvalidResourceHandle);
  if (!capturingStream(s)) return fail(cudaErrorIllegalState);
  CUgraph_st* g = s->capture;
  s->capture = nullptr;
  --tlCaptures;
  if (s->captureInvalidated) {
    delete g;
    return fail(cudaErrorStreamCaptureInvalidated);
  }
  return createHandle(graphs, graph, g);
}
cudaError_t cudaStreamIsCapturing(cudaStream_t s, cudaStreamCaptureStatus* status) {
  if (!validStream(s)) return fail(cudaErrorInvalidResourceHandle);
  *status = !capturingStream(s) ? cudaStreamCaptureStatusNone
            : s->captureInvalidated ? cudaStreamCaptureStatusInvalidated : cudaStreamCaptureStatusActive;
  return cudaSuccess;
}
cudaError_t cudaGraphDestroy(cudaGraph_t g) { return destroyHandle(graphs, g); }
cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t g, unsigned long long) {
  *exec = nullptr;
  MLA_EMU_STICKY();
  if (!validHandle(graphs, g)) return fail(cudaErrorInvalidResourceHandle);
  return createHandle(graphExecs, exec, new CUgraphExec_st{g->nodes, g->memory});
}
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t e) { return destroyHandle(graphExecs, e); }
// Runs the nodes in order; the first failure stops the replay and is returned.
cudaError_t cudaGraphLaunch(cudaGraphExec_t e, cudaStream_t s) {
  MLA_EMU_STICKY();
  if (!validHandle(graphExecs, e) || !validStream(s)) return fail(cudaErrorInvalidResourceHandle);
  if (capturingStream(s)) return breakCapture(s);  // child graphs are not modelled
  for (const GraphNode& n : e->nodes) {
    if (cudaError_t err = n.run(s)) return fail(err);
  }
  return cudaSuccess;
}
// In place when the topology is unchanged: the same node kinds in the same order, each kernel
// node the same kernel (CUDA's rule); the parameters, sizes and pointers may all change.
cudaError_t cudaGraphExecUpdate(cudaGraphExec_t e, cudaGraph_t g, cudaGraphExecUpdateResultInfo* info) {
  if (info) std::memset(info, 0, sizeof *info);
  if (!validHandle(graphExecs, e) || !validHandle(graphs, g)) return fail(cudaErrorInvalidResourceHandle);
  cudaGraphExecUpdateResult result = cudaGraphExecUpdateSuccess;
  if (e->nodes.size() != g->nodes.size()) result = cudaGraphExecUpdateErrorTopologyChanged;
  for (size_t i = 0; result == cudaGraphExecUpdateSuccess && i < g->nodes.size(); ++i) {
    if (e->nodes[i].kind != g->nodes[i].kind) result = cudaGraphExecUpdateErrorNodeTypeChanged;
    else if (e->nodes[i].what != g->nodes[i].what) result = cudaGraphExecUpdateErrorFunctionChanged;
  }
  if (info) info->result = result;
  if (result != cudaGraphExecUpdateSuccess) return fail(cudaErrorGraphExecUpdateFailure);
  e->nodes = g->nodes;
  e->memory = g->memory;
  return cudaSuccess;
}
cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned) {
  MLA_EMU_STICKY();
  if (!validStream(s) || !validEvent(e)) return fail(cudaErrorInvalidResourceHandle);
  return cudaSuccess;
}

cudaError_t cudaEventCreate(cudaEvent_t* e) {
  MLA_EMU_STICKY();
  return createHandle(events, e, new CUevent_st{});
}
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned) { return cudaEventCreate(e); }
cudaError_t cudaEventDestroy(cudaEvent_t e) { return destroyHandle(events, e); }
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) {
  MLA_EMU_STICKY();
  if (!validEvent(e) || !validStream(s)) return fail(cudaErrorInvalidResourceHandle);
  if (capturingStream(s)) {
    recordNode(s, GraphNode{GraphNode::EventRecord, e, [e](cudaStream_t) {
      if (!validEvent(e)) return fail(cudaErrorInvalidResourceHandle);
      e->recorded = true;
      e->at = std::chrono::steady_clock::now();
      return cudaSuccess;
    }});
    return cudaSuccess;
  }
  e->recorded = true;
  e->at = std::chrono::steady_clock::now();
  return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t e) {
  MLA_EMU_STICKY();
  if (!validEvent(e)) return fail(cudaErrorInvalidResourceHandle);
  return tlCaptures > 0 ? breakThreadCaptures() : cudaSuccess;
}
cudaError_t cudaEventQuery(cudaEvent_t e) { return cudaEventSynchronize(e); }
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  MLA_EMU_STICKY();
  if (!validEvent(start) || !validEvent(end)) return fail(cudaErrorInvalidResourceHandle);
  if (!start->recorded || !end->recorded) return fail(cudaErrorInvalidResourceHandle);
  *ms = std::chrono::duration<float, std::milli>(end->at - start->at).count();
  return cudaSuccess;
}

cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value) {
  if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
    if (value < 0 || value > device(tlDevice).smemOptin) return fail(cudaErrorInvalidValue);
    std::lock_guard<std::mutex> lock(attrMu);
    dynSmemLimit[func] = value;
  }
  return cudaSuccess;
}

// The driver entry points the package asks for: only cuTensorMapEncodeTiled (hopper.cuh's
// encodeTensorMapTiled), answered by the emulator's own encoder, whose maps its TMA reads.
cudaError_t cudaGetDriverEntryPointByVersion(const char* symbol, void** fn, unsigned int cudaVersion,
                                             unsigned long long flags, cudaDriverEntryPointQueryResult* status) {
  if (!symbol || !fn) return fail(cudaErrorInvalidValue);
  *fn = nullptr;
  if (flags & ~(unsigned long long)(cudaEnableLegacyStream | cudaEnablePerThreadDefaultStream))
    return fail(cudaErrorInvalidValue);
  // The v12000 signature is the one CUDA 12.0 introduced; older versions did not have the symbol.
  if (std::strcmp(symbol, "cuTensorMapEncodeTiled") == 0 && cudaVersion >= 12000) {
    *fn = tensorMapEncodeTiledEntry();
    if (status) *status = cudaDriverEntryPointSuccess;
    return cudaSuccess;
  }
  if (status) *status = cudaVersion >= 12000 || std::strcmp(symbol, "cuTensorMapEncodeTiled") != 0
                            ? cudaDriverEntryPointSymbolNotFound
                            : cudaDriverEntryPointVersionNotSufficent;
  return cudaSuccess;
}

// Blocks per SM from shared memory and threads (1 KB per block is reserved by the hardware);
// registers are not modelled, which only matters for how plans split work, never for results.
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* n, const void*, int blockSize, size_t smem) {
  if (blockSize < 1 || blockSize > 1024) return fail(cudaErrorInvalidValue);
  cudaDeviceProp p;
  cudaGetDeviceProperties(&p, tlDevice);
  int bySmem = smem ? int(p.sharedMemPerMultiprocessor / (smem + 1024)) : 32;
  int byThreads = p.maxThreadsPerMultiProcessor / (((blockSize + 31) / 32) * 32);
  *n = std::max(0, std::min({bySmem, byThreads, 32}));
  return cudaSuccess;
}

}  // extern "C"

// The emulated SM's internal state, shared by scheduler.cc (fibers, block barrier, warp
// collectives, cp.async) and hopper.cc (the sm_90a PTX: warpgroup collectives, mbarriers, TMA).
// It lives in a header only because hopper.cc must block and wake fibers and extend the
// shared-memory shadow exactly as the scheduler does; kernels never include it (they see
// device.h), and nothing outside csrc/emu should.
#pragma once
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstring>
#include <map>
#include <string>
#include <vector>
#include "emu/device.h"

// ThreadSanitizer mode (-DMLA_EMU_TSAN, scheduler.cc and hopper.cc built without
// -fsanitize=thread, the kernels with it): every CUDA thread runs on its own TSan fiber, switched
// without synchronisation, and the orderings CUDA guarantees are stated as acquire/release edges
// on these macros, so a missing barrier between plain shared-memory accesses is reported at the
// kernel's lines.
#ifdef MLA_EMU_TSAN
#include <sanitizer/tsan_interface.h>
extern "C" void __tsan_read_range(void* addr, unsigned long size);
extern "C" void __tsan_write_range(void* addr, unsigned long size);
extern "C" void __tsan_func_entry(void* pc);
extern "C" void __tsan_func_exit();
#define TSAN_REL(p) __tsan_release(static_cast<void*>(p))
#define TSAN_ACQ(p) __tsan_acquire(static_cast<void*>(p))
#else
#define TSAN_REL(p) ((void)0)
#define TSAN_ACQ(p) ((void)0)
#endif

namespace mla::emu::sm {

// kInGroupOp: at a warpgroup collective (wgmma.mma_async, setmaxnreg) until all 128 arrive.
// kAtMbarrier: in mbarrierWait until the phase of Fiber::waitParity has completed.
// kAtNamedBarrier: in bar.sync on named barrier Fiber::waitBar until its generation waitGen completes.
enum State { kRunnable, kAtBarrier, kInWarpOp, kInGroupOp, kAtMbarrier, kAtNamedBarrier, kExited };

struct CpCopy {
  unsigned char* dst;
  const unsigned char* src;
  int srcBytes, group;
};

// A wgmma.mma_async result not yet delivered: it reaches the thread's accumulator array `d` at
// the wgmma.wait_group that covers `group`, the newest group chained into it (until then the
// array holds NaN).
struct WgmmaResult {
  float* d;
  int n, group;
  float v[128];
  // The operand reads of the wgmmas that produced it, each with the group it was issued in
  // (index into Block::wgmmaReads): released by the wait_group that covers THAT group, which may
  // come before the result (wgmma.wait_group N completes every group but the newest N).
  struct Read {
    int idx, group;
  };
  std::vector<Read> reads;
};

// The shared-memory chunks one wgmma.mma_async read. On a GPU the operands may be read any time
// until the wait_group that covers its group, so the chunks stay "being read"
// (Chunk::wgmmaReaders) until all 128 threads of the warpgroup have waited for that group. A
// thread of the warpgroup that has itself waited may write them before the others have (its
// Fiber::waitedReads): the group is the warpgroup's (PTX ISA wgmma.commit_group) and cannot
// complete before all four warps issued it, so its own wait orders the write after every read
// (FlashMLA issues a TMA load into a V buffer from one thread right after its wait_group).
struct WgmmaRead {
  std::vector<uint32_t> chunks;
  int remaining = 0;  // threads yet to wait
  const char* file = nullptr;
  int line = 0;
};

struct Fiber {
  void* sp = nullptr;
  char* stack = nullptr;
  uint3 tid{};
  int linear = 0, lane = 0, warp = 0;
  State state = kRunnable;
  uint64_t waitGen = 0;
  std::vector<CpCopy> copies;
  int committed = 0;  // committed cp.async groups; open copies carry group == committed
  // sm_90a (hopper.cc)
  std::vector<WgmmaResult> wgmma;
  int wgmmaCommitted = 0;     // committed wgmma groups; open results carry group == wgmmaCommitted
  bool wgmmaFenced = false;   // a wgmma.fence since the start or the last wgmma.wait_group
  std::vector<int> waitedReads;  // wgmma reads (Block::wgmmaReads) this thread has waited for, others not yet
  uint32_t waitBar = 0, waitParity = 0;  // kAtMbarrier: which barrier (shared offset), which phase parity;
                                         // kAtNamedBarrier: waitBar is the named barrier's id
  const char* waitFile = nullptr;
  int waitLine = 0;
#ifdef __SANITIZE_ADDRESS__
  void* asanFake = nullptr;
#endif
};

// A warp collective in progress: each lane deposits its operand and where its result goes; the
// last to arrive computes for all and delivers every result before any lane runs again (a lane
// may reach its next collective before the others have resumed).
struct Slot {
  alignas(16) unsigned char b[64];
};
using WarpCompute = void (*)(const Slot* in, Slot* out, unsigned mask, uintptr_t arg);
struct Warp {
  unsigned arrived = 0, mask = 0;
  uint64_t gen = 0;
  const char* op = nullptr;
  uintptr_t arg = 0;
  const char* file = nullptr;
  int line = 0;
  Slot in[32], out[32];
  void* dest[32];
};

// A warpgroup collective in progress (4 warps, 128 threads, warp index a multiple of 4): the same
// rendezvous as Warp, with operands left in place on the callers' stacks (`in`, valid while they
// wait) because a wgmma's operands are large; `key` must match for every thread.
struct Group {
  int arrived = 0;
  uint64_t gen = 0;
  const char* op = nullptr;
  uint64_t key[8] = {};
  const char* file = nullptr;
  int line = 0;
  const void* in[128];
  struct Fiber* member[128];
};

// Shadow of one 16-byte chunk of dynamic shared memory.
struct Chunk {
  int32_t pendingBy = -1;    // thread with a cp.async in flight into it
  int32_t writer = -1;       // thread whose cp.async last completed here
  uint64_t writeEpoch = 0;   // barrier generation of that completion
  int32_t readerWarp = -1;   // warp that read it with ldmatrix in readEpoch (-2: several)
  uint64_t readEpoch = ~0ull;
  int32_t tmaBar = -1;       // shared offset of the mbarrier of a TMA load in flight into it
  int32_t wgmmaReaders = 0;  // wgmma.mma_async operand reads not yet covered by a wait_group
  int32_t wgmmaRead = -1;    // the latest of them (index into Block::wgmmaReads)
};

// A TMA load in flight: its bytes, read from global memory at issue, land when the barrier's phase
// completes; 16-byte chunk i of `data` goes to shared offset chunks[i] (already swizzled).
struct TmaCopy {
  uint32_t bytes;
  std::vector<uint32_t> chunks;
  std::vector<unsigned char> data;
  int issuer;
  const char* file;
  int line;
};

// mbarrier state (the 8 shared bytes themselves are left alone): PTX ISA "mbarrier", phases of
// `count` arrivals and a transaction count.
struct MBarrier {
  uint32_t count = 0, pending = 0;
  int64_t tx = 0;              // expected minus completed transaction bytes of the current phase
  uint32_t phase = 0;          // current phase number; its parity is phase & 1
  std::vector<TmaCopy> inflight;
  int64_t inflightBytes = 0;   // bytes of `inflight` (their complete_tx is still to come)
  const char* file = nullptr;  // where it was initialised
  int line = 0;
};

// A named barrier (bar.sync / bar.arrive id, count; PTX ISA "bar, barrier"), ids 1..15: the
// first arrival of a generation fixes `count`; the generation completes at `arrived == count`.
struct NamedBarrier {
  int arrived = 0, count = 0;
  uint64_t gen = 0;
  const char* file = nullptr;  // the first arrival of the current generation
  int line = 0;
};
constexpr int kNamedBarriers = 16;  // index 0 unused (barrier 0 is __syncthreads')

struct Block {
  int threads = 0, alive = 0, atBarrier = 0;
  NamedBarrier named[kNamedBarriers];
  uint64_t barrierGen = 0;
  const char* barrierFile = nullptr;
  int barrierLine = 0;
  unsigned char* smem = nullptr;
  size_t smemBytes = 0;
  std::vector<Chunk> shadow;
  Warp warps[32];
  Group groups[8];
  std::map<uint32_t, MBarrier> mbarriers;  // by shared offset
  std::vector<WgmmaRead> wgmmaReads;
  void* schedulerSp = nullptr;
  KernelBody body = nullptr;
  const void* params = nullptr;
  const void* kernel = nullptr;
  bool faulted = false;
  std::string faultMessage;
};

extern thread_local Fiber* tlFiber;
extern thread_local Block* tlBlock;

// scheduler.cc
void toScheduler();                        // suspends the current fiber (set its state first)
std::string where();                       // "block (x,y,z) thread t (warp w lane l)"
[[noreturn]] void faultHere(const std::string& message);
std::string vformat(const char* fmt, va_list ap);
std::string format(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
Chunk* chunkOf(const void* p, const char* op, const char* file, int line);

// hopper.cc: the scheduler's hooks for the sm_90a state.
bool mbarrierReady(Block& B, const Fiber& f);  // may a fiber in kAtMbarrier run again?
std::string hopperExitCheck(const Fiber& f);   // non-empty: why this exiting thread faults
std::string hopperBlockEndCheck(Block& B);     // non-empty: why the finished block faults
std::string hopperDeadlockReport(const Block& B, const std::vector<Fiber>& fibers);
void hopperResetBlock(Block& B);
std::string wgmmaReadConflict(const Chunk& c);  // non-empty: a wgmma in flight reads this chunk

// A 16-bit operand element as float, exactly: bf16 (the high half of an f32), or IEEE binary16
// (subnormals included). Used by the mma.sync and wgmma emulations.
inline float half16(uint16_t h, bool bf16) {
  float f;
  if (bf16) {
    const uint32_t u = uint32_t(h) << 16;
    std::memcpy(&f, &u, 4);
    return f;
  }
  const uint32_t sign = uint32_t(h >> 15) << 31, exp = (h >> 10) & 31, mant = h & 1023;
  if (exp == 31) {
    const uint32_t u = sign | 0x7f800000u | (mant << 13);
    std::memcpy(&f, &u, 4);
  } else if (exp == 0) {
    f = std::ldexp(float(mant), -24);
    if (sign) f = -f;
  } else {
    const uint32_t u = sign | ((exp + 112) << 23) | (mant << 13);
    std::memcpy(&f, &u, 4);
  }
  return f;
}

}  // namespace mla::emu::sm

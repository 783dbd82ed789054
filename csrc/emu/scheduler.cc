// The emulated SM: a block runs as one fiber per CUDA thread on the launching OS thread.
// Fibers switch only at block barriers and warp collectives, so a thread runs until it must
// wait for others; a warp collective is a rendezvous where the last lane to arrive computes
// every lane's result. Everything a GPU would leave undefined is made loud: cp.async
// destinations are poisoned until their wait_group, dynamic shared memory starts as NaN bytes
// at its exact size, a 16-byte shadow of it reports reads of in-flight copies and cross-warp
// hazards without a barrier, divergent barriers and deadlocks stop the kernel. Any such
// finding is a fault: the block stops, and the launch fails with a sticky error whose message
// names the block, thread and source line (the binding turns it into an MlaError).
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <random>
#include <string>
#include <vector>
#include "emu/device.h"
#include "emu/emu.h"
#include "emu/sm.h"

#if defined(__SANITIZE_ADDRESS__)
#define MLA_EMU_ASAN 1
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

namespace mla::emu {

// ---- context switch ---------------------------------------------------------------------------
#if defined(__x86_64__)
// Saves the callee-saved registers on the current stack, stores its pointer, loads the other.
// (ucontext's swapcontext makes a signal-mask system call per switch: ~50x slower.)
extern "C" void mla_emu_swap(void** save, void* load);
asm(R"(
.text
.globl mla_emu_swap
.hidden mla_emu_swap
.type mla_emu_swap,@function
mla_emu_swap:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
.size mla_emu_swap, .-mla_emu_swap
)");
#else
#error "the emulated device needs x86-64 (CMake skips it elsewhere)"
#endif

// The block, fiber and shadow structures are in sm.h (hopper.cc extends them).
namespace sm {
thread_local Fiber* tlFiber = nullptr;
thread_local Block* tlBlock = nullptr;
}  // namespace sm
using namespace sm;

namespace {

#ifdef MLA_EMU_ASAN
thread_local const void* tlHostStackBottom = nullptr;
thread_local size_t tlHostStackSize = 0;
#endif

int envInt(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::atoi(v) : fallback;
}

#ifdef MLA_EMU_TSAN
// Synchronisation objects live in memory TSan never sees freed (it keys them by address).
constexpr int kBarrierRing = 16, kWarpRing = 64;
struct TsanSync {
  char launch, blockEnd;
  char barrier[kBarrierRing];
  char named[kNamedBarriers][kBarrierRing];  // by named barrier id, generation % ring
  char warp[32][kWarpRing];
};
thread_local TsanSync* tlSync = nullptr;
thread_local void* tlHostFiber = nullptr;
thread_local std::vector<void*> tlTsanFibers;
void* tsanFiber(size_t i) {
  while (tlTsanFibers.size() <= i) tlTsanFibers.push_back(__tsan_create_fiber(0));
  return tlTsanFibers[i];
}
struct TsanFrame {  // puts the kernel line that called ldmatrix / cp.async on the report's stack
  explicit TsanFrame(void* pc) { __tsan_func_entry(pc); }
  ~TsanFrame() { __tsan_func_exit(); }
};
#define TSAN_FRAME() TsanFrame tsanFrame_(__builtin_return_address(0))
#else
#define TSAN_FRAME() ((void)0)
#endif

}  // namespace

namespace sm {
void toScheduler() {
  Fiber& f = *tlFiber;
#ifdef MLA_EMU_ASAN
  __sanitizer_start_switch_fiber(f.state == kExited || tlBlock->faulted ? nullptr : &f.asanFake, tlHostStackBottom,
                                 tlHostStackSize);
#endif
#ifdef MLA_EMU_TSAN
  __tsan_switch_to_fiber(tlHostFiber, __tsan_switch_to_fiber_no_sync);
#endif
  mla_emu_swap(&f.sp, tlBlock->schedulerSp);
#ifdef MLA_EMU_ASAN
  __sanitizer_finish_switch_fiber(f.asanFake, nullptr, nullptr);
#endif
}

std::string where() {
  char buf[160];
  const uint3 b = tlBlockIdx;
  if (tlFiber)
    snprintf(buf, sizeof buf, "block (%u,%u,%u) thread %d (warp %d lane %d)", b.x, b.y, b.z, tlFiber->linear,
             tlFiber->warp, tlFiber->lane);
  else
    snprintf(buf, sizeof buf, "block (%u,%u,%u)", b.x, b.y, b.z);
  return buf;
}

// Ends the block with a fault; called on a fiber, never returns to it.
[[noreturn]] void faultHere(const std::string& message) {
  Block& B = *tlBlock;
  if (!B.faulted) {
    B.faulted = true;
    B.faultMessage = message;
  }
  toScheduler();
  __builtin_unreachable();
}

std::string vformat(const char* fmt, va_list ap) {
  char buf[1024];
  vsnprintf(buf, sizeof buf, fmt, ap);
  return buf;
}

std::string format(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  std::string s = vformat(fmt, ap);
  va_end(ap);
  return s;
}

}  // namespace sm

namespace {

void releaseBarrier(Block& B) {
  B.atBarrier = 0;
  B.barrierGen++;
  B.barrierFile = nullptr;
}

void fiberMain() {
#ifdef MLA_EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &tlHostStackBottom, &tlHostStackSize);
#endif
  Block& B = *tlBlock;
  TSAN_ACQ(&tlSync->launch);  // the launch orders everything the host did before it
  B.body(B.params, B.kernel);
  Fiber& f = *tlFiber;
  if (!f.copies.empty())
    faultHere(format("%s exited with %zu cp.async copies it never waited for (cp.async.wait_group missing)",
                     where().c_str(), f.copies.size()));
  if (std::string m = hopperExitCheck(f); !m.empty()) faultHere(m);
  f.state = kExited;
  B.alive--;
  TSAN_REL(&tlSync->blockEnd);
  // An exited thread no longer counts at a barrier (sm_70+ semantics); the rest may now be complete.
  if (B.atBarrier > 0) {
    TSAN_REL(&tlSync->barrier[B.barrierGen % kBarrierRing]);
    if (B.atBarrier == B.alive) releaseBarrier(B);
  }
  toScheduler();
  __builtin_unreachable();
}

size_t stackBytes() {
#ifdef MLA_EMU_ASAN
  static const size_t bytes = size_t(envInt("MLA_EMU_STACK_KB", 512)) * 1024;
#else
  static const size_t bytes = size_t(envInt("MLA_EMU_STACK_KB", 128)) * 1024;
#endif
  return bytes;
}

// Stacks are kept per OS thread and reused by every block; a PROT_NONE page below each turns
// an overflow into a memory fault at the overflow (a kernel fault) rather than silent corruption.
thread_local std::vector<char*> tlStacks;
char* stackFor(size_t i) {
  const size_t page = size_t(sysconf(_SC_PAGESIZE));
  while (tlStacks.size() <= i) {
    void* m = mmap(nullptr, stackBytes() + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    if (m == MAP_FAILED) return nullptr;
    mprotect(m, page, PROT_NONE);
    tlStacks.push_back(static_cast<char*>(m) + page);
  }
  return tlStacks[i];
}
struct StackPool {  // unmaps an exiting OS thread's stacks (worker threads come and go)
  ~StackPool() {
    const size_t page = size_t(sysconf(_SC_PAGESIZE));
    for (char* s : tlStacks) {
#ifdef MLA_EMU_ASAN
      // Abandoned fiber frames leave redzones in ASan's shadow; memory mapped here later (a V8
      // heap page) would otherwise be reported as a stack overflow.
      __asan_unpoison_memory_region(s, stackBytes());
#endif
      munmap(s - page, stackBytes() + page);
    }
  }
};
thread_local StackPool tlStackPool;

bool initFiber(Fiber& f, size_t i) {
  (void)&tlStackPool;
  f.stack = stackFor(i);
  if (!f.stack) return false;
#ifdef MLA_EMU_ASAN
  __asan_unpoison_memory_region(f.stack, stackBytes());
#endif
  uintptr_t top = (reinterpret_cast<uintptr_t>(f.stack) + stackBytes()) & ~uintptr_t(15);
  void** sp = reinterpret_cast<void**>(top - 16);
  sp[0] = reinterpret_cast<void*>(&fiberMain);  // where mla_emu_swap's ret goes; rsp % 16 == 8 on entry
  sp[1] = nullptr;
  sp -= 6;  // r15 r14 r13 r12 rbx rbp
  for (int k = 0; k < 6; ++k) sp[k] = nullptr;
  f.sp = sp;
  return true;
}

}  // namespace

namespace sm {
Chunk* chunkOf(const void* p, const char* op, const char* file, int line) {
  Block& B = *tlBlock;
  const unsigned char* c = static_cast<const unsigned char*>(p);
  if (c < B.smem || c + 16 > B.smem + B.smemBytes)
    faultHere(format("%s at %s:%d: %s shared address %p is outside the block's %zu bytes of dynamic shared memory",
                     where().c_str(), file, line, op, p, B.smemBytes));
  if (size_t(c - B.smem) % 16 != 0)
    faultHere(format("%s at %s:%d: %s shared address %p is not 16-byte aligned", where().c_str(), file, line, op, p));
  return &B.shadow[size_t(c - B.smem) / 16];
}

}  // namespace sm

namespace {

// The deadlock report's lines for named barriers with a generation in progress: arrivals, the
// count, where the generation began, and where threads wait in bar.sync (one entry per site).
std::string namedBarrierReport(const Block& B, const std::vector<Fiber>& fibers) {
  std::string m;
  for (int id = 1; id < kNamedBarriers; ++id) {
    const NamedBarrier& nb = B.named[id];
    if (nb.arrived == 0) continue;
    m += format("; named barrier %d: %d of %d threads arrived in this generation (first at %s:%d)", id, nb.arrived,
                nb.count, nb.file, nb.line);
    std::map<std::pair<const char*, int>, int> sites;
    for (const Fiber& f : fibers)
      if (f.state == kAtNamedBarrier && int(f.waitBar) == id) sites[{f.waitFile, f.waitLine}]++;
    for (const auto& [site, n] : sites)
      m += format(", %d thread(s) wait in bar.sync %d at %s:%d", n, id, site.first, site.second);
  }
  return m;
}

void runBlock(Block& B, std::vector<Fiber>& fibers, std::mt19937* shuffle) {
  std::vector<int> order(fibers.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = int(i);
  for (;;) {
    if (shuffle) std::shuffle(order.begin(), order.end(), *shuffle);
    bool progressed = false;
    for (int idx : order) {
      Fiber& f = fibers[size_t(idx)];
      if (f.state == kExited) continue;
      if (f.state == kAtBarrier && f.waitGen == B.barrierGen) continue;
      if (f.state == kInWarpOp && f.waitGen == B.warps[f.warp].gen) continue;
      if (f.state == kInGroupOp && f.waitGen == B.groups[f.warp >> 2].gen) continue;
      if (f.state == kAtMbarrier && !mbarrierReady(B, f)) continue;
      if (f.state == kAtNamedBarrier && f.waitGen == B.named[f.waitBar].gen) continue;
      f.state = kRunnable;
      tlFiber = &f;
      tlThreadIdx = &f.tid;
#ifdef MLA_EMU_ASAN
      void* fake = nullptr;
      __sanitizer_start_switch_fiber(&fake, f.stack, stackBytes());
      mla_emu_swap(&B.schedulerSp, f.sp);
      // The "previous stack" reported here is the fiber's: the host's own bounds stay as
      // fiberMain recorded them (overwriting them made ASan take a fiber stack for the host's,
      // and report false stack overflows at the host's next C++ throw, after a kernel fault).
      const void* fiberBottom = nullptr;
      size_t fiberSize = 0;
      __sanitizer_finish_switch_fiber(fake, &fiberBottom, &fiberSize);
#elif defined(MLA_EMU_TSAN)
      __tsan_switch_to_fiber(tsanFiber(size_t(idx)), __tsan_switch_to_fiber_no_sync);
      mla_emu_swap(&B.schedulerSp, f.sp);
#else
      mla_emu_swap(&B.schedulerSp, f.sp);
#endif
      tlFiber = nullptr;
      if (B.faulted) return;
      progressed = true;
    }
    if (B.alive == 0) {
      if (std::string m = hopperBlockEndCheck(B); !m.empty()) {
        B.faulted = true;
        B.faultMessage = format("block (%u,%u,%u): %s", tlBlockIdx.x, tlBlockIdx.y, tlBlockIdx.z, m.c_str());
      }
      return;
    }
    if (!progressed) {
      std::string m = format("deadlock in block (%u,%u,%u): %d of %d threads can never continue", tlBlockIdx.x,
                             tlBlockIdx.y, tlBlockIdx.z, B.alive, B.threads);
      if (B.barrierFile) m += format("; __syncthreads pending at %s:%d", B.barrierFile, B.barrierLine);
      for (int w = 0; w < (B.threads + 31) / 32; ++w) {
        unsigned exited = 0, barrier = 0, inOp = 0;
        for (int l = 0; l < 32 && w * 32 + l < B.threads; ++l) {
          const Fiber& f = fibers[size_t(w * 32 + l)];
          if (f.state == kExited) exited |= 1u << l;
          if (f.state == kAtBarrier) barrier |= 1u << l;
          if (f.state == kInWarpOp) inOp |= 1u << l;
        }
        m += format("; warp %d: exited 0x%08x, at the barrier 0x%08x, in %s 0x%08x", w, exited, barrier,
                    B.warps[w].op ? B.warps[w].op : "a warp op", inOp);
        if (B.warps[w].op) m += format(" (mask 0x%08x at %s:%d)", B.warps[w].mask, B.warps[w].file, B.warps[w].line);
      }
      m += namedBarrierReport(B, fibers);
      m += hopperDeadlockReport(B, fibers);
      B.faulted = true;
      B.faultMessage = m;
      return;
    }
  }
}

// ---- warp collectives --------------------------------------------------------------------------
void warpRendezvous(const char* op, unsigned mask, uintptr_t arg, const void* in, size_t inBytes, void* out,
                    size_t outBytes, WarpCompute compute, const char* file, int line) {
  Block& B = *tlBlock;
  Fiber& f = *tlFiber;
  Warp& w = B.warps[f.warp];
  const int warpThreads = std::min(32, B.threads - f.warp * 32);
  const unsigned exists = warpThreads == 32 ? 0xffffffffu : (1u << warpThreads) - 1;
  if (!((mask >> f.lane) & 1u))
    faultHere(format("%s at %s:%d: %s with mask 0x%08x that leaves out the calling lane", where().c_str(), file, line,
                     op, mask));
  if (mask & ~exists)
    faultHere(format("%s at %s:%d: %s mask 0x%08x names lanes this warp does not have", where().c_str(), file, line,
                     op, mask));
  if (w.arrived == 0) {
    w.op = op;
    w.mask = mask;
    w.arg = arg;
    w.file = file;
    w.line = line;
  } else if (w.op != op || w.mask != mask || w.arg != arg) {
    faultHere(format("%s at %s:%d: divergent warp collectives: %s (mask 0x%08x) here, %s (mask 0x%08x) pending at "
                     "%s:%d",
                     where().c_str(), file, line, op, mask, w.op, w.mask, w.file, w.line));
  }
  std::memcpy(w.in[f.lane].b, in, inBytes);
  w.dest[f.lane] = out;
#ifdef MLA_EMU_TSAN
  char* sync = &tlSync->warp[f.warp][w.gen % kWarpRing];
  TSAN_REL(sync);
#endif
  w.arrived |= 1u << f.lane;
  if (w.arrived == mask) {
    TSAN_ACQ(sync);
    compute(w.in, w.out, mask, arg);
    for (int l = 0; l < 32; ++l)
      if ((mask >> l) & 1u) std::memcpy(w.dest[l], w.out[l].b, outBytes);
    w.arrived = 0;
    w.op = nullptr;
    w.gen++;
  } else {
    f.state = kInWarpOp;
    f.waitGen = w.gen;
    toScheduler();
    TSAN_ACQ(sync);
  }
}

struct ShflIn {
  uint64_t v;
  int32_t mode, arg, width;
};
// shfl.sync as the PTX ISA specifies it, with the c operand the CUDA intrinsics pass
// (segmask = 32 - width in bits 12:8, clamp 31, or 0 for .up): only the low 5 bits of the lane
// argument count, and a xor source may lie in an earlier segment.
void shflCompute(const Slot* in, Slot* out, unsigned mask, uintptr_t) {
  for (int l = 0; l < 32; ++l) {
    if (!((mask >> l) & 1u)) continue;
    ShflIn s;
    std::memcpy(&s, in[l].b, sizeof s);
    const unsigned lane = unsigned(l), bval = unsigned(s.arg) & 31u, segmask = unsigned(32 - s.width) & 31u;
    const unsigned cval = s.mode == kShflUp ? 0u : 31u;
    const unsigned maxLane = (lane & segmask) | (cval & ~segmask), minLane = lane & segmask;
    int j = l;
    bool valid = false;
    switch (s.mode) {
      case kShflUp: j = int(lane) - int(bval); valid = j >= int(maxLane); break;
      case kShflDown: j = int(lane + bval); valid = j <= int(maxLane); break;
      case kShflXor: j = int(lane ^ bval); valid = j <= int(maxLane); break;
      default: j = int(minLane | (bval & ~segmask)); valid = j <= int(maxLane); break;
    }
    if (!valid) j = l;
    // Reading a lane outside the member mask is undefined in PTX; make it loud.
    uint64_t v = 0x7fc00000dead0000ull;
    if ((mask >> j) & 1u) {
      ShflIn t;
      std::memcpy(&t, in[j].b, sizeof t);
      v = t.v;
    }
    std::memcpy(out[l].b, &v, 8);
  }
}

void ballotCompute(const Slot* in, Slot* out, unsigned mask, uintptr_t) {
  uint32_t bits = 0;
  for (int l = 0; l < 32; ++l)
    if ((mask >> l) & 1u && in[l].b[0]) bits |= 1u << l;
  for (int l = 0; l < 32; ++l) std::memcpy(out[l].b, &bits, 4);
}

// ---- ldmatrix: lane i (i < 8·num) names row i%8 of 8x8 tile i/8; each lane receives, per tile,
// the pair of 16-bit elements at row lane/4, columns 2·(lane%4) and +1 (transposed: the column
// pair of that row index). PTX ISA, "Warp-level matrix load instruction: ldmatrix".
struct LdIn {
  const unsigned char* p;
  int32_t warp;
};
void ldmatrixCompute(const Slot* in, Slot* out, unsigned, uintptr_t arg) {
  const int num = int(arg & 7);
  const bool trans = (arg >> 3) & 1;
  LdIn rows[32];
  for (int l = 0; l < 32; ++l) std::memcpy(&rows[l], in[l].b, sizeof(LdIn));
  Block& B = *tlBlock;
  Warp& w = B.warps[tlFiber->warp];
  for (int i = 0; i < 8 * num; ++i) {
    Chunk* c = chunkOf(rows[i].p, "ldmatrix", w.file, w.line);
    if (c->pendingBy >= 0)
      faultHere(format("ldmatrix at %s:%d (warp %d, row of lane %d) reads shared memory with a cp.async of thread %d "
                       "still in flight (no cp.async.wait_group covers it)",
                       w.file, w.line, rows[i].warp, i, c->pendingBy));
    if (c->tmaBar >= 0)
      faultHere(format("ldmatrix at %s:%d (warp %d, row of lane %d) reads shared memory that a TMA load is still "
                       "writing (wait on its mbarrier, at shared offset %d, first)",
                       w.file, w.line, rows[i].warp, i, c->tmaBar));
    if (c->writer >= 0 && c->writer / 32 != rows[i].warp && c->writeEpoch == B.barrierGen)
      faultHere(format("ldmatrix at %s:%d (warp %d) reads shared memory that thread %d filled by cp.async without a "
                       "__syncthreads in between",
                       w.file, w.line, rows[i].warp, c->writer));
    if (c->readEpoch == B.barrierGen && c->readerWarp != rows[i].warp) c->readerWarp = -2;
    else if (c->readEpoch != B.barrierGen) c->readerWarp = rows[i].warp;
    c->readEpoch = B.barrierGen;
  }
  for (int l = 0; l < 32; ++l) {
    uint32_t r[4] = {0, 0, 0, 0};
    for (int m = 0; m < num; ++m) {
      if (!trans) {
        std::memcpy(&r[m], rows[8 * m + (l >> 2)].p + 4 * (l & 3), 4);
      } else {
        uint16_t lo, hi;
        std::memcpy(&lo, rows[8 * m + 2 * (l & 3)].p + 2 * (l >> 2), 2);
        std::memcpy(&hi, rows[8 * m + 2 * (l & 3) + 1].p + 2 * (l >> 2), 2);
        r[m] = uint32_t(lo) | (uint32_t(hi) << 16);
      }
    }
    std::memcpy(out[l].b, r, 16);
  }
}

// ---- mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32 ---------------------------
// Fragments (PTX ISA "Matrix Fragments for mma.m16n8k16 with floating point type"), with
// g = lane/4, t = lane%4, the low 16 bits of a register first:
//   A 16x16 row: a0 = A[g][2t,2t+1], a1 = A[g+8][2t,..], a2 = A[g][2t+8,..], a3 = A[g+8][2t+8,..]
//   B 16x8 col:  b0 = B[2t,2t+1][g], b1 = B[2t+8,2t+9][g]
//   C/D 16x8:    c0 = C[g][2t], c1 = C[g][2t+1], c2 = C[g+8][2t], c3 = C[g+8][2t+1]
struct MmaIn {
  uint32_t a[4], b[2];
  float c[4];
};
void mmaCompute(const Slot* in, Slot* out, unsigned, uintptr_t arg) {
  const MmaType type = MmaType(arg);
  float A[16][16], Bm[16][8];
  double D[16][8];
  for (int l = 0; l < 32; ++l) {
    MmaIn v;
    std::memcpy(&v, in[l].b, sizeof v);
    const int g = l >> 2, t = l & 3;
    auto lo = [&](uint32_t r) { return half16(uint16_t(r & 0xffff), type == kMmaBF16); };
    auto hi = [&](uint32_t r) { return half16(uint16_t(r >> 16), type == kMmaBF16); };
    A[g][2 * t] = lo(v.a[0]);          A[g][2 * t + 1] = hi(v.a[0]);
    A[g + 8][2 * t] = lo(v.a[1]);      A[g + 8][2 * t + 1] = hi(v.a[1]);
    A[g][2 * t + 8] = lo(v.a[2]);      A[g][2 * t + 9] = hi(v.a[2]);
    A[g + 8][2 * t + 8] = lo(v.a[3]);  A[g + 8][2 * t + 9] = hi(v.a[3]);
    Bm[2 * t][g] = lo(v.b[0]);         Bm[2 * t + 1][g] = hi(v.b[0]);
    Bm[2 * t + 8][g] = lo(v.b[1]);     Bm[2 * t + 9][g] = hi(v.b[1]);
    D[g][2 * t] = v.c[0];              D[g][2 * t + 1] = v.c[1];
    D[g + 8][2 * t] = v.c[2];          D[g + 8][2 * t + 1] = v.c[3];
  }
  // Products of 16-bit values are exact in double. The hardware's summation order and rounding
  // are not specified; here the sum is formed in double (exact on the conformance test's integer
  // inputs) and rounded to float once. The n loop is innermost so it vectorises in k order.
  for (int m = 0; m < 16; ++m)
    for (int k = 0; k < 16; ++k) {
      const double a = A[m][k];
      for (int n = 0; n < 8; ++n) D[m][n] += a * double(Bm[k][n]);
    }
  for (int l = 0; l < 32; ++l) {
    const int g = l >> 2, t = l & 3;
    const float d[4] = {float(D[g][2 * t]), float(D[g][2 * t + 1]), float(D[g + 8][2 * t]), float(D[g + 8][2 * t + 1])};
    std::memcpy(out[l].b, d, 16);
  }
}

// ---- memory faults inside kernels -------------------------------------------------------------
// A kernel's load or store outside mapped memory (past an allocation's guard page, a freed or
// wild pointer) raises SIGSEGV on the OS thread running its fiber. The handler ends the block
// with a fault, as a GPU's illegal-address error ends a kernel; any other SIGSEGV goes to the
// handler that was installed before (Node's, V8's, or the default). The handler runs on an
// alternate stack, so a fiber's stack overflow (its guard page) is caught too. Sanitizer builds
// leave these signals to the sanitizer.
#if !defined(MLA_EMU_ASAN) && !defined(MLA_EMU_TSAN) && !defined(__SANITIZE_THREAD__)
struct sigaction prevSegv, prevBus;

void onMemoryFault(int sig, siginfo_t* info, void* context) {
  if (tlFiber && tlBlock && !tlBlock->faulted) {
    char m[256];
    snprintf(m, sizeof m,
             "%s: %s at address %p, outside every live device allocation (past its end, freed, or a wild "
             "pointer; the stack if it overflowed)",
             where().c_str(), sig == SIGBUS ? "bus error" : "memory fault", info->si_addr);
    faultHere(m);
  }
  const struct sigaction& prev = sig == SIGBUS ? prevBus : prevSegv;
  if ((prev.sa_flags & SA_SIGINFO) && prev.sa_sigaction) return prev.sa_sigaction(sig, info, context);
  if (!(prev.sa_flags & SA_SIGINFO) && prev.sa_handler != SIG_DFL && prev.sa_handler != SIG_IGN)
    return prev.sa_handler(sig);
  // The default action: restored, it kills the process when the faulting instruction reruns.
  signal(sig, SIG_DFL);
}

// Per OS thread: the alternate signal stack, unless the thread already has one.
struct AltStack {
  std::vector<char> memory;
  ~AltStack() {
    if (memory.empty()) return;
    stack_t off{};
    off.ss_flags = SS_DISABLE;
    sigaltstack(&off, nullptr);
  }
};
thread_local AltStack tlAltStack;

void catchMemoryFaults() {
  static std::once_flag installed;
  std::call_once(installed, [] {
    struct sigaction sa {};
    sa.sa_sigaction = &onMemoryFault;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;  // NODEFER: the handler never returns to unblock it
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &prevSegv);
    sigaction(SIGBUS, &sa, &prevBus);
  });
  if (!tlAltStack.memory.empty()) return;
  stack_t current{};
  if (sigaltstack(nullptr, &current) == 0 && !(current.ss_flags & SS_DISABLE)) return;
  tlAltStack.memory.resize(64 * 1024);
  stack_t ss{};
  ss.ss_sp = tlAltStack.memory.data();
  ss.ss_size = tlAltStack.memory.size();
  if (sigaltstack(&ss, nullptr) != 0) tlAltStack.memory.clear();
}
#else
void catchMemoryFaults() {}
#endif

}  // namespace

// ---- kernel-facing entry points -----------------------------------------------------------------
thread_local uint3* tlThreadIdx = nullptr;
thread_local uint3 tlBlockIdx;
thread_local dim3 tlBlockDim;
thread_local dim3 tlGridDim;

void* dynamicSmem() { return tlBlock->smem; }

void fault(const char* file, int line, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  std::string m = vformat(fmt, ap);
  va_end(ap);
  faultHere(format("%s at %s:%d: %s", where().c_str(), file, line, m.c_str()));
}

void syncthreads(const char* file, int line) {
  Block& B = *tlBlock;
  Fiber& f = *tlFiber;
  if (B.atBarrier == 0) {
    B.barrierFile = file;
    B.barrierLine = line;
  } else if (line != B.barrierLine || std::strcmp(file, B.barrierFile) != 0) {
    faultHere(format("%s: divergent __syncthreads: this thread is at %s:%d, others wait at %s:%d", where().c_str(),
                     file, line, B.barrierFile, B.barrierLine));
  }
#ifdef MLA_EMU_TSAN
  char* sync = &tlSync->barrier[B.barrierGen % kBarrierRing];
  TSAN_REL(sync);  // arriving releases this thread's writes
#endif
  if (++B.atBarrier == B.alive) {
    TSAN_ACQ(sync);
    releaseBarrier(B);
    return;
  }
  f.state = kAtBarrier;
  f.waitGen = B.barrierGen;
  toScheduler();
  TSAN_ACQ(sync);  // leaving acquires everyone's
}

// bar.sync / bar.arrive id, count (PTX ISA "bar, barrier", sm_70+): counted per thread; the first
// arrival of a generation fixes its count, the arrival that reaches it completes the generation
// and wakes that generation's bar.sync waiters. Exited threads are never counted (the count is
// explicit), so a generation they would have completed deadlocks with a report naming it.
void namedBarrier(int id, int count, bool wait, const char* file, int line) {
  Block& B = *tlBlock;
  Fiber& f = *tlFiber;
  const char* op = wait ? "bar.sync" : "bar.arrive";
  if (id == 0)
    fault(file, line, "%s 0, %d: barrier 0 is __syncthreads' (use __syncthreads; named barriers are 1..15)", op,
          count);
  if (id < 1 || id >= kNamedBarriers) fault(file, line, "%s %d, %d: named barrier ids are 1..15", op, id, count);
  if (count < 32 || count % 32 != 0 || count > B.threads)
    fault(file, line, "%s %d, %d: the thread count must be a multiple of 32 in [32, %d] (the block's threads)", op,
          id, count, B.threads);
  NamedBarrier& nb = B.named[id];
  if (nb.arrived == 0) {
    nb.count = count;
    nb.file = file;
    nb.line = line;
  } else if (count != nb.count) {
    fault(file, line, "%s %d with count %d, but this generation of named barrier %d began at %s:%d with count %d "
          "(every arrival of a generation must name the same count)", op, id, count, id, nb.file, nb.line, nb.count);
  }
#ifdef MLA_EMU_TSAN
  char* sync = &tlSync->named[id][nb.gen % kBarrierRing];
  TSAN_REL(sync);  // arriving (either form) releases this thread's writes
#endif
  if (++nb.arrived == nb.count) {
    nb.arrived = 0;
    nb.gen++;
    nb.file = nullptr;
    if (wait) TSAN_ACQ(sync);
    return;
  }
  if (!wait) return;
  f.state = kAtNamedBarrier;
  f.waitGen = nb.gen;
  f.waitBar = uint32_t(id);
  f.waitFile = file;
  f.waitLine = line;
  toScheduler();
  TSAN_ACQ(sync);  // leaving bar.sync acquires every arrival's
}

void syncwarp(unsigned mask, const char* file, int line) {
  char none = 0;
  warpRendezvous("__syncwarp", mask, 0, &none, 0, &none, 0, [](const Slot*, Slot*, unsigned, uintptr_t) {}, file,
                 line);
}

uint64_t shfl(unsigned mask, uint64_t v, int mode, int arg, int width, const char* file, int line) {
  if (width < 1 || width > 32 || (width & (width - 1)))
    fault(file, line, "shuffle width %d is not a power of two in [1, 32]", width);
  ShflIn in{v, mode, arg, width};
  uint64_t out = 0;
  warpRendezvous("shuffle", mask, 0, &in, sizeof in, &out, sizeof out, &shflCompute, file, line);
  return out;
}

unsigned ballot(unsigned mask, bool pred, const char* file, int line) {
  unsigned char in = pred ? 1 : 0;
  uint32_t out = 0;
  warpRendezvous("vote", mask, 0, &in, 1, &out, 4, &ballotCompute, file, line);
  return out;
}

void ldmatrix(int num, bool trans, uint32_t* r, const void* rowAddr, const char* file, int line) {
  TSAN_FRAME();
  LdIn in{static_cast<const unsigned char*>(rowAddr), tlFiber->warp};
#ifdef MLA_EMU_TSAN
  // The last lane gathers every row on the others' behalf: report each row as read by its lane.
  if (tlFiber->lane < 8 * num) __tsan_read_range(const_cast<void*>(rowAddr), 16);
#endif
  uint32_t o[4];
  warpRendezvous("ldmatrix", 0xffffffffu, uintptr_t(num | (trans ? 8 : 0)), &in, sizeof in, o, 16, &ldmatrixCompute,
                 file, line);
  for (int m = 0; m < num; ++m) r[m] = o[m];
}

void mmaM16N8K16(MmaType type, float* c, const uint32_t* a, const uint32_t* b, const char* file, int line) {
  MmaIn in;
  std::memcpy(in.a, a, 16);
  std::memcpy(in.b, b, 8);
  std::memcpy(in.c, c, 16);
  warpRendezvous("mma.sync", 0xffffffffu, uintptr_t(type), &in, sizeof in, c, 16, &mmaCompute, file, line);
}

void cpAsync(void* dst, const void* src, int srcBytes, const char* file, int line) {
  TSAN_FRAME();
  Block& B = *tlBlock;
  Fiber& f = *tlFiber;
  if (srcBytes != 0 && srcBytes != 16) fault(file, line, "cp.async src-size %d (only 0 or 16 are emulated)", srcBytes);
  if (srcBytes > 0) {
    if (reinterpret_cast<uintptr_t>(src) % 16 != 0)
      fault(file, line, "cp.async global source %p is not 16-byte aligned", src);
    if (!isDeviceRange(src, size_t(srcBytes)))
      fault(file, line, "cp.async reads [%p, +%d), which is not inside any live device allocation", src, srcBytes);
  }
  Chunk* c = chunkOf(dst, "cp.async", file, line);
  if (c->pendingBy >= 0)
    fault(file, line, "cp.async into shared memory that already has a copy of thread %d in flight", c->pendingBy);
  if (c->tmaBar >= 0) fault(file, line, "cp.async into shared memory that a TMA load still in flight writes");
  if (std::string m = wgmmaReadConflict(*c); !m.empty())
    fault(file, line, "cp.async into shared memory while %s (write after read)", m.c_str());
  if (c->readEpoch == B.barrierGen && c->readerWarp != f.warp) {
    char reader[32] = "several warps";
    if (c->readerWarp >= 0) snprintf(reader, sizeof reader, "warp %d", c->readerWarp);
    fault(file, line,
          "cp.async overwrites shared memory that %s read (ldmatrix) since the last __syncthreads (write after read)",
          reader);
  }
  c->pendingBy = f.linear;
#ifdef MLA_EMU_TSAN
  __tsan_write_range(dst, 16);  // the copy may land any time from now on
#endif
  std::memset(dst, 0xff, 16);  // undefined until the wait: NaN in every float format
  f.copies.push_back(CpCopy{static_cast<unsigned char*>(dst), static_cast<const unsigned char*>(src), srcBytes,
                            f.committed});
}

void cpAsyncCommit() { tlFiber->committed++; }

void cpAsyncWait(int pending, const char* file, int line) {
  TSAN_FRAME();
  (void)file;
  (void)line;
  Block& B = *tlBlock;
  Fiber& f = *tlFiber;
  const int complete = f.committed - pending;  // groups [0, complete) must have landed
  size_t keep = 0;
  for (size_t i = 0; i < f.copies.size(); ++i) {
    CpCopy& c = f.copies[i];
    if (c.group < complete) {
#ifdef MLA_EMU_TSAN
      if (c.srcBytes > 0) __tsan_read_range(const_cast<unsigned char*>(c.src), size_t(c.srcBytes));
      __tsan_write_range(c.dst, 16);
#endif
      if (c.srcBytes > 0) std::memcpy(c.dst, c.src, 16);
      else std::memset(c.dst, 0, 16);  // src-size 0: zero fill, global memory untouched
      Chunk& ch = B.shadow[size_t(c.dst - B.smem) / 16];
      ch.pendingBy = -1;
      ch.writer = f.linear;
      ch.writeEpoch = B.barrierGen;
    } else {
      f.copies[keep++] = c;
    }
  }
  f.copies.resize(keep);
}

// ---- launch ---------------------------------------------------------------------------------------
cudaError_t launchConfigError(const LaunchConfig& cfg) {
  if (!isLiveStream(cfg.stream)) return cudaErrorInvalidResourceHandle;
  const long long threads = (long long)cfg.block.x * cfg.block.y * cfg.block.z;
  // cudaErrorInvalidConfiguration, as the CUDA runtime reports a bad grid or block.
  if (threads < 1 || threads > 1024 || cfg.block.x > 1024 || cfg.block.y > 1024 || cfg.block.z > 64 ||
      cfg.grid.x < 1 || cfg.grid.y < 1 || cfg.grid.z < 1 || cfg.grid.x > 0x7fffffffu || cfg.grid.y > 65535 ||
      cfg.grid.z > 65535)
    return cudaErrorInvalidConfiguration;
  if (cfg.dynamicSmem > size_t(maxDynamicSmem(cfg.kernel))) return cudaErrorInvalidValue;
  if (cfg.dynamicSmem > size_t(device(currentDevice()).smemOptin)) return cudaErrorInvalidValue;
  return cudaSuccess;
}

void launch(const LaunchConfig& cfg, KernelBody body, const void* params) {
  if (cudaError_t sticky = stickyError()) return setLastError(sticky);
  if (cudaError_t bad = launchConfigError(cfg)) return setLastError(bad);
  // MLA_EMU_SKIP_KERNELS=1: accept every launch and run nothing, so a benchmark measures the
  // host's own cost per op (bench/host-overhead.mjs). Every result is garbage then.
  static const bool skipKernels = envInt("MLA_EMU_SKIP_KERNELS", 0) != 0;
  if (skipKernels) return setLastError(cudaSuccess);
  const long long threads = (long long)cfg.block.x * cfg.block.y * cfg.block.z;

  // MLA_EMU_FAULT=<part of a kernel name>: that kernel faults in its first block, so tests can
  // see what a kernel fault does to the process (a typed error, a lost context; never an abort).
  static const char* injectFault = std::getenv("MLA_EMU_FAULT");
  static const int shuffleSeed = envInt("MLA_EMU_SHUFFLE", 0);
  catchMemoryFaults();
  std::mt19937 rng{unsigned(shuffleSeed)};
  std::vector<Fiber> fibers(static_cast<size_t>(threads));
  Block B;
  B.threads = int(threads);
  B.body = body;
  B.params = params;
  B.kernel = cfg.kernel;
  B.smemBytes = cfg.dynamicSmem;
  // Exactly the requested size, so ASan sees an overrun by one byte.
  std::vector<unsigned char> smem(cfg.dynamicSmem ? cfg.dynamicSmem : 1);
  B.smem = cfg.dynamicSmem ? smem.data() : nullptr;
  Block* outer = tlBlock;  // a launch from inside a kernel is not CUDA; keep the state sane anyway
  tlBlock = &B;
#ifdef MLA_EMU_TSAN
  if (!tlSync) tlSync = new TsanSync();
  tlHostFiber = __tsan_get_current_fiber();
#endif
  const uint3 savedIdx = tlBlockIdx;
  const dim3 savedDim = tlBlockDim, savedGrid = tlGridDim;
  tlGridDim = cfg.grid;
  tlBlockDim = cfg.block;
  // Blocks run in order, or in a shuffled order with MLA_EMU_SHUFFLE=seed (no kernel may depend
  // on the order of its blocks).
  const size_t nBlocks = size_t(cfg.grid.x) * cfg.grid.y * cfg.grid.z;
  std::vector<size_t> blockOrder;
  if (shuffleSeed) {
    blockOrder.resize(nBlocks);
    for (size_t i = 0; i < nBlocks; ++i) blockOrder[i] = i;
    std::shuffle(blockOrder.begin(), blockOrder.end(), rng);
  }
  for (size_t n = 0; n < nBlocks && !B.faulted; ++n) {
    const size_t i = shuffleSeed ? blockOrder[n] : n;
    tlBlockIdx = make_uint3(unsigned(i % cfg.grid.x), unsigned(i / cfg.grid.x % cfg.grid.y),
                            unsigned(i / (size_t(cfg.grid.x) * cfg.grid.y)));
    if (cfg.dynamicSmem) std::memset(B.smem, 0xff, cfg.dynamicSmem);  // uninitialised shared memory reads as NaN
    B.shadow.assign((cfg.dynamicSmem + 15) / 16, Chunk{});
    B.alive = B.threads;
    B.atBarrier = 0;
    B.barrierGen = 0;
    B.barrierFile = nullptr;
    for (NamedBarrier& nb : B.named) nb = NamedBarrier{};
    // Per block, only the bookkeeping is reset: the warps' operand slots (4 KB each) and the
    // fibers' copy lists keep their memory from block to block.
    for (int w = 0; w < (B.threads + 31) / 32; ++w) {
      B.warps[w].arrived = 0;
      B.warps[w].op = nullptr;
      B.warps[w].gen = 0;
    }
    hopperResetBlock(B);
    for (int t = 0; t < B.threads; ++t) {
      Fiber& f = fibers[size_t(t)];
      f.state = kRunnable;
      f.waitGen = 0;
      f.copies.clear();
      f.committed = 0;
      f.wgmma.clear();
      f.waitedReads.clear();
      f.wgmmaCommitted = 0;
      f.wgmmaFenced = false;
      f.linear = t;
      f.tid = make_uint3(unsigned(t) % cfg.block.x, unsigned(t) / cfg.block.x % cfg.block.y,
                         unsigned(t) / (cfg.block.x * cfg.block.y));
      f.lane = t & 31;
      f.warp = t >> 5;
      if (!initFiber(f, size_t(t))) {
        B.faulted = true;
        B.faultMessage = "could not map a fiber stack (out of host memory)";
        break;
      }
    }
    if (B.faulted) break;
    if (injectFault && *injectFault && cfg.name && std::strstr(cfg.name, injectFault)) {
      B.faulted = true;
      B.faultMessage = format("block (%u,%u,%u): fault injected by MLA_EMU_FAULT=%s", tlBlockIdx.x, tlBlockIdx.y,
                              tlBlockIdx.z, injectFault);
      break;
    }
    TSAN_REL(&tlSync->launch);
    runBlock(B, fibers, shuffleSeed ? &rng : nullptr);
#ifdef MLA_EMU_TSAN
    // A block that faulted or deadlocked leaves fibers that never reach fiberMain's release;
    // join each to the host by a synchronising switch, or TSan pairs their last reads (their
    // copies of the kernel parameters on the host's stack) with the host's later writes there.
    if (B.faulted)
      for (size_t i = 0; i < fibers.size(); ++i)
        if (fibers[i].state != kExited) {
          __tsan_switch_to_fiber(tsanFiber(i), 0);
          __tsan_switch_to_fiber(tlHostFiber, 0);
        }
#endif
    TSAN_ACQ(&tlSync->blockEnd);
  }
  tlBlock = outer;
  tlBlockIdx = savedIdx;
  tlBlockDim = savedDim;
  tlGridDim = savedGrid;
  if (B.faulted) {
    std::string m = "kernel " + std::string(cfg.name ? cfg.name : "?") + " faulted on the emulated device: " +
                    B.faultMessage;
    raiseSticky(cudaErrorLaunchFailure, m);
    return setLastError(cudaErrorLaunchFailure);
  }
}

}  // namespace mla::emu

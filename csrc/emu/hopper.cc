// The sm_90a PTX of csrc/kernels/hopper.cuh on the emulated SM: warpgroup MMA (wgmma) through
// shared-memory matrix descriptors, mbarriers with transaction counts, TMA tensor loads (and the
// cuTensorMapEncodeTiled that describes them), setmaxnreg. Everything asynchronous on a GPU is
// made loud here, as cp.async is in scheduler.cc: a wgmma's accumulators read NaN until its
// wait_group, a TMA destination reads 0xFF (and faults under ldmatrix/wgmma) until its mbarrier
// phase completes. Semantics from the PTX ISA (sections "Asynchronous Warpgroup Level Matrix
// Multiply-Accumulate", "Tensor Copy", "mbarrier") and the driver API's cuTensorMapEncodeTiled;
// docs/emulator.md lists what is and is not checked.
#include <cuda.h>
#include <cudaTypedefs.h>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <map>
#include <tuple>
#include "emu/device.h"
#include "emu/emu.h"
#include "emu/sm.h"

namespace mla::emu {
using namespace sm;
namespace {

// ---- TSan edges (see scheduler.cc): objects TSan keys by address, never freed -----------------
#ifdef MLA_EMU_TSAN
constexpr int kBarRing = 1024;
struct HopperSync {
  char group[8][64];
  char mbar[kBarRing];  // by mbarrier shared offset / 8
};
thread_local HopperSync* tlHopperSync = nullptr;
char* groupSync(int wg, uint64_t gen) {
  if (!tlHopperSync) tlHopperSync = new HopperSync();
  return &tlHopperSync->group[wg][gen % 64];
}
char* mbarSync(uint32_t off) {
  if (!tlHopperSync) tlHopperSync = new HopperSync();
  return &tlHopperSync->mbar[(off / 8) % kBarRing];
}
#endif

[[noreturn]] void faultAt(const char* file, int line, const std::string& what) {
  faultHere(format("%s at %s:%d: %s", where().c_str(), file, line, what.c_str()));
}

// wgmma, TMA, expect_tx, setmaxnreg and fence.proxy.async exist on sm_90a only: on an emulated
// device of another compute capability they are an illegal instruction, as on that GPU.
void needSm90a(const char* op, const char* file, int line) {
  const DeviceSpec& d = device(currentDevice());
  if (d.major != 9 || d.minor != 0)
    faultAt(file, line, format("%s needs sm_90a; the emulated device is sm_%d%d", op, d.major, d.minor));
}

uint32_t smemOffset(const void* p, const char* op, const char* file, int line) {
  Block& B = *tlBlock;
  const unsigned char* c = static_cast<const unsigned char*>(p);
  if (!B.smem || c < B.smem || c >= B.smem + B.smemBytes)
    faultAt(file, line, format("%s: %p is not in the block's %zu bytes of dynamic shared memory", op, p, B.smemBytes));
  return uint32_t(c - B.smem);
}

// The swizzle modes of a matrix descriptor (bits 62-63) and of a tensor map are functions of the
// shared address: 128B XORs address bits [7,10) into [4,7), 64B bits [7,9) into [4,6), 32B bit 7
// into bit 4 (CuTe Swizzle<3,4,3>, <2,4,3>, <1,4,3>). `span` is the swizzle width in bytes.
uint32_t swizzle(uint32_t addr, uint32_t span) {
  const uint32_t mask = span == 128 ? 7u : span == 64 ? 3u : span == 32 ? 1u : 0u;
  return addr ^ (((addr >> 7) & mask) << 4);
}

// ---- warpgroup rendezvous ------------------------------------------------------------------------
// All 128 threads of a warpgroup (warps 4k..4k+3) meet; the last to arrive runs `compute` while the
// others wait (state kInGroupOp), as warpRendezvous does for a warp. A different op or key from
// any thread is a fault (the .sync.aligned forms require identical instructions and operands).
using GroupCompute = void (*)(Group& g, uintptr_t ctx);
void groupRendezvous(const char* op, const uint64_t (&key)[8], const void* in, GroupCompute compute, uintptr_t ctx,
                     const char* file, int line) {
  Block& B = *tlBlock;
  Fiber& f = *tlFiber;
  const int wg = f.warp >> 2;
  if ((wg + 1) * 128 > B.threads)
    faultAt(file, line, format("%s is a warpgroup collective (4 whole warps), but warpgroup %d of this %d-thread "
                               "block is incomplete", op, wg, B.threads));
  Group& g = B.groups[wg];
  if (g.arrived == 0) {
    g.op = op;
    std::memcpy(g.key, key, sizeof g.key);
    g.file = file;
    g.line = line;
  } else if (g.op != op || std::memcmp(g.key, key, sizeof g.key) != 0) {
    faultAt(file, line, format("divergent warpgroup collectives: %s here, %s pending at %s:%d (every thread of the "
                               "warpgroup must issue the same instruction with the same operands)",
                               op, g.op, g.file, g.line));
  }
  const int t = f.linear - wg * 128;
  g.in[t] = in;
  g.member[t] = &f;
#ifdef MLA_EMU_TSAN
  char* sync = groupSync(wg, g.gen);
  TSAN_REL(sync);
#endif
  if (++g.arrived == 128) {
    TSAN_ACQ(sync);
    compute(g, ctx);
    // The shared-memory reads `compute` made for all 128 happen before each of them leaves (a
    // wgmma's operands are read before its wait_group returns, so a thread may then overwrite them).
    TSAN_REL(sync);
    g.arrived = 0;
    g.op = nullptr;
    g.gen++;
    return;
  }
  f.state = kInGroupOp;
  f.waitGen = g.gen;
  toScheduler();
  TSAN_ACQ(sync);
}

// ---- wgmma ---------------------------------------------------------------------------------------
struct Desc {
  uint32_t start, lbo, sbo, span;  // bytes; span: swizzle width, 0 = none
};
Desc decodeDesc(uint64_t d, const char* what, const char* file, int line) {
  Desc r;
  r.start = uint32_t(d & 0x3fff) << 4;
  r.lbo = uint32_t((d >> 16) & 0x3fff) << 4;
  r.sbo = uint32_t((d >> 32) & 0x3fff) << 4;
  if ((d >> 49) & 7)
    faultAt(file, line, format("wgmma %s descriptor 0x%016llx has a nonzero base offset (bits 49-51), which the "
                               "emulated device does not model: align the tile to its swizzle pattern",
                               what, (unsigned long long)d));
  static const uint32_t spans[4] = {0, 128, 64, 32};
  r.span = spans[d >> 62];
  return r;
}

// Byte offset from the descriptor's start of element (mn, k) of a 16-bit operand, in the canonical
// layouts of the PTX ISA ("Shared Memory Matrix Layout" for wgmma; T = 8 elements = 16 bytes):
//   K-major, swizzled:  (mn%8)*W + (mn/8)*SBO + (k%8)*2 + (k/8)*16        (LBO unused)
//   K-major, none:      (mn%8)*16 + (mn/8)*SBO + (k%8)*2 + (k/8)*LBO
//   MN-major, swizzled: (mn%(W/2))*2 + (mn/(W/2))*LBO + (k%8)*W + (k/8)*SBO
//   MN-major, none:     (mn%8)*2 + (mn/8)*SBO + (k%8)*16 + (k/8)*LBO
// The swizzle then applies to the resulting shared address.
uint32_t elementAddr(const Desc& d, bool mnMajor, int mn, int k) {
  uint32_t off;
  const uint32_t W = d.span;
  if (!mnMajor) {
    off = W ? (mn % 8) * W + (mn / 8) * d.sbo + (k % 8) * 2 + (k / 8) * 16
            : (mn % 8) * 16 + (mn / 8) * d.sbo + (k % 8) * 2 + (k / 8) * d.lbo;
  } else {
    off = W ? (mn % (W / 2)) * 2 + (mn / (W / 2)) * d.lbo + (k % 8) * W + (k / 8) * d.sbo
            : (mn % 8) * 2 + (mn / 8) * d.sbo + (k % 8) * 16 + (k / 8) * d.lbo;
  }
  return swizzle(d.start + off, W);
}

struct WgmmaCall {
  WgmmaType type;
  int n;
  uint64_t descA, descB;
  bool rs, scaleD;
  int scaleA, scaleB, tnspA, tnspB;
  const char* file;
  int line;
};
struct WgmmaIn {
  uint32_t a[4];
  float* d;
};

// Reads one 16-bit element of an operand; a read of bytes a copy (cp.async, TMA) is still writing
// is a fault, as ldmatrix's is.
float readOperand(const WgmmaCall& c, const char* what, uint32_t addr, std::vector<uint32_t>& chunks) {
  Block& B = *tlBlock;
  if (addr + 2 > B.smemBytes)
    faultAt(c.file, c.line, format("wgmma operand %s reads shared offset %u, past the block's %zu bytes of dynamic "
                                   "shared memory", what, addr, B.smemBytes));
  const Chunk& ch = B.shadow[addr / 16];
  if (ch.tmaBar >= 0)
    faultAt(c.file, c.line, format("wgmma operand %s reads shared offset %u while a TMA load into it is in flight "
                                   "(wait on its mbarrier at shared offset %d first)", what, addr, ch.tmaBar));
  if (ch.pendingBy >= 0)
    faultAt(c.file, c.line, format("wgmma operand %s reads shared offset %u while a cp.async of thread %d into it is "
                                   "in flight", what, addr, ch.pendingBy));
  if (chunks.empty() || chunks.back() != addr / 16) chunks.push_back(addr / 16);
  uint16_t h;
  std::memcpy(&h, B.smem + addr, 2);
#ifdef MLA_EMU_TSAN
  __tsan_read_range(B.smem + addr, 2);
#endif
  return half16(h, c.type == kWgmmaBF16);
}

// The last thread of the warpgroup computes D for all 128: A 64x16 (registers or shared memory),
// B 16xN (shared memory), products exact in double, the sum rounded to float once (the hardware's
// order and intermediate rounding are unspecified; exact on integer inputs). Results go to each
// thread's pending list; they reach its registers at wgmma.wait_group.
void wgmmaCompute(Group& g, uintptr_t ctx) {
  const WgmmaCall& c = *reinterpret_cast<const WgmmaCall*>(ctx);
  const int N = c.n;
  static thread_local double A[64][16], Bm[16][256];
  Block& B = *tlBlock;
  std::vector<uint32_t> chunks;
  if (c.rs) {
    for (int t = 0; t < 128; ++t) {
      const WgmmaIn& in = *static_cast<const WgmmaIn*>(g.in[t]);
      const int w = t >> 5, lane = t & 31, r = 16 * w + (lane >> 2), q = lane & 3;
      auto put = [&](int row, int col, uint32_t reg) {
        A[row][col] = half16(uint16_t(reg & 0xffff), c.type == kWgmmaBF16);
        A[row][col + 1] = half16(uint16_t(reg >> 16), c.type == kWgmmaBF16);
      };
      put(r, 2 * q, in.a[0]);
      put(r + 8, 2 * q, in.a[1]);
      put(r, 2 * q + 8, in.a[2]);
      put(r + 8, 2 * q + 8, in.a[3]);
    }
  } else {
    const Desc da = decodeDesc(c.descA, "A", c.file, c.line);
    for (int m = 0; m < 64; ++m)
      for (int k = 0; k < 16; ++k) A[m][k] = readOperand(c, "A", elementAddr(da, c.tnspA != 0, m, k), chunks);
  }
  const Desc db = decodeDesc(c.descB, "B", c.file, c.line);
  for (int k = 0; k < 16; ++k)
    for (int n = 0; n < N; ++n) Bm[k][n] = readOperand(c, "B", elementAddr(db, c.tnspB != 0, n, k), chunks);
  // The operands stay "being read" until every thread has waited for this wgmma's group.
  std::sort(chunks.begin(), chunks.end());
  chunks.erase(std::unique(chunks.begin(), chunks.end()), chunks.end());
  const int readIdx = int(B.wgmmaReads.size());
  for (uint32_t ch : chunks) {
    B.shadow[ch].wgmmaReaders++;
    B.shadow[ch].wgmmaRead = readIdx;
  }
  B.wgmmaReads.push_back(WgmmaRead{std::move(chunks), 128, c.file, c.line});
  const double sA = c.scaleA, sB = c.scaleB;
  for (int t = 0; t < 128; ++t) {
    Fiber& f = *g.member[t];
    const WgmmaIn& in = *static_cast<const WgmmaIn*>(g.in[t]);
    // The accumulator input: a result still in flight into the same registers (wgmmas of one
    // shape chain on their accumulators without a fence, PTX ISA wgmma.fence), else the registers.
    WgmmaResult* pending = nullptr;
    for (WgmmaResult& r : f.wgmma)
      if (r.d == in.d) pending = &r;
    const float* cin = pending ? pending->v : in.d;
    float out[128];
    const int w = t >> 5, lane = t & 31, g8 = lane >> 2, q = lane & 3;
    for (int i = 0; i < N / 2; ++i) {
      const int j = i / 4, e = i % 4, row = 16 * w + g8 + 8 * (e / 2), col = 8 * j + 2 * q + (e % 2);
      double s = c.scaleD ? double(cin[i]) : 0.0;
      for (int k = 0; k < 16; ++k) s += (sA * A[row][k]) * (sB * Bm[k][col]);
      out[i] = float(s);
    }
    if (!pending) {
      f.wgmma.push_back(WgmmaResult{in.d, N, 0, {}, {}});
      pending = &f.wgmma.back();
    }
    pending->reads.push_back(WgmmaResult::Read{readIdx, f.wgmmaCommitted});
    std::memcpy(pending->v, out, sizeof(float) * size_t(N / 2));
    pending->group = f.wgmmaCommitted;  // the open group: delivered by the wait that covers it
  }
}

bool waitedFor(const Fiber& f, int readIdx) {
  return std::find(f.waitedReads.begin(), f.waitedReads.end(), readIdx) != f.waitedReads.end();
}

// The wgmma whose read of chunk `chunk` (an index into Block::shadow) still forbids thread f's
// write there, or null: every read in flight over it is one f has waited for itself (sm.h).
const WgmmaRead* blockingReader(const Block& B, const Fiber& f, const Chunk& c, uint32_t chunk) {
  if (c.wgmmaReaders <= 0) return nullptr;
  int covered = 0;
  for (int idx : f.waitedReads) {
    const WgmmaRead& r = B.wgmmaReads[size_t(idx)];
    covered += r.remaining > 0 && std::binary_search(r.chunks.begin(), r.chunks.end(), chunk);
  }
  if (covered >= c.wgmmaReaders) return nullptr;
  const WgmmaRead& latest = B.wgmmaReads[size_t(c.wgmmaRead)];
  if (latest.remaining > 0 && !waitedFor(f, c.wgmmaRead)) return &latest;
  for (size_t i = B.wgmmaReads.size(); i-- > 0;) {
    const WgmmaRead& r = B.wgmmaReads[i];
    if (r.remaining > 0 && !waitedFor(f, int(i)) && std::binary_search(r.chunks.begin(), r.chunks.end(), chunk)) return &r;
  }
  return &latest;
}

// ---- mbarrier ------------------------------------------------------------------------------------
uint32_t barOffset(const uint64_t* bar, const char* op, const char* file, int line) {
  const uint32_t off = smemOffset(bar, op, file, line);
  if (off % 8) faultAt(file, line, format("%s: mbarrier at shared offset %u is not 8-byte aligned", op, off));
  if (off + 8 > tlBlock->smemBytes) faultAt(file, line, format("%s: mbarrier at shared offset %u overruns", op, off));
  return off;
}
MBarrier& barAt(const uint64_t* bar, const char* op, const char* file, int line) {
  const uint32_t off = barOffset(bar, op, file, line);
  auto it = tlBlock->mbarriers.find(off);
  if (it == tlBlock->mbarriers.end())
    faultAt(file, line, format("%s on the mbarrier at shared offset %u before its mbarrier.init", op, off));
  return it->second;
}

// The phase completes when every expected arrival is in and the transaction count is back at 0:
// its parity flips and the arrival count reloads (PTX ISA "Phase completion of the mbarrier").
void tryCompletePhase(MBarrier& b, uint32_t off, const char* file, int line) {
  if (b.pending != 0 || b.tx != 0) return;
  if (!b.inflight.empty())
    faultAt(file, line, format("the phase of the mbarrier at shared offset %u completed with %lld bytes of TMA loads "
                               "still in flight (expect_tx announced fewer bytes than were loaded)",
                               off, (long long)b.inflightBytes));
  b.phase++;
  b.pending = b.count;
#ifdef MLA_EMU_TSAN
  TSAN_REL(mbarSync(off));
#endif
}

// The TMA loads on a barrier land (their data, then complete_tx) once landing them would complete
// the phase: every arrival is in and the expected bytes are exactly those in flight. Until then a
// read of their destination sees 0xFF, which is how a missing wait shows. On a fiber only.
void settle(MBarrier& b, uint32_t off, const char* file, int line) {
  if (b.inflight.empty() || b.pending != 0) return;
  if (b.inflightBytes > b.tx)
    faultAt(file, line, format("TMA loads in flight on the mbarrier at shared offset %u carry %lld bytes, more than "
                               "the %lld transaction bytes its phase still expects (expect_tx too small)",
                               off, (long long)b.inflightBytes, (long long)b.tx));
  if (b.inflightBytes != b.tx) return;  // more loads (or expect_tx) still to come
  Block& B = *tlBlock;
#ifdef MLA_EMU_TSAN
  TSAN_ACQ(mbarSync(off));  // landing on this fiber comes after the issuing threads' 0xFF fill
#endif
  for (const TmaCopy& cp : b.inflight) {
    for (size_t i = 0; i < cp.data.size() / 16; ++i) {
      const uint32_t chunkOff = cp.chunks[i];
#ifdef MLA_EMU_TSAN
      __tsan_write_range(B.smem + chunkOff, 16);
#endif
      std::memcpy(B.smem + chunkOff, cp.data.data() + 16 * i, 16);
      Chunk& ch = B.shadow[chunkOff / 16];
      ch.tmaBar = -1;
      ch.writer = -1;  // ordered by the mbarrier wait, not by __syncthreads
    }
    b.tx -= cp.bytes;
  }
  b.inflight.clear();
  b.inflightBytes = 0;
  tryCompletePhase(b, off, file, line);
}

bool phaseDone(const MBarrier& b, uint32_t parity) { return (b.phase & 1u) != (parity & 1u); }

// ---- TMA -----------------------------------------------------------------------------------------
// What the emulated cuTensorMapEncodeTiled stores in the 128 opaque bytes of a CUtensorMap.
constexpr uint32_t kMapMagic = 0x544d4c4du;  // "MLMT"
struct EmuTensorMap {
  uint32_t magic, dtype, elemBytes, rank;
  uint64_t global;
  uint64_t dims[5];
  uint64_t strides[4];  // bytes, of dims 1..rank-1 (dim 0 is elemBytes)
  uint32_t box[5];
  uint32_t swizzle;     // span in bytes, 0 = none
  uint32_t oobFill;
};
static_assert(sizeof(EmuTensorMap) <= sizeof(CUtensorMap), "the emulated tensor map must fit in a CUtensorMap");

int elementBytes(CUtensorMapDataType t) {
  switch (t) {
    case CU_TENSOR_MAP_DATA_TYPE_UINT8: return 1;
    case CU_TENSOR_MAP_DATA_TYPE_UINT16:
    case CU_TENSOR_MAP_DATA_TYPE_FLOAT16:
    case CU_TENSOR_MAP_DATA_TYPE_BFLOAT16: return 2;
    case CU_TENSOR_MAP_DATA_TYPE_UINT32:
    case CU_TENSOR_MAP_DATA_TYPE_INT32:
    case CU_TENSOR_MAP_DATA_TYPE_FLOAT32:
    case CU_TENSOR_MAP_DATA_TYPE_FLOAT32_FTZ:
    case CU_TENSOR_MAP_DATA_TYPE_TFLOAT32:
    case CU_TENSOR_MAP_DATA_TYPE_TFLOAT32_FTZ: return 4;
    case CU_TENSOR_MAP_DATA_TYPE_UINT64:
    case CU_TENSOR_MAP_DATA_TYPE_INT64:
    case CU_TENSOR_MAP_DATA_TYPE_FLOAT64: return 8;
    default: return 0;  // the packed sub-byte types are not emulated
  }
}

// cuTensorMapEncodeTiled's documented requirements (cuda.h), each one a CUDA_ERROR_INVALID_VALUE:
// map 64-byte aligned; a known data type; rank 1..5; global address 16-byte aligned; dims in
// [1, 2^32]; strides multiples of 16 and < 2^40; box dims in [1, 256] with the inner box a
// multiple of 16 bytes; element strides in [1, 8]; with a swizzle, inner box bytes <= its span;
// valid interleave / L2 promotion / OOB fill enums, NaN fill only for float types. What the
// emulator does not model (interleaved layouts, element strides != 1, NaN fill, the packed
// sub-byte types, the 128B_ATOM swizzles) is CUDA_ERROR_NOT_SUPPORTED.
CUresult encodeTiled(CUtensorMap* map, CUtensorMapDataType type, cuuint32_t rank, void* global, const cuuint64_t* dims,
                     const cuuint64_t* strides, const cuuint32_t* box, const cuuint32_t* elemStrides,
                     CUtensorMapInterleave interleave, CUtensorMapSwizzle swz, CUtensorMapL2promotion l2,
                     CUtensorMapFloatOOBfill oob) {
  if (!map || reinterpret_cast<uintptr_t>(map) % 64) return CUDA_ERROR_INVALID_VALUE;
  if (int(type) < 0 || int(type) > int(CU_TENSOR_MAP_DATA_TYPE_TFLOAT32_FTZ)) {
    return int(type) <= int(CU_TENSOR_MAP_DATA_TYPE_16U6_ALIGN16B) && int(type) >= 0 ? CUDA_ERROR_NOT_SUPPORTED
                                                                                     : CUDA_ERROR_INVALID_VALUE;
  }
  const int eb = elementBytes(type);
  if (rank < 1 || rank > 5) return CUDA_ERROR_INVALID_VALUE;
  if (!global || reinterpret_cast<uintptr_t>(global) % 16) return CUDA_ERROR_INVALID_VALUE;
  if (!dims || !box || !elemStrides || (rank > 1 && !strides)) return CUDA_ERROR_INVALID_VALUE;
  for (cuuint32_t i = 0; i < rank; ++i) {
    if (dims[i] < 1 || dims[i] > (uint64_t(1) << 32)) return CUDA_ERROR_INVALID_VALUE;
    if (box[i] < 1 || box[i] > 256) return CUDA_ERROR_INVALID_VALUE;
    if (elemStrides[i] < 1 || elemStrides[i] > 8) return CUDA_ERROR_INVALID_VALUE;
  }
  for (cuuint32_t i = 0; i + 1 < rank; ++i)
    if (strides[i] % 16 || strides[i] >= (uint64_t(1) << 40)) return CUDA_ERROR_INVALID_VALUE;
  if (int(interleave) < 0 || int(interleave) > int(CU_TENSOR_MAP_INTERLEAVE_32B)) return CUDA_ERROR_INVALID_VALUE;
  if (int(l2) < 0 || int(l2) > int(CU_TENSOR_MAP_L2_PROMOTION_L2_256B)) return CUDA_ERROR_INVALID_VALUE;
  if (int(oob) < 0 || int(oob) > int(CU_TENSOR_MAP_FLOAT_OOB_FILL_NAN_REQUEST_ZERO_FMA)) return CUDA_ERROR_INVALID_VALUE;
  const bool isFloat = type >= CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
  if (oob == CU_TENSOR_MAP_FLOAT_OOB_FILL_NAN_REQUEST_ZERO_FMA && !isFloat) return CUDA_ERROR_INVALID_VALUE;
  uint32_t span;
  switch (swz) {
    case CU_TENSOR_MAP_SWIZZLE_NONE: span = 0; break;
    case CU_TENSOR_MAP_SWIZZLE_32B: span = 32; break;
    case CU_TENSOR_MAP_SWIZZLE_64B: span = 64; break;
    case CU_TENSOR_MAP_SWIZZLE_128B: span = 128; break;
    default: return int(swz) > 0 && int(swz) < 16 ? CUDA_ERROR_NOT_SUPPORTED : CUDA_ERROR_INVALID_VALUE;
  }
  if (interleave == CU_TENSOR_MAP_INTERLEAVE_NONE) {
    if ((uint64_t(box[0]) * uint64_t(eb)) % 16) return CUDA_ERROR_INVALID_VALUE;
    if (span && uint64_t(box[0]) * uint64_t(eb) > span) return CUDA_ERROR_INVALID_VALUE;
  } else {
    return CUDA_ERROR_NOT_SUPPORTED;
  }
  for (cuuint32_t i = 1; i < rank; ++i)
    if (elemStrides[i] != 1) return CUDA_ERROR_NOT_SUPPORTED;  // dim 0's is ignored without interleave
  if (oob != CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) return CUDA_ERROR_NOT_SUPPORTED;
  EmuTensorMap m{};
  m.magic = kMapMagic;
  m.dtype = uint32_t(type);
  m.elemBytes = uint32_t(eb);
  m.rank = rank;
  m.global = reinterpret_cast<uintptr_t>(global);
  for (cuuint32_t i = 0; i < rank; ++i) {
    m.dims[i] = dims[i];
    m.box[i] = box[i];
  }
  for (cuuint32_t i = 0; i + 1 < rank; ++i) m.strides[i] = strides[i];
  m.swizzle = span;
  m.oobFill = uint32_t(oob);
  std::memset(map, 0, sizeof *map);
  std::memcpy(map, &m, sizeof m);
  return CUDA_SUCCESS;
}

}  // namespace

void* tensorMapEncodeTiledEntry() {
  PFN_cuTensorMapEncodeTiled_v12000 fn = &encodeTiled;
  return reinterpret_cast<void*>(fn);
}

// ---- kernel-facing entry points -------------------------------------------------------------------
uint32_t sharedAddr(const void* p, const char* file, int line) { return smemOffset(p, "sharedAddr", file, line); }

void wgmmaFence(const char* file, int line) {
  needSm90a("wgmma.fence", file, line);
  tlFiber->wgmmaFenced = true;
}

void wgmmaCommit(const char* file, int line) {
  needSm90a("wgmma.commit_group", file, line);
  tlFiber->wgmmaCommitted++;
}

void wgmmaWait(int pending, const char* file, int line) {
  needSm90a("wgmma.wait_group", file, line);
  Fiber& f = *tlFiber;
  if (pending < 0) faultAt(file, line, format("wgmma.wait_group %d", pending));
  const int complete = f.wgmmaCommitted - pending;  // groups [0, complete) must have landed
  size_t keep = 0;
  for (size_t i = 0; i < f.wgmma.size(); ++i) {
    WgmmaResult& r = f.wgmma[i];
    // Every wgmma of a completed group has finished reading its operands, even when a later,
    // still pending wgmma chains on the same accumulators (PTX ISA wgmma.wait_group).
    size_t keepRead = 0;
    for (const WgmmaResult::Read& rd : r.reads) {
      if (rd.group < complete) {
        WgmmaRead& w = tlBlock->wgmmaReads[size_t(rd.idx)];
        if (--w.remaining == 0)
          for (uint32_t ch : w.chunks) tlBlock->shadow[ch].wgmmaReaders--;
        else
          f.waitedReads.push_back(rd.idx);
      } else {
        r.reads[keepRead++] = rd;
      }
    }
    r.reads.resize(keepRead);
    if (r.group < complete) {
      std::memcpy(r.d, r.v, sizeof(float) * size_t(r.n / 2));  // its newest group: every read released above
    } else {
      if (keep != i) f.wgmma[keep] = std::move(r);  // a self-move would empty r.reads
      ++keep;
    }
  }
  f.wgmma.resize(keep);
  f.waitedReads.erase(std::remove_if(f.waitedReads.begin(), f.waitedReads.end(),
                                     [](int idx) { return tlBlock->wgmmaReads[size_t(idx)].remaining == 0; }),
                      f.waitedReads.end());
  // Registers read or written after this need a new wgmma.fence before the next wgmma.
  f.wgmmaFenced = false;
}

void wgmma(WgmmaType type, int n, float* d, const uint32_t* a, uint64_t descA, uint64_t descB, bool scaleD, int scaleA,
           int scaleB, int tnspA, int tnspB, const char* file, int line) {
  needSm90a("wgmma.mma_async", file, line);
  Fiber& f = *tlFiber;
  if (n < 8 || n > 256 || n % 8) faultAt(file, line, format("wgmma.mma_async with N = %d (8..256, a multiple of 8)", n));
  if ((scaleA != 1 && scaleA != -1) || (scaleB != 1 && scaleB != -1))
    faultAt(file, line, format("wgmma.mma_async imm-scale-a/b %d/%d (must be 1 or -1)", scaleA, scaleB));
  if (!f.wgmmaFenced)
    faultAt(file, line, "wgmma.mma_async without wgmma.fence (needed at the start and after each wgmma.wait_group, "
                        "before the registers are used by wgmma again)");
  for (const WgmmaResult& r : f.wgmma)
    if (r.d == d && r.n != n)
      faultAt(file, line, format("wgmma.mma_async m64n%dk16 on accumulators a m64n%dk16 still writes", n, r.n));
  WgmmaCall call{type, n, a ? 0 : descA, descB, a != nullptr, scaleD, scaleA, scaleB, a ? 0 : tnspA, tnspB, file, line};
  WgmmaIn in{};
  if (a) std::memcpy(in.a, a, 16);
  in.d = d;
  const uint64_t key[8] = {uint64_t(type) | uint64_t(n) << 8 | uint64_t(scaleD) << 20 | uint64_t(scaleA + 1) << 21 |
                               uint64_t(scaleB + 1) << 23 | uint64_t(call.tnspA) << 25 | uint64_t(tnspB) << 26 |
                               uint64_t(call.rs) << 27,
                           call.descA, descB, 0, 0, 0, 0, 0};
  groupRendezvous("wgmma.mma_async", key, &in, &wgmmaCompute, reinterpret_cast<uintptr_t>(&call), file, line);
  // In flight until wgmma.wait_group: the registers read NaN so an early read shows.
  for (int i = 0; i < n / 2; ++i) d[i] = std::numeric_limits<float>::quiet_NaN();
}

void setmaxnreg(int count, bool increase, const char* file, int line) {
  needSm90a(increase ? "setmaxnreg.inc" : "setmaxnreg.dec", file, line);
  if (count < 24 || count > 256 || count % 8)
    faultAt(file, line, format("setmaxnreg %d: the count must be a multiple of 8 in [24, 256]", count));
  const uint64_t key[8] = {uint64_t(count), uint64_t(increase), 0, 0, 0, 0, 0, 0};
  char none = 0;
  groupRendezvous("setmaxnreg", key, &none, [](Group&, uintptr_t) {}, 0, file, line);
}

// Fibers are sequentially consistent and the emulated async proxy reads at issue, so these order
// nothing here; what they would order on a GPU is not checked (docs/emulator.md).
void fenceProxyAsync(const char* file, int line) { needSm90a("fence.proxy.async", file, line); }
void fenceMbarrierInit(const char* file, int line) { needSm90a("fence.mbarrier_init", file, line); }

void mbarrierInit(uint64_t* bar, uint32_t count, const char* file, int line) {
  const uint32_t off = barOffset(bar, "mbarrier.init", file, line);
  if (count < 1 || count > (1u << 20) - 1)
    faultAt(file, line, format("mbarrier.init count %u (must be in [1, 2^20 - 1])", count));
  MBarrier& b = tlBlock->mbarriers[off];
  if (!b.inflight.empty())
    faultAt(file, line, format("mbarrier.init on the mbarrier at shared offset %u while TMA loads complete on it", off));
  b = MBarrier{};
  b.count = b.pending = count;
  b.file = file;
  b.line = line;
}

void mbarrierArrive(uint64_t* bar, uint32_t txBytes, const char* file, int line) {
  if (txBytes) needSm90a("mbarrier.arrive.expect_tx", file, line);
  MBarrier& b = barAt(bar, "mbarrier.arrive", file, line);
  const uint32_t off = barOffset(bar, "mbarrier.arrive", file, line);
  if (b.pending == 0)
    faultAt(file, line, format("mbarrier.arrive on the mbarrier at shared offset %u: more arrivals than its count %u "
                               "in this phase", off, b.count));
  b.tx += txBytes;  // expect_tx first (PTX: mbarrier.arrive.expect_tx = expect-tx then arrive-on)
  if (b.tx >= (int64_t(1) << 20))
    faultAt(file, line, format("mbarrier at shared offset %u: transaction count %lld exceeds 2^20 - 1", off,
                               (long long)b.tx));
#ifdef MLA_EMU_TSAN
  TSAN_REL(mbarSync(off));  // arriving releases this thread's writes to whoever sees the phase complete
#endif
  b.pending--;
  tryCompletePhase(b, off, file, line);
}

bool mbarrierTryWait(uint64_t* bar, uint32_t parity, const char* file, int line) {
  MBarrier& b = barAt(bar, "mbarrier.try_wait", file, line);
  const uint32_t off = barOffset(bar, "mbarrier.try_wait", file, line);
  settle(b, off, file, line);
  const bool done = phaseDone(b, parity);
#ifdef MLA_EMU_TSAN
  if (done) TSAN_ACQ(mbarSync(off));
#endif
  return done;
}

void mbarrierWait(uint64_t* bar, uint32_t parity, const char* file, int line) {
  Fiber& f = *tlFiber;
  for (;;) {
    MBarrier& b = barAt(bar, "mbarrier.try_wait", file, line);
    const uint32_t off = barOffset(bar, "mbarrier.try_wait", file, line);
    settle(b, off, file, line);
    if (phaseDone(b, parity)) {
#ifdef MLA_EMU_TSAN
      TSAN_ACQ(mbarSync(off));
#endif
      return;
    }
    f.state = kAtMbarrier;
    f.waitBar = off;
    f.waitParity = parity & 1u;
    f.waitFile = file;
    f.waitLine = line;
    toScheduler();
  }
}

void tmaLoad(void* dst, const void* tensorMap, int rank, const int32_t* coords, uint64_t* bar, const char* file,
             int line) {
  needSm90a("cp.async.bulk.tensor", file, line);
  Block& B = *tlBlock;
  EmuTensorMap m;
  std::memcpy(&m, tensorMap, sizeof m);
  if (m.magic != kMapMagic)
    faultAt(file, line, "cp.async.bulk.tensor: the tensor map was not made by cuTensorMapEncodeTiled");
  if (int(m.rank) != rank)
    faultAt(file, line, format("cp.async.bulk.tensor.%dd with a rank-%u tensor map", rank, m.rank));
  const uint32_t dstOff = smemOffset(dst, "cp.async.bulk.tensor destination", file, line);
  if (dstOff % 128)
    faultAt(file, line, format("cp.async.bulk.tensor destination at shared offset %u is not 128-byte aligned", dstOff));
  MBarrier& b = barAt(bar, "cp.async.bulk.tensor (complete_tx)", file, line);
  const uint32_t barOff = barOffset(bar, "cp.async.bulk.tensor", file, line);
  const uint32_t eb = m.elemBytes, rowBytes = m.box[0] * eb;
  // Measured on an H200 (2026-11-28): an innermost coordinate whose byte offset is not a multiple
  // of 16 (in bounds or not) raises an illegal instruction, whatever the swizzle.
  if ((int64_t(coords[0]) * eb) % 16 != 0)
    faultAt(file, line, format("cp.async.bulk.tensor: the box's innermost coordinate %d is %lld bytes in, not a multiple "
                               "of 16 (a GPU raises an illegal instruction)", coords[0], (long long)(int64_t(coords[0]) * eb)));
  uint64_t rows = 1;
  for (uint32_t i = 1; i < m.rank; ++i) rows *= m.box[i];
  const uint64_t bytes = rows * rowBytes;
  // The box, rows of box[0] elements packed densely in shared memory (outer dims row-major), read
  // from global memory now; an element with any coordinate outside [0, dim) is zero.
  TmaCopy cp;
  cp.bytes = uint32_t(bytes);
  cp.issuer = tlFiber->linear;
  cp.file = file;
  cp.line = line;
  std::vector<unsigned char> dense(bytes, 0);
  for (uint64_t r = 0; r < rows; ++r) {
    int64_t outer[5] = {0, 0, 0, 0, 0};
    uint64_t rest = r;
    bool inside = true;
    uint64_t base = 0;
    for (uint32_t i = 1; i < m.rank; ++i) {
      outer[i] = int64_t(coords[i]) + int64_t(rest % m.box[i]);
      rest /= m.box[i];
      if (outer[i] < 0 || outer[i] >= int64_t(m.dims[i])) inside = false;
      else base += uint64_t(outer[i]) * m.strides[i - 1];
    }
    if (!inside) continue;
    const int64_t x0 = std::max<int64_t>(coords[0], 0), x1 = std::min<int64_t>(int64_t(coords[0]) + m.box[0], int64_t(m.dims[0]));
    if (x1 <= x0) continue;
    const unsigned char* src = reinterpret_cast<const unsigned char*>(m.global) + base + uint64_t(x0) * eb;
    const size_t n = size_t(x1 - x0) * eb;
    if (!isDeviceRange(src, n))
      faultAt(file, line, format("cp.async.bulk.tensor reads [%p, +%zu), which is not inside any live device allocation",
                                 static_cast<const void*>(src), n));
#ifdef MLA_EMU_TSAN
    __tsan_read_range(const_cast<unsigned char*>(src), n);
#endif
    std::memcpy(dense.data() + r * rowBytes + uint64_t(x0 - coords[0]) * eb, src, n);
  }
  // Then the swizzle, on the shared address, in 16-byte chunks (it permutes chunks within a line).
  cp.data = std::move(dense);
  cp.chunks.resize(bytes / 16);
  for (uint64_t i = 0; i < bytes / 16; ++i) {
    const uint32_t addr = swizzle(dstOff + uint32_t(16 * i), m.swizzle);
    if (addr + 16 > B.smemBytes)
      faultAt(file, line, format("cp.async.bulk.tensor writes shared offset %u, past the block's %zu bytes of dynamic "
                                 "shared memory", addr, B.smemBytes));
    Chunk& ch = B.shadow[addr / 16];
    if (ch.pendingBy >= 0)
      faultAt(file, line, format("cp.async.bulk.tensor into shared offset %u, which a cp.async of thread %d still "
                                 "writes", addr, ch.pendingBy));
    if (ch.tmaBar >= 0)
      faultAt(file, line, format("cp.async.bulk.tensor into shared offset %u, which another TMA load (mbarrier at "
                                 "%d) still writes", addr, ch.tmaBar));
    if (const WgmmaRead* r = blockingReader(B, *tlFiber, ch, addr / 16))
      faultAt(file, line, format("cp.async.bulk.tensor into shared offset %u, which the wgmma.mma_async at %s:%d still "
                                 "reads (neither this thread nor every thread of its warpgroup has reached a "
                                 "wgmma.wait_group covering its group)", addr, r->file, r->line));
    ch.tmaBar = int32_t(barOff);
#ifdef MLA_EMU_TSAN
    __tsan_write_range(B.smem + addr, 16);
#endif
    std::memset(B.smem + addr, 0xff, 16);  // undefined until the phase completes
    cp.chunks[i] = addr;
  }
  b.inflight.push_back(std::move(cp));
  b.inflightBytes += int64_t(bytes);
#ifdef MLA_EMU_TSAN
  TSAN_REL(mbarSync(barOff));  // the fill above happens before the landing (settle)
#endif
  if (b.pending == 0 && b.inflightBytes > b.tx)
    faultAt(file, line, format("TMA loads in flight on the mbarrier at shared offset %u carry %lld bytes, more than "
                               "the %lld transaction bytes its phase expects (expect_tx too small)",
                               barOff, (long long)b.inflightBytes, (long long)b.tx));
}

// ---- the scheduler's hooks ----------------------------------------------------------------------
namespace sm {

std::string wgmmaReadConflict(const Chunk& c) {
  const Block& B = *tlBlock;
  const WgmmaRead* r = blockingReader(B, *tlFiber, c, uint32_t(&c - B.shadow.data()));
  if (!r) return {};
  return format("the wgmma.mma_async at %s:%d still reads it (neither this thread nor every thread of its warpgroup "
                "has reached a wgmma.wait_group covering its group)", r->file, r->line);
}

bool mbarrierReady(Block& B, const Fiber& f) {
  auto it = B.mbarriers.find(f.waitBar);
  if (it == B.mbarriers.end()) return true;  // re-checked (and reported) on the fiber
  const MBarrier& b = it->second;
  if (phaseDone(b, f.waitParity)) return true;
  // Landing the TMA loads in flight would complete the phase (or overshoot: a fault on the fiber).
  return b.pending == 0 && !b.inflight.empty() && b.inflightBytes >= b.tx;
}

std::string hopperExitCheck(const Fiber& f) {
  if (f.wgmma.empty()) return {};
  int open = 0;
  for (const WgmmaResult& r : f.wgmma) open += r.group == f.wgmmaCommitted;
  return format("%s exited with %zu wgmma.mma_async results never waited for (%d not even committed: "
                "wgmma.commit_group / wgmma.wait_group missing)", where().c_str(), f.wgmma.size(), open);
}

std::string hopperBlockEndCheck(Block& B) {
  for (const auto& [off, b] : B.mbarriers)
    if (!b.inflight.empty())
      return format("the block ended with a TMA load (issued at %s:%d by thread %d) still in flight on the mbarrier at "
                    "shared offset %u: nobody waited for it", b.inflight[0].file, b.inflight[0].line,
                    b.inflight[0].issuer, off);
  return {};
}

std::string hopperDeadlockReport(const Block& B, const std::vector<Fiber>& fibers) {
  std::string m;
  for (int wg = 0; wg < (B.threads + 127) / 128; ++wg)
    if (B.groups[wg].arrived > 0)
      m += format("; warpgroup %d: %d of 128 threads at %s (%s:%d)", wg, B.groups[wg].arrived, B.groups[wg].op,
                  B.groups[wg].file, B.groups[wg].line);
  // One line per (barrier, parity, site) that threads wait at.
  std::map<std::tuple<uint32_t, uint32_t, const char*, int>, int> waits;
  for (const Fiber& f : fibers)
    if (f.state == kAtMbarrier) waits[{f.waitBar, f.waitParity, f.waitFile, f.waitLine}]++;
  for (const auto& [k, n] : waits) {
    const auto& [off, parity, file, line] = k;
    auto it = B.mbarriers.find(off);
    m += format("; %d thread(s) wait at %s:%d on the mbarrier at shared offset %u for the phase of parity %u", n, file,
                line, off, parity);
    if (it != B.mbarriers.end())
      m += format(" (initialised at %s:%d with count %u; now phase %u, %u arrival(s) and %lld transaction byte(s) "
                  "outstanding, %zu TMA load(s) in flight)",
                  it->second.file, it->second.line, it->second.count, it->second.phase, it->second.pending,
                  (long long)it->second.tx, it->second.inflight.size());
  }
  return m;
}

void hopperResetBlock(Block& B) {
  B.mbarriers.clear();
  B.wgmmaReads.clear();
  for (Group& g : B.groups) {
    g.arrived = 0;
    g.op = nullptr;
    g.gen = 0;
  }
}

}  // namespace sm
}  // namespace mla::emu

// Absorbed MLA decode over a paged latent cache (FlashMLA's problem): split-KV main kernel,
// device-side split plan, LSE combine. Plain C++ (the binding includes it with g++).
#pragma once
#include <cstdint>
#include "core/status.h"
#include "core/tensor.h"

namespace mla {

constexpr int kDecodeDimQK = 576;  // kv_lora 512 + rope 64
constexpr int kDecodeDimV = 512;   // V = first 512 columns of each cache row
// Limits of the launcher, exported to TypeScript by the addon's limits() (module.cc) so
// lib/ops/decode.ts validates against these values instead of restating them.
constexpr int kDecodeMaxHeads = 128;
constexpr int kDecodeMinPageSize = 16;   // page sizes: powers of two in [min, max]
constexpr int kDecodeMaxPageSize = 256;
constexpr int kDecodeMaxParts = 65535;   // a grid dimension's limit

// Sticky bits in the workspace error word (OR-ed by the kernels, cleared by the host).
enum DecodeErrorBits : int32_t {
  kDecodeErrSeqLen = 1,    // seqLens[b] outside [0, maxPages * pageSize]
  kDecodeErrPage = 2,      // a used blockTable entry outside [0, numPages)
  kDecodeErrQSeqLen = 4,   // qSeqLens[b] < 0, > maxQSeqLen, or queries past `tokens`
};

// Byte layout of the workspace buffer: one allocation, reused across calls and layers.
//   [0, 256)        int32 error word (+ padding)
//   partMeta        int32 [maxParts][8]   part p: beginReq, beginBlock, endReq, endBlock, firstSplit
//   reqInfo         int32 [maxBatch][8]   nBlocks, numSplits, splitStart, qStart, qLen, seqLen
//   lsePart         f32   [partialRows]       base-2 LSE of each split row
//   oPart           f32   [partialRows][512]  normalised split outputs
// Only requests cut into >= 2 splits use partial slots (at most 2 per part); slot s of a call
// with R = H * maxQSeqLen rows per request occupies partial rows [s*R, s*R + R). A call runs
// with numParts <= partialRows / (2R), so partialRows = 2 * SMs * min(64, R) loses nothing
// (numParts ~ SMs / ceil(R / BM) with BM <= 64).
struct DecodeWorkspaceLayout {
  int64_t maxBatch = 0, partialRows = 0, maxParts = 0;
  int64_t partMetaOff = 0, reqInfoOff = 0, lseOff = 0, oOff = 0, totalBytes = 0;
};

inline DecodeWorkspaceLayout decodeWorkspaceLayout(int64_t maxBatch, int64_t partialRows, int64_t maxParts) {
  auto align = [](int64_t x) { return (x + 255) / 256 * 256; };
  DecodeWorkspaceLayout l;
  l.maxBatch = maxBatch;
  l.partialRows = partialRows;
  l.maxParts = maxParts;
  l.partMetaOff = 256;
  l.reqInfoOff = align(l.partMetaOff + maxParts * 8 * 4);
  l.lseOff = align(l.reqInfoOff + maxBatch * 8 * 4);
  l.oOff = align(l.lseOff + partialRows * 4);
  l.totalBytes = align(l.oOff + partialRows * int64_t(kDecodeDimV) * 4);
  return l;
}

// Which main kernel runs: Auto takes the Hopper path (decode_sm90.cu: wgmma + TMA) where it
// applies (compute capability 9.0, a 16-bit cache, a build with sm_90a code) and the portable
// mma.sync path elsewhere; the others force one (Hopper where it cannot run is an error).
// The Hopper path runs its few-rows kernel for s_q * H <= 32; HopperWide, its 64-row kernel
// for any row count (benchmarks compare the two).
enum class DecodeKernel : int32_t { Auto = 0, Portable = 1, Hopper = 2, HopperWide = 3 };

struct DecodeParams {
  TensorRef q;           // [tokens, H, 576] bf16/f16, last dim contiguous
  TensorRef cache;       // [numPages, pageSize, 576], same dtype
  TensorRef blockTable;  // i32 [B, maxPages]
  TensorRef seqLens;     // i32 [B]
  TensorRef qSeqLens;    // i32 [B], only when hasQSeqLens
  bool hasQSeqLens = false;
  int64_t uniformQSeqLen = 1;  // s_q when !hasQSeqLens (tokens == B * s_q)
  int64_t maxQSeqLen = 1;      // host-known bound on every qSeqLens[b]: sizes the grid
  TensorRef out;         // [tokens, H, 512], q's dtype
  TensorRef lse;         // f32 [tokens, H]
  float scale = 0.f;
  bool causal = false;

  TensorRef workspace;   // u8 [>= layout.totalBytes]
  int64_t wsMaxBatch = 0, wsPartialRows = 0, wsMaxParts = 0;

  // Which launches to issue (all by default); the benchmark times the main kernel alone.
  bool runPlan = true, runMain = true, runCombine = true;
  bool pdl = false;  // programmatic dependent launch of main and combine (sm_90+; Phases)
  DecodeKernel kernel = DecodeKernel::Auto;
};

namespace gpu {
Status launchDecode(const DecodeParams& p, StreamHandle stream);

// The tile config launchDecode would pick on the current device (for docs/benchmarks).
struct DecodeConfigInfo {
  int blockM = 0, blockN = 0, stages = 0, smemBytes = 0, numParts = 0, rowTiles = 0, ctasPerSm = 0;
  bool hopper = false;  // the sm_90a kernel
};
Status decodeConfigFor(int64_t numHeads, int64_t maxQSeqLen, int64_t wsMaxParts, DecodeKernel kernel, bool fp8Cache,
                       DecodeConfigInfo* info);
// decodeWorkspaceLayout after the range checks that keep its arithmetic from overflowing.
Status checkedDecodeWorkspaceLayout(int64_t maxBatch, int64_t partialRows, int64_t maxParts, DecodeWorkspaceLayout* out);
}  // namespace gpu

}  // namespace mla

// Conformance kernels for the PTX wrappers of common.cuh and the warp intrinsics: each runs one
// warp over tiny inputs and writes the raw registers back, so a GPU run and an emulated-device
// run of test/primitives.test.ts can be compared bit for bit with each other and with the
// PTX ISA definitions (lib/reference/primitives.ts). Plain C++: the binding includes it.
#pragma once
#include <cstdint>
#include <initializer_list>
#include "core/status.h"
#include "core/tensor.h"

namespace mla {

enum class Primitive : int32_t {
  Mma = 0, Ldmatrix = 1, CpAsync = 2, Shuffle = 3, Vote = 4,
  // sm_90a (primitives_sm90.cu; compute capability 9.0 only): wgmma, TMA, mbarrier.
  Wgmma = 5, Tma = 6, Mbarrier = 7,
};
// Shuffle case modes (cases[i][0]); the numbers are shared with lib/ops/primitives.ts.
enum class ShflOp : int32_t { Idx = 0, Xor = 1, Down = 2, Up = 3 };

// Every tensor contiguous; only those of `which` are read.
struct PrimitivesParams {
  Primitive which = Primitive::Mma;
  // Mma: d = mma16816<a.dtype>(a, b, c). a [16,16] and b [16,8] row-major, both bf16 or both
  // f16; c, d [16,8] f32.
  TensorRef a, b, c, d;
  // Ldmatrix: matrix [32,8] 16-bit (bf16/f16 as raw bits) into shared memory; lane l passes
  // row perm[l] (i32 [32], taken mod 32); frag [32,4] i32 gets each lane's `num` registers.
  TensorRef matrix, perm, frag;
  int num = 4;
  bool trans = false;
  // CpAsync: src [64,4] i32 (64 chunks of 16 B), pred [64] i32; chunks 0-31 are commit group 0,
  // 32-63 group 1. early [32,4] i32: chunk `lane` read by its own thread after wait_group 1;
  // out [64,4] i32: all of shared memory after wait_group 0 and a barrier.
  TensorRef src, pred, early, out;
  // Shuffle: values [32] i32 (lane l's operand), cases [n,3] i32 (ShflOp, lane/delta/mask arg,
  // width), shfl [n,32] i32. A case with a bad op or width is skipped (its row keeps its fill).
  TensorRef values, cases, shfl;
  // Vote: preds [m,32] i32 (nonzero = true), votes [m,3,32] i32: __ballot_sync, __any_sync != 0,
  // __all_sync != 0 per lane, full mask.
  TensorRef preds, votes;

  // Wgmma: d = A·B (+ c when scaleD) by wgmma.mma_async m64nNk16 f32.{bf16,f16} in k/16 steps
  // (a, b, c, d as for Mma but a [64,k], b [k,n], c/d [64,n]; n 16, 32, 64 or 256; k 16, or 64
  // with n 32 or 64).
  // A is K-major (tnspA 0) or MN-major (tnspA 1, shared memory only) with swizzleA, or from
  // registers when rs; B is K-major (tnspB 0) or MN-major (tnspB 1) with swizzleB. Swizzles are
  // spans in bytes: 0 (none), 32, 64, 128. lboRows: k-rows per 64-column group of a swizzled
  // MN-major B (its LBO = lboRows·span; an MN-major A's is k rows).
  int n = 16, k = 16, swizzleA = 0, swizzleB = 0, tnspA = 0, tnspB = 0, lboRows = 16;
  bool rs = false, scaleD = true;
  // Tma: src, a bf16 tensor of rank 2 or 3 (shape outermost first); coords [m, rank] i32, box
  // corners innermost first; box[0..rank) innermost first; swizzle (a span, as above); out [m, box
  // elements] bf16: each load's shared bytes, raw, in shared-address order.
  // Mbarrier: src [8, 64] bf16; tile [8, 64] bf16 (a TMA box of all of it completing on the
  // barrier); waits [2, 10] i32: the scripted try_wait results of threads 0 and 32. handover:
  // how warp 0 hands the box to warp 1, 0 named barriers, 1 mbarriers.
  TensorRef coords, tile, waits;
  int handover = 0;
  int box[3] = {1, 1, 1};
  int swizzle = 0;
  // Emulator test variants (0: none; the launcher refuses others on a GPU). Wgmma 1: no
  // wgmma.fence; 2: a cp.async into B between the wgmma and its wait_group (write after read);
  // 3 / 4 (k 64): a group per k16 step, wait_group 1, then a cp.async into the B slice of a
  // completed (3, allowed) or the pending (4, a fault) group. Tma 1: ldmatrix of the destination
  // before the mbarrier wait. Mbarrier 1: a wait for a phase that never completes; 2: one named
  // barrier generation joined with two counts; 3: a bar.sync that never completes.
  int mode = 0;
};

namespace gpu {
// Memory safety only (core/check.h): `arg` has dtype d0 or d1, this exact shape (-1: any size)
// and is contiguous. Shared by primitives.cu and primitives_sm90.cu.
Status checkPrimitiveTensor(const TensorRef& t, const char* arg, std::initializer_list<int64_t> shape, DType d0, DType d1);
Status launchPrimitive(const PrimitivesParams& p, StreamHandle stream);
#if MLA_HAS_SM90A
// primitives_sm90.cu: Wgmma, Tma, Mbarrier (the caller checked the device is sm_90).
Status launchPrimitiveSm90(const PrimitivesParams& p, StreamHandle stream);
#endif
}  // namespace gpu

}  // namespace mla

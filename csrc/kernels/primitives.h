// Conformance kernels for the PTX wrappers of common.cuh and the warp intrinsics: each runs one
// warp over tiny inputs and writes the raw registers back, so a GPU run and an emulated-device
// run of test/primitives.test.ts can be compared bit for bit with each other and with the
// PTX ISA definitions (lib/reference/primitives.ts). Plain C++: the binding includes it.
#pragma once
#include <cstdint>
#include "core/status.h"
#include "core/tensor.h"

namespace mla {

enum class Primitive : int32_t { Mma = 0, Ldmatrix = 1, CpAsync = 2, Shuffle = 3, Vote = 4 };
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
};

namespace gpu {
Status launchPrimitive(const PrimitivesParams& p, StreamHandle stream);
}  // namespace gpu

}  // namespace mla

// MLA_CHECK: the one guard macro of the launchers (FlashAttention's TORCH_CHECK is the model).
// The validation rule: lib/ops/*.ts owns every user-facing check and its message (naming the
// argument); the bindings only convert JS values; a launcher checks only what memory safety
// depends on (dtypes, shapes, strides, alignment, sizes the kernels index with), so a direct
// native call with bad arguments returns an error instead of faulting the device.
#pragma once
#include "core/status.h"

// Returns Status::Error(Code::CODE, message) from the enclosing function unless `cond` holds.
#define MLA_CHECK(cond, CODE, message)                                         \
  do {                                                                         \
    if (!(cond)) return ::mla::Status::Error(::mla::Code::CODE, (message));    \
  } while (0)

// Element types. The numeric values are part of the JS <-> native contract (lib/dtype.ts).
#pragma once
#include <cstddef>
#include <cstdint>

namespace mla {

enum class DType : int32_t { F32 = 0, F16 = 1, BF16 = 2, FP8E4M3 = 3, I32 = 4, U8 = 5 };
constexpr int kNumDTypes = 6;

constexpr size_t dtypeSize(DType t) {
  switch (t) {
    case DType::F32: case DType::I32: return 4;
    case DType::F16: case DType::BF16: return 2;
    case DType::FP8E4M3: case DType::U8: return 1;
  }
  return 0;
}

inline const char* dtypeName(DType t) {
  switch (t) {
    case DType::F32: return "f32";
    case DType::F16: return "f16";
    case DType::BF16: return "bf16";
    case DType::FP8E4M3: return "fp8e4m3";
    case DType::I32: return "i32";
    case DType::U8: return "u8";
  }
  return "?";
}

}  // namespace mla

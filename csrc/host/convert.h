// Host-side float conversions with round-to-nearest-even, used when uploading f32 data to
// bf16 / f16 / fp8 tensors and when reading them back. No CUDA needed (tested in CI).
#pragma once
#include <cstdint>

namespace mla::host {

uint16_t floatToBf16(float f);
float bf16ToFloat(uint16_t h);
uint16_t floatToHalf(float f);
float halfToFloat(uint16_t h);
// e4m3fn (OCP FP8): no infinities, 0x7f/0xff are NaN, max finite 448; values beyond saturate.
uint8_t floatToFp8e4m3(float f);
float fp8e4m3ToFloat(uint8_t v);

}  // namespace mla::host

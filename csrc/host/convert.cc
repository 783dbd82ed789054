#include "host/convert.h"
#include <cmath>
#include <cstring>

namespace mla::host {

static uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
static float fromBits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// bf16 is the top half of an f32: add half an ulp plus the lsb (ties to even), truncate.
uint16_t floatToBf16(float f) {
  uint32_t u = bits(f);
  if (std::isnan(f)) return static_cast<uint16_t>((u >> 16) | 0x40);  // keep sign, force quiet NaN
  u += 0x7fff + ((u >> 16) & 1);
  return static_cast<uint16_t>(u >> 16);
}
float bf16ToFloat(uint16_t h) { return fromBits(static_cast<uint32_t>(h) << 16); }

// IEEE binary16: 5 exponent bits (bias 15), 10 mantissa bits, subnormals below 2^-14.
uint16_t floatToHalf(float f) {
  uint32_t u = bits(f);
  uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000);
  uint32_t absu = u & 0x7fffffff;
  if (absu >= 0x7f800000) return sign | (absu > 0x7f800000 ? 0x7e00 : 0x7c00);  // NaN / inf
  if (absu >= 0x477ff000) return sign | 0x7c00;  // rounds to >= 65520: overflow to inf
  int exp = static_cast<int>(absu >> 23) - 127;
  uint32_t mant = absu & 0x7fffff;
  if (exp >= -14) {
    // Normal: keep 10 mantissa bits, round the dropped 13 to nearest even (carry may bump exp).
    uint32_t h = (static_cast<uint32_t>(exp + 15) << 10) | (mant >> 13);
    uint32_t rest = mant & 0x1fff;
    if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) ++h;
    return sign | static_cast<uint16_t>(h);
  }
  if (exp < -25) return sign;  // below half the smallest subnormal
  // Subnormal: value = m * 2^-24 with m < 1024; shift the full 24-bit significand.
  mant |= 0x800000;
  int shift = -exp - 1;  // 14..24 bits to drop (exp in [-25, -15])
  uint32_t h = mant >> shift;
  uint32_t rest = mant & ((1u << shift) - 1), halfway = 1u << (shift - 1);
  if (rest > halfway || (rest == halfway && (h & 1))) ++h;
  return sign | static_cast<uint16_t>(h);
}

float halfToFloat(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
  if (exp == 0x1f) return fromBits(sign | 0x7f800000 | (mant << 13));
  if (exp == 0) {
    float v = std::ldexp(static_cast<float>(mant), -24);
    return sign ? -v : v;
  }
  return fromBits(sign | ((exp + 112) << 23) | (mant << 13));
}

// e4m3fn: bias 7, 3 mantissa bits, subnormals m * 2^-9, max 448 = 1.75 * 2^8.
uint8_t floatToFp8e4m3(float f) {
  uint8_t sign = std::signbit(f) ? 0x80 : 0;
  if (std::isnan(f)) return sign | 0x7f;
  float a = std::fabs(f);
  if (a >= 448.f) return sign | 0x7e;  // saturate (also inf), as __NV_SATFINITE does
  if (a < std::ldexp(1.f, -10)) {
    // Below half the smallest subnormal (2^-9); exactly half rounds to even (0).
    return sign;
  }
  int e;
  std::frexp(a, &e);  // a = m * 2^e, m in [0.5, 1)
  int exp = e - 1;    // a = 1.x * 2^exp
  if (exp < -6) {
    // Subnormal grid step 2^-9.
    float q = std::nearbyint(std::ldexp(a, 9));  // default rounding mode: nearest even
    int m = static_cast<int>(q);
    if (m >= 8) return sign | 0x08;  // rounded up into the smallest normal
    return sign | static_cast<uint8_t>(m);
  }
  float scaled = std::ldexp(a, 3 - exp);  // in [8, 16)
  int m = static_cast<int>(std::nearbyint(scaled));
  if (m == 16) {
    m = 8;
    ++exp;
  }
  if (exp > 8 || (exp == 8 && m > 14)) return sign | 0x7e;
  return sign | static_cast<uint8_t>(((exp + 7) << 3) | (m - 8));
}

float fp8e4m3ToFloat(uint8_t v) {
  float s = (v & 0x80) ? -1.f : 1.f;
  int exp = (v >> 3) & 0xf, mant = v & 7;
  if (exp == 0xf && mant == 7) return std::nanf("");
  if (exp == 0) return s * std::ldexp(static_cast<float>(mant), -9);
  return s * std::ldexp(1.f + mant / 8.f, exp - 7);
}

}  // namespace mla::host

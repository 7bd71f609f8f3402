// common: IEEE half-precision conversion, the 16-bit float of f16 tensors and of the scales
// in quantized blocks, and rounding to bfloat16. Inline: the kernels convert weights with
// them in their inner loops.
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>

namespace amanuensis {

inline float half_to_float(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000) << 16;
  std::uint32_t exponent = (h >> 10) & 0x1f;
  std::uint32_t mantissa = h & 0x3ff;
  std::uint32_t bits;
  if (exponent == 0x1f) {
    bits = sign | 0x7f800000 | (mantissa << 13);
  } else if (exponent != 0) {
    bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {
    bits = sign;
  } else {  // subnormal half: normalise
    exponent = 113;
    while ((mantissa & 0x400) == 0) {
      mantissa <<= 1;
      --exponent;
    }
    bits = sign | (exponent << 23) | ((mantissa & 0x3ff) << 13);
  }
  return std::bit_cast<float>(bits);
}

// Round to nearest even; overflow to infinity.
inline std::uint16_t float_to_half(float f) {
  const std::uint32_t x = std::bit_cast<std::uint32_t>(f);
  const std::uint32_t sign = (x >> 16) & 0x8000;
  const std::uint32_t abs = x & 0x7fffffff;
  if (abs >= 0x7f800000) return static_cast<std::uint16_t>(sign | 0x7c00 | (abs > 0x7f800000 ? 0x200 : 0));
  if (abs >= 0x477ff000) return static_cast<std::uint16_t>(sign | 0x7c00);  // overflows to inf
  if (abs < 0x38800000) {  // subnormal or zero in half
    const float scaled = std::bit_cast<float>(abs) * 16777216.0f;  // * 2^24: units of the half subnormal step
    const auto q = static_cast<std::uint32_t>(std::nearbyint(scaled));
    return static_cast<std::uint16_t>(sign | q);
  }
  // normal: round mantissa to 10 bits, nearest even
  std::uint32_t rounded = abs + 0xfff + ((abs >> 13) & 1);
  return static_cast<std::uint16_t>(sign | ((rounded - 0x38000000) >> 13));
}

// The bfloat16 bits of a finite float, rounded to nearest even (what the bf16 kernels
// and the engines' conversions compute).
inline std::uint16_t float_to_bf16_bits(float f) {
  auto u = std::bit_cast<std::uint32_t>(f);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<std::uint16_t>(u >> 16);
}

}  // namespace amanuensis

#include "kernels/cpu/quant.h"

#include <bit>
#include <cmath>
#include <cstring>

#include "common/error.h"

namespace amanuensis::kernels::cpu {
namespace {

constexpr int kBlock = 32;

std::uint16_t load_u16(const std::byte* p) {
  std::uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}
std::uint32_t load_u32(const std::byte* p) {
  std::uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
int nibble(const std::byte* qs, int j) {
  // byte j holds weight j (low nibble) and weight j+16 (high nibble)
  const auto b = std::to_integer<int>(qs[j % 16]);
  return j < 16 ? (b & 0x0f) : (b >> 4);
}

void dequantize_blocks(model::TensorType type, const std::byte* in, float* out, std::size_t n) {
  using model::TensorType;
  const std::size_t blocks = n / kBlock;
  for (std::size_t b = 0; b < blocks; ++b, out += kBlock) {
    switch (type) {
      case TensorType::Q8_0: {
        const float d = half_to_float(load_u16(in));
        const auto* q = reinterpret_cast<const std::int8_t*>(in + 2);
        for (int j = 0; j < kBlock; ++j) out[j] = d * q[j];
        in += 34;
        break;
      }
      case TensorType::Q4_0: {
        const float d = half_to_float(load_u16(in));
        for (int j = 0; j < kBlock; ++j) out[j] = d * (nibble(in + 2, j) - 8);
        in += 18;
        break;
      }
      case TensorType::Q4_1: {
        const float d = half_to_float(load_u16(in));
        const float m = half_to_float(load_u16(in + 2));
        for (int j = 0; j < kBlock; ++j) out[j] = d * nibble(in + 4, j) + m;
        in += 20;
        break;
      }
      case TensorType::Q5_0: {
        const float d = half_to_float(load_u16(in));
        const std::uint32_t qh = load_u32(in + 2);
        for (int j = 0; j < kBlock; ++j) out[j] = d * ((nibble(in + 6, j) | (((qh >> j) & 1) << 4)) - 16);
        in += 22;
        break;
      }
      case TensorType::Q5_1: {
        const float d = half_to_float(load_u16(in));
        const float m = half_to_float(load_u16(in + 2));
        const std::uint32_t qh = load_u32(in + 4);
        for (int j = 0; j < kBlock; ++j) out[j] = d * (nibble(in + 8, j) | (((qh >> j) & 1) << 4)) + m;
        in += 24;
        break;
      }
      default:
        throw Error("internal: dequantize_blocks called for a non-quantized type");
    }
  }
}

}  // namespace

float half_to_float(std::uint16_t h) {
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

std::uint16_t float_to_half(float f) {
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

void dequantize(model::TensorType type, std::span<const std::byte> in, std::span<float> out) {
  using model::TensorType;
  const std::size_t n = out.size();
  if (in.size() < model::tensor_bytes(type, static_cast<std::int64_t>(n))) {
    throw Error("internal: dequantize input shorter than its values");
  }
  switch (type) {
    case TensorType::F32:
      std::memcpy(out.data(), in.data(), n * sizeof(float));
      return;
    case TensorType::F16:
      for (std::size_t i = 0; i < n; ++i) out[i] = half_to_float(load_u16(in.data() + 2 * i));
      return;
    default:
      if (n % kBlock != 0) throw Error("internal: quantized row length not a multiple of 32");
      dequantize_blocks(type, in.data(), out.data(), n);
  }
}

}  // namespace amanuensis::kernels::cpu

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

// Bit 4 of value j of a q5 block (as an int, so that code - 16 stays signed).
int fifth_bit(std::uint32_t qh, int j) { return static_cast<int>((qh >> j) & 1) << 4; }

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
        // signed arithmetic: codes below 16 are negative weights
        for (int j = 0; j < kBlock; ++j) out[j] = d * ((nibble(in + 6, j) | fifth_bit(qh, j)) - 16);
        in += 22;
        break;
      }
      case TensorType::Q5_1: {
        const float d = half_to_float(load_u16(in));
        const float m = half_to_float(load_u16(in + 2));
        const std::uint32_t qh = load_u32(in + 4);
        for (int j = 0; j < kBlock; ++j) out[j] = d * (nibble(in + 8, j) | fifth_bit(qh, j)) + m;
        in += 24;
        break;
      }
      default:
        throw InternalError("dequantize_blocks called for a non-quantized type");
    }
  }
}

}  // namespace

void dequantize(model::TensorType type, std::span<const std::byte> in, std::span<float> out) {
  using model::TensorType;
  const std::size_t n = out.size();
  if (in.size() < model::tensor_bytes(type, static_cast<std::int64_t>(n))) {
    throw InternalError("dequantize input shorter than its values");
  }
  switch (type) {
    case TensorType::F32:
      std::memcpy(out.data(), in.data(), n * sizeof(float));
      return;
    case TensorType::F16:
      for (std::size_t i = 0; i < n; ++i) out[i] = half_to_float(load_u16(in.data() + 2 * i));
      return;
    default:
      if (n % kBlock != 0) throw InternalError("quantized row length not a multiple of 32");
      dequantize_blocks(type, in.data(), out.data(), n);
  }
}

}  // namespace amanuensis::kernels::cpu

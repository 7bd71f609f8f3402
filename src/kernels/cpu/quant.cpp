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

std::size_t block_bytes(DType type) { return dtype_bytes(type, kBlock); }

void dequantize_blocks(DType type, const std::byte* in, float* out, std::size_t n) {
  const std::size_t blocks = n / kBlock;
  const std::size_t stride = block_bytes(type);
  for (std::size_t b = 0; b < blocks; ++b, out += kBlock, in += stride) {
    if (has_int8_codes(type)) {
      std::int8_t codes[kBlock];
      const float d = block_codes(type, in, codes);
      for (int j = 0; j < kBlock; ++j) out[j] = d * codes[j];
      continue;
    }
    const float d = half_to_float(load_u16(in));
    const float m = half_to_float(load_u16(in + 2));
    if (type == DType::Q4_1) {
      for (int j = 0; j < kBlock; ++j) out[j] = d * nibble(in + 4, j) + m;
    } else if (type == DType::Q5_1) {
      const std::uint32_t qh = load_u32(in + 4);
      for (int j = 0; j < kBlock; ++j) out[j] = d * (nibble(in + 8, j) | fifth_bit(qh, j)) + m;
    } else {
      throw InternalError("dequantize_blocks called for a non-quantized type");
    }
  }
}

}  // namespace

bool has_int8_codes(DType type) { return type == DType::Q8_0 || type == DType::Q5_0 || type == DType::Q4_0; }

float block_codes(DType type, const std::byte* in, std::int8_t codes[kBlock]) {
  const float d = half_to_float(load_u16(in));
  switch (type) {
    case DType::Q8_0:
      std::memcpy(codes, in + 2, kBlock);
      break;
    case DType::Q4_0:
      for (int j = 0; j < kBlock; ++j) codes[j] = static_cast<std::int8_t>(nibble(in + 2, j) - 8);
      break;
    case DType::Q5_0: {
      const std::uint32_t qh = load_u32(in + 2);
      // signed arithmetic: codes below 16 are negative weights
      for (int j = 0; j < kBlock; ++j) codes[j] = static_cast<std::int8_t>((nibble(in + 6, j) | fifth_bit(qh, j)) - 16);
      break;
    }
    default:
      throw InternalError("block_codes called for a type without int8 codes");
  }
  return d;
}

void dequantize(DType type, std::span<const std::byte> in, std::span<float> out) {
  const std::size_t n = out.size();
  if (in.size() < dtype_bytes(type, static_cast<std::int64_t>(n))) {
    throw InternalError("dequantize input shorter than its values");
  }
  switch (type) {
    case DType::F32:
      std::memcpy(out.data(), in.data(), n * sizeof(float));
      return;
    case DType::F16:
      for (std::size_t i = 0; i < n; ++i) out[i] = half_to_float(load_u16(in.data() + 2 * i));
      return;
    case DType::BF16:
      for (std::size_t i = 0; i < n; ++i) out[i] = std::bit_cast<float>(std::uint32_t{load_u16(in.data() + 2 * i)} << 16);
      return;
    default:
      if (n % kBlock != 0) throw InternalError("quantized row length not a multiple of 32");
      dequantize_blocks(type, in.data(), out.data(), n);
  }
}

std::vector<float> to_floats(const StoredMatrix& m) {
  std::vector<float> out(static_cast<std::size_t>(m.shape.elements()));
  dequantize(m.dtype, m.bytes, out);
  return out;
}

}  // namespace amanuensis::kernels::cpu

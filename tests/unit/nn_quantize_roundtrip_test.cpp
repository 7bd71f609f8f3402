// The quantizer (model/quantize.h) against the engine's own reader of the formats
// (kernels/cpu/quant.h): every type dequantizes back to its input within the step of its
// block, and values the format holds exactly come back exactly.
// (In the nn layer's tests: nn is the lowest layer that links both model and kernels.)
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/cpu/quant.h"
#include "model/quantize.h"

namespace amanuensis::kernels {
namespace {

using model::TensorType;

const TensorType kTypes[] = {TensorType::Q8_0, TensorType::Q5_0, TensorType::Q5_1, TensorType::Q4_0, TensorType::Q4_1};

DType dtype(TensorType t) {
  switch (t) {
    case TensorType::Q8_0: return DType::Q8_0;
    case TensorType::Q5_0: return DType::Q5_0;
    case TensorType::Q5_1: return DType::Q5_1;
    case TensorType::Q4_0: return DType::Q4_0;
    default: return DType::Q4_1;
  }
}

std::vector<std::byte> quantized(TensorType type, const std::vector<float>& values) {
  std::vector<std::byte> q(model::tensor_bytes(type, static_cast<std::int64_t>(values.size())));
  EXPECT_EQ(q.size(), dtype_bytes(dtype(type), static_cast<std::int64_t>(values.size())));
  model::quantize_values(type, values, q);
  return q;
}

std::vector<float> roundtrip(TensorType type, const std::vector<float>& values) {
  const auto q = quantized(type, values);
  std::vector<float> back(values.size());
  cpu::dequantize(dtype(type), q, back);
  return back;
}

// The int8 codes and scales that the decoder's panels keep (kernels/cpu/panel_matrix.h)
// give exactly the dequantized weights, for the types that have them.
TEST(QuantizeRoundTrip, BlockCodesTimesScaleAreTheDequantizedValues) {
  std::mt19937 rng(3);
  std::normal_distribution<float> dist(0.0f, 0.05f);
  std::vector<float> values(32 * 64);
  for (auto& v : values) v = dist(rng);
  int checked = 0;
  for (TensorType type : kTypes) {
    if (!cpu::has_int8_codes(dtype(type))) continue;
    const auto q = quantized(type, values);
    const auto back = roundtrip(type, values);
    const std::size_t block_bytes = dtype_bytes(dtype(type), 32);
    for (std::size_t b = 0; b < values.size() / 32; ++b) {
      std::int8_t codes[32];
      const float scale = cpu::block_codes(dtype(type), q.data() + b * block_bytes, codes);
      for (int j = 0; j < 32; ++j) ASSERT_EQ(scale * codes[j], back[b * 32 + j]) << model::tensor_type_name(type);
    }
    ++checked;
  }
  EXPECT_EQ(checked, 3);  // q8_0, q5_0, q4_0
}

TEST(QuantizeRoundTrip, ErrorWithinOneStepOfEachBlock) {
  std::mt19937 rng(9);
  std::normal_distribution<float> dist(0.0f, 0.05f);
  std::vector<float> values(32 * 512);
  for (auto& v : values) v = dist(rng);
  for (std::size_t i = 0; i < values.size(); i += 97) values[i] *= 20.0f;  // outliers
  for (TensorType type : kTypes) {
    const auto back = roundtrip(type, values);
    const int levels = type == TensorType::Q8_0 ? 254 : (type == TensorType::Q5_0 || type == TensorType::Q5_1 ? 31 : 15);
    double within_half_step = 0;
    for (std::size_t b = 0; b < values.size(); b += 32) {
      const auto [lo, hi] = std::minmax_element(values.begin() + b, values.begin() + b + 32);
      const bool offset = type == TensorType::Q4_1 || type == TensorType::Q5_1;
      const float amax = std::max(std::fabs(*lo), std::fabs(*hi));
      // q8_0 spreads [-amax, amax] over 254 steps, q4_0 / q5_0 over 16 / 32, q4_1 / q5_1 [min, max] over 15 / 31
      const float step = offset ? (*hi - *lo) / levels : (type == TensorType::Q8_0 ? 2 * amax / levels : amax / ((levels + 1) / 2));
      for (std::size_t j = b; j < b + 32; ++j) {
        const float err = std::fabs(back[j] - values[j]);
        ASSERT_LE(err, 1.01f * step + 1e-3f * amax) << model::tensor_type_name(type) << " value " << j;
        if (err <= 0.51f * step + 1e-3f * amax) ++within_half_step;
      }
    }
    EXPECT_GT(within_half_step / values.size(), 0.99) << model::tensor_type_name(type);
  }
}

TEST(QuantizeRoundTrip, RepresentableValuesComeBackExactly) {
  // Per type a block whose step comes out as exactly 1 (integers over the full code range),
  // then the same block times 0.25 (still exact in the half-precision scale).
  auto pattern = [](TensorType type, int j) -> float {
    switch (type) {
      case TensorType::Q8_0: return j == 31 ? 127.0f : static_cast<float>(7 * j - 100);
      case TensorType::Q4_0: case TensorType::Q4_1: return static_cast<float>(j % 16 - 8);
      default: return static_cast<float>(j - 16);
    }
  };
  for (TensorType type : kTypes) {
    std::vector<float> values(64);
    for (int j = 0; j < 64; ++j) values[j] = (j < 32 ? 1.0f : 0.25f) * pattern(type, j % 32);
    EXPECT_EQ(roundtrip(type, values), values) << model::tensor_type_name(type);
  }
}

}  // namespace
}  // namespace amanuensis::kernels

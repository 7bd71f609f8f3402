// cpu::PanelMatrix, the decoder's weights in their stored precision: every product
// element is the fixed chain of fused multiply-adds its header promises (checked against
// a scalar std::fma chain over the dequantized weights, bit for bit), for float, half and
// int8-code storage, at both panel widths (8: AVX2, 16: AVX-512), so a sequence decodes
// to the same bits on either kind of CPU; row() gives back exactly the stored weights.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/cpu/fast_math.h"
#include "kernels/cpu/panel_matrix.h"
#include "kernels/cpu/quant.h"

namespace amanuensis::kernels::cpu {
namespace {

std::vector<float> random_values(std::size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 0.1f);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

// q8_0 blocks of `values` (a scale of amax / 127 and rounded codes, as ggml makes them).
std::vector<std::byte> q8_0_blocks(const std::vector<float>& values) {
  std::vector<std::byte> out;
  for (std::size_t b = 0; b < values.size(); b += 32) {
    float amax = 0.0f;
    for (std::size_t j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(values[b + j]));
    const std::uint16_t d = float_to_half(amax / 127.0f);
    const float inv = amax > 0 ? 127.0f / amax : 0.0f;
    const auto* dp = reinterpret_cast<const std::byte*>(&d);
    out.insert(out.end(), dp, dp + 2);
    for (std::size_t j = 0; j < 32; ++j)
      out.push_back(static_cast<std::byte>(static_cast<std::int8_t>(std::lround(values[b + j] * inv))));
  }
  return out;
}

struct Case {
  DType dtype;
  std::vector<std::byte> bytes;
};

// 77 output features (not a multiple of any panel width) of 96 inputs, in each storage.
constexpr MatrixShape kShape{77, 96};

std::vector<Case> stored_cases() {
  const auto values = random_values(static_cast<std::size_t>(kShape.elements()), 7);
  std::vector<Case> cases;
  cases.push_back({DType::F32, {}});
  cases.back().bytes.resize(values.size() * 4);
  std::memcpy(cases.back().bytes.data(), values.data(), cases.back().bytes.size());
  std::vector<std::uint16_t> halves(values.size());
  for (std::size_t i = 0; i < values.size(); ++i) halves[i] = float_to_half(values[i]);
  cases.push_back({DType::F16, std::vector<std::byte>(halves.size() * 2)});
  std::memcpy(cases.back().bytes.data(), halves.data(), cases.back().bytes.size());
  cases.push_back({DType::Q8_0, q8_0_blocks(values)});
  return cases;
}

std::vector<std::int64_t> widths_here() {
  std::vector<std::int64_t> widths;
  if (have_avx2_fma_f16c()) widths.push_back(8);
  if (PanelMatrix::widest_panel_width() == 16) widths.push_back(16);
  return widths;
}

TEST(PanelMatrix, EveryElementIsTheFmaChainOverTheStoredWeights) {
  if (!have_avx2_fma_f16c()) GTEST_SKIP() << "this CPU has no AVX2/FMA/F16C: only the portable loop runs here";
  if (PanelMatrix::widest_panel_width() < 16)
    std::printf("note: no AVX-512 on this CPU: 16-wide panels are not checked here\n");
  const auto x = random_values(20 * kShape.cols, 11);
  for (const auto& c : stored_cases()) {
    const StoredMatrix stored{c.dtype, kShape, c.bytes};
    const auto w = to_floats(stored);
    for (std::int64_t width : widths_here()) {
      const PanelMatrix panels(stored, width);
      EXPECT_STREQ(panels.storage(), c.dtype == DType::Q8_0 ? "int8" : c.dtype == DType::F16 ? "f16" : "f32");
      for (std::int64_t m : {1, 2, 5, 6, 7, 13, 20}) {
        const std::int64_t cols_out = (kShape.rows + width - 1) / width * width;
        std::vector<float> out(static_cast<std::size_t>(m * cols_out));
        panels.product(x.data(), m, 0, kShape.rows, out.data(), cols_out);
        for (std::int64_t r = 0; r < m; ++r)
          for (std::int64_t f = 0; f < kShape.rows; ++f) {
            float acc = 0.0f;
            for (std::int64_t i = 0; i < kShape.cols; ++i) acc = std::fma(w[f * kShape.cols + i], x[r * kShape.cols + i], acc);
            ASSERT_EQ(out[r * cols_out + f], acc) << dtype_name(c.dtype) << " width " << width << " m " << m << " row "
                                                  << r << " feature " << f;
          }
      }
    }
  }
}

TEST(PanelMatrix, FeatureRangesAndRowsGiveTheStoredValues) {
  if (!have_avx2_fma_f16c()) GTEST_SKIP() << "this CPU has no AVX2/FMA/F16C: only the portable loop runs here";
  const auto x = random_values(3 * kShape.cols, 5);
  for (const auto& c : stored_cases()) {
    const StoredMatrix stored{c.dtype, kShape, c.bytes};
    const auto w = to_floats(stored);
    for (std::int64_t width : widths_here()) {
      const PanelMatrix panels(stored, width);
      std::vector<float> row(static_cast<std::size_t>(kShape.cols));
      for (std::int64_t f = 0; f < kShape.rows; ++f) {
        panels.row(f, row);
        for (std::int64_t i = 0; i < kShape.cols; ++i) ASSERT_EQ(row[i], w[f * kShape.cols + i]);
      }
      // the whole product, and the same features computed from a later panel on
      std::vector<float> all(static_cast<std::size_t>(3 * 80)), part(static_cast<std::size_t>(3 * 80));
      panels.product(x.data(), 3, 0, kShape.rows, all.data(), 80);
      panels.product(x.data(), 3, 2 * width, kShape.rows, part.data(), 80);
      for (std::int64_t r = 0; r < 3; ++r)
        for (std::int64_t f = 2 * width; f < kShape.rows; ++f) ASSERT_EQ(part[r * 80 + f - 2 * width], all[r * 80 + f]);
      EXPECT_THROW(panels.product(x.data(), 3, 1, kShape.rows, part.data(), 80), std::exception);
    }
  }
}

}  // namespace
}  // namespace amanuensis::kernels::cpu

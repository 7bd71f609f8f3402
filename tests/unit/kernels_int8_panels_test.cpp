// cpu::Int8PanelMatrix, the decoder's products in int8: every element is
// block_int8_linear_reference's, bit for bit, at both panel widths (8: AVX2's vpmaddubsw,
// 16: AVX512_VNNI's vpdpbusd) and for any number of rows and any range of features, so a
// sequence decodes to the same bits on either kind of CPU and beside any other rows; the
// extremes of the codes (-128 weights against +-127 inputs) do not saturate; the blocks
// of a q8_0 file are its own codes, and row() gives back the dequantized weights.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

#include "common/fp16.h"
#include "kernels/cpu/int8.h"
#include "kernels/cpu/int8_panels.h"
#include "kernels/cpu/quant.h"
#include "random_values.h"

namespace amanuensis::kernels::cpu {
namespace {

std::vector<std::int64_t> widths_here() {
  std::vector<std::int64_t> widths{8};
  if (Int8PanelMatrix::widest_panel_width() == 16) {
    widths.push_back(16);
  } else {
    std::printf("note: no AVX512_VNNI on this CPU: 16-wide panels (vpdpbusd) are not checked here\n");
  }
  return widths;
}

StoredMatrix floats(const std::vector<float>& values, MatrixShape shape) { return stored_floats(values, shape); }

// The products of `m` rows against features [first, end) compared with the reference.
void expect_reference_bits(const BlockInt8Matrix& blocks, const std::vector<float>& x, std::int64_t m,
                           std::int64_t width, std::int64_t first) {
  const auto [n, k] = blocks.shape;
  std::vector<float> expect(static_cast<std::size_t>(m * n));
  block_int8_linear_reference({x.data(), static_cast<std::size_t>(m * k)}, m, blocks, {}, expect);
  const Int8PanelMatrix panels(blocks, width);
  QuantizedRows rows;
  rows.assign(x.data(), m, k);
  const std::int64_t ldo = (n - first + width - 1) / width * width;
  std::vector<float> out(static_cast<std::size_t>(m * ldo), -1.0f);
  panels.product(rows, first, n, out.data(), ldo);
  std::int64_t differ = 0;
  for (std::int64_t r = 0; r < m; ++r)
    for (std::int64_t f = first; f < n; ++f) differ += std::memcmp(&out[r * ldo + f - first], &expect[r * n + f], 4) != 0;
  EXPECT_EQ(differ, 0) << n << "x" << k << " width " << width << " m " << m << " from feature " << first;
}

TEST(Int8Panels, ProductsAreTheReferenceBits) {
  for (const MatrixShape shape : {MatrixShape{77, 96}, MatrixShape{300, 384}, MatrixShape{16, 32}, MatrixShape{130, 1536}}) {
    const auto w = random_values(static_cast<std::size_t>(shape.elements()), 7, 0.1f);
    const auto blocks = quantize_blocks_int8(floats(w, shape));
    const auto x = random_values(static_cast<std::size_t>(11 * shape.cols), 11, 1.0f);
    for (std::int64_t width : widths_here())
      for (std::int64_t m : {1, 2, 3, 4, 5, 7, 9, 11}) {
        expect_reference_bits(blocks, x, m, width, 0);
        if (shape.rows > 2 * width) expect_reference_bits(blocks, x, m, width, 2 * width);
      }
  }
}

// A row's result alone and among others: the same bits.
TEST(Int8Panels, ARowsResultDoesNotDependOnItsNeighbours) {
  const MatrixShape shape{200, 384};
  const auto blocks = quantize_blocks_int8(floats(random_values(200 * 384, 3, 0.1f), shape));
  const auto x = random_values(9 * 384, 4, 1.0f);
  for (std::int64_t width : widths_here()) {
    const Int8PanelMatrix panels(blocks, width);
    QuantizedRows all, one;
    all.assign(x.data(), 9, 384);
    std::vector<float> together(9 * 208), alone(208);
    panels.product(all, 0, 200, together.data(), 208);
    for (std::int64_t r = 0; r < 9; ++r) {
      one.assign(x.data() + r * 384, 1, 384);
      panels.product(one, 0, 200, alone.data(), 208);
      EXPECT_EQ(std::memcmp(alone.data(), together.data() + r * 208, 200 * 4), 0) << "width " << width << " row " << r;
    }
  }
}

// q8_0 blocks whose codes are all -128 (a file may hold them; quantizers stop at -127),
// against inputs that quantize to +127 and -127: the largest sums either instruction
// sees, exact.
TEST(Int8Panels, ExtremeCodesDoNotSaturate) {
  const MatrixShape shape{16, 64};
  std::vector<std::byte> bytes;
  const std::uint16_t one = float_to_half(1.0f);
  for (std::int64_t b = 0; b < shape.elements() / kQuantBlock; ++b) {
    const auto* d = reinterpret_cast<const std::byte*>(&one);
    bytes.insert(bytes.end(), d, d + 2);
    bytes.insert(bytes.end(), kQuantBlock, static_cast<std::byte>(0x80));
  }
  const StoredMatrix stored{DType::Q8_0, shape, bytes};
  const auto blocks = quantize_blocks_int8(stored);
  ASSERT_EQ(blocks.codes.front(), -128);
  ASSERT_EQ(blocks.scales.front(), 1.0f);
  std::vector<float> x(2 * 64);
  for (std::int64_t i = 0; i < 64; ++i) {
    x[i] = 1.0f;         // codes 127, scale 1/127
    x[64 + i] = -2.0f;   // codes -127, scale 2/127
  }
  for (std::int64_t width : widths_here()) {
    const Int8PanelMatrix panels(blocks, width);
    QuantizedRows rows;
    rows.assign(x.data(), 2, 64);
    std::vector<float> out(2 * 16);
    panels.product(rows, 0, 16, out.data(), 16);
    for (std::int64_t f = 0; f < 16; ++f) {
      // each block: 32 x (-128 x 127) = -130048, times 1 x (1/127) or (2/127)
      EXPECT_FLOAT_EQ(out[f], -128.0f * 64.0f) << "width " << width;
      EXPECT_FLOAT_EQ(out[16 + f], 2.0f * 128.0f * 64.0f) << "width " << width;
    }
  }
}

TEST(Int8Panels, Q8FilesKeepTheirCodesAndRowsAreTheDequantizedWeights) {
  const MatrixShape shape{40, 96};
  const auto w = random_values(40 * 96, 9, 0.1f);
  const auto from_floats = quantize_blocks_int8(floats(w, shape));
  // the same codes written as a q8_0 file (its scales as halves)
  std::vector<std::byte> bytes;
  for (std::int64_t b = 0; b < shape.elements() / kQuantBlock; ++b) {
    const std::uint16_t d = float_to_half(from_floats.scales[b]);
    const auto* dp = reinterpret_cast<const std::byte*>(&d);
    bytes.insert(bytes.end(), dp, dp + 2);
    for (std::int64_t i = 0; i < kQuantBlock; ++i) bytes.push_back(static_cast<std::byte>(from_floats.codes[b * kQuantBlock + i]));
  }
  const auto from_file = quantize_blocks_int8(StoredMatrix{DType::Q8_0, shape, bytes});
  EXPECT_EQ(from_file.codes, from_floats.codes);
  const auto dequantized = to_floats(StoredMatrix{DType::Q8_0, shape, bytes});
  for (std::int64_t width : widths_here()) {
    const Int8PanelMatrix panels(from_file, width);
    std::vector<float> row(96);
    for (std::int64_t f = 0; f < shape.rows; ++f) {
      panels.row(f, row);
      for (std::int64_t i = 0; i < shape.cols; ++i) ASSERT_EQ(row[i], dequantized[f * 96 + i]) << f << " " << i;
    }
  }
}

TEST(Int8Panels, RefusesWhatItCannotRun) {
  const MatrixShape shape{8, 64};
  const auto blocks = quantize_blocks_int8(floats(random_values(8 * 64, 1, 0.1f), shape));
  EXPECT_THROW(Int8PanelMatrix(blocks, 12), std::exception);
  if (Int8PanelMatrix::widest_panel_width() < 16) {
    EXPECT_THROW(Int8PanelMatrix(blocks, 16), std::exception);
  }
  const std::vector<float> odd(8 * 40, 0.5f);
  EXPECT_FALSE(fits_int8_blocks({8, 40}));
  EXPECT_THROW(quantize_blocks_int8(floats(odd, {8, 40})), std::exception);
  const Int8PanelMatrix panels(blocks, 8);
  QuantizedRows rows;
  const std::vector<float> x(64, 1.0f);
  rows.assign(x.data(), 1, 64);
  std::vector<float> out(16);
  EXPECT_THROW(panels.product(rows, 3, 8, out.data(), 16), std::exception);
}

}  // namespace
}  // namespace amanuensis::kernels::cpu

// kernels/cpu: decoder-step products in int8 (Precision::Int8, RowsHint::Few): a
// BlockInt8Matrix's codes stored once in panels of output features, four inputs of a
// feature side by side, multiplied with input rows quantized by blocks (int8.h) as int32
// dot products: AVX512_VNNI (vpdpbusd, 16 features a vector) or AVX2 (vpmaddubsw, 8),
// plain loops elsewhere. The int32 sums are exact and each output element scales and adds
// its blocks in order with one fused multiply-add each, so every path, panel width, row
// count and split of the features gives block_int8_linear_reference's bits: a row's result
// never depends on the rows beside it (the promise of RowsHint::Few).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "kernels/cpu/int8.h"

namespace amanuensis::kernels::cpu {

// Input rows as the products take them: m rows of k codes, and per block a scale and
// -128 times the block's codes summed (what 16-wide panels' biased weights add).
struct QuantizedRows {
  std::int64_t m = 0, k = 0;
  std::vector<std::int8_t> codes;
  std::vector<float> scales;
  std::vector<std::int32_t> offsets;
  void assign(const float* x, std::int64_t rows, std::int64_t cols);
};

class Int8PanelMatrix {
 public:
  // 16 where the CPU has AVX512_VNNI (and BW), else 8 (AVX2 or plain loops).
  static std::int64_t widest_panel_width();

  // panel_width: 8 or 16 where the CPU runs it (tests compare the two); 0 picks the widest.
  // Throws InternalError for a width the CPU cannot run.
  explicit Int8PanelMatrix(const BlockInt8Matrix& weights, std::int64_t panel_width = 0);

  const MatrixShape& shape() const { return shape_; }
  std::int64_t panel_width() const { return lanes_; }
  std::size_t bytes() const;

  // out[r * ldo + f - first] = the product of input row r and weight row f without bias,
  // for rows r < x.m and features f in [first, end), first a multiple of panel_width();
  // whole panels are written, so out needs (end - first) rounded up to panel_width() columns.
  void product(const QuantizedRows& x, std::int64_t first, std::int64_t end, float* out, std::int64_t ldo) const;

  // The dequantized weights of output feature `row` (code * scale; out: cols values).
  void row(std::int64_t row, std::span<float> out) const;

 private:
  // 16-wide panels hold each code plus 128 (its bits with the top one flipped), the
  // unsigned operand of vpdpbusd
  bool biased() const { return lanes_ == 16; }

  MatrixShape shape_;
  std::int64_t lanes_ = 8, blocks_ = 0;
  // panel p, block b, group g of four inputs: lanes x 4 codes at p * stride_ + (b * 8 + g)
  // * lanes * 4, the four codes of a feature side by side
  std::int64_t stride_ = 0;
  std::vector<std::int8_t> codes_;
  std::vector<float> scales_;  // [panel][block][lane]
};

}  // namespace amanuensis::kernels::cpu

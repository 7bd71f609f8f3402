// kernels/cpu: weights for products with few input rows (decoder steps), stored once in
// panels of output features and read straight from their stored precision: halves for
// f16 files, the int8 codes and block scales of q8_0/q5_0/q4_0 files, float otherwise.
// Every output element is one fixed chain of fused multiply-adds over its inputs, so a
// row's result never depends on the other rows, on how many there are, or on how the
// work is shared out (the promise of RowsHint::Few, kernels/backend.h).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "kernels/tensor.h"

namespace amanuensis::kernels::cpu {

class PanelMatrix {
 public:
  // Output features per panel: one AVX2 vector of floats.
  static constexpr std::int64_t kPanel = 8;

  explicit PanelMatrix(const StoredMatrix& weights);

  const MatrixShape& shape() const { return shape_; }
  std::int64_t panels() const { return (shape_.rows + kPanel - 1) / kPanel; }
  // Which storage the panels use: "f16", "int8" or "f32".
  const char* storage() const;
  std::size_t bytes() const;

  // The raw products out[r * ldo + f] = x[r] . w[p0 * kPanel + f] for rows r < m and the
  // features of panels [p0, p1) (out needs (p1 - p0) * kPanel columns). Each element is
  // acc = 0, then acc = fma(w[f][i], x[r][i], acc) for i = 0, 1, ..., cols - 1, with
  // w[f][i] the stored weight as float (for codes: float(code) * scale, one rounding,
  // which is exactly the dequantized value).
  void product(const float* x, std::int64_t m, std::int64_t p0, std::int64_t p1, float* out, std::int64_t ldo) const;

  // The weights of output feature `row` as float (out: cols values), exactly as stored.
  void row(std::int64_t row, std::span<float> out) const;

 private:
  MatrixShape shape_;
  std::vector<std::uint16_t> f16_;
  std::vector<std::int8_t> codes_;
  std::vector<float> scales_;  // with codes_: [panel][block of 32 inputs][kPanel]
  std::vector<float> f32_;
};

}  // namespace amanuensis::kernels::cpu

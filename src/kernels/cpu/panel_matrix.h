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

// The panels of a PanelMatrix: panel p holds w[p * lanes + j][i] at p * stride + i * lanes
// + j (the last panel padded with zeros), so one vector load gives one input's weight for
// `lanes` features; stride is (cols + 4) * lanes: with cols a multiple of 256, the panels
// a tile reads at once would otherwise all map to the same L1 sets. One of f16, codes
// (with scales: [panel][block of 32 inputs][lanes]) or f32 holds the weights.
struct PanelStore {
  std::int64_t cols = 0, lanes = 8, stride = 0, scale_stride = 0;
  std::vector<std::uint16_t> f16;
  std::vector<std::int8_t> codes;
  std::vector<float> scales;
  std::vector<float> f32;
};

class PanelMatrix {
 public:
  // Panels are 16 features wide where the CPU has AVX-512 (one zmm of floats), else 8;
  // every width divides this, so work shared out in multiples of it splits no panel.
  static constexpr std::int64_t kMaxPanelWidth = 16;

  // panel_width: 8 or 16 where the CPU runs it (tests compare the two); 0 picks the
  // widest this CPU runs. Throws InternalError for a width the CPU cannot run.
  explicit PanelMatrix(const StoredMatrix& weights, std::int64_t panel_width = 0);

  // The widest panels this CPU runs: 16 with AVX-512, else 8.
  static std::int64_t widest_panel_width();

  const MatrixShape& shape() const { return shape_; }
  std::int64_t panel_width() const { return store_.lanes; }
  // Which storage the panels use: "f16", "int8" or "f32".
  const char* storage() const;
  std::size_t bytes() const;

  // The raw products out[r * ldo + f - first] = x[r] . w[f] for rows r < m and features f
  // in [first, end), first a multiple of panel_width(); whole panels are written, so out
  // needs (end - first) rounded up to panel_width() columns. Each element is acc = 0,
  // then acc = fma(w[f][i], x[r][i], acc) for i = 0, 1, ..., cols - 1, with w[f][i] the
  // stored weight as float (for codes: float(code) * scale, one rounding, which is
  // exactly the dequantized value), at every panel width: the same bits on AVX2 and
  // AVX-512.
  void product(const float* x, std::int64_t m, std::int64_t first, std::int64_t end, float* out,
               std::int64_t ldo) const;

  // The weights of output feature `row` as float (out: cols values), exactly as stored.
  void row(std::int64_t row, std::span<float> out) const;

 private:
  MatrixShape shape_;
  PanelStore store_;
};

}  // namespace amanuensis::kernels::cpu

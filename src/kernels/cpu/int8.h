// kernels/cpu: the int8 arithmetic of Precision::Int8, shared by every backend so that
// they quantize alike: symmetric int8 codes with one scale per row (a window's input rows
// as each product runs, a weight matrix's output features once at load), the exact
// int32 product the reference backend computes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "kernels/tensor.h"

namespace amanuensis::kernels::cpu {

// Codes and scales of `rows` rows of `cols` values: scales[r] = max |x[r, :]| / 127 (1 for
// an all-zero row) and codes[r, c] = x[r, c] * (127 / max), rounded to nearest even. The
// same bits on every CPU (AVX-512, AVX2 or plain loops).
void quantize_rows_int8(const float* x, std::int64_t rows, std::int64_t cols, std::int8_t* codes, float* scales);

// A matrix quantized that way, row by row (one scale per output feature).
struct Int8Matrix {
  MatrixShape shape;
  std::vector<std::int8_t> codes;  // rows x cols, row-major
  std::vector<float> scales;       // one per row
};
Int8Matrix quantize_matrix_int8(std::span<const float> values, MatrixShape shape);

// The int8 product as every backend finishes it: for each row r of x (quantized as
// above) and output feature c, y[r, c] = float(sum_k xq[r, k] * wq[c, k]) * w.scales[c]
// * x_scale[r] + bias[c] (bias may be empty), in float, the last step a fused multiply-
// add (std::fma). The reference for
// the engine's int8 kernels, which compute the same int32 sums exactly (with VNNI/AMX).
void int8_linear_reference(std::span<const float> x, std::int64_t m, const Int8Matrix& w, std::span<const float> bias,
                           std::span<float> y);

// Decoder steps in int8 (RowsHint::Few matrices): q8_0's arithmetic, blocks of
// kQuantBlock inputs with a scale each on both sides. A weight matrix's codes are its
// stored ones for q8_0/q5_0/q4_0 files, else each block quantized as quantize_rows_int8
// does a row; an input row is quantized the same way, block by block, as the product runs.
struct BlockInt8Matrix {
  MatrixShape shape;               // cols a multiple of kQuantBlock
  std::vector<std::int8_t> codes;  // rows x cols, row-major
  std::vector<float> scales;       // rows x (cols / kQuantBlock)
};

// The dequantized weights of row `row` (code * scale; out: cols values).
void dequantized_row(const BlockInt8Matrix& m, std::int64_t row, std::span<float> out);

// Whether a matrix of this shape can be held as blocks (its rows are whole blocks).
bool fits_int8_blocks(MatrixShape shape);
BlockInt8Matrix quantize_blocks_int8(const StoredMatrix& weights);

// Input rows quantized by blocks: codes m x k, scales m x (k / kQuantBlock).
void quantize_input_blocks(const float* x, std::int64_t m, std::int64_t k, std::int8_t* codes, float* scales);

// The block int8 product as every backend computes it: acc = 0, then for each block b in
// order acc = fma(float(sum_i xq[r, i] wq[c, i] over the block), w.scale[c, b] * x_scale[r,
// b], acc); y[r, c] = acc + bias[c] (bias may be empty). The int32 sums are exact, so the
// vector kernels (cpu/int8_panels.h) give these bits with any grouping of the products.
void block_int8_linear_reference(std::span<const float> x, std::int64_t m, const BlockInt8Matrix& w,
                                 std::span<const float> bias, std::span<float> y);

}  // namespace amanuensis::kernels::cpu

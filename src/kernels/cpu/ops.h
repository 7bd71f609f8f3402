// kernels/cpu: float32 reference primitives the network is built from (matrix product
// with a row-major weight, layer norm, GELU, attention). Written for clarity and
// auto-vectorisation; the optimised paths plug in beside them.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "kernels/backend.h"

namespace amanuensis::kernels::cpu {

// A weight matrix in PyTorch layout: `rows` output features of `cols` inputs each.
struct DenseMatrix {
  std::int64_t rows = 0;
  std::int64_t cols = 0;
  std::vector<float> values;  // rows * cols, row-major

  std::span<const float> row(std::int64_t r) const { return {values.data() + r * cols, static_cast<std::size_t>(cols)}; }
};

float dot(const float* a, const float* b, std::int64_t n);

// y[m][n] = sum_k x[m][k] * w[n][k] + bias[n]   (x: m x w.cols, y: m x w.rows)
// `bias` may be empty.
void linear(std::span<const float> x, std::int64_t m, const DenseMatrix& w, std::span<const float> bias,
            std::span<float> y);

// Normalises each of the `rows` rows of x (length gamma.size()) in place, eps 1e-5.
void layer_norm(std::span<float> x, std::int64_t rows, std::span<const float> gamma, std::span<const float> beta);

// Exact GELU, x * Phi(x), in place (what PyTorch's nn.GELU computes).
void gelu(std::span<float> x);

void add_in_place(std::span<float> x, std::span<const float> y);

// Numerically stable softmax of one row, in place.
void softmax(std::span<float> row);

// Multi-head scaled dot-product attention for one batch item.
// q: n_q x d, k and v: n_kv x d (rows of all heads, head h in columns [h*hd, (h+1)*hd)).
// Query i may attend to keys [0, n_kv) when `causal_offset` < 0, else to [0, causal_offset + i].
// out: n_q x d.
void attention(std::span<const float> q, std::int64_t n_q, std::span<const float> k, std::span<const float> v,
               std::int64_t n_kv, int n_head, std::int64_t d, std::int64_t causal_offset, std::span<float> out);

// Consecutive key and value rows of one block of a paged KV cache: `rows` rows of each,
// a row's features contiguous, rows `stride` floats apart (the stride is the caller's).
struct KvRows {
  const float* k = nullptr;
  const float* v = nullptr;
  std::int64_t rows = 0;
};

// The first n_kv rows of a backend call's KV blocks as KvRows (rows d floats apart).
// Throws InternalError when the blocks hold fewer rows, or keys and values differ in size.
void kv_rows(std::span<const KvBlockView> blocks, std::int64_t n_kv, std::int64_t d, std::vector<KvRows>& out);

// attention() with keys and values in blocks: positions [0, n_kv) are the rows of
// `blocks` in order, each d floats. The same arithmetic, in the same order, as attention()
// over those rows made contiguous, so the same bits.
void attention_paged(std::span<const float> q, std::int64_t n_q, std::span<const KvRows> blocks, std::int64_t n_kv,
                     int n_head, std::int64_t d, std::int64_t causal_offset, std::span<float> out);

}  // namespace amanuensis::kernels::cpu

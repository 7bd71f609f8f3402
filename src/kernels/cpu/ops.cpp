#include "kernels/cpu/ops.h"

#include <algorithm>
#include <cmath>

#include "common/error.h"
#include "kernels/cpu/quant.h"
#include "kernels/cpu/thread_pool.h"

// The hot loops are cloned for AVX-512 and AVX2 and picked at load time from the CPU's
// features, so one binary runs everywhere and still uses the wide units.
#define AMANUENSIS_MULTIVERSION __attribute__((target_clones("avx512f", "avx2", "default")))

namespace amanuensis::kernels::cpu {
namespace {

constexpr int kLanes = 16;  // independent partial sums, so the compiler may vectorise the reduction

}  // namespace

AMANUENSIS_MULTIVERSION
float dot(const float* a, const float* b, std::int64_t n) {
  float partial[kLanes] = {};
  std::int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) partial[j] += a[i + j] * b[i + j];
  }
  float sum = 0.0f;
  for (; i < n; ++i) sum += a[i] * b[i];
  for (float p : partial) sum += p;
  return sum;
}

namespace {

// Four rows of x against four rows of w at once: each weight row is loaded once per four
// inputs, which is what keeps the encoder's large products from being memory-bound.
AMANUENSIS_MULTIVERSION
void dot_4x4(const float* x, std::int64_t x_stride, const float* w, std::int64_t w_stride, std::int64_t k,
             float out[4][4]) {
  float acc[4][4][8] = {};
  std::int64_t i = 0;
  for (; i + 8 <= k; i += 8) {
    for (int r = 0; r < 4; ++r)
      for (int c = 0; c < 4; ++c)
        for (int j = 0; j < 8; ++j) acc[r][c][j] += x[r * x_stride + i + j] * w[c * w_stride + i + j];
  }
  for (int r = 0; r < 4; ++r)
    for (int c = 0; c < 4; ++c) {
      float s = 0.0f;
      for (std::int64_t t = i; t < k; ++t) s += x[r * x_stride + t] * w[c * w_stride + t];
      for (int j = 0; j < 8; ++j) s += acc[r][c][j];
      out[r][c] = s;
    }
}

void linear_rows(const float* x, std::int64_t row_begin, std::int64_t row_end, const DenseMatrix& w,
                 std::span<const float> bias, float* y) {
  const std::int64_t k = w.cols, n = w.rows;
  std::int64_t r = row_begin;
  for (; r + 4 <= row_end; r += 4) {
    std::int64_t c = 0;
    for (; c + 4 <= n; c += 4) {
      float out[4][4];
      dot_4x4(x + r * k, k, w.values.data() + c * k, k, k, out);
      for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) y[(r + i) * n + c + j] = out[i][j];
    }
    for (; c < n; ++c)
      for (int i = 0; i < 4; ++i) y[(r + i) * n + c] = dot(x + (r + i) * k, w.values.data() + c * k, k);
  }
  for (; r < row_end; ++r)
    for (std::int64_t c = 0; c < n; ++c) y[r * n + c] = dot(x + r * k, w.values.data() + c * k, k);
  if (!bias.empty())
    for (std::int64_t rr = row_begin; rr < row_end; ++rr)
      for (std::int64_t c = 0; c < n; ++c) y[rr * n + c] += bias[c];
}

}  // namespace

void linear(std::span<const float> x, std::int64_t m, const DenseMatrix& w, std::span<const float> bias,
            std::span<float> y) {
  if (static_cast<std::int64_t>(x.size()) < m * w.cols || static_cast<std::int64_t>(y.size()) < m * w.rows ||
      (!bias.empty() && static_cast<std::int64_t>(bias.size()) != w.rows)) {
    throw InternalError("linear called with mismatched sizes");
  }
  if (m >= 8) {
    // split rows across threads, in multiples of four
    const std::int64_t quads = (m + 3) / 4;
    parallel_for(quads, 2, [&](std::int64_t b, std::int64_t e) {
      linear_rows(x.data(), b * 4, std::min(m, e * 4), w, bias, y.data());
    });
  } else {
    // few rows (decoder steps): split the output features instead
    parallel_for(w.rows, 256, [&](std::int64_t b, std::int64_t e) {
      for (std::int64_t r = 0; r < m; ++r)
        for (std::int64_t c = b; c < e; ++c) {
          y[r * w.rows + c] = dot(x.data() + r * w.cols, w.values.data() + c * w.cols, w.cols) + (bias.empty() ? 0.0f : bias[c]);
        }
    });
  }
}

void layer_norm(std::span<float> x, std::int64_t rows, std::span<const float> gamma, std::span<const float> beta) {
  const auto d = static_cast<std::int64_t>(gamma.size());
  for (std::int64_t r = 0; r < rows; ++r) {
    float* v = x.data() + r * d;
    double mean = 0.0;
    for (std::int64_t i = 0; i < d; ++i) mean += v[i];
    mean /= d;
    double var = 0.0;
    for (std::int64_t i = 0; i < d; ++i) var += (v[i] - mean) * (v[i] - mean);
    var /= d;
    const auto inv = static_cast<float>(1.0 / std::sqrt(var + 1e-5));
    const auto mu = static_cast<float>(mean);
    for (std::int64_t i = 0; i < d; ++i) v[i] = (v[i] - mu) * inv * gamma[i] + beta[i];
  }
}

void gelu(std::span<float> x) {
  constexpr float kInvSqrt2 = 0.70710678118654752f;
  for (float& v : x) v = 0.5f * v * (1.0f + std::erf(v * kInvSqrt2));
}

void add_in_place(std::span<float> x, std::span<const float> y) {
  for (std::size_t i = 0; i < x.size(); ++i) x[i] += y[i];
}

void softmax(std::span<float> row) {
  float max = -INFINITY;
  for (float v : row) max = std::max(max, v);
  double sum = 0.0;
  for (float& v : row) {
    v = std::exp(v - max);
    sum += v;
  }
  const auto inv = static_cast<float>(1.0 / sum);
  for (float& v : row) v *= inv;
}

namespace {

AMANUENSIS_MULTIVERSION
void axpy(float a, const float* x, float* y, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

// One head, a range of queries: scores of a query row against every visible key, then
// the weighted sum of values, keys in position order across the blocks (`column`: the
// head's first feature in a row). Only one row of scores exists at a time.
void attend_head(const float* q, std::int64_t q_begin, std::int64_t q_end, std::span<const KvRows> blocks,
                 std::int64_t column, std::int64_t n_kv, std::int64_t d, std::int64_t hd, std::int64_t causal_offset,
                 float scale, float* out) {
  std::vector<float> scores(static_cast<std::size_t>(n_kv));
  for (std::int64_t i = q_begin; i < q_end; ++i) {
    const std::int64_t visible = causal_offset < 0 ? n_kv : std::min(n_kv, causal_offset + i + 1);
    const float* qi = q + i * d;
    std::int64_t j = 0;
    for (const auto& block : blocks)
      for (std::int64_t r = 0; r < block.rows && j < visible; ++r, ++j)
        scores[j] = dot(qi, block.k + r * d + column, hd) * scale;
    softmax({scores.data(), static_cast<std::size_t>(visible)});
    float* oi = out + i * d;
    std::fill(oi, oi + hd, 0.0f);
    j = 0;
    for (const auto& block : blocks)
      for (std::int64_t r = 0; r < block.rows && j < visible; ++r, ++j) axpy(scores[j], block.v + r * d + column, oi, hd);
  }
}

}  // namespace

void kv_rows(std::span<const KvBlockView> blocks, std::int64_t n_kv, std::int64_t d, std::vector<KvRows>& out) {
  out.clear();
  std::int64_t left = n_kv;
  for (const auto& block : blocks) {
    if (left == 0) break;
    if (block.values.size() != block.keys.size()) throw InternalError("a KV block of mismatched keys and values");
    const std::int64_t rows = std::min(left, static_cast<std::int64_t>(block.keys.size()) / d);
    out.push_back({block.keys.data(), block.values.data(), rows});
    left -= rows;
  }
  if (left != 0) throw InternalError("KV blocks hold fewer positions than attention was asked for");
}

void attention_paged(std::span<const float> q, std::int64_t n_q, std::span<const KvRows> blocks, std::int64_t n_kv,
                     int n_head, std::int64_t d, std::int64_t causal_offset, std::span<float> out) {
  const std::int64_t hd = d / n_head;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  const std::int64_t work = n_q * n_head;
  parallel_for(work, n_kv * n_q >= 4096 ? 2 : work + 1, [&](std::int64_t b, std::int64_t e) {
    // work item = (head, query); contiguous ranges keep one head's keys hot in cache
    for (std::int64_t item = b; item < e;) {
      const std::int64_t h = item / n_q;
      const std::int64_t i0 = item % n_q;
      const std::int64_t i1 = std::min(n_q, i0 + (e - item));
      attend_head(q.data() + h * hd, i0, i1, blocks, h * hd, n_kv, d, hd, causal_offset, scale, out.data() + h * hd);
      item += i1 - i0;
    }
  });
}

void attention(std::span<const float> q, std::int64_t n_q, std::span<const float> k, std::span<const float> v,
               std::int64_t n_kv, int n_head, std::int64_t d, std::int64_t causal_offset, std::span<float> out) {
  const KvRows all{k.data(), v.data(), n_kv};
  attention_paged(q, n_q, {&all, 1}, n_kv, n_head, d, causal_offset, out);
}

}  // namespace amanuensis::kernels::cpu

#include "kernels/cpu/fast_math.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#define AMANUENSIS_MULTIVERSION __attribute__((target_clones("avx512f", "avx2", "default")))

namespace amanuensis::kernels::cpu {
namespace {

constexpr int kLanes = 16;

// exp(x) = 2^n * exp(r), r = x - n ln2 in [-ln2/2, ln2/2], exp(r) by a degree-6 Taylor
// polynomial (relative error below 2e-7). Written branch-free so loops vectorise.
inline float exp_poly(float x) {
  const bool tiny = x < -87.3f;
  x = std::clamp(x, -87.3f, 88.3f);
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  float r = x - n * 0.693145751953125f;
  r = r - n * 1.42860682030941723212e-6f;
  float p = 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const auto bits = static_cast<std::uint32_t>(static_cast<std::int32_t>(n) + 127) << 23;
  const float result = p * std::bit_cast<float>(bits);
  return tiny ? 0.0f : result;
}

AMANUENSIS_MULTIVERSION
float row_max(const float* x, std::int64_t n) {
  float m[kLanes];
  for (int j = 0; j < kLanes; ++j) m[j] = -INFINITY;
  std::int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) m[j] = x[i + j] > m[j] ? x[i + j] : m[j];
  float r = -INFINITY;
  for (; i < n; ++i) r = std::max(r, x[i]);
  for (float v : m) r = std::max(r, v);
  return r;
}

// x[i] = exp(x[i] - shift); returns the sum.
float exp_shift_sum_scalar(float* x, std::int64_t n, float shift) {
  float r = 0.0f;
  for (std::int64_t i = 0; i < n; ++i) {
    x[i] = exp_poly(x[i] - shift);
    r += x[i];
  }
  return r;
}

#if defined(__x86_64__)
// exp_poly on eight lanes.
__attribute__((target("avx2,fma"))) inline __m256 exp_poly8(__m256 x) {
  const __m256 tiny = _mm256_cmp_ps(x, _mm256_set1_ps(-87.3f), _CMP_LT_OQ);
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.3f));
  const __m256 n = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145751953125f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.42860682030941723212e-6f), r);
  __m256 p = _mm256_set1_ps(1.0f / 720.0f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  const __m256 result = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
  return _mm256_andnot_ps(tiny, result);
}

__attribute__((target("avx2,fma"))) float exp_shift_sum_avx2(float* x, std::int64_t n, float shift) {
  const __m256 s = _mm256_set1_ps(shift);
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  std::int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256 e0 = exp_poly8(_mm256_sub_ps(_mm256_loadu_ps(x + i), s));
    const __m256 e1 = exp_poly8(_mm256_sub_ps(_mm256_loadu_ps(x + i + 8), s));
    _mm256_storeu_ps(x + i, e0);
    _mm256_storeu_ps(x + i + 8, e1);
    acc0 = _mm256_add_ps(acc0, e0);
    acc1 = _mm256_add_ps(acc1, e1);
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, _mm256_add_ps(acc0, acc1));
  float r = exp_shift_sum_scalar(x + i, n - i, shift);
  for (float v : lanes) r += v;
  return r;
}
#endif

float exp_shift_sum(float* x, std::int64_t n, float shift) {
#if defined(__x86_64__)
  static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (avx2) return exp_shift_sum_avx2(x, n, shift);
#endif
  return exp_shift_sum_scalar(x, n, shift);
}

AMANUENSIS_MULTIVERSION
void scale_row(float* x, std::int64_t n, float a) {
  for (std::int64_t i = 0; i < n; ++i) x[i] *= a;
}

// scores[r][j] = scale * q_r . k_j for the keys each query sees; keys outermost, so a key
// row is loaded once for every query. Eight partial sums per dot product in a fixed order.
AMANUENSIS_MULTIVERSION
void head_scores(const float* q, std::int64_t n_q, const float* k, std::int64_t stride, std::int64_t hd,
                 std::int64_t n_kv, const std::int64_t* visible, float scale, float* scores) {
  const std::int64_t hd8 = hd / 8 * 8;
  for (std::int64_t j = 0; j < n_kv; ++j) {
    const float* kj = k + j * stride;
    for (std::int64_t r = 0; r < n_q; ++r) {
      if (j >= visible[r]) continue;
      const float* qr = q + r * stride;
      float part[8] = {};
      for (std::int64_t i = 0; i < hd8; i += 8)
        for (int l = 0; l < 8; ++l) part[l] += qr[i + l] * kj[i + l];
      float dot = ((part[0] + part[4]) + (part[1] + part[5])) + ((part[2] + part[6]) + (part[3] + part[7]));
      for (std::int64_t i = hd8; i < hd; ++i) dot += qr[i] * kj[i];
      scores[r * n_kv + j] = dot * scale;
    }
  }
}

// out_r = sum_j p[r][j] v_j, keys outermost (value rows read once), in key order.
AMANUENSIS_MULTIVERSION
void head_values(const float* p, std::int64_t n_q, const float* v, std::int64_t stride, std::int64_t hd,
                 std::int64_t n_kv, const std::int64_t* visible, float* out) {
  for (std::int64_t r = 0; r < n_q; ++r)
    for (std::int64_t i = 0; i < hd; ++i) out[r * stride + i] = 0.0f;
  for (std::int64_t j = 0; j < n_kv; ++j) {
    const float* vj = v + j * stride;
    for (std::int64_t r = 0; r < n_q; ++r) {
      if (j >= visible[r]) continue;
      const float pr = p[r * n_kv + j];
      float* o = out + r * stride;
      for (std::int64_t i = 0; i < hd; ++i) o[i] += pr * vj[i];
    }
  }
}

#if defined(__x86_64__)
// head_scores for head sizes that are multiples of 8: one vector accumulator per dot
// product, in the same order for every query.
__attribute__((target("avx2,fma")))
void head_scores_avx2(const float* q, std::int64_t n_q, const float* k, std::int64_t stride, std::int64_t hd,
                      std::int64_t n_kv, const std::int64_t* visible, float scale, float* scores) {
  for (std::int64_t j = 0; j < n_kv; ++j) {
    const float* kj = k + j * stride;
    for (std::int64_t r = 0; r < n_q; ++r) {
      if (j >= visible[r]) continue;
      const float* qr = q + r * stride;
      __m256 acc = _mm256_mul_ps(_mm256_loadu_ps(qr), _mm256_loadu_ps(kj));
      for (std::int64_t i = 8; i < hd; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(qr + i), _mm256_loadu_ps(kj + i), acc);
      __m128 h = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
      h = _mm_add_ps(h, _mm_movehl_ps(h, h));
      h = _mm_add_ss(h, _mm_movehdup_ps(h));
      scores[r * n_kv + j] = _mm_cvtss_f32(h) * scale;
    }
  }
}

#endif

}  // namespace

AMANUENSIS_MULTIVERSION
void exp_fast(const float* x, float* y, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) y[i] = exp_poly(x[i]);
}

namespace {
// The dot products of a head: AVX2/FMA where the head size allows, else the portable loop.
void scores_of_head(const float* q, std::int64_t n_q, const float* k, std::int64_t stride, std::int64_t hd,
                    std::int64_t n_kv, const std::int64_t* visible, float scale, float* scores) {
#if defined(__x86_64__)
  static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (avx2 && hd % 8 == 0) return head_scores_avx2(q, n_q, k, stride, hd, n_kv, visible, scale, scores);
#endif
  head_scores(q, n_q, k, stride, hd, n_kv, visible, scale, scores);
}
}  // namespace

void attention_head_few_queries(const float* q, std::int64_t n_q, const float* k, const float* v, std::int64_t n_kv,
                                std::int64_t stride, std::int64_t hd, std::int64_t causal_offset, float* out) {
  thread_local std::vector<float> scores;
  thread_local std::vector<std::int64_t> visible;
  scores.resize(static_cast<std::size_t>(n_q * n_kv));
  visible.resize(static_cast<std::size_t>(n_q));
  for (std::int64_t r = 0; r < n_q; ++r) visible[r] = causal_offset < 0 ? n_kv : std::min(n_kv, causal_offset + r + 1);
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  scores_of_head(q, n_q, k, stride, hd, n_kv, visible.data(), scale, scores.data());
  for (std::int64_t r = 0; r < n_q; ++r) softmax_fast(scores.data() + r * n_kv, visible[r], visible[r]);
  head_values(scores.data(), n_q, v, stride, hd, n_kv, visible.data(), out);
}

void softmax_fast(float* row, std::int64_t n, std::int64_t n_zero) {
  if (n > 0) {
    const float max = row_max(row, n);
    const float sum = exp_shift_sum(row, n, max);
    scale_row(row, n, 1.0f / sum);
  }
  for (std::int64_t i = n; i < n_zero; ++i) row[i] = 0.0f;
}

}  // namespace amanuensis::kernels::cpu

#include "kernels/cpu/fast_math.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <vector>

#include "common/cpu_features.h"
#include "common/fp16.h"

#include "kernels/cpu/intrinsics.h"
#include "kernels/cpu/vector_math.h"

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

// exp_poly on sixteen lanes.
__attribute__((target("avx512f"))) inline __m512 exp_poly16(__m512 x) {
  const __mmask16 tiny = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.3f), _CMP_LT_OQ);
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.3f)), _mm512_set1_ps(88.3f));
  const __m512 n = _mm512_roundscale_ps(_mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504088896341f), _mm512_set1_ps(0.5f)),
                                        _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860682030941723212e-6f), r);
  __m512 p = _mm512_set1_ps(1.0f / 720.0f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  const __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
  return _mm512_maskz_mul_ps(static_cast<__mmask16>(~tiny), p, _mm512_castsi512_ps(e));
}

// Sixteen floats to bf16, rounded to nearest even (finite inputs).
__attribute__((target("avx512f"))) inline __m256i to_bf16_16(__m512 x) {
  const __m512i u = _mm512_castps_si512(x);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  const __m512i rounded = _mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)));
  return _mm512_cvtepi32_epi16(_mm512_srli_epi32(rounded, 16));
}
#endif

#if defined(__x86_64__)
// exp_shift_sum_avx2 on sixteen lanes (the softmax of encoder attention: 1500 x 1500
// exponentials per head and layer).
__attribute__((target("avx512f"))) float exp_shift_sum_avx512(float* x, std::int64_t n, float shift) {
  const __m512 s = _mm512_set1_ps(shift);
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  std::int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m512 e0 = exp_poly16(_mm512_sub_ps(_mm512_loadu_ps(x + i), s));
    const __m512 e1 = exp_poly16(_mm512_sub_ps(_mm512_loadu_ps(x + i + 16), s));
    _mm512_storeu_ps(x + i, e0);
    _mm512_storeu_ps(x + i + 16, e1);
    acc0 = _mm512_add_ps(acc0, e0);
    acc1 = _mm512_add_ps(acc1, e1);
  }
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, _mm512_add_ps(acc0, acc1));
  float r = exp_shift_sum_scalar(x + i, n - i, shift);
  for (float v : lanes) r += v;
  return r;
}
#endif

// The sum of exp(x[i] - shift), in double.
double exp_shift_sum_double_scalar(const float* x, std::int64_t n, float shift) {
  double r = 0.0;
  for (std::int64_t i = 0; i < n; ++i) r += exp_poly(x[i] - shift);
  return r;
}

#if defined(__x86_64__)
__attribute__((target("avx2,fma"))) double exp_shift_sum_double_avx2(const float* x, std::int64_t n, float shift) {
  const __m256 s = _mm256_set1_ps(shift);
  __m256d acc0 = _mm256_setzero_pd(), acc1 = _mm256_setzero_pd();
  std::int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 e = exp_poly8(_mm256_sub_ps(_mm256_loadu_ps(x + i), s));
    acc0 = _mm256_add_pd(acc0, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
    acc1 = _mm256_add_pd(acc1, _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
  }
  alignas(32) double lanes[4];
  _mm256_store_pd(lanes, _mm256_add_pd(acc0, acc1));
  double r = exp_shift_sum_double_scalar(x + i, n - i, shift);
  for (double v : lanes) r += v;
  return r;
}

__attribute__((target("avx512f"))) double exp_shift_sum_double_avx512(const float* x, std::int64_t n, float shift) {
  const __m512 s = _mm512_set1_ps(shift);
  __m512d acc0 = _mm512_setzero_pd(), acc1 = _mm512_setzero_pd();
  std::int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 e = exp_poly16(_mm512_sub_ps(_mm512_loadu_ps(x + i), s));
    acc0 = _mm512_add_pd(acc0, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
    acc1 = _mm512_add_pd(acc1, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(e), 1))));
  }
  alignas(64) double lanes[8];
  _mm512_store_pd(lanes, _mm512_add_pd(acc0, acc1));
  double r = exp_shift_sum_double_scalar(x + i, n - i, shift);
  for (double v : lanes) r += v;
  return r;
}
#endif

float exp_shift_sum(float* x, std::int64_t n, float shift) {
#if defined(__x86_64__)
  if (cpu_features().avx512f) return exp_shift_sum_avx512(x, n, shift);
  if (cpu_features().avx2 && cpu_features().fma) return exp_shift_sum_avx2(x, n, shift);
#endif
  return exp_shift_sum_scalar(x, n, shift);
}

AMANUENSIS_MULTIVERSION
void scale_row(float* x, std::int64_t n, float a) {
  for (std::int64_t i = 0; i < n; ++i) x[i] *= a;
}

// scores[r * score_stride + j] = scale * q_r . k_j for the keys each query sees; keys
// outermost, so a key row is loaded once for every query. Eight partial sums per dot
// product in a fixed order.
AMANUENSIS_MULTIVERSION
void head_scores(const float* q, std::int64_t n_q, const float* k, std::int64_t stride, std::int64_t hd,
                 std::int64_t n_kv, const std::int64_t* visible, float scale, float* scores, std::int64_t score_stride) {
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
      scores[r * score_stride + j] = dot * scale;
    }
  }
}

// out_r += sum_j p[r * score_stride + j] v_j, keys outermost (value rows read once), in
// key order; the caller zeroes out first (zero_rows), then adds block by block.
AMANUENSIS_MULTIVERSION
void head_values_add(const float* p, std::int64_t n_q, const float* v, std::int64_t stride, std::int64_t hd,
                     std::int64_t n_kv, const std::int64_t* visible, float* out, std::int64_t score_stride) {
  for (std::int64_t j = 0; j < n_kv; ++j) {
    const float* vj = v + j * stride;
    for (std::int64_t r = 0; r < n_q; ++r) {
      if (j >= visible[r]) continue;
      const float pr = p[r * score_stride + j];
      float* o = out + r * stride;
      for (std::int64_t i = 0; i < hd; ++i) o[i] += pr * vj[i];
    }
  }
}

void zero_rows(float* out, std::int64_t n_q, std::int64_t stride, std::int64_t hd) {
  for (std::int64_t r = 0; r < n_q; ++r)
    for (std::int64_t i = 0; i < hd; ++i) out[r * stride + i] = 0.0f;
}

#if defined(__x86_64__)
// head_scores for head sizes that are multiples of 8: one vector accumulator per dot
// product, in the same order for every query.
__attribute__((target("avx2,fma")))
void head_scores_avx2(const float* q, std::int64_t n_q, const float* k, std::int64_t stride, std::int64_t hd,
                      std::int64_t n_kv, const std::int64_t* visible, float scale, float* scores,
                      std::int64_t score_stride) {
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
      scores[r * score_stride + j] = _mm_cvtss_f32(h) * scale;
    }
  }
}

#endif

}  // namespace

namespace {
// GELU through erfc: Phi(x) * 2 = erfc(-x / sqrt 2), with erfc(z) = t exp(-z^2 + poly(t)),
// t = 1 / (1 + z/2) for z = |x| / sqrt 2 >= 0, and 2 - erfc(z) for x >= 0.
constexpr float kGeluPoly[] = {0.17087277f,  -0.82215223f, 1.48851587f, -1.13520398f, 0.27886807f,
                               -0.18628806f, 0.09678418f,  0.37409196f, 1.00002368f,  -1.26551223f};

inline float gelu_one(float x) {
  const float z = std::abs(x) * 0.70710678118654752f;
  const float t = 1.0f / (1.0f + 0.5f * z);
  float p = kGeluPoly[0];
  for (int i = 1; i < 10; ++i) p = p * t + kGeluPoly[i];
  const float erfc = t * exp_poly(p - z * z);
  return 0.5f * x * (x >= 0.0f ? 2.0f - erfc : erfc);
}

#if defined(__x86_64__)
__attribute__((target("avx2,fma"))) void gelu_avx2(float* x, std::int64_t n) {
  const __m256 sign = _mm256_set1_ps(-0.0f), half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.0f);
  std::int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    const __m256 z = _mm256_mul_ps(_mm256_andnot_ps(sign, v), _mm256_set1_ps(0.70710678118654752f));
    const __m256 t = _mm256_div_ps(one, _mm256_fmadd_ps(half, z, one));
    __m256 p = _mm256_set1_ps(kGeluPoly[0]);
    for (int k = 1; k < 10; ++k) p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(kGeluPoly[k]));
    const __m256 erfc = _mm256_mul_ps(t, exp_poly8(_mm256_fnmadd_ps(z, z, p)));
    const __m256 positive = _mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_GE_OQ);
    const __m256 phi2 = _mm256_blendv_ps(erfc, _mm256_sub_ps(_mm256_set1_ps(2.0f), erfc), positive);
    _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_mul_ps(half, v), phi2));
  }
  for (; i < n; ++i) x[i] = gelu_one(x[i]);
}

__attribute__((target("avx512f"))) void gelu_avx512(float* x, std::int64_t n) {
  const __m512 half = _mm512_set1_ps(0.5f), one = _mm512_set1_ps(1.0f);
  std::int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 v = _mm512_loadu_ps(x + i);
    const __m512 z = _mm512_mul_ps(_mm512_abs_ps(v), _mm512_set1_ps(0.70710678118654752f));
    const __m512 t = _mm512_div_ps(one, _mm512_fmadd_ps(half, z, one));
    __m512 p = _mm512_set1_ps(kGeluPoly[0]);
    for (int k = 1; k < 10; ++k) p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(kGeluPoly[k]));
    const __m512 erfc = _mm512_mul_ps(t, exp_poly16(_mm512_fnmadd_ps(z, z, p)));
    const __mmask16 positive = _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_GE_OQ);
    const __m512 phi2 = _mm512_mask_sub_ps(erfc, positive, _mm512_set1_ps(2.0f), erfc);
    _mm512_storeu_ps(x + i, _mm512_mul_ps(_mm512_mul_ps(half, v), phi2));
  }
  for (; i < n; ++i) x[i] = gelu_one(x[i]);
}

__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"))) float softmax_numerators_avx512(
    const float* row, std::int64_t n, std::int64_t n_zero, std::uint16_t* probs) {
  __m512 m = _mm512_set1_ps(-INFINITY);
  std::int64_t i = 0;
  for (; i + 16 <= n; i += 16) m = _mm512_max_ps(m, _mm512_loadu_ps(row + i));
  float max = _mm512_reduce_max_ps(m);
  for (; i < n; ++i) max = std::max(max, row[i]);
  const __m512 shift = _mm512_set1_ps(max);
  __m512 sum = _mm512_setzero_ps();
  for (i = 0; i < n; i += 16) {
    const __mmask16 lanes = n - i >= 16 ? 0xffff : static_cast<__mmask16>((1u << (n - i)) - 1);
    const __m512 e = _mm512_maskz_mov_ps(lanes, exp_nonpositive16(_mm512_sub_ps(_mm512_maskz_loadu_ps(lanes, row + i), shift)));
    _mm256_mask_storeu_epi16(probs + i, lanes, reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(e)));
    sum = _mm512_add_ps(sum, e);
  }
  for (i = n; i < n_zero; ++i) probs[i] = 0;
  return _mm512_reduce_add_ps(sum);
}
#endif

float softmax_numerators_portable(const float* row, std::int64_t n, std::int64_t n_zero, std::uint16_t* probs) {
  float max = -INFINITY;
  for (std::int64_t i = 0; i < n; ++i) max = std::max(max, row[i]);
  float sum = 0.0f;
  for (std::int64_t i = 0; i < n; ++i) {
    const float e = exp_poly(row[i] - max);
    probs[i] = float_to_bf16_bits(e);
    sum += e;
  }
  for (std::int64_t i = n; i < n_zero; ++i) probs[i] = 0;
  return sum;
}
}  // namespace

float softmax_numerators_bf16(const float* row, std::int64_t n, std::int64_t n_zero, std::uint16_t* probs) {
#if defined(__x86_64__)
  if (cpu_features().avx512_core() && cpu_features().avx512bf16) return softmax_numerators_avx512(row, n, n_zero, probs);
#endif
  return softmax_numerators_portable(row, n, n_zero, probs);
}

void gelu_fast(float* x, std::int64_t n) {
#if defined(__x86_64__)
  if (cpu_features().avx512f) return gelu_avx512(x, n);
  if (cpu_features().avx2 && cpu_features().fma) return gelu_avx2(x, n);
#endif
  for (std::int64_t i = 0; i < n; ++i) x[i] = gelu_one(x[i]);
}

namespace {
AMANUENSIS_MULTIVERSION
float lane_sum(const float* x, std::int64_t n) {
  float acc[kLanes] = {};
  std::int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) acc[j] += x[i + j];
  float r = 0.0f;
  for (; i < n; ++i) r += x[i];
  for (float a : acc) r += a;
  return r;
}

AMANUENSIS_MULTIVERSION
float lane_sum_of_squares(const float* x, std::int64_t n, float mean) {
  float acc[kLanes] = {};
  std::int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) acc[j] += (x[i + j] - mean) * (x[i + j] - mean);
  float r = 0.0f;
  for (; i < n; ++i) r += (x[i] - mean) * (x[i] - mean);
  for (float a : acc) r += a;
  return r;
}

AMANUENSIS_MULTIVERSION
void normalise(float* x, std::int64_t n, float mean, float inv, const float* gamma, const float* beta) {
  for (std::int64_t i = 0; i < n; ++i) x[i] = (x[i] - mean) * inv * gamma[i] + beta[i];
}
}  // namespace

void layer_norm_fast(float* x, std::int64_t rows, std::int64_t d, const float* gamma, const float* beta) {
  for (std::int64_t r = 0; r < rows; ++r) {
    float* v = x + r * d;
    const float mean = lane_sum(v, d) / static_cast<float>(d);
    const float var = lane_sum_of_squares(v, d, mean) / static_cast<float>(d);
    normalise(v, d, mean, 1.0f / std::sqrt(var + 1e-5f), gamma, beta);
  }
}

double log_sum_exp(const float* x, std::int64_t n) {
  const float max = row_max(x, n);
  if (max == -INFINITY) return -INFINITY;
#if defined(__x86_64__)
  if (cpu_features().avx512f) return max + std::log(exp_shift_sum_double_avx512(x, n, max));
  if (cpu_features().avx2 && cpu_features().fma) return max + std::log(exp_shift_sum_double_avx2(x, n, max));
#endif
  return max + std::log(exp_shift_sum_double_scalar(x, n, max));
}

AMANUENSIS_MULTIVERSION
void exp_fast(const float* x, float* y, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) y[i] = exp_poly(x[i]);
}

namespace {
// The dot products of a head: AVX2/FMA where the head size allows, else the portable loop.
void scores_of_head(const float* q, std::int64_t n_q, const float* k, std::int64_t stride, std::int64_t hd,
                    std::int64_t n_kv, const std::int64_t* visible, float scale, float* scores,
                    std::int64_t score_stride) {
#if defined(__x86_64__)
  if (cpu_features().avx2 && cpu_features().fma && hd % 8 == 0)
    return head_scores_avx2(q, n_q, k, stride, hd, n_kv, visible, scale, scores, score_stride);
#endif
  head_scores(q, n_q, k, stride, hd, n_kv, visible, scale, scores, score_stride);
}
}  // namespace

void attention_head_few_queries_paged(const float* q, std::int64_t n_q, std::span<const KvRows> blocks,
                                      std::int64_t column, std::int64_t stride, std::int64_t hd,
                                      std::int64_t causal_offset, float* out) {
  std::int64_t n_kv = 0;
  for (const auto& block : blocks) n_kv += block.rows;
  thread_local std::vector<float> scores;
  thread_local std::vector<std::int64_t> visible, in_block;
  scores.resize(static_cast<std::size_t>(n_q * n_kv));
  visible.resize(static_cast<std::size_t>(n_q));
  in_block.resize(static_cast<std::size_t>(n_q));
  for (std::int64_t r = 0; r < n_q; ++r) visible[r] = causal_offset < 0 ? n_kv : std::min(n_kv, causal_offset + r + 1);
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  // per block: which of its rows each query sees, and its scores at its first key's column
  const auto visible_in = [&](std::int64_t first, std::int64_t rows) {
    for (std::int64_t r = 0; r < n_q; ++r) in_block[r] = std::clamp<std::int64_t>(visible[r] - first, 0, rows);
    return in_block.data();
  };
  std::int64_t first = 0;
  for (const auto& b : blocks) {
    scores_of_head(q, n_q, b.k + column, stride, hd, b.rows, visible_in(first, b.rows), scale, scores.data() + first, n_kv);
    first += b.rows;
  }
  for (std::int64_t r = 0; r < n_q; ++r) softmax_fast(scores.data() + r * n_kv, visible[r], visible[r]);
  zero_rows(out, n_q, stride, hd);
  first = 0;
  for (const auto& b : blocks) {
    head_values_add(scores.data() + first, n_q, b.v + column, stride, hd, b.rows, visible_in(first, b.rows), out, n_kv);
    first += b.rows;
  }
}

void attention_head_few_queries(const float* q, std::int64_t n_q, const float* k, const float* v, std::int64_t n_kv,
                                std::int64_t stride, std::int64_t hd, std::int64_t causal_offset, float* out) {
  const KvRows all{k, v, n_kv};
  attention_head_few_queries_paged(q, n_q, {&all, 1}, 0, stride, hd, causal_offset, out);
}

void clear_upper_vector_state() {
#if defined(__x86_64__)
  if (cpu_features().avx) asm volatile("vzeroupper" ::: "memory");
#endif
}

bool have_avx2_fma_f16c() {
#if defined(__x86_64__)
  return cpu_features().avx2_fma_f16c();
#else
  return false;
#endif
}

namespace {

#if defined(__x86_64__)
__attribute__((target("avx2,fma,f16c"))) inline __m256 load_half8(const std::uint16_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

// One query's dot product with one half key (hd a multiple of 8), as head_scores_avx2:
// lane l sums q[i] k[i] for i = l mod 8 in order of i, then ((a0+a4)+(a2+a6))+((a1+a5)+(a3+a7)).
__attribute__((target("avx2,fma,f16c"))) inline float dot_f16(const float* qr, const std::uint16_t* kj, std::int64_t hd) {
  __m256 acc = _mm256_mul_ps(_mm256_loadu_ps(qr), load_half8(kj));
  for (std::int64_t i = 8; i < hd; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(qr + i), load_half8(kj + i), acc);
  __m128 h = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
  h = _mm_add_ps(h, _mm_movehl_ps(h, h));
  h = _mm_add_ss(h, _mm_movehdup_ps(h));
  return _mm_cvtss_f32(h);
}

// Lanes 0+2 and 1+3 of each 128-bit quarter of a and b: [a0+a2, a1+a3, b0+b2, b1+b3] per half.
__attribute__((target("avx2,fma,f16c"))) inline __m256 pair_sums(__m256 a, __m256 b) {
  return _mm256_add_ps(_mm256_shuffle_ps(a, b, _MM_SHUFFLE(1, 0, 1, 0)), _mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 2, 3, 2)));
}

// The eight accumulators' sums reduced with dot_f16's pairing, for the eight at once (a
// transpose whose adds pair the lanes as dot_f16 does): one horizontal reduction serves
// eight keys, and eight independent accumulators keep the FMA units busy where one dot
// product waits on its own chain.
__attribute__((target("avx2,fma,f16c"))) inline __m256 reduce_dots8(const __m256 (&acc)[8]) {
  // a_l + a_{l+4}: [key 2t: 4 sums | key 2t+1: 4 sums]
  __m256 half[4];
  for (int t = 0; t < 4; ++t)
    half[t] = _mm256_add_ps(_mm256_permute2f128_ps(acc[2 * t], acc[2 * t + 1], 0x20),
                            _mm256_permute2f128_ps(acc[2 * t], acc[2 * t + 1], 0x31));
  // (s0 + s2), (s1 + s3) per key: [k0 k0 k2 k2 | k1 k1 k3 k3] and the same for keys 4-7
  const __m256 low = pair_sums(half[0], half[1]);
  const __m256 high = pair_sums(half[2], half[3]);
  // the last add: [k0 k2 k4 k6 | k1 k3 k5 k7], then in key order
  const __m256 sums = _mm256_add_ps(_mm256_shuffle_ps(low, high, _MM_SHUFFLE(2, 0, 2, 0)),
                                    _mm256_shuffle_ps(low, high, _MM_SHUFFLE(3, 1, 3, 1)));
  return _mm256_permutevar8x32_ps(sums, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

// The dot products of one query with eight consecutive half keys, to the bit those of
// dot_f16: the same lanes in the same order, reduced by reduce_dots8.
__attribute__((target("avx2,fma,f16c")))
inline __m256 dots8_f16(const float* qr, const std::uint16_t* k, std::int64_t stride, std::int64_t hd) {
  __m256 acc[8];
  const __m256 q0 = _mm256_loadu_ps(qr);
  for (int t = 0; t < 8; ++t) acc[t] = _mm256_mul_ps(q0, load_half8(k + t * stride));
  for (std::int64_t i = 8; i < hd; i += 8) {
    const __m256 qi = _mm256_loadu_ps(qr + i);
    for (int t = 0; t < 8; ++t) acc[t] = _mm256_fmadd_ps(qi, load_half8(k + t * stride + i), acc[t]);
  }
  return reduce_dots8(acc);
}

// head_scores_avx2 with half keys (hd a multiple of 8): the same bits, eight keys at a
// time. Query rows are q_stride floats apart, key rows kv_stride halves.
__attribute__((target("avx2,fma,f16c")))
void head_scores_f16_avx2(const float* q, std::int64_t n_q, std::int64_t q_stride, const std::uint16_t* k,
                          std::int64_t kv_stride, std::int64_t hd, std::int64_t n_kv, const std::int64_t* visible,
                          float scale, float* scores) {
  const __m256 scale8 = _mm256_set1_ps(scale);
  std::int64_t j = 0;
  for (; j + 8 <= n_kv; j += 8) {
    const std::uint16_t* kj = k + j * kv_stride;
    for (std::int64_t r = 0; r < n_q; ++r) {
      const float* qr = q + r * q_stride;
      float* out = scores + r * n_kv + j;
      if (j + 8 <= visible[r]) {
        _mm256_storeu_ps(out, _mm256_mul_ps(dots8_f16(qr, kj, kv_stride, hd), scale8));
      } else {
        for (std::int64_t t = 0; j + t < visible[r]; ++t) out[t] = dot_f16(qr, kj + t * kv_stride, hd) * scale;
      }
    }
  }
  for (; j < n_kv; ++j)
    for (std::int64_t r = 0; r < n_q; ++r)
      if (j < visible[r]) scores[r * n_kv + j] = dot_f16(q + r * q_stride, k + j * kv_stride, hd) * scale;
}

// out = sum_j p_j v_j over keys [0, n) in key order, one FMA per element and key from zero
// (what zeroing out and adding key by key gives), for eight lanes of features at `v`.
__attribute__((target("avx2,fma,f16c")))
inline __m256 weighted_sum8_f16(const float* p, const std::uint16_t* v, std::int64_t stride, std::int64_t n) {
  __m256 acc = _mm256_setzero_ps();
  for (std::int64_t j = 0; j < n; ++j) acc = _mm256_fmadd_ps(_mm256_set1_ps(p[j]), load_half8(v + j * stride), acc);
  return acc;
}

// head_values with half values (hd a multiple of 8): per query, its output row in
// registers over all keys, in key order (the bits of keys outermost, row in memory), 64
// features at a time so that eight independent FMA chains run side by side. Value rows
// are stride halves apart, output rows out_stride floats.
__attribute__((target("avx2,fma,f16c")))
void head_values_f16_avx2(const float* p, std::int64_t n_q, const std::uint16_t* v, std::int64_t stride,
                          std::int64_t hd, std::int64_t n_kv, const std::int64_t* visible, float* out,
                          std::int64_t out_stride) {
  for (std::int64_t r = 0; r < n_q; ++r) {
    const float* pr = p + r * n_kv;
    const std::int64_t n = std::min(visible[r], n_kv);
    float* o = out + r * out_stride;
    std::int64_t i = 0;
    for (; i + 64 <= hd; i += 64) {
      __m256 acc[8];
      for (int g = 0; g < 8; ++g) acc[g] = _mm256_setzero_ps();
      for (std::int64_t j = 0; j < n; ++j) {
        const __m256 pj = _mm256_set1_ps(pr[j]);
        const std::uint16_t* vj = v + j * stride + i;
        for (int g = 0; g < 8; ++g) acc[g] = _mm256_fmadd_ps(pj, load_half8(vj + 8 * g), acc[g]);
      }
      for (int g = 0; g < 8; ++g) _mm256_storeu_ps(o + i + 8 * g, acc[g]);
    }
    for (; i < hd; i += 8) _mm256_storeu_ps(o + i, weighted_sum8_f16(pr, v + i, stride, n));
  }
}

// head_values_f16_avx2 sixteen lanes at a time (hd a multiple of 64): each feature is the
// same chain of FMAs in key order, so the bits are those of the eight-lane version.
__attribute__((target("avx512f")))
void head_values_f16_avx512(const float* p, std::int64_t n_q, const std::uint16_t* v, std::int64_t stride,
                            std::int64_t hd, std::int64_t n_kv, const std::int64_t* visible, float* out,
                            std::int64_t out_stride) {
  for (std::int64_t r = 0; r < n_q; ++r) {
    const float* pr = p + r * n_kv;
    const std::int64_t n = std::min(visible[r], n_kv);
    for (std::int64_t i = 0; i < hd; i += 64) {
      __m512 acc[4];
      for (int g = 0; g < 4; ++g) acc[g] = _mm512_setzero_ps();
      for (std::int64_t j = 0; j < n; ++j) {
        const __m512 pj = _mm512_set1_ps(pr[j]);
        const std::uint16_t* vj = v + j * stride + i;
        for (int g = 0; g < 4; ++g)
          acc[g] = _mm512_fmadd_ps(
              pj, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(vj + 16 * g))), acc[g]);
      }
      for (int g = 0; g < 4; ++g) _mm512_storeu_ps(out + r * out_stride + i + 16 * g, acc[g]);
    }
  }
}

__attribute__((target("avx2,f16c"))) void floats_to_halves_f16c(const float* x, std::uint16_t* y, std::int64_t n) {
  std::int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(y + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  for (; i < n; ++i) y[i] = amanuensis::float_to_half(x[i]);
}

__attribute__((target("avx2,f16c"))) void halves_to_floats_f16c(const std::uint16_t* x, float* y, std::int64_t n) {
  std::int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(y + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + i))));
  for (; i < n; ++i) y[i] = amanuensis::half_to_float(x[i]);
}
#endif
}  // namespace

void floats_to_halves(const float* x, std::uint16_t* y, std::int64_t n) {
#if defined(__x86_64__)
  if (have_avx2_fma_f16c()) return floats_to_halves_f16c(x, y, n);
#endif
  for (std::int64_t i = 0; i < n; ++i) y[i] = amanuensis::float_to_half(x[i]);
}

void halves_to_floats(const std::uint16_t* x, float* y, std::int64_t n) {
#if defined(__x86_64__)
  if (have_avx2_fma_f16c()) return halves_to_floats_f16c(x, y, n);
#endif
  for (std::int64_t i = 0; i < n; ++i) y[i] = amanuensis::half_to_float(x[i]);
}

void attention_head_few_queries_f16(const float* q, std::int64_t n_q, std::int64_t q_stride, const std::uint16_t* k,
                                    const std::uint16_t* v, std::int64_t n_kv, std::int64_t kv_stride, std::int64_t hd,
                                    std::int64_t causal_offset, float* out) {
#if defined(__x86_64__)
  if (have_avx2_fma_f16c() && hd % 8 == 0) {
    thread_local std::vector<float> scores;
    thread_local std::vector<std::int64_t> visible;
    scores.resize(static_cast<std::size_t>(n_q * n_kv));
    visible.resize(static_cast<std::size_t>(n_q));
    for (std::int64_t r = 0; r < n_q; ++r)
      visible[r] = causal_offset < 0 ? n_kv : std::min(n_kv, causal_offset + r + 1);
    const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
    head_scores_f16_avx2(q, n_q, q_stride, k, kv_stride, hd, n_kv, visible.data(), scale, scores.data());
    for (std::int64_t r = 0; r < n_q; ++r) softmax_fast(scores.data() + r * n_kv, visible[r], visible[r]);
    if (cpu_features().avx512f && hd % 64 == 0) {
      head_values_f16_avx512(scores.data(), n_q, v, kv_stride, hd, n_kv, visible.data(), out, q_stride);
    } else {
      head_values_f16_avx2(scores.data(), n_q, v, kv_stride, hd, n_kv, visible.data(), out, q_stride);
    }
    return;
  }
#endif
  // no F16C: widen this head's rows and take the float path, whose rows share one stride
  thread_local std::vector<float> k32, v32;
  k32.resize(static_cast<std::size_t>(n_kv * q_stride));
  v32.resize(static_cast<std::size_t>(n_kv * q_stride));
  for (std::int64_t j = 0; j < n_kv; ++j) {
    halves_to_floats(k + j * kv_stride, k32.data() + j * q_stride, hd);
    halves_to_floats(v + j * kv_stride, v32.data() + j * q_stride, hd);
  }
  attention_head_few_queries(q, n_q, k32.data(), v32.data(), n_kv, q_stride, hd, causal_offset, out);
}

namespace {
#if defined(__x86_64__)
// row_max with four explicit sixteen-lane maxima (the multiversioned loop above did not
// vectorise well, and took as long as the exponentials in the encoder's softmax).
__attribute__((target("avx512f"))) float row_max_avx512(const float* x, std::int64_t n) {
  __m512 m0 = _mm512_set1_ps(-INFINITY), m1 = m0, m2 = m0, m3 = m0;
  std::int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    m0 = _mm512_max_ps(m0, _mm512_loadu_ps(x + i));
    m1 = _mm512_max_ps(m1, _mm512_loadu_ps(x + i + 16));
    m2 = _mm512_max_ps(m2, _mm512_loadu_ps(x + i + 32));
    m3 = _mm512_max_ps(m3, _mm512_loadu_ps(x + i + 48));
  }
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, _mm512_max_ps(_mm512_max_ps(m0, m1), _mm512_max_ps(m2, m3)));
  float r = *std::max_element(lanes, lanes + 16);
  for (; i < n; ++i) r = std::max(r, x[i]);
  return r;
}
#endif

float softmax_row_max(const float* x, std::int64_t n) {
#if defined(__x86_64__)
  if (cpu_features().avx512f) return row_max_avx512(x, n);
#endif
  return row_max(x, n);
}
}  // namespace

void softmax_fast(float* row, std::int64_t n, std::int64_t n_zero) {
  if (n > 0) {
    const float max = softmax_row_max(row, n);
    const float sum = exp_shift_sum(row, n, max);
    scale_row(row, n, 1.0f / sum);
  }
  for (std::int64_t i = n; i < n_zero; ++i) row[i] = 0.0f;
}

}  // namespace amanuensis::kernels::cpu

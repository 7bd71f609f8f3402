#include "kernels/cpu/int8.h"

#include "kernels/cpu/intrinsics.h"

#include <algorithm>
#include <cmath>

#include "common/cpu_features.h"
#include "common/error.h"
#include "kernels/cpu/quant.h"
#include "kernels/cpu/thread_pool.h"

namespace amanuensis::kernels::cpu {
namespace {

// The scalar rule the vector versions reproduce: a product by 127 / max, then
// round-to-nearest-even (the default rounding of lrint and of the vector conversions).
std::int8_t code_of(float x, float inverse) {
  const float q = std::nearbyint(x * inverse);
  return static_cast<std::int8_t>(std::clamp(q, -127.0f, 127.0f));
}

float row_max_abs_scalar(const float* x, std::int64_t n) {
  float m = 0.0f;
  for (std::int64_t i = 0; i < n; ++i) m = std::max(m, std::fabs(x[i]));
  return m;
}

void encode_row_scalar(const float* x, std::int64_t n, float inverse, std::int8_t* codes) {
  for (std::int64_t i = 0; i < n; ++i) codes[i] = code_of(x[i], inverse);
}

#if defined(__x86_64__)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw")
float row_max_abs_avx512(const float* x, std::int64_t n) {
  // |x| by clearing the sign bit (GCC 12 warns on _mm512_abs_ps and _mm512_reduce_max_ps)
  const __m512i magnitude = _mm512_set1_epi32(0x7fffffff);
  __m512 m = _mm512_setzero_ps();
  std::int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    m = _mm512_max_ps(m, _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(_mm512_loadu_ps(x + i)), magnitude)));
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, m);
  return std::max(*std::max_element(lanes, lanes + 16), row_max_abs_scalar(x + i, n - i));
}

void encode_row_avx512(const float* x, std::int64_t n, float inverse, std::int8_t* codes) {
  const __m512 inv = _mm512_set1_ps(inverse), lo = _mm512_set1_ps(-127.0f), hi = _mm512_set1_ps(127.0f);
  std::int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 q = _mm512_min_ps(hi, _mm512_max_ps(lo, _mm512_mul_ps(_mm512_loadu_ps(x + i), inv)));
    // cvtps rounds to nearest even (MXCSR default), as nearbyint does
    _mm_storeu_si128(reinterpret_cast<__m128i*>(codes + i), _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(q)));
  }
  encode_row_scalar(x + i, n - i, inverse, codes + i);
}
#pragma GCC pop_options

__attribute__((target("avx2"))) float row_max_abs_avx2(const float* x, std::int64_t n) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  __m256 m = _mm256_setzero_ps();
  std::int64_t i = 0;
  for (; i + 8 <= n; i += 8) m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + i)));
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, m);
  return std::max(*std::max_element(lanes, lanes + 8), row_max_abs_scalar(x + i, n - i));
}
#endif

float row_max_abs(const float* x, std::int64_t n) {
#if defined(__x86_64__)
  if (cpu_features().avx512f && cpu_features().avx512bw) return row_max_abs_avx512(x, n);
  if (cpu_features().avx2) return row_max_abs_avx2(x, n);
#endif
  return row_max_abs_scalar(x, n);
}

void encode_row(const float* x, std::int64_t n, float inverse, std::int8_t* codes) {
#if defined(__x86_64__)
  if (cpu_features().avx512f && cpu_features().avx512bw) return encode_row_avx512(x, n, inverse, codes);
#endif
  encode_row_scalar(x, n, inverse, codes);
}

}  // namespace

void quantize_rows_int8(const float* x, std::int64_t rows, std::int64_t cols, std::int8_t* codes, float* scales) {
  for (std::int64_t r = 0; r < rows; ++r) {
    const float max = row_max_abs(x + r * cols, cols);
    const bool zero = !(max > 0.0f);
    scales[r] = zero ? 1.0f : max / 127.0f;
    encode_row(x + r * cols, cols, zero ? 0.0f : 127.0f / max, codes + r * cols);
  }
}

Int8Matrix quantize_matrix_int8(std::span<const float> values, MatrixShape shape) {
  if (static_cast<std::int64_t>(values.size()) != shape.elements()) throw InternalError("quantize_matrix_int8: size");
  Int8Matrix m{shape, std::vector<std::int8_t>(values.size()), std::vector<float>(static_cast<std::size_t>(shape.rows))};
  quantize_rows_int8(values.data(), shape.rows, shape.cols, m.codes.data(), m.scales.data());
  return m;
}

void int8_linear_reference(std::span<const float> x, std::int64_t m, const Int8Matrix& w, std::span<const float> bias,
                           std::span<float> y) {
  const auto [n, k] = w.shape;
  std::vector<std::int8_t> codes(static_cast<std::size_t>(m * k));
  std::vector<float> x_scales(static_cast<std::size_t>(m));
  quantize_rows_int8(x.data(), m, k, codes.data(), x_scales.data());
  parallel_for(n, 64, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t r = 0; r < m; ++r) {
      const std::int8_t* xr = codes.data() + r * k;
      for (std::int64_t c = begin; c < end; ++c) {
        const std::int8_t* wc = w.codes.data() + c * k;
        std::int32_t sum = 0;
        for (std::int64_t i = 0; i < k; ++i) sum += static_cast<std::int32_t>(xr[i]) * wc[i];
        y[r * n + c] = std::fma(static_cast<float>(sum) * w.scales[c], x_scales[r], bias.empty() ? 0.0f : bias[c]);
      }
    }
  });
}

bool fits_int8_blocks(MatrixShape shape) { return shape.cols > 0 && shape.cols % kQuantBlock == 0; }

BlockInt8Matrix quantize_blocks_int8(const StoredMatrix& weights) {
  const auto [rows, cols] = weights.shape;
  if (!fits_int8_blocks(weights.shape)) throw InternalError("quantize_blocks_int8: rows are not whole blocks");
  const std::int64_t blocks = cols / kQuantBlock;
  BlockInt8Matrix m{weights.shape, std::vector<std::int8_t>(static_cast<std::size_t>(rows * cols)),
                    std::vector<float>(static_cast<std::size_t>(rows * blocks))};
  if (has_int8_codes(weights.dtype)) {
    // the file's own codes and scales: nothing is quantized twice
    const std::size_t block_bytes = dtype_bytes(weights.dtype, kQuantBlock);
    for (std::int64_t b = 0; b < rows * blocks; ++b)
      m.scales[b] = block_codes(weights.dtype, weights.bytes.data() + b * block_bytes, m.codes.data() + b * kQuantBlock);
    return m;
  }
  const std::vector<float> values = to_floats(weights);
  quantize_rows_int8(values.data(), rows * blocks, kQuantBlock, m.codes.data(), m.scales.data());
  return m;
}

void dequantized_row(const BlockInt8Matrix& m, std::int64_t row, std::span<float> out) {
  const std::int64_t cols = m.shape.cols, blocks = cols / kQuantBlock;
  for (std::int64_t i = 0; i < cols; ++i) out[i] = m.scales[row * blocks + i / kQuantBlock] * m.codes[row * cols + i];
}

void quantize_input_blocks(const float* x, std::int64_t m, std::int64_t k, std::int8_t* codes, float* scales) {
  quantize_rows_int8(x, m * (k / kQuantBlock), kQuantBlock, codes, scales);
}

void block_int8_linear_reference(std::span<const float> x, std::int64_t m, const BlockInt8Matrix& w,
                                 std::span<const float> bias, std::span<float> y) {
  const auto [n, k] = w.shape;
  const std::int64_t blocks = k / kQuantBlock;
  std::vector<std::int8_t> codes(static_cast<std::size_t>(m * k));
  std::vector<float> x_scales(static_cast<std::size_t>(m * blocks));
  quantize_input_blocks(x.data(), m, k, codes.data(), x_scales.data());
  parallel_for(n, 64, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t r = 0; r < m; ++r)
      for (std::int64_t c = begin; c < end; ++c) {
        float acc = 0.0f;
        for (std::int64_t b = 0; b < blocks; ++b) {
          const std::int8_t* xb = codes.data() + r * k + b * kQuantBlock;
          const std::int8_t* wb = w.codes.data() + c * k + b * kQuantBlock;
          std::int32_t sum = 0;
          for (std::int64_t i = 0; i < kQuantBlock; ++i) sum += static_cast<std::int32_t>(xb[i]) * wb[i];
          acc = std::fma(static_cast<float>(sum), w.scales[c * blocks + b] * x_scales[r * blocks + b], acc);
        }
        y[r * n + c] = acc + (bias.empty() ? 0.0f : bias[c]);
      }
  });
}

}  // namespace amanuensis::kernels::cpu

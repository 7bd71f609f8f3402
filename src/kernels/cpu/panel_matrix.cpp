#include "kernels/cpu/panel_matrix.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstring>
#include <string>

#include "common/cpu_features.h"
#include "common/error.h"
#include "kernels/cpu/fast_math.h"
#include "kernels/cpu/quant.h"

namespace amanuensis::kernels::cpu {
namespace {

bool have_avx512f() {
#if defined(__x86_64__)
  return cpu_features().avx512f && have_avx2_fma_f16c();
#else
  return false;
#endif
}

template <typename T, typename Value>
std::vector<T> to_panels(const PanelStore& s, std::int64_t rows, Value value) {
  const std::int64_t panels = (rows + s.lanes - 1) / s.lanes;
  std::vector<T> out(static_cast<std::size_t>(panels * s.stride), T{});
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t i = 0; i < s.cols; ++i) out[(r / s.lanes) * s.stride + i * s.lanes + r % s.lanes] = value(r, i);
  return out;
}

bool exact_in_f16(std::span<const float> values) {
  return std::all_of(values.begin(), values.end(), [](float v) { return half_to_float(float_to_half(v)) == v; });
}

// Without AVX2/FMA/F16C (weights then always f32): the same chain per element in plain
// code, one path for every element (so row-independent too, if not the same bits).
void product_portable(const PanelStore& s, const float* x, std::int64_t m, std::int64_t p0, std::int64_t panels,
                      float* out, std::int64_t ldo) {
  const std::int64_t k = s.cols, lanes = s.lanes;
  for (std::int64_t r = 0; r < m; ++r)
    for (std::int64_t p = 0; p < panels; ++p) {
      const float* w = s.f32.data() + (p0 + p) * s.stride;
      float* o = out + r * ldo + p * lanes;
      std::fill_n(o, lanes, 0.0f);
      for (std::int64_t i = 0; i < k; ++i)
        for (std::int64_t j = 0; j < lanes; ++j) o[j] += w[i * lanes + j] * x[r * k + i];
    }
}

}  // namespace

#if defined(__x86_64__)
// The tile loops (panel_tiles.inc) once per vector width, each compiled for its own
// instruction set; which runs is picked from the panel width chosen at pack time.
namespace avx2 {
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
using Vec = __m256;
constexpr std::int64_t kLanes = 8;
inline Vec vzero() { return _mm256_setzero_ps(); }
inline Vec vbroadcast(const float* p) { return _mm256_broadcast_ss(p); }
inline Vec vfma(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
inline Vec vmul(Vec a, Vec b) { return _mm256_mul_ps(a, b); }
inline void vstore(float* p, Vec v) { _mm256_storeu_ps(p, v); }
inline Vec vload(const float* p) { return _mm256_loadu_ps(p); }
inline Vec vload_halves(const std::uint16_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
inline Vec vload_codes(const std::int8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}
// 16 registers: at least 8 accumulators (FMA latency x throughput) where the rows allow;
// one row streams its weights through, 8 panels at a time
template <int R>
constexpr int kTilePanels = R == 1 ? 8 : R == 2 ? 5 : R <= 4 ? 3 : 2;
#include "kernels/cpu/panel_tiles.inc"
#pragma GCC pop_options
}  // namespace avx2

namespace avx512 {
#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma,f16c")
// GCC 12 warns about the _mm512_undefined_* placeholders inside its own conversion
// intrinsics (a false positive of its headers)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
using Vec = __m512;
constexpr std::int64_t kLanes = 16;
inline Vec vzero() { return _mm512_setzero_ps(); }
inline Vec vbroadcast(const float* p) { return _mm512_set1_ps(*p); }
inline Vec vfma(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
inline Vec vmul(Vec a, Vec b) { return _mm512_mul_ps(a, b); }
inline void vstore(float* p, Vec v) { _mm512_storeu_ps(p, v); }
inline Vec vload(const float* p) { return _mm512_loadu_ps(p); }
inline Vec vload_halves(const std::uint16_t* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
inline Vec vload_codes(const std::int8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}
// 32 registers: R x P accumulators, P weights and the input
template <int R>
constexpr int kTilePanels = R == 1 ? 8 : R == 2 ? 8 : R <= 4 ? 6 : 4;
#include "kernels/cpu/panel_tiles.inc"
#pragma GCC diagnostic pop
#pragma GCC pop_options
}  // namespace avx512
#endif

std::int64_t PanelMatrix::widest_panel_width() { return have_avx512f() ? 16 : 8; }

PanelMatrix::PanelMatrix(const StoredMatrix& weights, std::int64_t panel_width) : shape_(weights.shape) {
  const auto [rows, cols] = shape_;
  const bool vector_unit = have_avx2_fma_f16c();
  if (panel_width == 0) panel_width = widest_panel_width();
  if (panel_width != 8 && (panel_width != 16 || !have_avx512f()))
    throw InternalError("PanelMatrix: panels of " + std::to_string(panel_width) + " features cannot run on this CPU");
  store_.cols = cols;
  store_.lanes = panel_width;
  store_.stride = (cols + 4) * store_.lanes;
  const std::int64_t panels = (rows + store_.lanes - 1) / store_.lanes;
  if (vector_unit && has_int8_codes(weights.dtype)) {
    // codes and scales as the blocks hold them: about a quarter of the float bytes
    const std::int64_t blocks = cols / kQuantBlock, lanes = store_.lanes;
    store_.scale_stride = blocks * lanes;
    const std::size_t row_bytes = dtype_bytes(weights.dtype, cols), block_bytes = dtype_bytes(weights.dtype, kQuantBlock);
    std::vector<std::int8_t> row_codes(static_cast<std::size_t>(cols));
    store_.codes.assign(static_cast<std::size_t>(panels * store_.stride), 0);
    store_.scales.assign(static_cast<std::size_t>(panels * store_.scale_stride), 0.0f);
    for (std::int64_t r = 0; r < rows; ++r) {
      const std::byte* row = weights.bytes.data() + r * row_bytes;
      const std::int64_t panel = r / lanes, lane = r % lanes;
      for (std::int64_t b = 0; b < blocks; ++b)
        store_.scales[panel * store_.scale_stride + b * lanes + lane] =
            block_codes(weights.dtype, row + b * block_bytes, row_codes.data() + b * kQuantBlock);
      for (std::int64_t i = 0; i < cols; ++i) store_.codes[panel * store_.stride + i * lanes + lane] = row_codes[i];
    }
    return;
  }
  if (vector_unit && weights.dtype == DType::F16) {
    // the halves as stored, never widened: the logits matrix of tiny is 80 MB in float
    const std::byte* halves = weights.bytes.data();
    store_.f16 = to_panels<std::uint16_t>(store_, rows, [&](std::int64_t r, std::int64_t i) {
      std::uint16_t h;
      std::memcpy(&h, halves + (r * cols + i) * 2, sizeof h);
      return h;
    });
    return;
  }
  const std::vector<float> values = to_floats(weights);
  const auto value = [&](std::int64_t r, std::int64_t i) { return values[r * cols + i]; };
  if (vector_unit && exact_in_f16(values)) {
    // floats that are halves: half the bytes to read per decoder step, as f16 files
    store_.f16 = to_panels<std::uint16_t>(store_, rows, [&](std::int64_t r, std::int64_t i) { return float_to_half(value(r, i)); });
  } else {
    store_.f32 = to_panels<float>(store_, rows, value);
  }
}

const char* PanelMatrix::storage() const {
  return !store_.codes.empty() ? "int8" : !store_.f16.empty() ? "f16" : "f32";
}

std::size_t PanelMatrix::bytes() const {
  return store_.codes.size() + store_.scales.size() * sizeof(float) + store_.f16.size() * 2 +
         store_.f32.size() * sizeof(float);
}

void PanelMatrix::product(const float* x, std::int64_t m, std::int64_t first, std::int64_t end, float* out,
                          std::int64_t ldo) const {
  const std::int64_t lanes = store_.lanes;
  if (first % lanes != 0 || first < 0 || end > shape_.rows || first >= end)
    throw InternalError("PanelMatrix::product: features not on a panel boundary");
  const std::int64_t p0 = first / lanes, panels = (end - first + lanes - 1) / lanes;
#if defined(__x86_64__)
  if (lanes == 16) return avx512::product(store_, x, m, p0, panels, out, ldo);
  if (have_avx2_fma_f16c()) return avx2::product(store_, x, m, p0, panels, out, ldo);
#endif
  product_portable(store_, x, m, p0, panels, out, ldo);
}

void PanelMatrix::row(std::int64_t r, std::span<float> out) const {
  if (r < 0 || r >= shape_.rows || static_cast<std::int64_t>(out.size()) < shape_.cols)
    throw InternalError("PanelMatrix::row out of range");
  // one loop per storage (this is the embedding lookup of every decoded token)
  const std::int64_t lanes = store_.lanes, panel = r / lanes, lane = r % lanes, k = shape_.cols;
  const std::int64_t first = panel * store_.stride + lane;
  if (!store_.codes.empty()) {
    const float* scales = store_.scales.data() + panel * store_.scale_stride + lane;
    for (std::int64_t i = 0; i < k; ++i) out[i] = scales[(i / kQuantBlock) * lanes] * store_.codes[first + i * lanes];
  } else if (!store_.f16.empty()) {
    for (std::int64_t i = 0; i < k; ++i) out[i] = half_to_float(store_.f16[first + i * lanes]);
  } else {
    for (std::int64_t i = 0; i < k; ++i) out[i] = store_.f32[first + i * lanes];
  }
}

}  // namespace amanuensis::kernels::cpu

#include "kernels/cpu/panel_matrix.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <type_traits>

#include "common/error.h"
#include "kernels/cpu/fast_math.h"
#include "kernels/cpu/quant.h"

namespace amanuensis::kernels::cpu {
namespace {

constexpr std::int64_t kPanel = PanelMatrix::kPanel;

// Panel p holds w[p * kPanel + j][i] at p * panel_size(cols) + i * kPanel + j (the last
// panel padded with zeros), so one vector load gives one input's weight for kPanel
// features. A panel is 4 inputs longer than its weights: with cols a multiple of 256,
// the panels a tile reads at once would otherwise all map to the same L1 sets.
constexpr std::int64_t panel_size(std::int64_t cols) { return (cols + 4) * kPanel; }

// Scales of code panels: [panel][block][kPanel].
constexpr std::int64_t scale_panel_size(std::int64_t cols) { return cols / kQuantBlock * kPanel; }

template <typename T, typename Value>
std::vector<T> to_panels(MatrixShape shape, Value value) {
  const std::int64_t panels = (shape.rows + kPanel - 1) / kPanel;
  std::vector<T> out(static_cast<std::size_t>(panels * panel_size(shape.cols)), T{});
  for (std::int64_t r = 0; r < shape.rows; ++r)
    for (std::int64_t i = 0; i < shape.cols; ++i)
      out[(r / kPanel) * panel_size(shape.cols) + i * kPanel + r % kPanel] = value(r, i);
  return out;
}

bool exact_in_f16(std::span<const float> values) {
  return std::all_of(values.begin(), values.end(), [](float v) { return half_to_float(float_to_half(v)) == v; });
}

#if defined(__x86_64__)
#define AMANUENSIS_AVX2 __attribute__((target("avx2,fma,f16c")))

// Where a tile reads its weights: `load(p, i)` is input i's weight for the kPanel
// features of the p-th panel after the source's first one, as float.
struct FloatPanels {
  const float* w;
  std::int64_t stride;
  AMANUENSIS_AVX2 __m256 load(int p, std::int64_t i) const { return _mm256_loadu_ps(w + p * stride + i * kPanel); }
};

struct HalfPanels {
  const std::uint16_t* w;
  std::int64_t stride;
  AMANUENSIS_AVX2 __m256 load(int p, std::int64_t i) const {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + p * stride + i * kPanel)));
  }
};

struct CodePanels {
  const std::int8_t* codes;
  const float* scales;
  std::int64_t stride, scale_stride;
  AMANUENSIS_AVX2 __m256 load(int p, std::int64_t i) const {
    const __m128i c = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(codes + p * stride + i * kPanel));
    const __m256 v = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(c));
    return _mm256_mul_ps(v, _mm256_loadu_ps(scales + p * scale_stride + (i / kQuantBlock) * kPanel));
  }
};

template <typename Source>
Source skip_panels(Source s, std::int64_t panels) {
  if constexpr (std::is_same_v<Source, CodePanels>) {
    s.codes += panels * s.stride;
    s.scales += panels * s.scale_stride;
  } else {
    s.w += panels * s.stride;
  }
  return s;
}

// R rows x P panels of accumulators.
template <int R, int P, typename Source>
AMANUENSIS_AVX2 void product_tile(const float* x, std::int64_t k, const Source& w, float* out, std::int64_t ldo) {
  // (unrolled early, or GCC keeps the accumulators in memory)
  __m256 acc[R][P];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int p = 0; p < P; ++p) acc[r][p] = _mm256_setzero_ps();
  for (std::int64_t i = 0; i < k; ++i) {
    if constexpr (R == 1) {  // each weight used once: no need to hold them all
      const __m256 xv = _mm256_broadcast_ss(x + i);
#pragma GCC unroll 16
      for (int p = 0; p < P; ++p) acc[0][p] = _mm256_fmadd_ps(w.load(p, i), xv, acc[0][p]);
      continue;
    }
    __m256 wv[P];
#pragma GCC unroll 16
    for (int p = 0; p < P; ++p) wv[p] = w.load(p, i);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const __m256 xv = _mm256_broadcast_ss(x + r * k + i);
#pragma GCC unroll 16
      for (int p = 0; p < P; ++p) acc[r][p] = _mm256_fmadd_ps(wv[p], xv, acc[r][p]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int p = 0; p < P; ++p) _mm256_storeu_ps(out + r * ldo + p * kPanel, acc[r][p]);
}

// How many panels a tile of R rows takes: R x P accumulators, P weights and an input
// in the 16 vector registers, and at least 8 accumulators (FMA latency x throughput)
// where the rows allow; one row streams its weights through, 8 panels at a time.
template <int R>
constexpr int kTilePanels = R == 1 ? 8 : R == 2 ? 5 : R <= 4 ? 3 : 2;

// R rows against `panels` panels: P at a time, then what is left with fewer.
template <int R, int P = kTilePanels<R>, typename Source>
AMANUENSIS_AVX2 void product_row_tile(const float* x, std::int64_t k, const Source& w, std::int64_t panels, float* out,
                                      std::int64_t ldo) {
  std::int64_t p = 0;
  for (; p + P <= panels; p += P) product_tile<R, P>(x, k, skip_panels(w, p), out + p * kPanel, ldo);
  if constexpr (P > 1)
    if (p < panels) product_row_tile<R, P - 1>(x, k, skip_panels(w, p), panels - p, out + p * kPanel, ldo);
}

template <typename Source>
AMANUENSIS_AVX2 void product_avx2(const float* x, std::int64_t m, std::int64_t k, const Source& w,
                                  std::int64_t panels, float* out, std::int64_t ldo) {
  constexpr int kRows = 6;
  std::int64_t r = 0;
  for (; m - r >= kRows; r += kRows) product_row_tile<kRows>(x + r * k, k, w, panels, out + r * ldo, ldo);
  const float* xr = x + r * k;
  float* o = out + r * ldo;
  switch (m - r) {
    case 5: product_row_tile<5>(xr, k, w, panels, o, ldo); break;
    case 4: product_row_tile<4>(xr, k, w, panels, o, ldo); break;
    case 3: product_row_tile<3>(xr, k, w, panels, o, ldo); break;
    case 2: product_row_tile<2>(xr, k, w, panels, o, ldo); break;
    case 1: product_row_tile<1>(xr, k, w, panels, o, ldo); break;
    default: break;
  }
}
#endif

// Without AVX2/FMA/F16C (weights then always f32): the same chain per element in plain
// code, one path for every element (so row-independent too, if not the same bits).
void product_portable(const float* x, std::int64_t m, std::int64_t k, const float* w, std::int64_t panels, float* out,
                      std::int64_t ldo) {
  for (std::int64_t r = 0; r < m; ++r)
    for (std::int64_t p = 0; p < panels; ++p) {
      float acc[kPanel] = {};
      for (std::int64_t i = 0; i < k; ++i)
        for (std::int64_t j = 0; j < kPanel; ++j) acc[j] += w[p * panel_size(k) + i * kPanel + j] * x[r * k + i];
      std::copy(acc, acc + kPanel, out + r * ldo + p * kPanel);
    }
}

}  // namespace

PanelMatrix::PanelMatrix(const StoredMatrix& weights) : shape_(weights.shape) {
  const auto [rows, cols] = shape_;
  const bool vector_unit = have_avx2_fma_f16c();
  if (vector_unit && has_int8_codes(weights.dtype)) {
    // codes and scales as the blocks hold them: a quarter of the float bytes, same values
    const std::int64_t blocks = cols / kQuantBlock;
    const std::size_t row_bytes = dtype_bytes(weights.dtype, cols);
    std::vector<std::int8_t> row_codes(static_cast<std::size_t>(cols));
    codes_.assign(static_cast<std::size_t>(panels() * panel_size(cols)), 0);
    scales_.assign(static_cast<std::size_t>(panels() * scale_panel_size(cols)), 0.0f);
    for (std::int64_t r = 0; r < rows; ++r) {
      const std::byte* row = weights.bytes.data() + r * row_bytes;
      const std::int64_t panel = r / kPanel, lane = r % kPanel;
      for (std::int64_t b = 0; b < blocks; ++b) {
        const float scale = block_codes(weights.dtype, row + b * dtype_bytes(weights.dtype, kQuantBlock),
                                        row_codes.data() + b * kQuantBlock);
        scales_[panel * scale_panel_size(cols) + b * kPanel + lane] = scale;
      }
      for (std::int64_t i = 0; i < cols; ++i) codes_[panel * panel_size(cols) + i * kPanel + lane] = row_codes[i];
    }
    return;
  }
  const std::vector<float> values = to_floats(weights);
  if (vector_unit && (weights.dtype == DType::F16 || exact_in_f16(values))) {
    // f16 files (and floats that are halves): half the bytes to read per decoder step
    f16_ = to_panels<std::uint16_t>(shape_, [&](std::int64_t r, std::int64_t i) { return float_to_half(values[r * cols + i]); });
  } else {
    f32_ = to_panels<float>(shape_, [&](std::int64_t r, std::int64_t i) { return values[r * cols + i]; });
  }
}

const char* PanelMatrix::storage() const { return !codes_.empty() ? "int8" : !f16_.empty() ? "f16" : "f32"; }

std::size_t PanelMatrix::bytes() const {
  return codes_.size() + scales_.size() * sizeof(float) + f16_.size() * 2 + f32_.size() * sizeof(float);
}

void PanelMatrix::product(const float* x, std::int64_t m, std::int64_t p0, std::int64_t p1, float* out,
                          std::int64_t ldo) const {
  const std::int64_t k = shape_.cols, offset = p0 * panel_size(k);
#if defined(__x86_64__)
  if (!codes_.empty()) {
    const CodePanels source{codes_.data() + offset, scales_.data() + p0 * scale_panel_size(k), panel_size(k),
                            scale_panel_size(k)};
    return product_avx2(x, m, k, source, p1 - p0, out, ldo);
  }
  if (!f16_.empty()) return product_avx2(x, m, k, HalfPanels{f16_.data() + offset, panel_size(k)}, p1 - p0, out, ldo);
  if (have_avx2_fma_f16c())
    return product_avx2(x, m, k, FloatPanels{f32_.data() + offset, panel_size(k)}, p1 - p0, out, ldo);
#endif
  product_portable(x, m, k, f32_.data() + offset, p1 - p0, out, ldo);
}

void PanelMatrix::row(std::int64_t r, std::span<float> out) const {
  if (r < 0 || r >= shape_.rows || static_cast<std::int64_t>(out.size()) < shape_.cols)
    throw InternalError("PanelMatrix::row out of range");
  const std::int64_t k = shape_.cols, base = (r / kPanel) * panel_size(k) + r % kPanel;
  for (std::int64_t i = 0; i < k; ++i) {
    const std::int64_t at = base + i * kPanel;
    if (!codes_.empty()) {
      const float scale = scales_[(r / kPanel) * scale_panel_size(k) + (i / kQuantBlock) * kPanel + r % kPanel];
      out[i] = scale * codes_[at];
    } else {
      out[i] = !f16_.empty() ? half_to_float(f16_[at]) : f32_[at];
    }
  }
}

}  // namespace amanuensis::kernels::cpu

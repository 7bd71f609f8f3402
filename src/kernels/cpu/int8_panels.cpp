#include "kernels/cpu/int8_panels.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "common/cpu_features.h"
#include "common/error.h"

namespace amanuensis::kernels::cpu {
namespace {

constexpr std::int64_t kGroupsPerBlock = kQuantBlock / 4;

bool have_avx2() {
#if defined(__x86_64__)
  return cpu_features().avx2 && cpu_features().fma;
#else
  return false;
#endif
}

bool have_avx512_vnni() {
#if defined(__x86_64__)
  return cpu_features().avx512f && cpu_features().avx512bw && cpu_features().avx512vnni && have_avx2();
#else
  return false;
#endif
}

// Four consecutive input codes as one int32, to broadcast to every lane.
inline std::int32_t four_codes(const std::int8_t* p) {
  std::int32_t four;
  std::memcpy(&four, p, sizeof four);
  return four;
}

}  // namespace

#if defined(__x86_64__)
// AVX2: vpmaddubsw multiplies unsigned by signed bytes, so each weight's sign moves to
// its input (|w| * (x sign w) = w x). |w| <= 128 and |x| <= 127 (quantize_rows_int8
// clamps), so a pair's sum, at most 32512, never saturates its int16.
namespace avx2 {
#pragma GCC push_options
#pragma GCC target("avx2,fma")
using IVec = __m256i;
using FVec = __m256;
constexpr std::int64_t kLanes = 8;
constexpr int kMaxRows = 4;
template <int R>
constexpr int kTilePanels = R == 1 ? 4 : R == 2 ? 2 : 1;
inline IVec sums_start(std::int32_t) { return _mm256_setzero_si256(); }
inline IVec broadcast_inputs(const std::int8_t* p) { return _mm256_set1_epi32(four_codes(p)); }
inline IVec load_codes(const std::int8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
inline IVec dot4(IVec sums, IVec codes, IVec inputs) {
  const IVec pairs = _mm256_maddubs_epi16(_mm256_abs_epi8(codes), _mm256_sign_epi8(inputs, codes));
  return _mm256_add_epi32(sums, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
}
inline FVec to_floats(IVec v) { return _mm256_cvtepi32_ps(v); }
inline FVec fzero() { return _mm256_setzero_ps(); }
inline FVec fload(const float* p) { return _mm256_loadu_ps(p); }
inline FVec fbroadcast(float v) { return _mm256_set1_ps(v); }
inline FVec fmul(FVec a, FVec b) { return _mm256_mul_ps(a, b); }
inline FVec ffma(FVec a, FVec b, FVec c) { return _mm256_fmadd_ps(a, b, c); }
inline void fstore(float* p, FVec v) { _mm256_storeu_ps(p, v); }
#include "kernels/cpu/int8_tiles.inc"
#pragma GCC pop_options
}  // namespace avx2

// AVX512_VNNI: vpdpbusd multiplies unsigned by signed bytes into int32 without
// saturating, so the weights are stored as w + 128 (pack time) and each block's sums
// start at -128 times the input codes' sum (QuantizedRows::offsets): the same exact sums,
// with nothing more to read per weight.
namespace vnni {
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vnni,avx2,fma")
// GCC 12 warns about the _mm512_undefined_* placeholders inside its own intrinsics (a
// false positive of its headers, as in panel_matrix.cpp)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
using IVec = __m512i;
using FVec = __m512;
constexpr std::int64_t kLanes = 16;
constexpr int kMaxRows = 4;
template <int R>
constexpr int kTilePanels = R == 1 ? 8 : R == 2 ? 4 : 3;
inline IVec sums_start(std::int32_t offset) { return _mm512_set1_epi32(offset); }
inline IVec broadcast_inputs(const std::int8_t* p) { return _mm512_set1_epi32(four_codes(p)); }
inline IVec load_codes(const std::int8_t* p) { return _mm512_loadu_si512(p); }
inline IVec dot4(IVec sums, IVec biased_codes, IVec inputs) { return _mm512_dpbusd_epi32(sums, biased_codes, inputs); }
inline FVec to_floats(IVec v) { return _mm512_cvtepi32_ps(v); }
inline FVec fzero() { return _mm512_setzero_ps(); }
inline FVec fload(const float* p) { return _mm512_loadu_ps(p); }
inline FVec fbroadcast(float v) { return _mm512_set1_ps(v); }
inline FVec fmul(FVec a, FVec b) { return _mm512_mul_ps(a, b); }
inline FVec ffma(FVec a, FVec b, FVec c) { return _mm512_fmadd_ps(a, b, c); }
inline void fstore(float* p, FVec v) { _mm512_storeu_ps(p, v); }
#include "kernels/cpu/int8_tiles.inc"
#pragma GCC diagnostic pop
#pragma GCC pop_options
}  // namespace vnni
#endif

namespace {

// Without AVX2: the same arithmetic in plain loops over the panels.
// (8-wide panels: codes stored as they are)
void product_portable(const std::int8_t* codes, const float* scales, std::int64_t stride, std::int64_t lanes,
                      std::int64_t blocks, const QuantizedRows& x, std::int64_t p0, std::int64_t panels, float* out,
                      std::int64_t ldo) {
  for (std::int64_t r = 0; r < x.m; ++r)
    for (std::int64_t p = p0; p < p0 + panels; ++p)
      for (std::int64_t lane = 0; lane < lanes; ++lane) {
        float acc = 0.0f;
        for (std::int64_t b = 0; b < blocks; ++b) {
          std::int32_t sum = 0;
          for (std::int64_t i = 0; i < kQuantBlock; ++i) {
            const std::int64_t g = b * kGroupsPerBlock + i / 4;
            sum += static_cast<std::int32_t>(x.codes[r * x.k + b * kQuantBlock + i]) *
                   codes[p * stride + (g * lanes + lane) * 4 + i % 4];
          }
          acc = std::fma(static_cast<float>(sum), scales[(p * blocks + b) * lanes + lane] * x.scales[r * blocks + b], acc);
        }
        out[r * ldo + (p - p0) * lanes + lane] = acc;
      }
}

}  // namespace

void QuantizedRows::assign(const float* x, std::int64_t rows, std::int64_t cols) {
  m = rows;
  k = cols;
  const std::int64_t blocks = rows * (cols / kQuantBlock);
  codes.resize(static_cast<std::size_t>(rows * cols));
  scales.resize(static_cast<std::size_t>(blocks));
  offsets.resize(static_cast<std::size_t>(blocks));
  quantize_input_blocks(x, rows, cols, codes.data(), scales.data());
  for (std::int64_t b = 0; b < blocks; ++b) {
    std::int32_t sum = 0;
    for (std::int64_t i = 0; i < kQuantBlock; ++i) sum += codes[b * kQuantBlock + i];
    offsets[b] = -128 * sum;
  }
}

std::int64_t Int8PanelMatrix::widest_panel_width() { return have_avx512_vnni() ? 16 : 8; }

Int8PanelMatrix::Int8PanelMatrix(const BlockInt8Matrix& weights, std::int64_t panel_width) : shape_(weights.shape) {
  const auto [rows, cols] = shape_;
  if (!fits_int8_blocks(shape_)) throw InternalError("Int8PanelMatrix: rows are not whole blocks");
  if (panel_width == 0) panel_width = widest_panel_width();
  if (panel_width != 8 && (panel_width != 16 || !have_avx512_vnni()))
    throw InternalError("Int8PanelMatrix: panels of " + std::to_string(panel_width) + " features cannot run on this CPU");
  lanes_ = panel_width;
  blocks_ = cols / kQuantBlock;
  // 64 bytes past each panel: panels read side by side would otherwise map to the same
  // L1 sets whenever cols * lanes is a multiple of 4 KB
  stride_ = cols * lanes_ + 64;
  const std::int64_t panels = (rows + lanes_ - 1) / lanes_;
  // padding weighs 0 (biased: 128)
  codes_.assign(static_cast<std::size_t>(panels * stride_), biased() ? static_cast<std::int8_t>(-128) : 0);
  scales_.assign(static_cast<std::size_t>(panels * blocks_ * lanes_), 0.0f);
  for (std::int64_t f = 0; f < rows; ++f) {
    const std::int64_t p = f / lanes_, lane = f % lanes_;
    for (std::int64_t b = 0; b < blocks_; ++b) {
      scales_[(p * blocks_ + b) * lanes_ + lane] = weights.scales[f * blocks_ + b];
      for (std::int64_t i = 0; i < kQuantBlock; ++i) {
        const std::int8_t code = weights.codes[f * cols + b * kQuantBlock + i];
        const std::int64_t g = b * kGroupsPerBlock + i / 4;
        codes_[p * stride_ + (g * lanes_ + lane) * 4 + i % 4] = biased() ? static_cast<std::int8_t>(code ^ 0x80) : code;
      }
    }
  }
}

std::size_t Int8PanelMatrix::bytes() const { return codes_.size() + scales_.size() * sizeof(float); }

void Int8PanelMatrix::product(const QuantizedRows& x, std::int64_t first, std::int64_t end, float* out,
                              std::int64_t ldo) const {
  if (first % lanes_ != 0 || first < 0 || end > shape_.rows || first >= end || x.k != shape_.cols)
    throw InternalError("Int8PanelMatrix::product: features not on a panel boundary, or inputs of another width");
  const std::int64_t p0 = first / lanes_, panels = (end - first + lanes_ - 1) / lanes_;
  const std::int8_t* codes = codes_.data() + p0 * stride_;
  const float* scales = scales_.data() + p0 * blocks_ * lanes_;
#if defined(__x86_64__)
  if (lanes_ == 16) {
    const vnni::Inputs inputs{x.codes.data(), x.scales.data(), x.offsets.data(), x.k, blocks_};
    return vnni::int8_rows(inputs, x.m, vnni::Panels{codes, scales, stride_, blocks_}, panels, out, ldo);
  }
  if (have_avx2()) {
    const avx2::Inputs inputs{x.codes.data(), x.scales.data(), x.offsets.data(), x.k, blocks_};
    return avx2::int8_rows(inputs, x.m, avx2::Panels{codes, scales, stride_, blocks_}, panels, out, ldo);
  }
#endif
  product_portable(codes_.data(), scales_.data(), stride_, lanes_, blocks_, x, p0, panels, out, ldo);
}

void Int8PanelMatrix::row(std::int64_t r, std::span<float> out) const {
  if (r < 0 || r >= shape_.rows || static_cast<std::int64_t>(out.size()) < shape_.cols)
    throw InternalError("Int8PanelMatrix::row out of range");
  const std::int64_t p = r / lanes_, lane = r % lanes_;
  for (std::int64_t i = 0; i < shape_.cols; ++i) {
    const std::int64_t b = i / kQuantBlock, g = i / 4;
    const std::int8_t stored = codes_[p * stride_ + (g * lanes_ + lane) * 4 + i % 4];
    out[i] = scales_[(p * blocks_ + b) * lanes_ + lane] * (biased() ? static_cast<std::int8_t>(stored ^ 0x80) : stored);
  }
}

}  // namespace amanuensis::kernels::cpu

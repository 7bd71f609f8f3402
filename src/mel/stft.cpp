// mel: the lane implementations of the STFT (mel/stft_lanes.inc compiled per instruction
// set) and the choice among them from the CPU's features.
#include "mel/stft.h"

#include <algorithm>
#include <cmath>
#include <complex>
#include <cstdint>
#include <limits>
#include <numbers>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/cpu_features.h"

namespace amanuensis::mel {

FftPlan::FftPlan(std::size_t size) : n(size), half(size / 2) {
  if (n == 0 || n % 2 != 0) throw std::invalid_argument("FftPlan: the size must be even and positive");
  // radix 4 first: half the passes of radix 2, and its 4-point DFT needs no multiplications
  std::size_t rest = half;
  for (std::size_t p : {4u, 2u, 5u}) {
    while (rest % p == 0 && rest > 1) {
      factors.push_back(p);
      rest /= p;
    }
  }
  if (rest != 1 || factors.empty())
    throw std::invalid_argument("FftPlan: n / 2 must be a product of 2, 4 and 5 (got " + std::to_string(half) + ")");
  const auto root = [](std::size_t j, std::size_t m) {
    const double angle = -2.0 * std::numbers::pi * static_cast<double>(j) / static_cast<double>(m);
    return std::complex<float>(static_cast<float>(std::cos(angle)), static_cast<float>(std::sin(angle)));
  };
  for (std::size_t j = 0; j < half; ++j) twiddles.push_back(root(j, half));
  for (std::size_t k = 0; k <= n / 4; ++k) split.push_back(root(k, n));
}

float padded_sample(const Frontend& frontend, std::ptrdiff_t j) {
  const auto total = static_cast<std::ptrdiff_t>(frontend.total);
  if (j < 0 || j >= total) {
    if (total == 1) return frontend.samples.empty() || frontend.base > 0 ? 0.0f : frontend.samples[0];
    const std::ptrdiff_t period = 2 * (total - 1);
    j %= period;
    if (j < 0) j += period;
    if (j >= total) j = period - j;
  }
  const auto at = static_cast<std::size_t>(j);
  // past the held stretch is past the recording: the zeros of the padding
  return at >= frontend.base && at - frontend.base < frontend.samples.size() ? frontend.samples[at - frontend.base] : 0.0f;
}

#if defined(__x86_64__)
#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma")
namespace lanes16 {
constexpr int kLanes = 16;
#include "mel/stft_lanes.inc"
}  // namespace lanes16
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace lanes8 {
constexpr int kLanes = 8;
#include "mel/stft_lanes.inc"
}  // namespace lanes8
#pragma GCC pop_options
#endif

namespace lanes4 {  // the baseline instruction set
constexpr int kLanes = 4;
#include "mel/stft_lanes.inc"
}  // namespace lanes4

namespace {

enum class LaneWidth { Four, Eight, Sixteen };

LaneWidth widest_lanes() {
#if defined(__x86_64__)
  if (cpu_features().avx512f) return LaneWidth::Sixteen;
  if (cpu_features().avx2 && cpu_features().fma) return LaneWidth::Eight;
  return LaneWidth::Four;
#else
  return LaneWidth::Four;
#endif
}

}  // namespace

float log_mel_columns(const Frontend& frontend, int offset, int first, int last, int stride, std::span<float> data) {
  switch (widest_lanes()) {
#if defined(__x86_64__)
    case LaneWidth::Sixteen:
      return lanes16::columns(frontend, offset, first, last, stride, data);
    case LaneWidth::Eight:
      return lanes8::columns(frontend, offset, first, last, stride, data);
#endif
    default:
      return lanes4::columns(frontend, offset, first, last, stride, data);
  }
}

std::vector<std::complex<float>> real_dft(const FftPlan& plan, std::span<const float> frame) {
  if (frame.size() != plan.n) throw std::invalid_argument("real_dft: the frame must hold plan.n values");
  switch (widest_lanes()) {
#if defined(__x86_64__)
    case LaneWidth::Sixteen:
      return lanes16::one_frame_dft(plan, frame);
    case LaneWidth::Eight:
      return lanes8::one_frame_dft(plan, frame);
#endif
    default:
      return lanes4::one_frame_dft(plan, frame);
  }
}

}  // namespace amanuensis::mel

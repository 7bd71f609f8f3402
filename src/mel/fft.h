// mel: the plan of the float32 FFT behind the STFT (mixed radix 4/2/5, so it handles
// Whisper's n_fft = 400 = 2^4 * 5^2 without padding to a power of two), and a one-frame
// entry point to it for tests. The transform itself runs on many frames at once, one
// frame per SIMD lane (mel/stft_lanes.inc).
#pragma once

#include <complex>
#include <cstddef>
#include <span>
#include <vector>

namespace amanuensis::mel {

// The factors and twiddles of a real DFT of n values (n even, n / 2 a product of 2, 4
// and 5): one complex FFT of n / 2 points over the even/odd samples packed as complex
// numbers, then a split into bins 0..n/2. Immutable: shared by every thread.
struct FftPlan {
  explicit FftPlan(std::size_t n);

  std::size_t n = 0;                           // real values
  std::size_t half = 0;                        // complex points of the inner FFT
  std::vector<std::size_t> factors;            // radices of the inner FFT, outermost first
  std::vector<std::complex<float>> twiddles;   // exp(-2 pi i j / half), j < half
  std::vector<std::complex<float>> split;      // exp(-2 pi i k / n), k <= n / 4
};

// Forward DFT of one frame of plan.n real values, bins 0..n/2: the lane code run on this
// frame alone (the other lanes hold zeros). For tests of the transform.
std::vector<std::complex<float>> real_dft(const FftPlan& plan, std::span<const float> frame);

}  // namespace amanuensis::mel

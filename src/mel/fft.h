// mel: a small float64 FFT for the STFT (mixed radix, so it handles Whisper's n_fft = 400
// = 2^4 * 5^2 without padding to a power of two).
#pragma once

#include <complex>
#include <cstddef>
#include <span>
#include <vector>

namespace amanuensis::mel {

// Forward complex DFT, X[k] = sum_n x[n] exp(-2 pi i n k / N), any N >= 1 (radix-2/4/5
// butterflies, a generic butterfly for other prime factors). The plan is immutable, so one
// instance may be used from several threads.
class ComplexFft {
 public:
  explicit ComplexFft(std::size_t n);

  std::size_t size() const { return n_; }
  // `input` and `output` hold size() values and must not overlap.
  void forward(std::span<const std::complex<double>> input, std::span<std::complex<double>> output) const;

 private:
  void transform(const std::complex<double>* in, std::size_t stride, std::complex<double>* out,
                 std::size_t stage) const;
  void butterfly(std::complex<double>* out, std::size_t stride, std::size_t radix, std::size_t m) const;
  void butterfly5(std::complex<double>* out, std::size_t stride, std::size_t m) const;

  std::size_t n_;
  std::vector<std::size_t> factors_;            // radices, outermost first
  std::vector<std::complex<double>> twiddles_;  // exp(-2 pi i j / N), j < N
};

// Forward DFT of N real values (N even), returning bins 0..N/2. Runs one complex FFT of
// size N/2 over the even/odd samples packed as complex numbers, then splits the result.
class RealFft {
 public:
  explicit RealFft(std::size_t n);

  std::size_t size() const { return n_; }
  // `input` holds size() values, `output` size()/2 + 1 bins.
  void forward(std::span<const double> input, std::span<std::complex<double>> output) const;

 private:
  std::size_t n_;
  ComplexFft half_;
  std::vector<std::complex<double>> twiddles_;  // exp(-2 pi i k / N), k <= N/4
};

}  // namespace amanuensis::mel

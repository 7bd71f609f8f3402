// mel: the mixed-radix FFT behind the STFT (recursive decimation in time, as in KISS FFT).
#include "mel/fft.h"

#include <array>
#include <cassert>
#include <cmath>
#include <numbers>
#include <stdexcept>

namespace amanuensis::mel {
namespace {

using Complex = std::complex<double>;

std::vector<std::size_t> factorize(std::size_t n) {
  // Radix 4 first: half the passes of radix 2, and its 4-point DFT needs no multiplications.
  std::vector<std::size_t> factors;
  for (std::size_t p : {4u, 2u}) {
    while (n % p == 0 && n > 1) {
      factors.push_back(p);
      n /= p;
    }
  }
  for (std::size_t p = 3; n > 1; p += 2) {
    if (p * p > n) p = n;  // what is left is prime
    while (n % p == 0) {
      factors.push_back(p);
      n /= p;
    }
  }
  return factors;
}

Complex unit_root(std::size_t j, std::size_t n) {
  const double angle = -2.0 * std::numbers::pi * static_cast<double>(j) / static_cast<double>(n);
  return {std::cos(angle), std::sin(angle)};
}

// Plain complex product. std::complex's operator* goes through __muldc3 (Annex G inf/nan
// recovery) unless built with -fcx-limited-range, which made the FFT about 1.5x slower.
Complex mul(Complex a, Complex b) {
  return {a.real() * b.real() - a.imag() * b.imag(), a.real() * b.imag() + a.imag() * b.real()};
}

// Multiplication by -i, exact (no rounding from a twiddle of (0, -1)).
Complex times_minus_i(Complex z) { return {z.imag(), -z.real()}; }

}  // namespace

ComplexFft::ComplexFft(std::size_t n) : n_(n), factors_(factorize(n)), twiddles_(n) {
  if (n == 0) throw std::invalid_argument("ComplexFft: size must be positive");
  for (std::size_t j = 0; j < n; ++j) twiddles_[j] = unit_root(j, n);
}

void ComplexFft::forward(std::span<const Complex> input, std::span<Complex> output) const {
  assert(input.size() == n_ && output.size() == n_);
  if (factors_.empty()) {  // n == 1
    output[0] = input[0];
    return;
  }
  transform(input.data(), 1, output.data(), 0);
}

// Transforms the `stride`-spaced sub-sequence starting at `in` (length N / stride) into `out`:
// the radix-p sub-transforms are written as p consecutive blocks, then combined in place.
void ComplexFft::transform(const Complex* in, std::size_t stride, Complex* out, std::size_t stage) const {
  const std::size_t radix = factors_[stage];
  const std::size_t m = n_ / stride / radix;
  if (m == 1) {
    for (std::size_t q = 0; q < radix; ++q) out[q] = in[q * stride];
  } else {
    for (std::size_t q = 0; q < radix; ++q) transform(in + q * stride, stride * radix, out + q * m, stage + 1);
  }
  butterfly(out, stride, radix, m);
}

// Combines `radix` sub-transforms of length m: X[k + s m] = sum_q W^{q(k + s m)} Y_q[k], with
// W the (radix m)-th root of unity, i.e. twiddles_[q k stride] times a radix-point DFT.
void ComplexFft::butterfly(Complex* out, std::size_t stride, std::size_t radix, std::size_t m) const {
  if (radix == 2) {
    for (std::size_t k = 0; k < m; ++k) {
      const Complex t = mul(out[k + m], twiddles_[k * stride]);
      out[k + m] = out[k] - t;
      out[k] += t;
    }
    return;
  }
  if (radix == 4) {
    for (std::size_t k = 0; k < m; ++k) {
      const Complex a0 = out[k];
      const Complex a1 = mul(out[k + m], twiddles_[k * stride]);
      const Complex a2 = mul(out[k + 2 * m], twiddles_[2 * k * stride]);
      const Complex a3 = mul(out[k + 3 * m], twiddles_[3 * k * stride]);
      const Complex s02 = a0 + a2, d02 = a0 - a2;
      const Complex s13 = a1 + a3, d13 = times_minus_i(a1 - a3);
      out[k] = s02 + s13;
      out[k + m] = d02 + d13;
      out[k + 2 * m] = s02 - s13;
      out[k + 3 * m] = d02 - d13;
    }
    return;
  }
  if (radix == 5) {
    butterfly5(out, stride, m);
    return;
  }
  // Generic radix (3, 7, ... : only odd primes reach here). The radix-point DFT's roots
  // are twiddles_[(q s mod radix) * N / radix].
  constexpr std::size_t kMaxStackRadix = 64;
  std::array<Complex, kMaxStackRadix> stack_buffer;
  std::vector<Complex> heap_buffer;
  Complex* t = stack_buffer.data();
  if (radix > kMaxStackRadix) {
    heap_buffer.resize(radix);
    t = heap_buffer.data();
  }
  const std::size_t root_step = n_ / radix;
  for (std::size_t k = 0; k < m; ++k) {
    for (std::size_t q = 0; q < radix; ++q) t[q] = mul(out[k + q * m], twiddles_[q * k * stride]);
    for (std::size_t s = 0; s < radix; ++s) {
      Complex sum = t[0];
      std::size_t root = 0;  // q * s mod radix, stepped without a division
      for (std::size_t q = 1; q < radix; ++q) {
        root += s;
        if (root >= radix) root -= radix;
        sum += mul(t[q], twiddles_[root * root_step]);
      }
      out[k + s * m] = sum;
    }
  }
}

// Radix 5 written out: with W = exp(-2 pi i / 5) = c1 - i s1 and W^2 = c2 - i s2, the outputs
// pair up as conjugate-symmetric combinations of (t1 + t4, t2 + t3) and (t1 - t4, t2 - t3),
// which takes about a third of the generic butterfly's multiplications.
void ComplexFft::butterfly5(Complex* out, std::size_t stride, std::size_t m) const {
  const double c1 = twiddles_[n_ / 5].real(), s1 = -twiddles_[n_ / 5].imag();
  const double c2 = twiddles_[2 * n_ / 5].real(), s2 = -twiddles_[2 * n_ / 5].imag();
  for (std::size_t k = 0; k < m; ++k) {
    const Complex t0 = out[k];
    const Complex t1 = mul(out[k + m], twiddles_[k * stride]);
    const Complex t2 = mul(out[k + 2 * m], twiddles_[2 * k * stride]);
    const Complex t3 = mul(out[k + 3 * m], twiddles_[3 * k * stride]);
    const Complex t4 = mul(out[k + 4 * m], twiddles_[4 * k * stride]);
    const Complex sum14 = t1 + t4, sum23 = t2 + t3;
    const Complex diff14 = t1 - t4, diff23 = t2 - t3;
    const Complex real1 = t0 + c1 * sum14 + c2 * sum23;
    const Complex real2 = t0 + c2 * sum14 + c1 * sum23;
    const Complex imag1 = times_minus_i(s1 * diff14 + s2 * diff23);
    const Complex imag2 = times_minus_i(s2 * diff14 - s1 * diff23);
    out[k] = t0 + sum14 + sum23;
    out[k + m] = real1 + imag1;
    out[k + 4 * m] = real1 - imag1;
    out[k + 2 * m] = real2 + imag2;
    out[k + 3 * m] = real2 - imag2;
  }
}

RealFft::RealFft(std::size_t n) : n_(n), half_(n / 2 == 0 ? 1 : n / 2), twiddles_(n / 4 + 1) {
  if (n == 0 || n % 2 != 0) throw std::invalid_argument("RealFft: size must be even and positive");
  for (std::size_t k = 0; k < twiddles_.size(); ++k) twiddles_[k] = unit_root(k, n);
}

void RealFft::forward(std::span<const double> input, std::span<Complex> output) const {
  assert(input.size() == n_ && output.size() == n_ / 2 + 1);
  const std::size_t m = n_ / 2;
  // z[j] = x[2j] + i x[2j+1]: std::complex<double> is layout-compatible with double[2].
  const std::span<const Complex> packed(reinterpret_cast<const Complex*>(input.data()), m);
  half_.forward(packed, output.first(m));

  // With Z = FFT(z): E[k] = (Z[k] + conj Z[m-k]) / 2 and O[k] = (Z[k] - conj Z[m-k]) / 2i are
  // the DFTs of the even and odd samples, X[k] = E[k] + W^k O[k] and, because E and O are
  // Hermitian and W^(m-k) = -conj W^k, X[m-k] = conj(E[k] - W^k O[k]). Pairs are done together
  // so the split can overwrite Z in place.
  const Complex z0 = output[0];
  output[0] = z0.real() + z0.imag();
  output[m] = z0.real() - z0.imag();
  for (std::size_t k = 1; k <= m / 2; ++k) {
    const Complex a = output[k];
    const Complex b = std::conj(output[m - k]);
    const Complex even = 0.5 * (a + b);
    const Complex odd = 0.5 * times_minus_i(a - b);
    const Complex w_odd = mul(twiddles_[k], odd);
    output[k] = even + w_odd;
    output[m - k] = std::conj(even - w_odd);
  }
}

}  // namespace amanuensis::mel

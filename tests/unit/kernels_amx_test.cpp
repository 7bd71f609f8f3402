// The AMX-BF16 tile kernels (kernels/cpu/amx_bf16.h) against the exact arithmetic they
// stand for: operands rounded to bf16, products summed in float64. Only the order and
// width of the float32 sums differ, so the tolerances are float32-tight. Skipped, with
// the reason, on a CPU without AMX-BF16: the oneDNN backend does not take them there.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/amx_bf16.h"
#include "random_values.h"

namespace amanuensis::kernels::cpu::amx {
namespace {

#define SKIP_WITHOUT_AMX()                                                                                          \
  if (!available())                                                                                                 \
  GTEST_SKIP() << "no AMX-BF16 tiles on this CPU (or the system refused them): the oneDNN backend runs bf16 on " \
                  "oneDNN's own kernels here"

std::uint16_t bf16_bits(float x) {
  auto u = std::bit_cast<std::uint32_t>(x);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<std::uint16_t>(u >> 16);
}

double from_bf16(std::uint16_t b) { return std::bit_cast<float>(static_cast<std::uint32_t>(b) << 16); }
double bf16(float x) { return from_bf16(bf16_bits(x)); }

double gelu(double x) { return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0))); }

TEST(AmxTiles, RoundingToBf16IsNearestEven) {
  SKIP_WITHOUT_AMX();
  const auto x = random_values(1000, 1, 3.0f);
  std::vector<std::uint16_t> y(x.size() + 1, 0xffff);
  round_to_bf16(x.data(), y.data(), 999, 0.5f);  // a length with a tail, scaled
  for (std::size_t i = 0; i < 999; ++i) ASSERT_EQ(y[i], bf16_bits(x[i] * 0.5f)) << i;
  EXPECT_EQ(y[999], 0xffff);  // nothing written past n
}

// Shapes: rows short of, equal to and past one block of 32, inputs a whole number of
// steps and not (72), features not a multiple of 32; every finish, float and bf16 out.
TEST(AmxTiles, ProductsAreTheBf16ProductsSummedExactly) {
  SKIP_WITHOUT_AMX();
  struct Shape {
    std::int64_t m, k, n;
  };
  for (const Shape s : {Shape{1, 64, 32}, Shape{31, 72, 40}, Shape{32, 384, 96}, Shape{100, 240, 300}}) {
    const auto w = random_values(s.n * s.k, 2, 0.2f), bias = random_values(s.n, 3, 0.5f);
    const auto x = random_values(s.m * s.k, 4, 1.0f), residual = random_values(s.m * s.n, 5, 1.0f);
    const Bf16Panels panels(w, s.n, s.k);
    ASSERT_EQ(panels.rows(), s.n);
    ASSERT_EQ(panels.cols(), s.k);
    // the input's rows further apart than k: a caller's row stride is honoured
    const std::int64_t lda = s.k + 8;
    std::vector<std::uint16_t> a(s.m * lda, bf16_bits(NAN));
    for (std::int64_t r = 0; r < s.m; ++r)
      for (std::int64_t i = 0; i < s.k; ++i) a[r * lda + i] = bf16_bits(x[r * s.k + i]);
    for (bool with_bias : {false, true})
      for (auto finish : {Finish::Store, Finish::Gelu, Finish::Accumulate})
        for (bool bf16_out : {false, true}) {
          if (bf16_out && finish == Finish::Accumulate) continue;
          SCOPED_TRACE(std::to_string(s.m) + "x" + std::to_string(s.k) + "x" + std::to_string(s.n) +
                       (with_bias ? " bias" : "") + " finish " + std::to_string(static_cast<int>(finish)) +
                       (bf16_out ? " bf16" : " f32"));
          std::vector<float> y = residual;
          std::vector<std::uint16_t> y16(s.m * s.n, 0);
          const ProductOut out = bf16_out ? ProductOut{.bf16 = y16.data(), .ld = s.n} : ProductOut{.f32 = y.data(), .ld = s.n};
          product(a.data(), s.m, lda, panels, with_bias ? std::span<const float>(bias) : std::span<const float>{},
                  finish, out);
          double worst = 0.0;
          for (std::int64_t r = 0; r < s.m; ++r)
            for (std::int64_t c = 0; c < s.n; ++c) {
              double sum = with_bias ? bias[c] : 0.0, magnitude = 1.0;
              for (std::int64_t i = 0; i < s.k; ++i) {
                const double term = bf16(x[r * s.k + i]) * bf16(w[c * s.k + i]);
                sum += term;
                magnitude += std::abs(term);
              }
              double expect = finish == Finish::Gelu ? gelu(sum) : sum;
              if (finish == Finish::Accumulate) expect += residual[r * s.n + c];
              const double got = bf16_out ? from_bf16(y16[r * s.n + c]) : y[r * s.n + c];
              // float32 sums in another order; bf16 output: half a bf16 step more
              const double allowed = 1e-5 * magnitude + (bf16_out ? std::abs(expect) / 256.0 : 0.0);
              worst = std::max(worst, std::abs(got - expect) / allowed);
            }
          EXPECT_LE(worst, 1.0);
        }
  }
}

// Queries past one block of 32 and short of the next; key counts with and without a
// remainder of 32; rows further apart than a head (several heads side by side).
TEST(AmxTiles, AttentionIsSoftmaxOfBf16ScoresOverBf16Values) {
  SKIP_WITHOUT_AMX();
  constexpr std::int64_t hd = kHeadSize, stride = 3 * kHeadSize;
  for (const auto& [n_q, n_kv] : {std::pair<std::int64_t, std::int64_t>{1, 7}, {45, 64}, {70, 150}, {33, 1500}}) {
    SCOPED_TRACE("n_q " + std::to_string(n_q) + " n_kv " + std::to_string(n_kv));
    const auto q = random_values(n_q * stride, 6, 1.0f), k = random_values(n_kv * stride, 7, 1.0f),
               v = random_values(n_kv * stride, 8, 1.0f);
    std::vector<float> out(n_q * stride, 12345.0f);
    // the second of three heads
    attention_head(q.data() + hd, n_q, k.data() + hd, v.data() + hd, n_kv, stride, out.data() + hd);
    double worst = 0.0;
    for (std::int64_t i = 0; i < n_q; ++i) {
      std::vector<double> p(n_kv);
      double max = -1e300;
      for (std::int64_t j = 0; j < n_kv; ++j) {
        double s = 0.0;
        for (std::int64_t t = 0; t < hd; ++t) s += bf16(q[i * stride + hd + t] * 0.125f) * bf16(k[j * stride + hd + t]);
        max = std::max(max, p[j] = s);
      }
      double sum = 0.0;
      for (auto& x : p) sum += (x = std::exp(x - max));
      for (std::int64_t t = 0; t < hd; ++t) {
        double o = 0.0;
        for (std::int64_t j = 0; j < n_kv; ++j) o += p[j] / sum * bf16(v[j * stride + hd + t]);
        worst = std::max(worst, std::abs(o - out[i * stride + hd + t]));
      }
      // the other heads' columns are not written
      EXPECT_EQ(out[i * stride], 12345.0f);
      EXPECT_EQ(out[i * stride + 2 * hd], 12345.0f);
    }
    // the weights are rounded to bf16 (relative 2^-9 each) before the values are summed
    EXPECT_LE(worst, 1e-2);
  }
}

TEST(AmxTiles, BadOutputsAreRefused) {
  SKIP_WITHOUT_AMX();
  const std::vector<float> w(32 * 32, 0.5f);
  const Bf16Panels panels(w, 32, 32);
  std::vector<std::uint16_t> a(32 * 32, 0), y16(32 * 32);
  std::vector<float> y(32 * 32);
  EXPECT_THROW(product(a.data(), 32, 32, panels, {}, Finish::Store, {}), std::exception);
  EXPECT_THROW(product(a.data(), 32, 32, panels, {}, Finish::Accumulate, {.bf16 = y16.data(), .ld = 32}),
               std::exception);
  const std::vector<float> short_bias(3, 0.0f);
  EXPECT_THROW(product(a.data(), 32, 32, panels, short_bias, Finish::Store, {.f32 = y.data(), .ld = 32}),
               std::exception);
  EXPECT_THROW(Bf16Panels(std::vector<float>(10), 32, 32), std::exception);
}

}  // namespace
}  // namespace amanuensis::kernels::cpu::amx

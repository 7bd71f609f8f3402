// Every available backend against the float64 definition of each Backend operation:
// linear with each epilogue (few rows and many, f16-exact weights packed for decoder
// steps and plain ones), attention (full and causal), layer norm.
#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "kernels/cpu/quant.h"

namespace amanuensis::kernels {
namespace {

std::vector<float> random_values(std::size_t n, unsigned seed, float scale) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

double gelu(double x) { return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0))); }

std::vector<std::shared_ptr<const Backend>> all_backends() {
  std::vector<std::shared_ptr<const Backend>> list{make_reference_backend(Precision::Fp32), make_backend(Precision::Fp32),
                                                   make_reference_backend(Precision::Bf16)};
  if (cpu_has_native_bf16()) list.push_back(make_backend(Precision::Bf16));
  return list;
}

// bf16 rounds both operands to 8 significant bits
double tolerance(const Backend& b, double scale) { return (b.precision() == Precision::Bf16 ? 2e-2 : 1e-4) * scale; }

TEST(KernelsBackend, PrecisionNames) {
  EXPECT_EQ(parse_precision("auto"), Precision::Auto);
  EXPECT_EQ(parse_precision("fp32"), Precision::Fp32);
  EXPECT_EQ(parse_precision("bf16"), Precision::Bf16);
  EXPECT_THROW(parse_precision("fp8"), std::exception);
  EXPECT_EQ(resolve(Precision::Fp32, true), Precision::Fp32);
  EXPECT_EQ(resolve(Precision::Auto, false), Precision::Fp32);
}

TEST(KernelsBackend, LinearMatchesDefinition) {
  for (const auto& backend : all_backends()) {
    SCOPED_TRACE(backend->name());
    for (std::int64_t m : {1, 3, 5, 70}) {
      for (bool few : {false, true}) {
        for (bool with_bias : {false, true}) {
          const std::int64_t k = 72, n = 300;  // k not a multiple of 16, n spans several slices
          auto w = random_values(n * k, 1, 0.2f);
          if (few)
            for (auto& v : w) v = cpu::half_to_float(cpu::float_to_half(v));
          const auto bias = with_bias ? random_values(n, 2, 0.5f) : std::vector<float>{};
          const auto x = random_values(m * k, 3, 1.0f);
          const auto residual = random_values(m * n, 4, 1.0f);
          const auto packed = backend->pack(n, k, w, bias, few ? RowsHint::Few : RowsHint::Many);
          ASSERT_EQ(packed->rows(), n);
          ASSERT_EQ(packed->cols(), k);
          for (auto e : {Epilogue::Store, Epilogue::Gelu, Epilogue::Accumulate}) {
            SCOPED_TRACE("m " + std::to_string(m) + (few ? " few" : " many") + (with_bias ? " bias" : "") + " epilogue " +
                         std::to_string(static_cast<int>(e)));
            std::vector<float> y = residual;
            backend->linear(x, m, *packed, y, e);
            double worst = 0.0;
            for (std::int64_t r = 0; r < m; ++r)
              for (std::int64_t c = 0; c < n; ++c) {
                double s = with_bias ? bias[c] : 0.0;
                for (std::int64_t i = 0; i < k; ++i) s += static_cast<double>(x[r * k + i]) * w[c * k + i];
                const double expect = e == Epilogue::Gelu ? gelu(s) : e == Epilogue::Accumulate ? residual[r * n + c] + s : s;
                worst = std::max(worst, std::abs(expect - y[r * n + c]));
              }
            EXPECT_LE(worst, tolerance(*backend, 4.0));
          }
        }
      }
    }
  }
}

TEST(KernelsBackend, AttentionMatchesDefinition) {
  for (const auto& backend : all_backends()) {
    SCOPED_TRACE(backend->name());
    const int n_head = 3;
    const std::int64_t d = 48, hd = d / n_head;
    struct Case {
      std::int64_t n_q, n_kv, causal_offset;
    };
    for (const Case c : {Case{150, 150, -1}, Case{1, 200, -1}, Case{7, 12, 5}, Case{70, 70, 0}}) {
      SCOPED_TRACE("n_q " + std::to_string(c.n_q) + " n_kv " + std::to_string(c.n_kv) + " causal " +
                   std::to_string(c.causal_offset));
      const auto q = random_values(c.n_q * d, 5, 1.0f), k = random_values(c.n_kv * d, 6, 1.0f),
                 v = random_values(c.n_kv * d, 7, 1.0f);
      std::vector<float> out(c.n_q * d, -1.0f);
      backend->attention(q, c.n_q, k, v, c.n_kv, n_head, d, c.causal_offset, out);
      double worst = 0.0;
      for (int h = 0; h < n_head; ++h)
        for (std::int64_t i = 0; i < c.n_q; ++i) {
          const std::int64_t visible = c.causal_offset < 0 ? c.n_kv : std::min(c.n_kv, c.causal_offset + i + 1);
          std::vector<double> p(visible);
          double max = -1e300, sum = 0.0;
          for (std::int64_t j = 0; j < visible; ++j) {
            double s = 0.0;
            for (std::int64_t t = 0; t < hd; ++t) s += static_cast<double>(q[i * d + h * hd + t]) * k[j * d + h * hd + t];
            p[j] = s / std::sqrt(static_cast<double>(hd));
            max = std::max(max, p[j]);
          }
          for (auto& x : p) sum += (x = std::exp(x - max));
          for (std::int64_t t = 0; t < hd; ++t) {
            double o = 0.0;
            for (std::int64_t j = 0; j < visible; ++j) o += p[j] / sum * v[j * d + h * hd + t];
            worst = std::max(worst, std::abs(o - out[i * d + h * hd + t]));
          }
        }
      EXPECT_LE(worst, 1e-4);
    }
  }
}

TEST(KernelsBackend, LayerNormMatchesDefinition) {
  for (const auto& backend : all_backends()) {
    SCOPED_TRACE(backend->name());
    const std::int64_t rows = 130, d = 40;
    auto x = random_values(rows * d, 8, 3.0f);
    const auto gamma = random_values(d, 9, 1.0f), beta = random_values(d, 10, 1.0f);
    const auto original = x;
    backend->layer_norm(x, rows, gamma, beta);
    double worst = 0.0;
    for (std::int64_t r = 0; r < rows; ++r) {
      double mean = 0.0, var = 0.0;
      for (std::int64_t i = 0; i < d; ++i) mean += original[r * d + i];
      mean /= d;
      for (std::int64_t i = 0; i < d; ++i) var += (original[r * d + i] - mean) * (original[r * d + i] - mean);
      var /= d;
      for (std::int64_t i = 0; i < d; ++i) {
        const double expect = (original[r * d + i] - mean) / std::sqrt(var + 1e-5) * gamma[i] + beta[i];
        worst = std::max(worst, std::abs(expect - x[r * d + i]));
      }
    }
    EXPECT_LE(worst, 1e-4);
  }
}

}  // namespace
}  // namespace amanuensis::kernels

// Every available backend against the float64 definition of each Backend operation:
// linear with each epilogue (few rows and many, f16-exact weights packed for decoder
// steps and plain ones), attention (full and causal), layer norm. And the guarantee
// continuous batching rests on: a row of a product with a RowsHint::Few matrix is the
// same bits whatever rows come with it and however many threads share the work.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "kernels/cpu/fast_math.h"
#include "kernels/cpu/int8_panels.h"
#include "kernels/cpu/panel_matrix.h"
#include "kernels/cpu/quant.h"
#include "kernels/cpu/thread_pool.h"
#include "random_values.h"

namespace amanuensis::kernels {
namespace {

// The pool's size is fixed once it starts, so a one-thread run is this binary again
// with KERNELS_TEST_THREADS=1 (see FewRowsSameForAnyThreadCount). Two threads otherwise,
// even on a one-core machine, so the shared-out paths always run.
const bool pool_sized = [] {
  const char* env = std::getenv("KERNELS_TEST_THREADS");
  cpu::set_thread_count(env != nullptr ? std::atoi(env) : 2);
  return true;
}();

double gelu(double x) { return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0))); }

std::vector<std::shared_ptr<const Backend>> all_backends() {
  std::vector<std::shared_ptr<const Backend>> list{make_reference_backend(Precision::Fp32), make_backend({.precision = Precision::Fp32}),
                                                   make_reference_backend(Precision::Bf16),
                                                   make_reference_backend(Precision::Int8),
                                                   make_backend({.precision = Precision::Int8})};
  if (cpu_has_native_bf16()) list.push_back(make_backend({.precision = Precision::Bf16}));
  return list;
}

// Whether the window products run on oneDNN with int8 dot-product instructions, from the
// instruction set kernels() names ("windows: onednn avx512_core_vnni int8; ...").
bool windows_have_int8_dot(const Backend& b) {
  const std::string kernels = b.kernels(), prefix = "windows: onednn ";
  if (kernels.rfind(prefix, 0) != 0) return false;
  const std::string isa = kernels.substr(prefix.size(), kernels.find(' ', prefix.size()) - prefix.size());
  return isa.find("vnni") != std::string::npos || isa.find("amx") != std::string::npos ||
         isa.find("bf16") != std::string::npos;
}

// bf16 rounds both operands to 8 significant bits; int8 to 255 steps of a row's largest
double tolerance(const Backend& b, double scale) {
  const double relative = b.precision() == Precision::Int8 ? 5e-2 : b.precision() == Precision::Bf16 ? 2e-2 : 1e-4;
  return relative * scale;
}

TEST(KernelsBackend, PrecisionNames) {
  EXPECT_EQ(parse_precision("auto"), Precision::Auto);
  EXPECT_EQ(parse_precision("fp32"), Precision::Fp32);
  EXPECT_EQ(parse_precision("bf16"), Precision::Bf16);
  EXPECT_EQ(parse_precision("int8"), Precision::Int8);
  EXPECT_THROW(parse_precision("fp8"), std::exception);
  EXPECT_EQ(resolve(Precision::Fp32), Precision::Fp32);
  EXPECT_EQ(resolve(Precision::Bf16), Precision::Bf16);
  EXPECT_EQ(resolve(Precision::Int8, WeightFormat::Float), Precision::Int8);
  // auto takes bf16 only where it measured faster (AMX-BF16; AVX512_BF16 on AMD)
  const Precision float_auto = cpu_runs_bf16_fast() ? Precision::Bf16 : Precision::Fp32;
  EXPECT_EQ(resolve(Precision::Auto), float_auto);
  EXPECT_EQ(resolve(Precision::Auto, WeightFormat::Quantized),
            cpu_runs_bf16_fast() ? Precision::Bf16 : cpu_has_int8_dot() ? Precision::Int8 : Precision::Fp32);
  EXPECT_EQ(parse_backend_kind(""), BackendKind::Best);
  EXPECT_EQ(parse_backend_kind("reference"), BackendKind::Reference);
  EXPECT_EQ(parse_backend_kind("onednn"), BackendKind::Onednn);
  EXPECT_THROW(parse_backend_kind("cuda"), std::exception);
  EXPECT_EQ(make_backend({.precision = Precision::Fp32, .backend = BackendKind::Reference})->name(),
            make_reference_backend(Precision::Fp32)->name());
}

TEST(KernelsBackend, LinearMatchesDefinition) {
  for (const auto& backend : all_backends()) {
    SCOPED_TRACE(backend->name());
    // k = 72: not a multiple of 16 (nor of int8's blocks of 32: such Few matrices stay as
    // stored); 96: whole blocks. n spans several slices
    for (const std::int64_t k : {72, 96})
    for (std::int64_t m : {1, 3, 5, 70}) {
      for (bool few : {false, true}) {
        for (bool with_bias : {false, true}) {
          const std::int64_t n = 300;
          auto w = random_values(n * k, 1, 0.2f);
          if (few)
            for (auto& v : w) v = cpu::half_to_float(cpu::float_to_half(v));
          const auto bias = with_bias ? random_values(n, 2, 0.5f) : std::vector<float>{};
          const auto x = random_values(m * k, 3, 1.0f);
          const auto residual = random_values(m * n, 4, 1.0f);
          const auto packed = backend->pack(kernels::stored_floats(w, {n, k}), bias, few ? RowsHint::Few : RowsHint::Many);
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
            EXPECT_LE(worst, tolerance(*backend, 4.0)) << "k " << k;
          }
        }
      }
    }
  }
}

// The engine's int8 products are the reference's exactly where the CPU has int8 dot
// products (the int32 sums are exact; scaling is the same float operations in the same
// order), so the reference backend gives an int8 run's numerics on any machine.
TEST(KernelsBackend, Int8EngineProductsAreTheReferenceBits) {
  const auto engine = make_backend({.precision = Precision::Int8});
  if (!windows_have_int8_dot(*engine))
    GTEST_SKIP() << "oneDNN runs no AVX512_VNNI / AVX_VNNI / AMX-INT8 here (" << engine->kernels()
                 << "): without them the engine's window products are float32, so only the tolerance test applies";
  const auto reference = make_reference_backend(Precision::Int8);
  ASSERT_NE(engine->name(), reference->name());
  const std::int64_t m = 300, k = 384, n = 96;
  const auto w = random_values(n * k, 11, 0.1f), bias = random_values(n, 12, 0.5f), x = random_values(m * k, 13, 1.0f);
  const auto a = engine->pack(kernels::stored_floats(w, {n, k}), bias, RowsHint::Many);
  const auto b = reference->pack(kernels::stored_floats(w, {n, k}), bias, RowsHint::Many);
  for (auto e : {Epilogue::Store, Epilogue::Accumulate}) {
    std::vector<float> ya(m * n, 0.25f), yb(m * n, 0.25f);
    engine->linear(x, m, *a, ya, e);
    reference->linear(x, m, *b, yb, e);
    std::int64_t differ = 0;
    for (std::size_t i = 0; i < ya.size(); ++i) differ += ya[i] != yb[i];
    EXPECT_EQ(differ, 0) << "epilogue " << static_cast<int>(e);
  }
}

// Decoder steps in int8 (Few matrices of whole blocks): the engine's products are the
// reference's bits on every CPU (AVX2 or VNNI: the int32 sums are exact), and so is the
// embedding read back from them.
TEST(KernelsBackend, Int8StepProductsAreTheReferenceBits) {
  const auto engine = make_backend({.precision = Precision::Int8});
  const auto reference = make_reference_backend(Precision::Int8);
  ASSERT_NE(engine->name(), reference->name());
  const std::int64_t k = 384, n = 1000;
  const auto w = random_values(n * k, 21, 0.1f), bias = random_values(n, 22, 0.5f);
  const auto a = engine->pack(kernels::stored_floats(w, {n, k}), bias, RowsHint::Few);
  const auto b = reference->pack(kernels::stored_floats(w, {n, k}), bias, RowsHint::Few);
  for (std::int64_t m : {1, 4, 17}) {
    const auto x = random_values(m * k, 23 + static_cast<unsigned>(m), 1.0f);
    for (auto e : {Epilogue::Store, Epilogue::Gelu, Epilogue::Accumulate}) {
      std::vector<float> ya(m * n, 0.25f), yb(m * n, 0.25f);
      engine->linear(x, m, *a, ya, e);
      reference->linear(x, m, *b, yb, e);
      EXPECT_EQ(std::memcmp(ya.data(), yb.data(), ya.size() * sizeof(float)), 0)
          << "m " << m << " epilogue " << static_cast<int>(e);
    }
  }
  std::vector<float> ra(k), rb(k);
  for (std::int64_t row : {0, 517, 999}) {
    engine->matrix_row(*a, row, ra);
    reference->matrix_row(*b, row, rb);
    EXPECT_EQ(ra, rb) << "row " << row;
    for (std::int64_t i = 0; i < k; ++i) ASSERT_NEAR(ra[i], w[row * k + i], 0.01f) << "row " << row;
  }
}

// Each backend says which kernels it chose: the engine names its step kernels and their
// width on this CPU.
TEST(KernelsBackend, KernelsAreNamed) {
  EXPECT_EQ(make_reference_backend(Precision::Int8)->kernels(), make_reference_backend(Precision::Int8)->name());
  const auto int8 = make_backend({.precision = Precision::Int8});
  if (int8->name().rfind("reference", 0) == 0) GTEST_SKIP() << "built without oneDNN: " << int8->name();
  const std::string lanes = std::to_string(cpu::Int8PanelMatrix::widest_panel_width()) + " lanes";
  EXPECT_NE(int8->kernels().find("steps: int8 blocks, " + lanes), std::string::npos) << int8->kernels();
  const auto fp32 = make_backend({.precision = Precision::Fp32});
  EXPECT_NE(fp32->kernels().find("windows: onednn "), std::string::npos) << fp32->kernels();
  EXPECT_NE(fp32->kernels().find("steps: stored-precision panels, " +
                                 std::to_string(cpu::PanelMatrix::widest_panel_width()) + " lanes"),
            std::string::npos)
      << fp32->kernels();
}

// Which decoder-step matrices int8 multiplies as blocks: linear layers of whole blocks,
// and a token embedding only where the file quantized it (a float file's stays as stored,
// in both backends, so its rows read back exactly).
TEST(KernelsBackend, Int8StepsKeepAFloatFilesEmbedding) {
  const std::vector<float> w(8 * 64, 0.3f);
  const StoredMatrix floats = stored_floats(w, {8, 64});
  std::vector<std::byte> q8(8 * 2 * 34, std::byte{0});
  const StoredMatrix quantized{DType::Q8_0, {8, 64}, q8};
  EXPECT_TRUE(steps_in_int8(floats, WeightRole::Linear));
  EXPECT_FALSE(steps_in_int8(floats, WeightRole::Embedding));
  EXPECT_TRUE(steps_in_int8(quantized, WeightRole::Embedding));
  EXPECT_FALSE(steps_in_int8(floats, WeightRole::Stem));
  const std::vector<float> odd(8 * 40, 0.3f);
  EXPECT_FALSE(steps_in_int8(stored_floats(odd, {8, 40}), WeightRole::Linear));
  const auto random = random_values(8 * 64, 31, 0.2f);
  for (const auto& backend : {make_backend({.precision = Precision::Int8}), make_reference_backend(Precision::Int8)}) {
    const auto embedding = backend->pack(stored_floats(random, {8, 64}), {}, RowsHint::Few, WeightRole::Embedding);
    std::vector<float> row(64);
    backend->matrix_row(*embedding, 5, row);
    EXPECT_EQ(row, std::vector<float>(random.begin() + 5 * 64, random.begin() + 6 * 64)) << backend->name();
  }
}

TEST(KernelsBackend, AttentionMatchesDefinition) {
  for (const auto& backend : all_backends()) {
    SCOPED_TRACE(backend->name());
    struct Case {
      int n_head;
      std::int64_t d, n_q, n_kv, causal_offset;
    };
    // head size 16, and Whisper's 64 (the AMX tiles' size)
    for (const Case c : {Case{3, 48, 150, 150, -1}, Case{3, 48, 1, 200, -1}, Case{3, 48, 7, 12, 5}, Case{3, 48, 70, 70, 0},
                         Case{2, 128, 150, 150, -1}, Case{2, 128, 40, 75, 0}}) {
      const int n_head = c.n_head;
      const std::int64_t d = c.d, hd = d / n_head;
      SCOPED_TRACE("hd " + std::to_string(hd) + " n_q " + std::to_string(c.n_q) + " n_kv " + std::to_string(c.n_kv) +
                   " causal " + std::to_string(c.causal_offset));
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
      EXPECT_LE(worst, tolerance(*backend, 1.0));  // bf16: many-query attention multiplies in bf16
    }
  }
}

// Keys and values stored as half: the same as attention() on the widened values, within
// float rounding, whether the backend reads the halves itself (few queries: the decoder's
// steps) or widens them (many queries).
// Head by head: head h's rows together, each the row's half of those columns.
TEST(KernelsBackend, HalvesByHeadHoldEachHeadsRowsTogether) {
  const std::int64_t rows = 5, d = 12;
  const int n_head = 3;
  std::vector<float> x(rows * d), back(rows * d);
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(i) + 0.25f;
  std::vector<std::uint16_t> heads(x.size());
  to_halves_by_head(x, rows, n_head, heads);
  for (int h = 0; h < n_head; ++h)
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t i = 0; i < 4; ++i)
        ASSERT_EQ(cpu::half_to_float(heads[(h * rows + r) * 4 + i]), x[r * d + h * 4 + i]) << h << " " << r << " " << i;
  from_halves_by_head(heads, rows, n_head, back);
  EXPECT_EQ(back, x);
  std::vector<std::uint16_t> short_out(x.size() - 1);
  EXPECT_THROW(to_halves_by_head(x, rows, n_head, short_out), std::exception);
  EXPECT_THROW(to_halves_by_head(x, rows, 5, heads), std::exception);
}

TEST(KernelsBackend, HalfKeysAndValuesMatchWidenedOnes) {
  for (const auto& backend : all_backends()) {
    SCOPED_TRACE(backend->name());
    const int n_head = 6;
    const std::int64_t d = 384, n_kv = 300;
    auto k = random_values(n_kv * d, 11, 1.0f), v = random_values(n_kv * d, 12, 1.0f);
    // halves head by head, as attention_f16kv takes them; k and v their widened rows
    std::vector<std::uint16_t> k16(k.size()), v16(v.size());
    to_halves_by_head(k, n_kv, n_head, k16);
    to_halves_by_head(v, n_kv, n_head, v16);
    from_halves_by_head(k16, n_kv, n_head, k);
    from_halves_by_head(v16, n_kv, n_head, v);
    for (const std::int64_t n_q : {1, 5, 40}) {
      SCOPED_TRACE("n_q " + std::to_string(n_q));
      const auto q = random_values(n_q * d, 13, 1.0f);
      std::vector<float> widened(n_q * d), halves(n_q * d);
      backend->attention(q, n_q, k, v, n_kv, n_head, d, -1, widened);
      backend->attention_f16kv(q, n_q, k16, v16, n_kv, n_head, d, -1, halves);
      double worst = 0.0;
      for (std::size_t i = 0; i < widened.size(); ++i) worst = std::max(worst, std::abs(double(widened[i]) - halves[i]));
      EXPECT_LE(worst, 1e-5);
    }
  }
}

// LN(x) row by row in float64 (eps 1e-5): the definition of layer_norm and the fused sublayers.
std::vector<double> normalised(std::span<const float> x, std::int64_t rows, std::span<const float> gamma,
                               std::span<const float> beta) {
  const auto d = static_cast<std::int64_t>(gamma.size());
  std::vector<double> out(x.size());
  for (std::int64_t r = 0; r < rows; ++r) {
    double mean = 0.0, var = 0.0;
    for (std::int64_t i = 0; i < d; ++i) mean += x[r * d + i];
    mean /= d;
    for (std::int64_t i = 0; i < d; ++i) var += (x[r * d + i] - mean) * (x[r * d + i] - mean);
    var /= d;
    for (std::int64_t i = 0; i < d; ++i) out[r * d + i] = (x[r * d + i] - mean) / std::sqrt(var + 1e-5) * gamma[i] + beta[i];
  }
  return out;
}

TEST(KernelsBackend, LayerNormMatchesDefinition) {
  for (const auto& backend : all_backends()) {
    SCOPED_TRACE(backend->name());
    const std::int64_t rows = 130, d = 40;
    auto x = random_values(rows * d, 8, 3.0f);
    const auto gamma = random_values(d, 9, 1.0f), beta = random_values(d, 10, 1.0f);
    const auto expect = normalised(x, rows, gamma, beta);
    backend->layer_norm(x, rows, gamma, beta);
    double worst = 0.0;
    for (std::size_t i = 0; i < x.size(); ++i) worst = std::max(worst, std::abs(expect[i] - x[i]));
    EXPECT_LE(worst, 1e-4);
  }
}

// y = a W^T + b in float64 (a: rows x k, W: n x k)
std::vector<double> product(std::span<const double> a, std::int64_t rows, std::span<const float> w,
                            std::span<const float> bias, std::int64_t n) {
  const auto k = static_cast<std::int64_t>(a.size()) / rows;
  std::vector<double> y(static_cast<std::size_t>(rows * n));
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < n; ++c) {
      double s = bias[c];
      for (std::int64_t i = 0; i < k; ++i) s += a[r * k + i] * w[c * k + i];
      y[r * n + c] = s;
    }
  return y;
}

// norm_linear() and feed_forward() against their definition, on a row count that is not a
// multiple of the engine's row blocks (so the last block is partial), with window matrices
// (the blocked path of the bf16 engine) and decoder ones (operation by operation).
TEST(KernelsBackend, FusedSublayersMatchDefinition) {
  const std::int64_t rows = 300, d = 64, width = 256;
  const auto x = random_values(rows * d, 11, 2.0f);
  const auto gamma = random_values(d, 12, 1.0f), beta = random_values(d, 13, 0.5f);
  const auto w_q = random_values(d * d, 14, 0.15f), w_k = random_values(d * d, 15, 0.15f);
  const auto w_up = random_values(width * d, 16, 0.15f), w_down = random_values(d * width, 17, 0.1f);
  const auto b_q = random_values(d, 18, 0.5f), b_up = random_values(width, 19, 0.5f), b_down = random_values(d, 20, 0.5f);
  const std::vector<float> no_bias(d, 0.0f);
  const auto normed = normalised(x, rows, gamma, beta);
  const auto expect_q = product(normed, rows, w_q, b_q, d), expect_k = product(normed, rows, w_k, no_bias, d);
  auto hidden = product(normed, rows, w_up, b_up, width);
  for (auto& h : hidden) h = gelu(h);
  const auto expect_mlp = product(hidden, rows, w_down, b_down, d);
  const auto worst = [](std::span<const double> expect, std::span<const float> got, std::span<const float> base) {
    double w = 0.0;
    for (std::size_t i = 0; i < expect.size(); ++i) w = std::max(w, std::abs(expect[i] + (base.empty() ? 0.0 : base[i]) - got[i]));
    return w;
  };
  for (const auto& backend : all_backends()) {
    for (auto hint : {RowsHint::Many, RowsHint::Few}) {
      SCOPED_TRACE(backend->name() + (hint == RowsHint::Few ? " few" : " many"));
      const auto q = backend->pack(stored_floats(w_q, {d, d}), b_q, hint);
      const auto k = backend->pack(stored_floats(w_k, {d, d}), {}, hint);
      const auto up = backend->pack(stored_floats(w_up, {width, d}), b_up, hint);
      const auto down = backend->pack(stored_floats(w_down, {d, width}), b_down, hint);
      std::vector<float> got_q(rows * d), got_k(rows * d);
      const PackedMatrix* const matrices[] = {q.get(), k.get()};
      const std::span<float> outs[] = {got_q, got_k};
      backend->norm_linear(x, rows, {gamma, beta}, matrices, outs);
      EXPECT_LE(worst(expect_q, got_q, {}), tolerance(*backend, 4.0));
      EXPECT_LE(worst(expect_k, got_k, {}), tolerance(*backend, 4.0));
      std::vector<float> y = x;
      backend->feed_forward(y, rows, {gamma, beta}, *up, *down);
      EXPECT_LE(worst(expect_mlp, y, x), tolerance(*backend, 8.0));
    }
  }
}

// FNV-1a over the bytes of every output, to compare runs in two processes.
void digest(std::uint64_t& h, std::span<const float> values) {
  const auto* bytes = reinterpret_cast<const unsigned char*>(values.data());
  for (std::size_t i = 0; i < values.size_bytes(); ++i) h = (h ^ bytes[i]) * 0x100000001b3ull;
}

// Products of Few-packed matrices with m rows, for m from 1 to past the 64 of a full
// batch, row r compared (memcmp) with the same input row multiplied alone. Each m draws
// its rows from a different place of the input, so every row has other neighbours.
// Shapes: k not a multiple of 8 (vector tails in a row-major kernel), n not a multiple
// of 8 or 64 (feature panels, tiles, work items); 2 m n k from below to above the flops
// where the backends share work out among threads.
// Returns a digest of all outputs.
std::uint64_t check_few_rows_independent(const Backend& backend) {
  struct Shape {
    std::int64_t n, k;
  };
  constexpr std::int64_t kInputs = 70;
  std::uint64_t h = 0xcbf29ce484222325ull;
  // 300 x 96: whole blocks of 32, so int8 runs its block products (the others, not)
  for (const Shape shape : {Shape{300, 72}, Shape{37, 13}, Shape{130, 389}, Shape{1029, 300}, Shape{300, 96}}) {
    const std::int64_t n = shape.n, k = shape.k;
    for (bool exact_f16 : {true, false}) {
      for (bool with_bias : {false, true}) {
        auto w = random_values(n * k, 11, 0.2f);
        if (exact_f16)
          for (auto& v : w) v = cpu::half_to_float(cpu::float_to_half(v));
        const auto bias = with_bias ? random_values(n, 12, 0.5f) : std::vector<float>{};
        const auto packed = backend.pack(kernels::stored_floats(w, {n, k}), bias, RowsHint::Few);
        const auto x = random_values(kInputs * k, 13, 1.0f);
        const auto residual = random_values(kInputs * n, 14, 1.0f);
        for (auto e : {Epilogue::Store, Epilogue::Gelu, Epilogue::Accumulate}) {
          SCOPED_TRACE(std::to_string(n) + "x" + std::to_string(k) + (exact_f16 ? " f16-exact" : " f32") +
                       (with_bias ? " bias" : "") + " epilogue " + std::to_string(static_cast<int>(e)));
          std::vector<float> alone(kInputs * n);
          for (std::int64_t i = 0; i < kInputs; ++i) {
            std::span<float> out(alone.data() + i * n, n);
            std::copy_n(residual.data() + i * n, n, out.data());
            backend.linear({x.data() + i * k, static_cast<std::size_t>(k)}, 1, *packed, out, e);
          }
          digest(h, alone);
          for (std::int64_t m : {1, 2, 3, 5, 16, 17, 64, 70}) {
            auto source = [&](std::int64_t r) { return (r * 11 + m) % kInputs; };  // 11 is prime to 70
            std::vector<float> xs(m * k), y(m * n);
            for (std::int64_t r = 0; r < m; ++r) {
              std::copy_n(x.data() + source(r) * k, k, xs.data() + r * k);
              std::copy_n(residual.data() + source(r) * n, n, y.data() + r * n);
            }
            backend.linear(xs, m, *packed, y, e);
            digest(h, y);
            int differing = 0;
            for (std::int64_t r = 0; r < m; ++r)
              differing += std::memcmp(y.data() + r * n, alone.data() + source(r) * n, n * sizeof(float)) != 0;
            EXPECT_EQ(differing, 0) << "m " << m;
          }
        }
      }
    }
  }
  return h;
}

TEST(KernelsBackend, FewRowsIndependentOfBatch) {
  for (const auto& backend : all_backends()) {
    SCOPED_TRACE(backend->name());
    check_few_rows_independent(*backend);
  }
}

// The same products on a one-thread pool (a child process) give the same bits.
TEST(KernelsBackend, FewRowsSameForAnyThreadCount) {
  std::string digests;
  for (const auto& backend : all_backends())
    digests += " " + backend->name() + " " + std::to_string(check_few_rows_independent(*backend));
  if (std::getenv("KERNELS_TEST_THREADS") != nullptr) {
    std::printf("\nDIGEST threads=%d%s\n", cpu::thread_count(), digests.c_str());  // read by the parent
    return;
  }
#if defined(__linux__)
  ASSERT_EQ(cpu::thread_count(), 2);
  const std::string self = std::filesystem::read_symlink("/proc/self/exe").string();
  const std::string command =
      "KERNELS_TEST_THREADS=1 '" + self + "' --gtest_filter=KernelsBackend.FewRowsSameForAnyThreadCount 2>&1";
  FILE* child = popen(command.c_str(), "r");
  ASSERT_NE(child, nullptr);
  std::string output;
  char buffer[4096];
  while (std::fgets(buffer, sizeof buffer, child) != nullptr) output += buffer;
  ASSERT_EQ(pclose(child), 0) << output;
  const auto at = output.find("DIGEST ");
  ASSERT_NE(at, std::string::npos) << output;
  const std::string child_line = output.substr(at + 7, output.find('\n', at) - at - 7);
  EXPECT_EQ(child_line, "threads=1" + digests);
#else
  GTEST_SKIP() << "needs /proc/self/exe to run itself with one thread";
#endif
}

}  // namespace
}  // namespace amanuensis::kernels

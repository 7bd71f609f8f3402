#include "kernels/onednn/onednn_backend.h"

#include <omp.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <oneapi/dnnl/dnnl.hpp>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/error.h"
#include "kernels/cpu/fast_math.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/quant.h"
#include "kernels/cpu/thread_pool.h"

namespace amanuensis::kernels::onednn {
namespace {

using dt = dnnl::memory::data_type;
using tag = dnnl::memory::format_tag;

dnnl::engine& cpu_engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

dnnl::stream& thread_stream() {
  thread_local dnnl::stream stream(cpu_engine());
  return stream;
}

__attribute__((target_clones("avx512f", "avx2", "default")))
void convert_to_bf16(const float* x, std::uint16_t* y, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) {
    auto u = std::bit_cast<std::uint32_t>(x[i]);
    u += 0x7fffu + ((u >> 16) & 1u);  // activations are finite
    y[i] = static_cast<std::uint16_t>(u >> 16);
  }
}

// A matmul primitive for one (m, epilogue) of a slice, and its scratchpad size.
struct Primitive {
  dnnl::matmul matmul;
  std::size_t scratchpad_bytes = 0;
  bool fused = true;  // false: the epilogue is applied after the primitive
};

// Output features [first, first + rows) of a matrix, packed on their own so threads can
// share out a product with few input rows (decoder steps) by output features.
struct Slice {
  std::int64_t first = 0, rows = 0;
  dnnl::memory::desc weights_md;
  dnnl::memory weights;
  dnnl::memory bias;  // empty when the layer has none

  mutable std::mutex mutex;
  mutable std::map<std::pair<std::int64_t, int>, std::shared_ptr<const Primitive>> primitives;
};

class OnednnMatrix final : public PackedMatrix {
 public:
  OnednnMatrix(std::int64_t rows, std::int64_t cols) : PackedMatrix(rows, cols) {}
  dt src_type = dt::f32;
  bool has_bias = false;
  std::vector<std::unique_ptr<Slice>> slices;
  // For products of at most kFewRows rows, when the matrix is exactly representable in
  // f16 (weights of f16 model files): rows x cols halves, bias, read by gemv_f16.
  std::vector<std::uint16_t> f16;
  std::vector<float> bias;
};

constexpr std::int64_t kFewRows = 4;

bool f16_gemv_supported() {
#if defined(__x86_64__)
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  return ok;
#else
  return false;
#endif
}

// Converts to f16 when every value survives the round trip exactly.
bool exact_f16(std::span<const float> values, std::vector<std::uint16_t>& out) {
  out.resize(values.size());
  for (std::size_t i = 0; i < values.size(); ++i) {
    out[i] = cpu::float_to_half(values[i]);
    if (cpu::half_to_float(out[i]) != values[i]) {
      out.clear();
      out.shrink_to_fit();
      return false;
    }
  }
  return true;
}

#if defined(__x86_64__)
__attribute__((target("avx2,fma,f16c"))) inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// y[r][c] (row stride ldy) = x[r] . w[c] for rows r < m, output features c in [c0, c1):
// weights are f16 rows of k values, widened with F16C; four output features at a time.
__attribute__((target("avx2,fma,f16c")))
void gemv_f16(const float* x, std::int64_t m, std::int64_t k, const std::uint16_t* w, std::int64_t c0, std::int64_t c1,
              float* y, std::int64_t ldy) {
  const std::int64_t k8 = k / 8 * 8;
  std::int64_t c = c0;
  for (; c + 4 <= c1; c += 4) {
    const std::uint16_t* w0 = w + c * k;
    for (std::int64_t r = 0; r < m; ++r) {
      const float* xr = x + r * k;
      __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
      for (std::int64_t i = 0; i < k8; i += 8) {
        const __m256 xv = _mm256_loadu_ps(xr + i);
        a0 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w0 + i))), xv, a0);
        a1 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w0 + k + i))), xv, a1);
        a2 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w0 + 2 * k + i))), xv, a2);
        a3 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w0 + 3 * k + i))), xv, a3);
      }
      float s[4] = {hsum(a0), hsum(a1), hsum(a2), hsum(a3)};
      for (std::int64_t i = k8; i < k; ++i)
        for (int j = 0; j < 4; ++j) s[j] += xr[i] * _cvtsh_ss(w0[j * k + i]);
      for (int j = 0; j < 4; ++j) y[r * ldy + c + j] = s[j];
    }
  }
  for (; c < c1; ++c)
    for (std::int64_t r = 0; r < m; ++r) {
      float s = 0.0f;
      for (std::int64_t i = 0; i < k; ++i) s += x[r * k + i] * _cvtsh_ss(w[c * k + i]);
      y[r * ldy + c] = s;
    }
}
#endif

// The product of m rows against a slice, writing into rows of the full output (stride n).
dnnl::matmul::primitive_desc matmul_pd(const OnednnMatrix& w, const Slice& s, std::int64_t m,
                                       const dnnl::memory::desc& weights_md, const dnnl::primitive_attr& attr,
                                       bool strided_dst = true) {
  const dnnl::memory::desc src({m, w.cols()}, w.src_type, tag::ab);
  const dnnl::memory::desc dst = strided_dst ? dnnl::memory::desc({m, s.rows}, dt::f32, {w.rows(), 1})
                                             : dnnl::memory::desc({m, s.rows}, dt::f32, tag::ab);
  if (w.has_bias) {
    const dnnl::memory::desc bias({1, s.rows}, dt::f32, tag::ab);
    return {dnnl::matmul::desc(src, weights_md, bias, dst), attr, cpu_engine()};
  }
  return {dnnl::matmul::desc(src, weights_md, dst), attr, cpu_engine()};
}

dnnl::primitive_attr make_attr(Epilogue e) {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  dnnl::post_ops po;
  if (e == Epilogue::Gelu) po.append_eltwise(1.0f, dnnl::algorithm::eltwise_gelu_erf, 0.0f, 0.0f);
  if (e == Epilogue::Accumulate) po.append_sum(1.0f);
  attr.set_post_ops(po);
  return attr;
}

bool is_reference_impl(const dnnl::matmul::primitive_desc& pd) {
  return std::string(pd.impl_info_str()).find("ref") != std::string::npos;
}

std::shared_ptr<const Primitive> primitive_for(const OnednnMatrix& w, const Slice& s, std::int64_t m, Epilogue e) {
  const auto key = std::make_pair(m, static_cast<int>(e));
  std::lock_guard lock(s.mutex);
  if (auto it = s.primitives.find(key); it != s.primitives.end()) return it->second;
  auto p = std::make_shared<Primitive>();
  try {
    auto pd = matmul_pd(w, s, m, s.weights_md, make_attr(e));
    p->matmul = dnnl::matmul(pd);
    p->scratchpad_bytes = pd.scratchpad_desc().get_size();
  } catch (const dnnl::error&) {
    auto pd = matmul_pd(w, s, m, s.weights_md, make_attr(Epilogue::Store), /*strided_dst=*/false);
    p->matmul = dnnl::matmul(pd);
    p->scratchpad_bytes = pd.scratchpad_desc().get_size();
    p->fused = false;
  }
  s.primitives.emplace(key, p);
  return p;
}

// oneDNN runs single-threaded inside each of our pool's threads (its OpenMP team would
// spin against them, and falls apart when the machine is oversubscribed).
void single_threaded_onednn() {
  thread_local bool done = false;
  if (!done) {
    omp_set_num_threads(1);
    done = true;
  }
}

// Runs fn(begin, end) over [0, n) on the pool when the job is worth waking it for.
void maybe_parallel(std::int64_t n, double flops, const std::function<void(std::int64_t, std::int64_t)>& fn) {
  if (n > 1 && flops >= 2e6 && cpu::thread_count() > 1) {
    cpu::parallel_for(n, 2, fn);
  } else {
    fn(0, n);
  }
}

class OnednnBackend final : public Backend {
 public:
  explicit OnednnBackend(Precision p) : precision_(p) {}

  std::string name() const override { return precision_ == Precision::Bf16 ? "onednn-bf16" : "onednn-fp32"; }
  Precision precision() const override { return precision_; }

  std::unique_ptr<PackedMatrix> pack(std::int64_t rows, std::int64_t cols, std::vector<float> values,
                                     std::vector<float> bias, RowsHint hint) const override {
    if (static_cast<std::int64_t>(values.size()) != rows * cols || (!bias.empty() && static_cast<std::int64_t>(bias.size()) != rows))
      throw Error("internal: pack called with mismatched sizes");
    single_threaded_onednn();
    auto w = std::make_unique<OnednnMatrix>(rows, cols);
    w->src_type = precision_ == Precision::Bf16 ? dt::bf16 : dt::f32;
    w->has_bias = !bias.empty();
    // decoder steps read every weight once per token: half the bytes where that is exact
    // (in bf16 mode the f16 values are more precise than the bf16 product would be)
    if (hint == RowsHint::Few && f16_gemv_supported() && exact_f16(values, w->f16)) w->bias = bias;
    // slices of ~256 output features, at most 16, multiples of 16 wide
    const std::int64_t n_slices = std::clamp<std::int64_t>((rows + 255) / 256, 1, 16);
    const std::int64_t width = ((rows + n_slices - 1) / n_slices + 15) / 16 * 16;
    for (std::int64_t first = 0; first < rows; first += width) {
      auto s = std::make_unique<Slice>();
      s->first = first;
      s->rows = std::min(width, rows - first);
      // the layout the primitive picks for a large product; smaller m reuse it
      const dnnl::memory::desc any({cols, s->rows}, w->src_type, tag::any);
      s->weights_md = matmul_pd(*w, *s, 256, any, make_attr(Epilogue::Store)).weights_desc();
      s->weights = dnnl::memory(s->weights_md, cpu_engine());
      // PyTorch's rows x cols row-major weight is oneDNN's K x N matrix in "ba" order
      dnnl::memory plain({{cols, s->rows}, dt::f32, tag::ba}, cpu_engine(), values.data() + first * cols);
      dnnl::reorder(plain, s->weights).execute(thread_stream(), plain, s->weights);
      if (w->has_bias) {
        s->bias = dnnl::memory({{1, s->rows}, dt::f32, tag::ab}, cpu_engine());
        std::memcpy(s->bias.get_data_handle(), bias.data() + first, s->rows * sizeof(float));
      }
      w->slices.push_back(std::move(s));
    }
    thread_stream().wait();
    return w;
  }

  void linear(std::span<const float> x, std::int64_t m, const PackedMatrix& packed, std::span<float> y,
              Epilogue epilogue) const override {
    const auto& w = static_cast<const OnednnMatrix&>(packed);
    if (static_cast<std::int64_t>(x.size()) < m * w.cols() || static_cast<std::int64_t>(y.size()) < m * w.rows())
      throw Error("internal: linear called with mismatched sizes");
    if (m == 0) return;
#if defined(__x86_64__)
    if (m <= kFewRows && !w.f16.empty()) {
      linear_f16(x, m, w, y, epilogue);
      return;
    }
#endif
    const void* src = x.data();
    std::size_t src_row_bytes = w.cols() * sizeof(float);
    thread_local std::vector<std::uint16_t> x_bf16;
    if (w.src_type == dt::bf16) {
      x_bf16.resize(static_cast<std::size_t>(m * w.cols()));
      convert_to_bf16(x.data(), x_bf16.data(), m * w.cols());
      src = x_bf16.data();
      src_row_bytes = w.cols() * sizeof(std::uint16_t);
    }
    // items: row chunks (one per thread for long inputs) x slices
    const int threads = cpu::thread_count();
    const std::int64_t row_chunks = m >= 64 ? threads : 1;
    const auto n_slices = static_cast<std::int64_t>(w.slices.size());
    const double flops = 2.0 * m * w.rows() * w.cols();
    maybe_parallel(row_chunks * n_slices, flops, [&](std::int64_t begin, std::int64_t end) {
      single_threaded_onednn();
      for (std::int64_t item = begin; item < end; ++item) {
        const std::int64_t chunk = item / n_slices;
        const Slice& s = *w.slices[item % n_slices];
        const std::int64_t r0 = m * chunk / row_chunks, r1 = m * (chunk + 1) / row_chunks;
        if (r0 < r1) run(w, s, static_cast<const std::uint8_t*>(src) + r0 * src_row_bytes, r1 - r0,
                         y.data() + r0 * w.rows() + s.first, epilogue);
      }
    });
  }

  void attention(std::span<const float> q, std::int64_t n_q, std::span<const float> k, std::span<const float> v,
                 std::int64_t n_kv, int n_head, std::int64_t d, std::int64_t causal_offset,
                 std::span<float> out) const override {
    const std::int64_t hd = d / n_head;
    const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
    // a tile of queries of one head against all its keys: at most kTile x n_kv scores
    constexpr std::int64_t kTile = 64;
    const std::int64_t tiles = (n_q + kTile - 1) / kTile;
    const double flops = 4.0 * n_q * n_kv * d;
    maybe_parallel(tiles * n_head, flops, [&](std::int64_t begin, std::int64_t end) {
      single_threaded_onednn();
      thread_local std::vector<float> scores;
      for (std::int64_t item = begin; item < end; ++item) {
        const std::int64_t h = item / tiles;
        const std::int64_t i0 = (item % tiles) * kTile;
        const std::int64_t rows = std::min(kTile, n_q - i0);
        // keys any query of the tile may see
        const std::int64_t n_vis = causal_offset < 0 ? n_kv : std::min(n_kv, causal_offset + i0 + rows);
        scores.resize(static_cast<std::size_t>(rows * n_vis));
        dnnl_sgemm('N', 'T', rows, n_vis, hd, scale, q.data() + i0 * d + h * hd, d, k.data() + h * hd, d, 0.0f,
                   scores.data(), n_vis);
        for (std::int64_t r = 0; r < rows; ++r) {
          const std::int64_t visible = causal_offset < 0 ? n_kv : std::min(n_kv, causal_offset + i0 + r + 1);
          cpu::softmax_fast(scores.data() + r * n_vis, visible, n_vis);
        }
        dnnl_sgemm('N', 'N', rows, hd, n_vis, 1.0f, scores.data(), n_vis, v.data() + h * hd, d, 0.0f,
                   out.data() + i0 * d + h * hd, d);
      }
    });
  }

  void layer_norm(std::span<float> x, std::int64_t rows, std::span<const float> gamma,
                  std::span<const float> beta) const override {
    const auto d = static_cast<std::int64_t>(gamma.size());
    maybe_parallel(rows, 10.0 * rows * d, [&](std::int64_t begin, std::int64_t end) {
      cpu::layer_norm(x.subspan(static_cast<std::size_t>(begin * d), static_cast<std::size_t>((end - begin) * d)),
                      end - begin, gamma, beta);
    });
  }

 private:
#if defined(__x86_64__)
  static void linear_f16(std::span<const float> x, std::int64_t m, const OnednnMatrix& w, std::span<float> y,
                         Epilogue epilogue) {
    const std::int64_t n = w.rows(), k = w.cols();
    const std::int64_t blocks = (n + 63) / 64;  // 64 output features per work item
    maybe_parallel(blocks, 2.0 * m * n * k, [&](std::int64_t begin, std::int64_t end) {
      thread_local std::vector<float> acc;
      const std::int64_t c0 = begin * 64, c1 = std::min(n, end * 64), width = c1 - c0;
      acc.resize(static_cast<std::size_t>(m * width));
      gemv_f16(x.data(), m, k, w.f16.data() + c0 * k, 0, width, acc.data(), width);
      for (std::int64_t r = 0; r < m; ++r) {
        float* yr = y.data() + r * n + c0;
        const float* ar = acc.data() + r * width;
        const float* b = w.bias.empty() ? nullptr : w.bias.data() + c0;
        for (std::int64_t c = 0; c < width; ++c) {
          const float v = ar[c] + (b ? b[c] : 0.0f);
          yr[c] = epilogue == Epilogue::Accumulate ? yr[c] + v : v;
        }
        if (epilogue == Epilogue::Gelu) cpu::gelu({yr, static_cast<std::size_t>(width)});
      }
    });
  }
#endif

  // rows [.., +m) of the input against one slice; dst points at the slice's first column.
  static void run(const OnednnMatrix& w, const Slice& s, const void* src_ptr, std::int64_t m, float* dst_ptr,
                  Epilogue epilogue) {
    const auto prim = primitive_for(w, s, m, epilogue);
    thread_local std::vector<std::uint8_t> scratchpad;
    thread_local std::vector<float> unfused;
    if (scratchpad.size() < prim->scratchpad_bytes) scratchpad.resize(prim->scratchpad_bytes);
    auto& eng = cpu_engine();
    float* out = dst_ptr;
    dnnl::memory::desc dst_md({m, s.rows}, dt::f32, {w.rows(), 1});
    if (!prim->fused) {
      unfused.resize(static_cast<std::size_t>(m * s.rows));
      out = unfused.data();
      dst_md = dnnl::memory::desc({m, s.rows}, dt::f32, tag::ab);
    }
    dnnl::memory src({{m, w.cols()}, w.src_type, tag::ab}, eng, const_cast<void*>(src_ptr));
    dnnl::memory dst(dst_md, eng, out);
    dnnl::memory scratch({{static_cast<std::int64_t>(prim->scratchpad_bytes)}, dt::u8, tag::a}, eng, scratchpad.data());
    std::unordered_map<int, dnnl::memory> args{{DNNL_ARG_SRC, src},
                                               {DNNL_ARG_WEIGHTS, s.weights},
                                               {DNNL_ARG_DST, dst},
                                               {DNNL_ARG_SCRATCHPAD, scratch}};
    if (w.has_bias) args.emplace(DNNL_ARG_BIAS, s.bias);
    prim->matmul.execute(thread_stream(), args);
    thread_stream().wait();
    if (!prim->fused) {
      for (std::int64_t r = 0; r < m; ++r) {
        float* y = dst_ptr + r * w.rows();
        const float* t = unfused.data() + r * s.rows;
        if (epilogue == Epilogue::Accumulate) {
          for (std::int64_t c = 0; c < s.rows; ++c) y[c] += t[c];
        } else {
          std::copy(t, t + s.rows, y);
          if (epilogue == Epilogue::Gelu) cpu::gelu({y, static_cast<std::size_t>(s.rows)});
        }
      }
    }
  }

  Precision precision_;
};

// Packs a small matrix and compares a product with plain float arithmetic, so a CPU
// where oneDNN would take a broken or reference path for this precision is not used.
bool self_test(const OnednnBackend& backend) {
  constexpr std::int64_t m = 5, k = 48, n = 24;
  std::vector<float> w(n * k), b(n), x(m * k), y(m * n);
  for (std::int64_t i = 0; i < n * k; ++i) w[i] = static_cast<float>((i * 7 % 13) - 6) / 8.0f;
  for (std::int64_t i = 0; i < n; ++i) b[i] = static_cast<float>(i % 5) - 2.0f;
  for (std::int64_t i = 0; i < m * k; ++i) x[i] = static_cast<float>((i * 5 % 11) - 5) / 4.0f;
  const auto packed = backend.pack(n, k, w, b, RowsHint::Many);
  {
    const auto& w = static_cast<const OnednnMatrix&>(*packed);
    if (is_reference_impl(matmul_pd(w, *w.slices[0], 256, w.slices[0]->weights_md, make_attr(Epilogue::Store))))
      return false;
  }
  backend.linear(x, m, *packed, y, Epilogue::Store);
  for (std::int64_t r = 0; r < m; ++r)
    for (std::int64_t c = 0; c < n; ++c) {
      double expect = b[c];
      for (std::int64_t i = 0; i < k; ++i) expect += static_cast<double>(x[r * k + i]) * w[c * k + i];
      // these values are exact in bf16, so both precisions must agree closely
      if (std::abs(expect - y[r * n + c]) > 1e-3 * (1.0 + std::abs(expect))) return false;
    }
  return true;
}

}  // namespace

std::shared_ptr<const Backend> make_backend(Precision p) {
  p = resolve(p);
  try {
    auto backend = std::make_shared<OnednnBackend>(p);
    if (!self_test(*backend)) return nullptr;
    return backend;
  } catch (const dnnl::error&) {
    return nullptr;
  }
}

}  // namespace amanuensis::kernels::onednn

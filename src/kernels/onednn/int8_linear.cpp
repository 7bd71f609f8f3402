#include "kernels/onednn/int8_linear.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <unordered_map>

#include "common/error.h"
#include "kernels/cpu/fast_math.h"
#include "kernels/cpu/int8.h"
#include "kernels/cpu/thread_pool.h"
#include "kernels/onednn/context.h"

namespace amanuensis::kernels::onednn {
namespace {

using dt = dnnl::memory::data_type;
using tag = dnnl::memory::format_tag;

// Rows quantized per call and multiplied together: a thread's share of a window.
constexpr std::int64_t kMinRowsPerThread = 64;

dnnl::matmul::primitive_desc int8_pd(MatrixShape shape, std::int64_t m, const dnnl::memory::desc& weights_md,
                                     std::span<const float> scales) {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  attr.set_output_scales(1 << 1, std::vector<float>(scales.begin(), scales.end()));  // per output feature
  const dnnl::memory::desc src({m, shape.cols}, dt::s8, tag::ab);
  const dnnl::memory::desc dst({m, shape.rows}, dt::f32, tag::ab);
  return {dnnl::matmul::desc(src, weights_md, dst), attr, cpu_engine()};
}

// y[c] = epilogue(t[c] * row_scale + bias[c]) for one row, with the fused multiply-add of
// cpu::int8_linear_reference; t may be y itself.
__attribute__((target_clones("avx512f", "avx2", "default"))) void finish_row(
    const float* t, float row_scale, const float* bias, std::int64_t n, bool accumulate, float* y) {
  if (accumulate) {
    for (std::int64_t c = 0; c < n; ++c) y[c] += std::fma(t[c], row_scale, bias[c]);
  } else {
    for (std::int64_t c = 0; c < n; ++c) y[c] = std::fma(t[c], row_scale, bias[c]);
  }
}

}  // namespace

struct Int8Weights::Primitive {
  dnnl::matmul matmul;
  std::size_t scratchpad_bytes = 0;
};

Int8Weights::Int8Weights(std::span<const float> values, MatrixShape shape, std::vector<float> bias)
    : shape_(shape), bias_(std::move(bias)) {
  if (bias_.empty()) bias_.assign(static_cast<std::size_t>(shape.rows), 0.0f);
  cpu::Int8Matrix q = cpu::quantize_matrix_int8(values, shape);
  scales_ = std::move(q.scales);
  single_threaded_onednn();
  // the layout the primitive picks for a large product (with the compensation an s8
  // input needs); other row counts reuse it
  const dnnl::memory::desc any({shape.cols, shape.rows}, dt::s8, tag::any);
  weights_md_ = int8_pd(shape, 256, any, scales_).weights_desc();
  weights_ = dnnl::memory(weights_md_, cpu_engine());
  // PyTorch's rows x cols row-major weight is oneDNN's K x N matrix in "ba" order
  dnnl::memory plain({{shape.cols, shape.rows}, dt::s8, tag::ba}, cpu_engine(), q.codes.data());
  dnnl::reorder(plain, weights_).execute(thread_stream(), plain, weights_);
  thread_stream().wait();
}

bool Int8Weights::optimised() const {
  return std::string(int8_pd(shape_, 256, weights_md_, scales_).impl_info_str()).find("ref") == std::string::npos;
}

std::shared_ptr<const Int8Weights::Primitive> Int8Weights::primitive_for(std::int64_t m) const {
  std::lock_guard lock(mutex_);
  for (const auto& [rows, p] : primitives_)
    if (rows == m) return p;
  auto p = std::make_shared<Primitive>();
  const auto pd = int8_pd(shape_, m, weights_md_, scales_);
  p->matmul = dnnl::matmul(pd);
  p->scratchpad_bytes = pd.scratchpad_desc().get_size();
  primitives_.emplace_back(m, p);
  return p;
}

void Int8Weights::linear(const float* x, std::int64_t m, float* y, Epilogue epilogue) const {
  if (m <= 0) return;
  const std::int64_t chunks = std::clamp<std::int64_t>(m / kMinRowsPerThread, 1, cpu::thread_count());
  maybe_parallel(chunks, 2.0 * m * shape_.rows * shape_.cols, [&](std::int64_t begin, std::int64_t end) {
    single_threaded_onednn();
    for (std::int64_t chunk = begin; chunk < end; ++chunk) {
      const std::int64_t r0 = m * chunk / chunks, r1 = m * (chunk + 1) / chunks;
      run_rows(x + r0 * shape_.cols, r1 - r0, y + r0 * shape_.rows, epilogue);
    }
  });
}

void Int8Weights::run_rows(const float* x, std::int64_t m, float* y, Epilogue epilogue) const {
  const auto [n, k] = shape_;
  thread_local std::vector<std::int8_t> codes;
  thread_local std::vector<float> row_scales, sums;
  thread_local std::vector<std::uint8_t> scratchpad;
  codes.resize(static_cast<std::size_t>(m * k));
  row_scales.resize(static_cast<std::size_t>(m));
  cpu::quantize_rows_int8(x, m, k, codes.data(), row_scales.data());
  const bool accumulate = epilogue == Epilogue::Accumulate;
  float* t = y;  // the scaled sums, finished in place unless they are added to y
  if (accumulate) {
    sums.resize(static_cast<std::size_t>(m * n));
    t = sums.data();
  }
  const auto prim = primitive_for(m);
  if (scratchpad.size() < prim->scratchpad_bytes) scratchpad.resize(prim->scratchpad_bytes);
  auto& eng = cpu_engine();
  dnnl::memory src({{m, k}, dt::s8, tag::ab}, eng, codes.data());
  dnnl::memory dst({{m, n}, dt::f32, tag::ab}, eng, t);
  dnnl::memory scratch({{static_cast<std::int64_t>(prim->scratchpad_bytes)}, dt::u8, tag::a}, eng, scratchpad.data());
  prim->matmul.execute(thread_stream(), {{DNNL_ARG_SRC, src},
                                         {DNNL_ARG_WEIGHTS, weights_},
                                         {DNNL_ARG_DST, dst},
                                         {DNNL_ARG_SCRATCHPAD, scratch}});
  thread_stream().wait();
  for (std::int64_t r = 0; r < m; ++r) {
    finish_row(t + r * n, row_scales[r], bias_.data(), n, accumulate, y + r * n);
    if (epilogue == Epilogue::Gelu) cpu::gelu_fast(y + r * n, n);
  }
}

}  // namespace amanuensis::kernels::onednn

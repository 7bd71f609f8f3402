// kernels/cpu: the reference backend: the float32 loops of ops.cpp behind the Backend
// interface. Bf16 is emulated (weights and activations rounded to bfloat16, float32
// products and sums), which is how bf16 hardware computes, so this also gives the
// numerics of a bf16 run on a CPU without bf16 units. Int8 is computed exactly as
// kernels/cpu/int8.h defines it (what the engine's int8 kernels compute with VNNI/AMX).
#include <algorithm>
#include <bit>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/error.h"
#include "kernels/backend.h"
#include "kernels/cpu/int8.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/quant.h"
#include "kernels/cpu/thread_pool.h"

namespace amanuensis::kernels {
namespace {

float round_to_bf16(float f) {
  auto u = std::bit_cast<std::uint32_t>(f);
  if ((u & 0x7f800000u) == 0x7f800000u) return f;  // inf / nan unchanged
  u += 0x7fffu + ((u >> 16) & 1u);                  // round to nearest even
  return std::bit_cast<float>(u & 0xffff0000u);
}

class ReferenceMatrix final : public PackedMatrix {
 public:
  ReferenceMatrix(cpu::DenseMatrix m, std::vector<float> bias, RowsHint hint)
      : PackedMatrix(m.rows, m.cols), matrix(std::move(m)), bias(std::move(bias)), hint(hint) {}
  cpu::DenseMatrix matrix;  // as multiplied (bf16: rounded)
  std::vector<float> unrounded;  // bf16 only: the stored values, for matrix_row
  std::vector<float> bias;
  RowsHint hint;
  std::optional<cpu::Int8Matrix> int8;  // Int8, RowsHint::Many: what is multiplied
  std::optional<cpu::BlockInt8Matrix> block_int8;  // Int8, RowsHint::Few: what is multiplied
};

// y = x W^T + b with one cpu::dot per element, so a row's result is the same whatever
// rows come with it (cpu::linear switches to 4 x 4 blocks, which sum in another order,
// from 8 rows on). Output features are shared out; a block of them stays in cache for
// all rows. Below 8 rows this is exactly what cpu::linear computes.
void linear_row_independent(std::span<const float> x, std::int64_t m, const ReferenceMatrix& w, std::span<float> y) {
  constexpr std::int64_t kBlock = 16;
  const std::int64_t n = w.rows(), k = w.cols();
  const float* weights = w.matrix.values.data();
  cpu::parallel_for(n, 256, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t c0 = begin; c0 < end; c0 += kBlock) {
      const std::int64_t c1 = std::min(end, c0 + kBlock);
      for (std::int64_t r = 0; r < m; ++r)
        for (std::int64_t c = c0; c < c1; ++c)
          y[r * n + c] = cpu::dot(x.data() + r * k, weights + c * k, k) + (w.bias.empty() ? 0.0f : w.bias[c]);
    }
  });
}

void linear_raw(std::span<const float> x, std::int64_t m, const ReferenceMatrix& w, std::span<float> y) {
  if (w.int8) {
    cpu::int8_linear_reference(x, m, *w.int8, w.bias, y);
  } else if (w.block_int8) {
    cpu::block_int8_linear_reference(x, m, *w.block_int8, w.bias, y);
  } else if (w.hint == RowsHint::Few) {
    linear_row_independent(x, m, w, y);
  } else {
    cpu::linear(x, m, w.matrix, w.bias, y);
  }
}

class ReferenceBackend final : public Backend {
 public:
  explicit ReferenceBackend(Precision p) : precision_(p) {}

  std::string name() const override {
    return precision_ == Precision::Fp32 ? "reference-fp32"
                                         : "reference-" + std::string(precision_name(precision_)) + "-emulated";
  }
  Precision precision() const override { return precision_; }

  std::unique_ptr<PackedMatrix> pack(const StoredMatrix& weights, std::vector<float> bias, RowsHint hint,
                                     WeightRole role) const override {
    check_pack_sizes(weights, bias);
    cpu::DenseMatrix m;
    m.rows = weights.shape.rows;
    m.cols = weights.shape.cols;
    const bool int8 = precision_ == Precision::Int8 && role == WeightRole::Linear;
    std::optional<cpu::Int8Matrix> codes;
    std::optional<cpu::BlockInt8Matrix> block_codes;
    if (precision_ == Precision::Int8 && hint == RowsHint::Few && steps_in_int8(weights, role)) {
      block_codes = cpu::quantize_blocks_int8(weights);  // matrix_row gives the dequantized codes
    } else {
      m.values = cpu::to_floats(weights);
    }
    if (int8 && hint == RowsHint::Many) {
      codes = cpu::quantize_matrix_int8(m.values, weights.shape);
      m.values = {};  // the codes are what is multiplied; matrix_row reads Few matrices only
    }
    std::vector<float> unrounded;
    if (precision_ == Precision::Bf16) {
      unrounded = m.values;
      for (float& v : m.values) v = round_to_bf16(v);
    }
    auto packed = std::make_unique<ReferenceMatrix>(std::move(m), std::move(bias), hint);
    packed->unrounded = std::move(unrounded);
    packed->int8 = std::move(codes);
    packed->block_int8 = std::move(block_codes);
    return packed;
  }

  // the stored values (the embedding is added, never multiplied in bf16); in int8 the
  // dequantized codes of the decoder's blocks (the weights of that precision)
  void matrix_row(const PackedMatrix& packed, std::int64_t row, std::span<float> out) const override {
    const auto& w = static_cast<const ReferenceMatrix&>(packed);
    if (w.block_int8) return cpu::dequantized_row(*w.block_int8, row, out);
    const float* values = w.unrounded.empty() ? w.matrix.values.data() : w.unrounded.data();
    std::copy_n(values + row * w.cols(), w.cols(), out.begin());
  }

  void linear(std::span<const float> x, std::int64_t m, const PackedMatrix& packed, std::span<float> y,
              Epilogue epilogue) const override {
    const auto& w = static_cast<const ReferenceMatrix&>(packed);
    if (static_cast<std::int64_t>(x.size()) < m * w.cols() || static_cast<std::int64_t>(y.size()) < m * w.rows())
      throw InternalError("linear called with mismatched sizes");
    std::vector<float> rounded;
    if (precision_ == Precision::Bf16) {
      rounded.assign(x.begin(), x.begin() + m * w.cols());
      for (float& v : rounded) v = round_to_bf16(v);
      x = rounded;
    }
    if (epilogue == Epilogue::Accumulate) {
      std::vector<float> r(static_cast<std::size_t>(m * w.rows()));
      linear_raw(x, m, w, r);
      cpu::add_in_place(y.subspan(0, r.size()), r);
      return;
    }
    linear_raw(x, m, w, y);
    if (epilogue == Epilogue::Gelu) cpu::gelu(y.subspan(0, static_cast<std::size_t>(m * w.rows())));
  }

  void attention(std::span<const float> q, std::int64_t n_q, std::span<const float> k, std::span<const float> v,
                 std::int64_t n_kv, int n_head, std::int64_t d, std::int64_t causal_offset,
                 std::span<float> out) const override {
    cpu::attention(q, n_q, k, v, n_kv, n_head, d, causal_offset, out);
  }

  // the blocks read in place, by the loops of attention() (the same bits)
  void attention_paged(std::span<const float> q, std::int64_t n_q, std::span<const KvBlockView> blocks,
                       std::int64_t n_kv, int n_head, std::int64_t d, std::int64_t causal_offset,
                       std::span<float> out) const override {
    std::vector<cpu::KvRows> rows;
    cpu::kv_rows(blocks, n_kv, d, rows);
    cpu::attention_paged(q, n_q, rows, n_kv, n_head, d, causal_offset, out);
  }

  void layer_norm(std::span<float> x, std::int64_t rows, std::span<const float> gamma,
                  std::span<const float> beta) const override {
    cpu::layer_norm(x, rows, gamma, beta);
  }

 private:
  Precision precision_;
};

}  // namespace

std::shared_ptr<const Backend> make_reference_backend(Precision p) {
  return std::make_shared<ReferenceBackend>(resolve(p));
}

}  // namespace amanuensis::kernels

// kernels/cpu: the reference backend: the float32 loops of ops.cpp behind the Backend
// interface. Bf16 is emulated (weights and activations rounded to bfloat16, float32
// products and sums), which is how bf16 hardware computes, so this also gives the
// numerics of a bf16 run on a CPU without bf16 units.
#include <bit>
#include <cstdint>
#include <string>
#include <vector>

#include "common/error.h"
#include "kernels/backend.h"
#include "kernels/cpu/ops.h"

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
  ReferenceMatrix(cpu::DenseMatrix m, std::vector<float> bias)
      : PackedMatrix(m.rows, m.cols), matrix(std::move(m)), bias(std::move(bias)) {}
  cpu::DenseMatrix matrix;
  std::vector<float> bias;
};

class ReferenceBackend final : public Backend {
 public:
  explicit ReferenceBackend(Precision p) : precision_(p) {}

  std::string name() const override { return precision_ == Precision::Bf16 ? "reference-bf16-emulated" : "reference-fp32"; }
  Precision precision() const override { return precision_; }

  std::unique_ptr<PackedMatrix> pack(std::int64_t rows, std::int64_t cols, std::vector<float> values,
                                     std::vector<float> bias, RowsHint) const override {
    if (static_cast<std::int64_t>(values.size()) != rows * cols || (!bias.empty() && static_cast<std::int64_t>(bias.size()) != rows))
      throw Error("internal: pack called with mismatched sizes");
    if (precision_ == Precision::Bf16)
      for (float& v : values) v = round_to_bf16(v);
    cpu::DenseMatrix m;
    m.rows = rows;
    m.cols = cols;
    m.values = std::move(values);
    return std::make_unique<ReferenceMatrix>(std::move(m), std::move(bias));
  }

  void linear(std::span<const float> x, std::int64_t m, const PackedMatrix& packed, std::span<float> y,
              Epilogue epilogue) const override {
    const auto& w = static_cast<const ReferenceMatrix&>(packed);
    std::vector<float> rounded;
    if (precision_ == Precision::Bf16) {
      rounded.assign(x.begin(), x.begin() + m * w.cols());
      for (float& v : rounded) v = round_to_bf16(v);
      x = rounded;
    }
    if (epilogue == Epilogue::Accumulate) {
      std::vector<float> r(static_cast<std::size_t>(m * w.rows()));
      cpu::linear(x, m, w.matrix, w.bias, r);
      cpu::add_in_place(y.subspan(0, r.size()), r);
      return;
    }
    cpu::linear(x, m, w.matrix, w.bias, y);
    if (epilogue == Epilogue::Gelu) cpu::gelu(y.subspan(0, static_cast<std::size_t>(m * w.rows())));
  }

  void attention(std::span<const float> q, std::int64_t n_q, std::span<const float> k, std::span<const float> v,
                 std::int64_t n_kv, int n_head, std::int64_t d, std::int64_t causal_offset,
                 std::span<float> out) const override {
    cpu::attention(q, n_q, k, v, n_kv, n_head, d, causal_offset, out);
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

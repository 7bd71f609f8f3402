#include "kernels/tensor.h"

#include "common/error.h"
#include "kernels/cpu/fast_math.h"
#include "kernels/cpu/quant.h"

namespace amanuensis::kernels {

std::string_view dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "f32";
    case DType::F16: return "f16";
    case DType::BF16: return "bf16";
    case DType::Q8_0: return "q8_0";
    case DType::Q5_0: return "q5_0";
    case DType::Q5_1: return "q5_1";
    case DType::Q4_0: return "q4_0";
    case DType::Q4_1: return "q4_1";
  }
  return "?";
}

bool is_block_quantized(DType t) { return t != DType::F32 && t != DType::F16 && t != DType::BF16; }

std::size_t dtype_bytes(DType t, std::int64_t elements) {
  const auto n = static_cast<std::size_t>(elements);
  const std::size_t blocks = n / kQuantBlock;
  switch (t) {
    case DType::F32: return n * 4;
    case DType::F16:
    case DType::BF16: return n * 2;
    case DType::Q8_0: return blocks * 34;
    case DType::Q5_0: return blocks * 22;
    case DType::Q5_1: return blocks * 24;
    case DType::Q4_0: return blocks * 18;
    case DType::Q4_1: return blocks * 20;
  }
  throw InternalError("dtype_bytes: unknown dtype");
}

StoredMatrix stored_floats(std::span<const float> values, MatrixShape shape) {
  if (static_cast<std::int64_t>(values.size()) != shape.elements())
    throw InternalError("stored_floats: values do not match the shape");
  return {DType::F32, shape, std::as_bytes(values)};
}

void to_floats(DType t, std::span<const std::byte> in, std::span<float> out) { cpu::dequantize(t, in, out); }

void to_halves(std::span<const float> in, std::span<std::uint16_t> out) {
  if (out.size() < in.size()) throw InternalError("to_halves: output shorter than input");
  cpu::floats_to_halves(in.data(), out.data(), static_cast<std::int64_t>(in.size()));
}

void from_halves(std::span<const std::uint16_t> in, std::span<float> out) {
  if (out.size() < in.size()) throw InternalError("from_halves: output shorter than input");
  cpu::halves_to_floats(in.data(), out.data(), static_cast<std::int64_t>(in.size()));
}

namespace {
// hd of a head-by-head layout of n_rows rows, or InternalError when the sizes disagree.
std::int64_t head_size(std::size_t rows_size, std::size_t heads_size, std::int64_t n_rows, int n_head) {
  const auto elements = static_cast<std::int64_t>(rows_size);
  if (n_rows <= 0 || n_head <= 0 || elements % (n_rows * n_head) != 0 || heads_size < rows_size)
    throw InternalError("head-by-head conversion: sizes do not match the rows and heads");
  return elements / (n_rows * n_head);
}
}  // namespace

void to_halves_by_head(std::span<const float> rows, std::int64_t n_rows, int n_head, std::span<std::uint16_t> out) {
  const std::int64_t hd = head_size(rows.size(), out.size(), n_rows, n_head), d = hd * n_head;
  for (int h = 0; h < n_head; ++h)
    for (std::int64_t r = 0; r < n_rows; ++r)
      cpu::floats_to_halves(rows.data() + r * d + h * hd, out.data() + (h * n_rows + r) * hd, hd);
}

void from_halves_by_head(std::span<const std::uint16_t> heads, std::int64_t n_rows, int n_head, std::span<float> out) {
  const std::int64_t hd = head_size(out.size(), heads.size(), n_rows, n_head), d = hd * n_head;
  for (int h = 0; h < n_head; ++h)
    for (std::int64_t r = 0; r < n_rows; ++r)
      cpu::halves_to_floats(heads.data() + (h * n_rows + r) * hd, out.data() + r * d + h * hd, hd);
}

}  // namespace amanuensis::kernels

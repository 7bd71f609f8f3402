// kernels: the types of stored data that cross into a backend. A weight matrix arrives as
// the model file stores it (its dtype, its shape and its bytes), and the backend chooses
// what to keep: the blocks as they are, halves, or its own layout. Nothing is widened to
// float32 unless that backend decides to.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

namespace amanuensis::kernels {

// Element formats of stored tensors: IEEE float and half, bfloat16, and ggml's blocks of
// 32 weights (q8_0: int8 codes and a half scale; q5_0/q4_0: 5/4-bit codes offset by 16/8
// and a scale; q5_1/q4_1: codes, a scale and a minimum).
enum class DType { F32, F16, BF16, Q8_0, Q5_0, Q5_1, Q4_0, Q4_1 };

std::string_view dtype_name(DType t);

// Whether t stores blocks of kQuantBlock weights.
bool is_block_quantized(DType t);
inline constexpr std::int64_t kQuantBlock = 32;

// Bytes taken by `elements` values of type t (for block types, a multiple of 32 values).
std::size_t dtype_bytes(DType t, std::int64_t elements);

// rows output features of cols inputs each (PyTorch's layout of a linear layer's weight).
struct MatrixShape {
  std::int64_t rows = 0;
  std::int64_t cols = 0;
  std::int64_t elements() const { return rows * cols; }
  bool operator==(const MatrixShape&) const = default;
};

// A weight matrix as stored: row-major, each row starting on a block boundary. The bytes
// belong to the caller (a model file's mapping) and are read during pack() only.
struct StoredMatrix {
  DType dtype = DType::F32;
  MatrixShape shape;
  std::span<const std::byte> bytes;
};

// A float32 matrix seen as a StoredMatrix (for weights the caller has rearranged).
StoredMatrix stored_floats(std::span<const float> values, MatrixShape shape);

// Conversions a network needs around the backend (vectorised where the CPU allows):
// `out.size()` stored values of type t to float (biases, norms, positions); floats to
// IEEE halves and back (round to nearest even).
void to_floats(DType t, std::span<const std::byte> in, std::span<float> out);
void to_halves(std::span<const float> in, std::span<std::uint16_t> out);
void from_halves(std::span<const std::uint16_t> in, std::span<float> out);

// n_rows rows of n_head heads (n_rows x d floats, head h in columns [h hd, (h + 1) hd)) as
// halves head by head: head h's n_rows x hd values at [h n_rows hd, (h + 1) n_rows hd),
// the layout of Backend::attention_f16kv's keys and values; and back to rows of floats.
void to_halves_by_head(std::span<const float> rows, std::int64_t n_rows, int n_head, std::span<std::uint16_t> out);
void from_halves_by_head(std::span<const std::uint16_t> heads, std::int64_t n_rows, int n_head, std::span<float> out);

}  // namespace amanuensis::kernels

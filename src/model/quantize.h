// model: converts an f32 or f16 model file to a quantized one (q8_0, q5_0, q5_1, q4_0,
// q4_1), producing the same bytes as whisper.cpp's `quantize` tool: the same tensors are
// quantized, by the same rounding rules, in the same order, with the same header.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>

#include "model/ggml_file.h"

namespace amanuensis::model {

// The target formats by name: "q8_0", "q5_0", "q5_1", "q4_0", "q4_1". Throws Error naming
// the accepted names for anything else.
TensorType parse_quantization_type(std::string_view name);

// The header's ftype field of a file whose weight matrices are `type`: ggml's file type
// code plus 1000 x the quantization format version (2), e.g. 2007 for q8_0.
std::int32_t quantized_ftype(TensorType type);

// Whether whisper.cpp's quantizer converts a tensor: every 2-D tensor except the conv
// biases and the two positional embeddings (1-D and 3-D tensors stay as they are).
bool is_quantizable(std::string_view name, int n_dims);

// Quantizes `values` (a multiple of 32, taken in blocks of 32 consecutive values) into
// `out` (tensor_bytes(type, values.size()) bytes), rounding like ggml's reference
// quantize_row_*_ref functions.
void quantize_values(TensorType type, std::span<const float> values, std::span<std::byte> out);

struct QuantizeSummary {
  TensorType source_type = TensorType::F16;  // the input's weight type (f32 or f16)
  int tensors = 0;
  int quantized = 0;
  std::size_t bytes_in = 0;
  std::size_t bytes_out = 0;
};

// Reads the model at `in` (f32 or f16; a file already quantized is refused) and writes it
// to `out` with its weight matrices in `type`. The file is written beside `out` under a
// temporary name and renamed when complete, so `out` is either the whole result or
// untouched. Throws Error naming the problem (missing input, not a model, already
// quantized, output not writable, ...).
QuantizeSummary quantize_model_file(const std::filesystem::path& in, const std::filesystem::path& out, TensorType type);

}  // namespace amanuensis::model

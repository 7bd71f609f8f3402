// kernels/cpu: conversion of stored weight formats (f16, q8_0, q5_0/q5_1, q4_0/q4_1) to float.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "model/fp16.h"
#include "model/ggml_file.h"

namespace amanuensis::kernels::cpu {

// The file format's half conversion (model/fp16.h), used by every backend.
using model::float_to_half;
using model::half_to_float;

// Converts `out.size()` consecutive values stored in `type` format (starting at a block
// boundary for quantized types) to float.
void dequantize(model::TensorType type, std::span<const std::byte> in, std::span<float> out);

}  // namespace amanuensis::kernels::cpu

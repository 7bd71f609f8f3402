// kernels/cpu: conversion of stored weight formats (f16, bf16, q8_0, q5_0/q5_1,
// q4_0/q4_1) to float, and the int8 codes of the block types whose weights are
// scale x code.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "common/fp16.h"
#include "kernels/tensor.h"

namespace amanuensis::kernels::cpu {

// IEEE half conversion (common/fp16.h), used by every backend.
using amanuensis::float_to_half;
using amanuensis::half_to_float;

// Converts `out.size()` consecutive values stored in `type` format (starting at a block
// boundary for quantized types) to float.
void dequantize(DType type, std::span<const std::byte> in, std::span<float> out);

// Every value of a stored matrix as float, row-major.
std::vector<float> to_floats(const StoredMatrix& m);

// Types whose dequantized weight is exactly float(code) * scale with one int8 code per
// weight and one scale per block (q8_0, q5_0, q4_0; not q5_1/q4_1, which add a minimum).
bool has_int8_codes(DType type);

// The codes and the scale of one block of such a type (`block` points at its bytes).
float block_codes(DType type, const std::byte* block, std::int8_t codes[kQuantBlock]);

}  // namespace amanuensis::kernels::cpu

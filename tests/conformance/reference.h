// Readers for the conformance kit's reference files (see ../shared/conformance/README.md).
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kernels/backend.h"

namespace amanuensis::testing {

std::vector<float> read_f32_file(const std::filesystem::path& path);
nlohmann::json read_json_file(const std::filesystem::path& path);

// Token sequences of the teacher-forced cases.
std::vector<int> teacher_forced_tokens(bool multilingual, bool timestamps);

// Comparison rules: the kit's thresholds for f32/f16 models and for quantized ones, and
// the project's for f32/f16 models computed in bf16 (teacher-forced max 1.0, mean 0.1,
// arg-max and greedy tokens where the reference margin exceeds 1.0); every model computed
// in int8 is held to the quantized rules.
struct Tolerance {
  double max_abs;
  double mean_abs;
  double argmax_margin;  // arg-max must agree where the reference margin exceeds this
};
Tolerance tolerance_for(const std::string& model_name, kernels::Precision computed_in);

// The precisions every conformance case runs in: fp32, bf16 (on the matrix engine where
// the CPU has it, else by the reference backend's exact emulation) and int8 (oneDNN's
// int8 kernels, which run on every x86-64 CPU the project supports).
std::vector<kernels::Precision> conformance_precisions();

// "micro.en-f16 x jfk" plus "bf16" when not fp32, as a gtest case name.
std::string case_name(const std::string& model, const std::string& audio, kernels::Precision p);

}  // namespace amanuensis::testing

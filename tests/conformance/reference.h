// Readers for the conformance kit's reference files (see ../shared/conformance/README.md).
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace amanuensis::testing {

std::vector<float> read_f32_file(const std::filesystem::path& path);
nlohmann::json read_json_file(const std::filesystem::path& path);

// Token sequences of the teacher-forced cases.
std::vector<int> teacher_forced_tokens(bool multilingual, bool timestamps);

// Comparison rules of the kit: thresholds for f32/f16 models and for quantized ones.
struct Tolerance {
  double max_abs;
  double mean_abs;
  double argmax_margin;  // arg-max must agree where the reference margin exceeds this
};
Tolerance tolerance_for(const std::string& model_name);

}  // namespace amanuensis::testing

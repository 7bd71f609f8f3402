#include "conformance/reference.h"

#include <algorithm>
#include <cctype>
#include <fstream>
#include <stdexcept>

namespace amanuensis::testing {

std::vector<float> read_f32_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path.string());
  in.seekg(0, std::ios::end);
  const auto size = static_cast<std::size_t>(in.tellg());
  in.seekg(0);
  std::vector<float> values(size / sizeof(float));
  in.read(reinterpret_cast<char*>(values.data()), static_cast<std::streamsize>(values.size() * sizeof(float)));
  return values;
}

nlohmann::json read_json_file(const std::filesystem::path& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot open " + path.string());
  return nlohmann::json::parse(in);
}

std::vector<int> teacher_forced_tokens(bool multilingual, bool timestamps) {
  if (multilingual) return {50258, 50259, 50360, timestamps ? 50364 : 50363, 400, 370, 452, 7177, 6280, 11, 1029, 406};
  return {50257, 50358, timestamps ? 50363 : 50362, 843, 523, 616, 5891, 3399, 11, 1265, 407};
}

Tolerance tolerance_for(const std::string& model_name, kernels::Precision computed_in) {
  // int8 products quantize every model's weights and activations: the quantized rules
  const bool quantized = model_name.find("-q") != std::string::npos || computed_in == kernels::Precision::Int8;
  if (quantized) return {3.0, 0.3, 1.0};
  return computed_in == kernels::Precision::Bf16 ? Tolerance{1.0, 0.1, 1.0} : Tolerance{0.15, 0.015, 0.3};
}

std::vector<kernels::Precision> conformance_precisions() {
  return {kernels::Precision::Fp32, kernels::Precision::Bf16, kernels::Precision::Int8};
}

std::string case_name(const std::string& model, const std::string& audio, kernels::Precision p) {
  std::string s = model + "__" + audio;
  if (p != kernels::Precision::Fp32) s += "__" + std::string(kernels::precision_name(p));
  std::replace_if(s.begin(), s.end(), [](char c) { return !std::isalnum(static_cast<unsigned char>(c)); }, '_');
  return s;
}

}  // namespace amanuensis::testing

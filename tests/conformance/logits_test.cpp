// Teacher-forced logits against whisper.cpp's references: every model x audio x mode
// of the kit, by the README's rules (max / mean abs difference, arg-max where the
// reference margin is clear).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>

#include "conformance/reference.h"
#include "model/ggml_file.h"
#include "nn/whisper.h"
#include "test_paths.h"

namespace amanuensis::testing {
namespace {

struct LoadedModel {
  std::shared_ptr<const nn::WhisperWeights> weights;
  bool multilingual = false;
};

const LoadedModel& load(const std::string& name, kernels::Precision precision) {
  static std::map<std::pair<std::string, kernels::Precision>, LoadedModel> cache;
  const auto key = std::make_pair(name, precision);
  auto it = cache.find(key);
  if (it == cache.end()) {
    auto file = model::ModelFile::open(model_path(name));
    nn::LoadOptions options;
    options.compute.precision = precision;
    it = cache.emplace(key, LoadedModel{nn::WhisperWeights::load(file, options), file.hparams().is_multilingual()}).first;
  }
  return it->second;
}

struct Case {
  std::string model;
  std::string audio;
  kernels::Precision precision;
};
void PrintTo(const Case& c, std::ostream* os) {
  *os << c.model << " x " << c.audio << " in " << kernels::precision_name(c.precision);
}

std::string case_name(const ::testing::TestParamInfo<Case>& info) {
  return testing::case_name(info.param.model, info.param.audio, info.param.precision);
}

class TeacherForcedLogits : public ::testing::TestWithParam<Case> {};

TEST_P(TeacherForcedLogits, MatchesReference) {
  const auto& [model_name, audio, precision] = GetParam();
  const auto& model = load(model_name, precision);
  const auto mel = read_f32_file(conformance_dir() / "ref" / (audio + ".mel.f32"));
  nn::Encoder encoder(model.weights);
  nn::Decoder decoder(model.weights);
  const auto features = encoder.encode(mel);
  const auto cross = decoder.cross_attention(features);
  const Tolerance tol = tolerance_for(model_name, model.weights->backend->precision());

  for (bool timestamps : {false, true}) {
    SCOPED_TRACE(timestamps ? "timestamps" : "no timestamps");
    const std::string stem = model_name + "__" + audio + (timestamps ? "__ts" : "");
    const auto summary = read_json_file(conformance_dir() / "ref" / (stem + ".logits.json"));
    const auto tokens = teacher_forced_tokens(model.multilingual, timestamps);
    ASSERT_EQ(summary["tokens"].get<std::vector<int>>(), tokens);
    const int n_vocab = summary["n_vocab"];

    auto cache = decoder.new_sequence();
    const auto logits = decoder.forward(tokens, cache, cross, /*all_rows=*/true);
    ASSERT_EQ(logits.size(), tokens.size() * n_vocab);

    const auto full_path = conformance_dir() / "ref" / (stem + ".logits.f32");
    const bool have_full = std::filesystem::exists(full_path);
    const auto full = have_full ? read_f32_file(full_path) : std::vector<float>{};
    const auto sample_ids = summary["sample_ids"].get<std::vector<int>>();

    double max_abs = 0.0, sum_abs = 0.0;
    std::size_t count = 0;
    int argmax_checked = 0, argmax_agree = 0;
    for (std::size_t row = 0; row < tokens.size(); ++row) {
      const float* ours = logits.data() + row * n_vocab;
      const auto& ref_row = summary["rows"][row];
      auto compare = [&](int id, double ref_value) {
        const double diff = std::abs(ours[id] - ref_value);
        max_abs = std::max(max_abs, diff);
        sum_abs += diff;
        ++count;
      };
      if (have_full) {
        for (int id = 0; id < n_vocab; ++id) compare(id, full[row * n_vocab + id]);
      } else {
        // the summary holds a 1-in-97 sample plus the last 64 ids, and the top 32
        const auto sample = ref_row["sample"].get<std::vector<double>>();
        for (std::size_t i = 0; i < sample_ids.size(); ++i) compare(sample_ids[i], sample[i]);
        for (const auto& top : ref_row["top"]) max_abs = std::max(max_abs, std::abs(ours[top[0].get<int>()] - top[1].get<double>()));
      }
      const int ours_argmax = static_cast<int>(std::max_element(ours, ours + n_vocab) - ours);
      const int ref_argmax = ref_row["argmax"];
      const double margin = ref_row["margin"];
      if (margin > tol.argmax_margin) {
        ++argmax_checked;
        argmax_agree += ours_argmax == ref_argmax;
        EXPECT_EQ(ours_argmax, ref_argmax) << "row " << row << " reference margin " << margin;
      }
    }
    const double mean_abs = sum_abs / static_cast<double>(count);
    RecordProperty(timestamps ? "max_abs_ts" : "max_abs", std::to_string(max_abs));
    RecordProperty(timestamps ? "mean_abs_ts" : "mean_abs", std::to_string(mean_abs));
    std::printf("[ logits ] %-36s %s %s max %.4f mean %.5f argmax %d/%d (clear-margin rows)\n", stem.c_str(),
                model.weights->backend->name().c_str(), have_full ? "full   " : "sampled", max_abs, mean_abs,
                argmax_agree, argmax_checked);
    EXPECT_LE(max_abs, tol.max_abs);
    EXPECT_LE(mean_abs, tol.mean_abs);
  }
}

std::vector<Case> all_cases() {
  std::vector<Case> cases;
  for (std::string m : {"micro.en-f32", "micro.en-f16", "micro.en-q8_0", "micro.en-q5_1", "micro-f16"})
    for (std::string a : {"jfk", "silence-5s", "speech-30s"})
      for (const auto p : conformance_precisions()) cases.push_back({m, a, p});
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Conformance, TeacherForcedLogits, ::testing::ValuesIn(all_cases()), case_name);

}  // namespace
}  // namespace amanuensis::testing

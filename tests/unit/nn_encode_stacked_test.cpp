// Windows of several requests encoded as one stack (Encoder::encode_stacked, what the
// server runs when windows wait together) give each window the states it gets alone: the
// products take the rows of all windows at once, attention stays within a window.
#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "kernels/backend.h"
#include "model/ggml_file.h"
#include "nn/whisper.h"
#include "test_paths.h"

namespace amanuensis::nn {
namespace {

std::vector<float> random_mel(std::size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> mel(n);
  for (auto& v : mel) v = dist(rng);
  return mel;
}

TEST(EncodeStacked, EachWindowGetsTheStatesItGetsAlone) {
  const auto file = model::ModelFile::open(testing::model_path("micro.en-f16"));
  for (const auto precision : {kernels::Precision::Fp32, kernels::Precision::Int8}) {
    const auto weights = WhisperWeights::load(file, {.compute = {.precision = precision}});
    SCOPED_TRACE(weights->backend->name());
    const Encoder encoder(weights);
    const auto size = static_cast<std::size_t>(weights->hparams.n_mels) * 3000;
    const std::vector<std::vector<float>> mels{random_mel(size, 1), random_mel(size, 2), random_mel(size, 3)};
    const std::vector<std::span<const float>> spans(mels.begin(), mels.end());
    const auto stacked = encoder.encode_stacked(spans);
    ASSERT_EQ(stacked.size(), mels.size());
    for (std::size_t w = 0; w < mels.size(); ++w) {
      const auto alone = encoder.encode(mels[w]);
      EXPECT_EQ(stacked[w].n_ctx, alone.n_ctx);
      double worst = 0.0;
      for (std::size_t i = 0; i < alone.states.size(); ++i)
        worst = std::max(worst, static_cast<double>(std::abs(stacked[w].states[i] - alone.states[i])));
      EXPECT_EQ(worst, 0.0) << "window " << w;
    }
    EXPECT_NE(stacked[0].states, stacked[1].states) << "the windows are different audio";
  }
}

}  // namespace
}  // namespace amanuensis::nn

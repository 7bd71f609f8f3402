// A model whose weights hold NaN (a damaged file) must fail with a message the user can
// act on, not decode token 0 forever ("!!!!!!") or fail deep in the decoding rules with
// an internal message (issue 12).
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>
#include <string>
#include <vector>

#include "common/error.h"
#include "model/ggml_file.h"
#include "nn/whisper.h"
#include "test_paths.h"

namespace amanuensis::nn {
namespace {

std::vector<std::byte> read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::byte> bytes(text.size());
  std::memcpy(bytes.data(), text.data(), text.size());
  return bytes;
}

// Runs one decoder pass over the start-of-transcript token; returns its logits.
std::vector<float> first_logits(std::span<const std::byte> file_bytes) {
  const auto file = model::ModelFile::parse(file_bytes, "test model");
  const auto weights = WhisperWeights::load(file);
  const std::vector<float> mel(static_cast<std::size_t>(weights->hparams.n_mels) * 3000, -0.5f);
  const auto audio = Encoder(weights).encode(mel);
  const Decoder decoder(weights);
  auto cache = decoder.new_sequence();
  const auto cross = decoder.cross_attention(audio);
  const TokenId sot = 50257;
  return decoder.forward(std::span(&sot, 1), cache, cross, false);
}

TEST(NnNonFinite, NanWeightsGiveAClearError) {
  auto bytes = read_file(testing::model_path("micro.en-f16"));
  ASSERT_FALSE(bytes.empty());
  ASSERT_NO_THROW(first_logits(bytes));
  // the final LayerNorm's weight (float32) set to NaN, in place in the file's bytes
  const auto file = model::ModelFile::parse(bytes, "test model");
  const auto& ln = file.tensor("decoder.ln.weight");
  ASSERT_EQ(ln.type, model::TensorType::F32);
  const auto offset = static_cast<std::size_t>(ln.data.data() - bytes.data());
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (std::size_t i = 0; i < ln.data.size(); i += 4) std::memcpy(bytes.data() + offset + i, &nan, 4);
  try {
    first_logits(bytes);
    FAIL() << "NaN weights decoded without an error";
  } catch (const InternalError& e) {
    FAIL() << "an internal error for a damaged model: " << e.what();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("NaN or infinite logits"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace amanuensis::nn

// The window decoder's prompt layout, language detection and sampling on synthetic models.
#include <gtest/gtest.h>

#include "common/error.h"
#include "decoding/window_decoder.h"
#include "model/ggml_file.h"
#include "test_paths.h"

namespace amanuensis::decoding {
namespace {

struct Loaded {
  model::ModelFile file;
  std::shared_ptr<const nn::WhisperWeights> weights;
  text::Tokenizer tokenizer;
  nn::Decoder decoder;
  nn::CrossAttentionCache audio;
};

Loaded& load(const std::string& name) {
  static std::map<std::string, std::unique_ptr<Loaded>> cache;
  auto& slot = cache[name];
  if (!slot) {
    auto file = model::ModelFile::open(testing::model_path(name));
    auto weights = nn::WhisperWeights::load(file);
    text::Tokenizer tok(file.vocabulary(), file.hparams().n_vocab);
    nn::Encoder encoder(weights);
    nn::Decoder decoder(weights);
    std::vector<float> mel(80 * 3000, -0.5f);
    for (std::size_t i = 0; i < mel.size(); ++i) mel[i] += 0.3f * static_cast<float>((i * 7919) % 13) / 13.0f;
    auto audio = decoder.cross_attention(encoder.encode(mel));
    slot = std::make_unique<Loaded>(Loaded{std::move(file), weights, std::move(tok), decoder, std::move(audio)});
  }
  return *slot;
}

TEST(WindowDecoder, InitialTokensOfEnglishAndMultilingualModels) {
  auto& en = load("micro.en-f16");
  DecodeOptions o;
  o.timestamps = false;
  WindowDecoder english(en.decoder, en.tokenizer, o);
  const auto& sp = en.tokenizer.special();
  EXPECT_EQ(english.initial_tokens({}), (std::vector<TokenId>{sp.sot, sp.no_timestamps}));

  auto& multi = load("micro-f16");
  o.language = "de";
  o.task = "translate";
  o.timestamps = true;
  WindowDecoder german(multi.decoder, multi.tokenizer, o);
  const auto& msp = multi.tokenizer.special();
  EXPECT_EQ(german.initial_tokens({}), (std::vector<TokenId>{msp.sot, *multi.tokenizer.language_token("de"), msp.translate}));
}

TEST(WindowDecoder, PromptIsPrefixedAndCutToHalfTheContext) {
  auto& en = load("micro.en-f16");
  WindowDecoder decoder(en.decoder, en.tokenizer, {});
  std::vector<TokenId> prompt(300);
  for (int i = 0; i < 300; ++i) prompt[i] = 100 + i;
  const auto tokens = decoder.initial_tokens(prompt);
  const auto& sp = en.tokenizer.special();
  ASSERT_EQ(tokens.size(), 1 + 223 + 1u) << "OpenAI keeps the last n_text_ctx/2 - 1 = 223 prompt tokens";
  EXPECT_EQ(tokens.front(), sp.prev);
  EXPECT_EQ(tokens[1], 100 + 300 - 223);
  EXPECT_EQ(tokens.back(), sp.sot);
}

TEST(WindowDecoder, UnknownLanguageOrTaskIsAnError) {
  auto& multi = load("micro-f16");
  DecodeOptions o;
  o.language = "xx";
  EXPECT_THROW(WindowDecoder(multi.decoder, multi.tokenizer, o), Error);
  o.language = "en";
  o.task = "summarize";
  EXPECT_THROW(WindowDecoder(multi.decoder, multi.tokenizer, o), Error);
}

TEST(LanguageDetection, PicksTheLikeliestLanguageToken) {
  auto& multi = load("micro-f16");
  const auto guess = detect_language(multi.decoder, multi.tokenizer, multi.audio);
  ASSERT_TRUE(multi.tokenizer.language_token(guess.code).has_value());
  EXPECT_GT(guess.probability, 0.0f);
  EXPECT_LE(guess.probability, 1.0f);
  // it is the arg-max of the language logits after <|startoftranscript|>
  auto cache = multi.decoder.new_sequence();
  const TokenId sot[] = {multi.tokenizer.special().sot};
  const auto logits = multi.decoder.forward(sot, cache, multi.audio);
  const auto& sp = multi.tokenizer.special();
  const auto best = std::max_element(logits.begin() + sp.first_language, logits.begin() + sp.first_language + sp.n_languages);
  EXPECT_EQ(*multi.tokenizer.language_token(guess.code), static_cast<TokenId>(best - logits.begin()));
  auto& en = load("micro.en-f16");
  EXPECT_THROW(detect_language(en.decoder, en.tokenizer, en.audio), Error);
}

TEST(Sampling, SeededAndReproducible) {
  auto& en = load("micro.en-f16");
  DecodeOptions o;
  o.sample_len = 12;
  WindowDecoder decoder(en.decoder, en.tokenizer, o);
  const auto a = decoder.decode(en.audio, {}, 1.0f, 42);
  const auto b = decoder.decode(en.audio, {}, 1.0f, 42);
  const auto c = decoder.decode(en.audio, {}, 1.0f, 43);
  EXPECT_EQ(a.tokens, b.tokens);
  EXPECT_NE(a.tokens, c.tokens) << "another seed samples another sequence (at temperature 1)";
  const auto best = decoder.decode_best_of(en.audio, {}, 1.0f, 3, 42);
  EXPECT_EQ(best.temperature, 1.0f);
  // best_of keeps the candidate with the best mean log-probability among seeds 42..44 (its
  // candidates attend to the audio together, which may round the last bits differently)
  double best_score = -1e9;
  for (std::uint64_t seed = 42; seed < 45; ++seed) {
    const auto r = decoder.decode(en.audio, {}, 1.0f, seed);
    best_score = std::max(best_score, r.sum_logprob / std::max<double>(1.0, static_cast<double>(r.tokens.size())));
  }
  EXPECT_NEAR(best.sum_logprob / std::max<double>(1.0, static_cast<double>(best.tokens.size())), best_score, 1e-5);
}

// A step that names one KV cache twice is a bug in the caller, not bad input: an
// InternalError (a 500 in the server), never an Error (which would be a 400).
TEST(DecoderStep, BrokenInvariantIsAnInternalErrorNotABadRequest) {
  auto& en = load("micro.en-f16");
  auto cache = en.decoder.new_sequence();
  std::vector<float> a(static_cast<std::size_t>(en.decoder.n_vocab())), b(a.size());
  const nn::SequenceStep steps[] = {{0, &cache, &en.audio, a}, {0, &cache, &en.audio, b}};
  EXPECT_THROW(en.decoder.step(steps), InternalError);
  try {
    en.decoder.step(steps);
  } catch (const Error&) {
    ADD_FAILURE() << "an internal invariant was reported as the user's error";
  } catch (const InternalError& e) {
    EXPECT_EQ(std::string(e.what()).rfind("internal: ", 0), 0u) << e.what();
  }
}

}  // namespace
}  // namespace amanuensis::decoding

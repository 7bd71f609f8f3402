#include "decoding/window_decoder.h"

#include <algorithm>
#include <cmath>
#include <random>

#include "common/error.h"

namespace amanuensis::decoding {
namespace {

TokenId argmax(std::span<const float> row) {
  // std::max_element keeps the first maximum: ties go to the lowest id
  return static_cast<TokenId>(std::max_element(row.begin(), row.end()) - row.begin());
}

// -1 when every timestamp is masked.
TokenId likeliest_timestamp(std::span<const float> row, TokenId ts_begin) {
  const TokenId best = ts_begin + argmax(row.subspan(ts_begin));
  return std::isinf(row[best]) && row[best] < 0 ? -1 : best;
}

TokenId sample(std::span<const float> logits, float temperature, std::mt19937_64& rng) {
  float max = -INFINITY;
  for (float v : logits) max = std::max(max, v);
  std::vector<double> weights(logits.size());
  for (std::size_t i = 0; i < logits.size(); ++i) weights[i] = std::exp((logits[i] - max) / temperature);
  std::discrete_distribution<TokenId> pick(weights.begin(), weights.end());
  return pick(rng);
}

float probability_of(std::span<const float> raw_logits, TokenId id) {
  return std::exp(log_probability(raw_logits, id));
}

}  // namespace

LanguageGuess detect_language(const nn::Decoder& decoder, const text::Tokenizer& tokenizer,
                              const nn::CrossAttentionCache& audio) {
  if (!tokenizer.is_multilingual()) throw Error("language detection needs a multilingual model");
  const auto& sp = tokenizer.special();
  auto cache = decoder.new_cache();
  const TokenId sot[] = {sp.sot};
  const auto logits = decoder.forward(sot, cache, audio);
  const auto languages = std::span(logits).subspan(sp.first_language, sp.n_languages);
  const auto probabilities = log_softmax(languages);
  const TokenId best = argmax(languages);
  return {std::string(tokenizer.language_code(sp.first_language + best)), std::exp(probabilities[best])};
}

WindowDecoder::WindowDecoder(const nn::Decoder& decoder, const text::Tokenizer& tokenizer, DecodeOptions options)
    : decoder_(decoder), tokenizer_(tokenizer), options_(std::move(options)) {
  if (options_.task != "transcribe" && options_.task != "translate") {
    throw Error("unknown task '" + options_.task + "' (use transcribe or translate)");
  }
  if (tokenizer_.is_multilingual() && !tokenizer_.language_token(options_.language)) {
    throw Error("unknown language code '" + options_.language + "' (detect it first, or use a code such as en, de, fr)");
  }
  rules_.semantics = options_.semantics;
  rules_.timestamps = options_.timestamps;
  rules_.suppress_blank = options_.suppress_blank;
  rules_.max_initial_timestamp = options_.max_initial_timestamp;
  rules_.suppress = suppressed_tokens(tokenizer_, options_.suppress_tokens, options_.semantics, options_.timestamps);
  // OpenAI samples n_text_ctx/2 tokens at most, whisper.cpp 4 fewer
  const int default_len = decoder_.n_text_ctx() / 2 - (options_.semantics == Semantics::WhisperCpp ? 4 : 0);
  sample_len_ = options_.sample_len > 0 ? options_.sample_len : default_len;
}

std::vector<TokenId> WindowDecoder::initial_tokens(std::span<const TokenId> prompt) const {
  const auto& sp = tokenizer_.special();
  std::vector<TokenId> tokens;
  if (!prompt.empty()) {
    // OpenAI keeps the last n_text_ctx/2 - 1 prompt tokens, whisper.cpp n_text_ctx/2
    const std::size_t limit = decoder_.n_text_ctx() / 2 - (options_.semantics == Semantics::OpenAI ? 1 : 0);
    const std::size_t keep = std::min<std::size_t>(prompt.size(), limit);
    tokens.push_back(sp.prev);
    tokens.insert(tokens.end(), prompt.end() - static_cast<std::ptrdiff_t>(keep), prompt.end());
  }
  tokens.push_back(sp.sot);
  if (tokenizer_.is_multilingual()) {
    tokens.push_back(*tokenizer_.language_token(options_.language));
    tokens.push_back(options_.task == "translate" ? sp.translate : sp.transcribe);
  }
  if (!options_.timestamps) tokens.push_back(sp.no_timestamps);
  return tokens;
}

WindowResult WindowDecoder::decode(const nn::CrossAttentionCache& audio, std::span<const TokenId> prompt,
                                   float temperature, std::uint64_t seed, const LogitsFilter& filter,
                                   int frames_left) const {
  const auto& sp = tokenizer_.special();
  const auto initial = initial_tokens(prompt);
  const auto sot_index = static_cast<std::size_t>(std::find(initial.begin(), initial.end(), sp.sot) - initial.begin());
  const int max_tokens = std::min<int>(sample_len_, decoder_.n_text_ctx() - static_cast<int>(initial.size()));

  // whisper.cpp ends a window once a timestamp reaches the last 100 ms (10 frames) of audio
  const TokenId end_of_audio_timestamp =
      options_.semantics == Semantics::WhisperCpp ? sp.timestamp_begin + std::max(1, (frames_left - 10 + 1) / 2) : -1;

  WindowResult result;
  result.temperature = temperature;
  std::mt19937_64 rng(seed);
  auto cache = decoder_.new_cache();
  // Decode up to <|startoftranscript|> first: its logits give the no-speech probability.
  auto logits = decoder_.forward(std::span(initial).first(sot_index + 1), cache, audio);
  result.no_speech_prob = probability_of(logits, sp.no_speech);
  if (sot_index + 1 < initial.size()) logits = decoder_.forward(std::span(initial).subspan(sot_index + 1), cache, audio);

  for (int step = 0; step < max_tokens; ++step) {
    apply_suppression(logits, result.tokens, rules_, tokenizer_);
    if (filter) filter(step, result.tokens, logits);
    apply_timestamp_rules(logits, result.tokens, rules_, tokenizer_);
    const TokenId chosen = temperature > 0.0f ? sample(logits, temperature, rng) : argmax(logits);
    const float logprob = log_probability(logits, chosen);
    if (std::isfinite(logprob)) result.sum_logprob += logprob;
    if (chosen == sp.eot) {
      result.reached_end_of_text = true;
      break;
    }
    result.tokens.push_back(chosen);
    result.best_timestamp.push_back(tokenizer_.is_timestamp(chosen) ? chosen : likeliest_timestamp(logits, sp.timestamp_begin));
    if (end_of_audio_timestamp >= 0 && chosen >= end_of_audio_timestamp) {
      result.reached_end_of_text = true;  // whisper.cpp counts this as a completed window
      break;
    }
    if (step + 1 < max_tokens) {
      const TokenId next[] = {chosen};
      logits = decoder_.forward(next, cache, audio);
    }
  }
  result.avg_logprob = result.sum_logprob / (static_cast<double>(result.tokens.size()) + 1.0);
  return result;
}

WindowResult WindowDecoder::decode_best_of(const nn::CrossAttentionCache& audio, std::span<const TokenId> prompt,
                                           float temperature, int candidates, std::uint64_t seed,
                                           const LogitsFilter& filter, int frames_left) const {
  WindowResult best;
  double best_score = -INFINITY;
  for (int i = 0; i < std::max(1, candidates); ++i) {
    auto result = decode(audio, prompt, temperature, seed + static_cast<std::uint64_t>(i), filter, frames_left);
    const double score = result.sum_logprob / std::max<double>(1.0, static_cast<double>(result.tokens.size()));
    if (score > best_score) {
      best_score = score;
      best = std::move(result);
    }
  }
  return best;
}

}  // namespace amanuensis::decoding

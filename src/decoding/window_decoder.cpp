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
                              const nn::CrossAttentionCache& audio, nn::Runner& runner) {
  if (!tokenizer.is_multilingual()) throw Error("language detection needs a multilingual model");
  const auto& sp = tokenizer.special();
  auto cache = decoder.new_sequence();
  const TokenId sot[] = {sp.sot};
  std::vector<float> logits;
  runner.run(nn::Work::Forward, [&] { logits = decoder.forward(sot, cache, audio); });
  const auto languages = std::span(logits).subspan(sp.first_language, sp.n_languages);
  const auto probabilities = log_softmax(languages);
  const TokenId best = argmax(languages);
  LanguageGuess guess{std::string(tokenizer.language_code(sp.first_language + best)), std::exp(probabilities[best]), {}};
  guess.probabilities.reserve(probabilities.size());
  for (std::size_t i = 0; i < probabilities.size(); ++i)
    guess.probabilities.emplace_back(std::string(tokenizer.language_code(sp.first_language + static_cast<TokenId>(i))),
                                     std::exp(probabilities[i]));
  return guess;
}

WindowDecoder::WindowDecoder(const nn::Decoder& decoder, const text::Tokenizer& tokenizer, DecodeOptions options,
                             nn::Runner& runner)
    : decoder_(decoder), tokenizer_(tokenizer), options_(std::move(options)), runner_(runner) {
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
  sample_len_ = sample_len(options_, decoder_.n_text_ctx());
}

int WindowDecoder::sample_len(const DecodeOptions& options, int n_text_ctx) {
  // OpenAI samples n_text_ctx/2 tokens at most, whisper.cpp 4 fewer
  const int default_len = n_text_ctx / 2 - (options.semantics == Semantics::WhisperCpp ? 4 : 0);
  return options.sample_len > 0 ? options.sample_len : default_len;
}

std::size_t WindowDecoder::prompt_limit(const DecodeOptions& options, int n_text_ctx) {
  // OpenAI keeps the last n_text_ctx/2 - 1 prompt tokens, whisper.cpp n_text_ctx/2
  return static_cast<std::size_t>(n_text_ctx / 2 - (options.semantics == Semantics::OpenAI ? 1 : 0));
}

std::int64_t WindowDecoder::max_positions(const DecodeOptions& options, int n_text_ctx) {
  // <|startofprev|> prompt... <|startoftranscript|> <|lang|> <|task|> <|notimestamps|>
  constexpr std::int64_t kStartTokens = 5;
  const std::int64_t start = static_cast<std::int64_t>(prompt_limit(options, n_text_ctx)) + kStartTokens;
  return std::min<std::int64_t>(n_text_ctx, start + sample_len(options, n_text_ctx));
}

std::vector<TokenId> WindowDecoder::initial_tokens(std::span<const TokenId> prompt) const {
  const auto& sp = tokenizer_.special();
  std::vector<TokenId> tokens;
  if (!prompt.empty()) {
    const std::size_t keep = std::min<std::size_t>(prompt.size(), prompt_limit());
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
  const std::uint64_t seeds[] = {seed};
  return std::move(decode_candidates(audio, prompt, temperature, seeds, filter, frames_left).front());
}

std::vector<WindowResult> WindowDecoder::decode_candidates(const nn::CrossAttentionCache& audio,
                                                           std::span<const TokenId> prompt, float temperature,
                                                           std::span<const std::uint64_t> seeds,
                                                           const LogitsFilter& filter, int frames_left) const {
  const auto& sp = tokenizer_.special();
  const auto initial = initial_tokens(prompt);
  const auto sot_index = static_cast<std::size_t>(std::find(initial.begin(), initial.end(), sp.sot) - initial.begin());
  const int max_tokens = std::min<int>(sample_len_, decoder_.n_text_ctx() - static_cast<int>(initial.size()));

  // whisper.cpp ends a window once a timestamp reaches the last 100 ms (10 frames) of audio
  const TokenId end_of_audio_timestamp =
      options_.semantics == Semantics::WhisperCpp ? sp.timestamp_begin + std::max(1, (frames_left - 10 + 1) / 2) : -1;

  // The prompt once for all candidates: identical rows give identical logits.
  auto prompt_cache = decoder_.new_sequence();
  std::vector<float> prompt_logits;
  float no_speech_prob = 0.0f;
  runner_.run(nn::Work::Forward, [&] {
    // up to <|startoftranscript|> first: its logits give the no-speech probability
    prompt_logits = decoder_.forward(std::span(initial).first(sot_index + 1), prompt_cache, audio);
    no_speech_prob = probability_of(prompt_logits, sp.no_speech);
    if (sot_index + 1 < initial.size())
      prompt_logits = decoder_.forward(std::span(initial).subspan(sot_index + 1), prompt_cache, audio);
  });

  struct Candidate {
    WindowResult result;
    std::mt19937_64 rng;
    nn::KvSequence cache;
    std::vector<float> logits;
    bool done = false;
  };
  std::vector<Candidate> candidates(seeds.size());
  for (std::size_t i = 0; i < seeds.size(); ++i) {
    auto& c = candidates[i];
    c.result.temperature = temperature;
    c.result.no_speech_prob = no_speech_prob;
    c.rng.seed(seeds[i]);
    // every candidate shares the prompt's blocks; the last takes the prompt's own sequence
    c.cache = i + 1 < seeds.size() ? prompt_cache.fork() : std::move(prompt_cache);
    c.logits = prompt_logits;
  }

  std::vector<nn::SequenceStep> batch;
  const nn::IdleOnExit idle_on_error(runner_);
  for (int step = 0; step < max_tokens; ++step) {
    batch.clear();
    for (auto& c : candidates) {
      if (c.done) continue;
      auto& logits = c.logits;
      auto& result = c.result;
      apply_suppression(logits, result.tokens, rules_, tokenizer_);
      if (filter) filter(step, result.tokens, logits);
      apply_timestamp_rules(logits, result.tokens, rules_, tokenizer_);
      const TokenId chosen = temperature > 0.0f ? sample(logits, temperature, c.rng) : argmax(logits);
      const float logprob = log_probability(logits, chosen);
      if (std::isfinite(logprob)) result.sum_logprob += logprob;
      if (chosen == sp.eot) {
        result.reached_end_of_text = c.done = true;
        continue;
      }
      result.tokens.push_back(chosen);
      result.token_logprobs.push_back(logprob);
      result.best_timestamp.push_back(tokenizer_.is_timestamp(chosen) ? chosen
                                                                       : likeliest_timestamp(logits, sp.timestamp_begin));
      if (end_of_audio_timestamp >= 0 && chosen >= end_of_audio_timestamp) {
        result.reached_end_of_text = c.done = true;  // whisper.cpp counts this as a completed window
        continue;
      }
      if (step + 1 < max_tokens) batch.push_back({chosen, &c.cache, &audio, logits});
    }
    if (batch.empty()) break;
    runner_.step(decoder_, batch);
  }
  runner_.idle();
  std::vector<WindowResult> results;
  results.reserve(candidates.size());
  for (auto& c : candidates) {
    c.result.avg_logprob = c.result.sum_logprob / (static_cast<double>(c.result.tokens.size()) + 1.0);
    results.push_back(std::move(c.result));
  }
  return results;
}

WindowResult WindowDecoder::decode_best_of(const nn::CrossAttentionCache& audio, std::span<const TokenId> prompt,
                                           float temperature, int candidates, std::uint64_t seed,
                                           const LogitsFilter& filter, int frames_left) const {
  std::vector<std::uint64_t> seeds(static_cast<std::size_t>(std::max(1, candidates)));
  for (std::size_t i = 0; i < seeds.size(); ++i) seeds[i] = seed + i;
  auto results = decode_candidates(audio, prompt, temperature, seeds, filter, frames_left);
  std::size_t best = 0;
  double best_score = -INFINITY;
  for (std::size_t i = 0; i < results.size(); ++i) {
    const auto& r = results[i];
    const double score = r.sum_logprob / std::max<double>(1.0, static_cast<double>(r.tokens.size()));
    if (score > best_score) {
      best_score = score;
      best = i;
    }
  }
  return std::move(results[best]);
}

}  // namespace amanuensis::decoding

// decoding: decodes one 30 s window: builds the initial prompt, runs the decoder step by
// step with the logit rules, and returns the sampled tokens with their statistics.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "decoding/logit_rules.h"
#include "nn/runner.h"
#include "nn/whisper.h"
#include "text/tokenizer.h"

namespace amanuensis::decoding {

struct DecodeOptions {
  Semantics semantics = Semantics::OpenAI;
  std::string task = "transcribe";  // or "translate"
  std::string language = "en";      // ignored by English-only models; "" = detect
  bool timestamps = true;
  int sample_len = 0;               // tokens sampled at most; 0 = n_text_ctx / 2 (224; whisper.cpp: 220)
  bool suppress_blank = true;
  std::string suppress_tokens = "-1";
  double max_initial_timestamp = 1.0;
};

// Sees, and may change, each step's logits after token suppression and before the
// timestamp rules: the point where whisper.cpp calls its logits filter callback. `step`
// is the position in the window's sampled tokens. For tests, debugging and extensions.
using LogitsFilter = std::function<void(int step, std::span<const TokenId> sampled, std::span<float> logits)>;

struct WindowResult {
  std::vector<TokenId> tokens;        // sampled tokens, timestamps included, end-of-text excluded
  std::vector<TokenId> best_timestamp;  // per token: the likeliest timestamp at that step (-1: all masked)
  std::vector<float> token_logprobs;   // per token: its log-probability after the logit rules
  double sum_logprob = 0.0;
  double avg_logprob = 0.0;           // sum_logprob / (tokens + 1 for end-of-text)
  float no_speech_prob = 0.0f;
  bool reached_end_of_text = false;
  float temperature = 0.0f;
};

struct LanguageGuess {
  std::string code;
  float probability = 0.0f;
  // every language of the model with its probability (summing to 1), in token order
  std::vector<std::pair<std::string, float>> probabilities;
};

// OpenAI's detect_language(): the likeliest language token after <|startoftranscript|>.
// Throws Error for an English-only model.
LanguageGuess detect_language(const nn::Decoder& decoder, const text::Tokenizer& tokenizer,
                              const nn::CrossAttentionCache& audio, nn::Runner& runner = nn::direct_runner());

class WindowDecoder {
 public:
  // The decoder's calls go through `runner` (the server's batching scheduler, or directly).
  WindowDecoder(const nn::Decoder& decoder, const text::Tokenizer& tokenizer, DecodeOptions options,
                nn::Runner& runner = nn::direct_runner());

  // The tokens that start decoding: [<|startofprev|> prompt...] <|startoftranscript|>
  // [<|lang|> <|task|>] [<|notimestamps|>]. `prompt` is cut to its last n_text_ctx/2 - 1
  // tokens (n_text_ctx/2 with whisper.cpp semantics).
  std::vector<TokenId> initial_tokens(std::span<const TokenId> prompt) const;
  // The most prompt tokens initial_tokens() keeps (its last ones).
  std::size_t prompt_limit() const { return prompt_limit(options_, decoder_.n_text_ctx()); }
  static std::size_t prompt_limit(const DecodeOptions& options, int n_text_ctx);
  // The tokens sampled at most per window with `options`.
  static int sample_len(const DecodeOptions& options, int n_text_ctx);
  // The most positions one sequence of a window holds with `options` (the start tokens
  // with the longest prompt, then every sampled token), for a decoder of n_text_ctx: what
  // admission reserves for each sequence a transcription decodes at once.
  static std::int64_t max_positions(const DecodeOptions& options, int n_text_ctx);

  // Decodes one window: arg-max at temperature 0, else samples softmax(logits / T) with a
  // generator seeded by `seed`, so the same call gives the same tokens.
  // `frames_left`: mel frames of audio from the window's start to the end of the
  // recording; with whisper.cpp semantics a timestamp within 100 ms of that end stops
  // the window.
  WindowResult decode(const nn::CrossAttentionCache& audio, std::span<const TokenId> prompt, float temperature = 0.0f,
                      std::uint64_t seed = 0, const LogitsFilter& filter = {}, int frames_left = 1 << 30) const;

  // OpenAI's best_of: `candidates` sampled decodes (seeds seed, seed+1, ...), the one with
  // the highest sum log-probability per token wins.
  WindowResult decode_best_of(const nn::CrossAttentionCache& audio, std::span<const TokenId> prompt,
                              float temperature, int candidates, std::uint64_t seed,
                              const LogitsFilter& filter = {}, int frames_left = 1 << 30) const;

  // One decode per seed, advanced together (one decoder step for all per token, the
  // prompt computed once): each result is what decode() gives for that seed, up to the
  // rounding of their shared cross-attention.
  std::vector<WindowResult> decode_candidates(const nn::CrossAttentionCache& audio, std::span<const TokenId> prompt,
                                              float temperature, std::span<const std::uint64_t> seeds,
                                              const LogitsFilter& filter = {}, int frames_left = 1 << 30) const;

  const LogitRules& rules() const { return rules_; }
  const nn::Decoder& decoder() const { return decoder_; }
  nn::Runner& runner() const { return runner_; }
  int sample_len() const { return sample_len_; }

 private:
  const nn::Decoder& decoder_;
  const text::Tokenizer& tokenizer_;
  DecodeOptions options_;
  nn::Runner& runner_;
  LogitRules rules_;
  int sample_len_ = 0;
};

}  // namespace amanuensis::decoding

// decoding: the rules OpenAI's decoder applies to each step's logits before choosing a
// token (suppress-blank, suppressed token sets, timestamp rules), in one place so that
// greedy search, beam search and sampling share them.
#pragma once

#include <span>
#include <string_view>
#include <vector>

#include "text/tokenizer.h"

namespace amanuensis::decoding {

using text::TokenId;

// Whose decoding semantics to follow. OpenAI's `whisper` package is the default;
// whisper.cpp's differ in a few rules, and the conformance references were made with it.
enum class Semantics { OpenAI, WhisperCpp };

Semantics parse_semantics(std::string_view name);  // "openai" | "whisper.cpp"; throws Error

struct LogitRules {
  Semantics semantics = Semantics::OpenAI;
  bool timestamps = true;
  bool suppress_blank = true;
  std::vector<TokenId> suppress;       // always -inf
  double max_initial_timestamp = 1.0;  // seconds; <= 0 disables the limit
};

// Token ids suppressed at every step: OpenAI's `suppress_tokens` ("-1" stands for the
// non-speech symbol set; "" for none) plus the special tokens the semantics suppress.
std::vector<TokenId> suppressed_tokens(const text::Tokenizer& tokenizer, std::string_view suppress_tokens,
                                       Semantics semantics, bool timestamps);

// Applies the rules in OpenAI's order to one row of logits. `sampled` are the tokens
// chosen so far in this window (after the initial prompt). Masked entries become -inf.
// The two halves: suppression (blank at the start, suppressed set), then the timestamp
// rules (pairs, monotonic, initial, forced when timestamps are likelier than any text).
void apply_logit_rules(std::span<float> logits, std::span<const TokenId> sampled, const LogitRules& rules,
                       const text::Tokenizer& tokenizer);
void apply_suppression(std::span<float> logits, std::span<const TokenId> sampled, const LogitRules& rules,
                       const text::Tokenizer& tokenizer);
void apply_timestamp_rules(std::span<float> logits, std::span<const TokenId> sampled, const LogitRules& rules,
                           const text::Tokenizer& tokenizer);

// log_softmax of a row (in double for the sums, returned as float).
std::vector<float> log_softmax(std::span<const float> logits);
// log(sum(exp(logits))) in double; -inf for an empty or fully masked row.
double log_sum_exp(std::span<const float> logits);
// log_softmax(logits)[id] without building the whole row.
float log_probability(std::span<const float> logits, TokenId id);

}  // namespace amanuensis::decoding

#include "decoding/logit_rules.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "common/error.h"
#include "kernels/cpu/fast_math.h"

namespace amanuensis::decoding {
namespace {

constexpr float kMasked = -std::numeric_limits<float>::infinity();
constexpr double kTimePrecision = 0.02;  // seconds per timestamp token (30 s / 1500 audio positions)

void mask_range(std::span<float> logits, long begin, long end) {
  begin = std::max(0L, begin);
  end = std::min(static_cast<long>(logits.size()), end);
  for (long i = begin; i < end; ++i) logits[i] = kMasked;
}

// The last timestamp of the window so far that constrains the next one, or -1.
// OpenAI: a closing timestamp may repeat the opening one; anything else must move forward.
// whisper.cpp: the last timestamp above <|0.00|> may repeat.
long first_allowed_timestamp(std::span<const TokenId> sampled, const LogitRules& rules, TokenId ts_begin,
                             bool last_was_ts, bool penultimate_was_ts) {
  for (auto it = sampled.rbegin(); it != sampled.rend(); ++it) {
    if (rules.semantics == Semantics::WhisperCpp) {
      if (*it > ts_begin) return *it;
    } else if (*it >= ts_begin) {
      return (last_was_ts && !penultimate_was_ts) ? *it : *it + 1;
    }
  }
  return -1;
}

void timestamp_rules(std::span<float> logits, std::span<const TokenId> sampled, const LogitRules& rules,
                     const text::SpecialTokens& sp) {
  const long n_vocab = static_cast<long>(logits.size());
  logits[sp.no_timestamps] = kMasked;

  // timestamps come in pairs, except directly before end-of-text
  const std::size_t n = sampled.size();
  const bool last_was_ts = n >= 1 && sampled[n - 1] >= sp.timestamp_begin;
  const bool penultimate_was_ts = n < 2 || sampled[n - 2] >= sp.timestamp_begin;
  if (last_was_ts) {
    if (penultimate_was_ts) {
      mask_range(logits, sp.timestamp_begin, n_vocab);  // a pair just closed: text or end next
    } else {
      mask_range(logits, 0, sp.eot);  // an open pair: close it (or end)
    }
  }

  const long first_allowed = first_allowed_timestamp(sampled, rules, sp.timestamp_begin, last_was_ts, penultimate_was_ts);
  if (first_allowed >= 0) mask_range(logits, sp.timestamp_begin, first_allowed);

  if (sampled.empty()) {
    if (rules.semantics == Semantics::OpenAI) mask_range(logits, 0, sp.timestamp_begin);  // start with a timestamp
    if (rules.max_initial_timestamp > 0) {
      // OpenAI rounds with Python's round() (halves to even), whisper.cpp with std::round
      const double steps = rules.max_initial_timestamp / kTimePrecision;
      const long last_allowed = sp.timestamp_begin + static_cast<long>(rules.semantics == Semantics::OpenAI
                                                                            ? std::nearbyint(steps)
                                                                            : std::round(steps));
      mask_range(logits, last_allowed + 1, n_vocab);
    }
  }

  // when timestamps together are likelier than any single text token, emit a timestamp
  // (both sides share the row's normaliser, so it cancels out of the comparison)
  const double timestamps = log_sum_exp(logits.subspan(sp.timestamp_begin));
  if (timestamps == -INFINITY) return;
  const auto text = logits.first(sp.timestamp_begin);
  const float max_text = *std::max_element(text.begin(), text.end());
  if (timestamps > max_text) mask_range(logits, 0, sp.timestamp_begin);
}

}  // namespace

Semantics parse_semantics(std::string_view name) {
  if (name == "openai") return Semantics::OpenAI;
  if (name == "whisper.cpp" || name == "whisper-cpp") return Semantics::WhisperCpp;
  throw Error("unknown decoding semantics '" + std::string(name) + "' (use openai or whisper.cpp)");
}

std::vector<TokenId> suppressed_tokens(const text::Tokenizer& tokenizer, std::string_view suppress_tokens,
                                       Semantics semantics, bool timestamps) {
  const auto& sp = tokenizer.special();
  std::vector<TokenId> ids;
  std::string list(suppress_tokens);
  std::size_t pos = 0;
  while (pos < list.size()) {
    auto comma = list.find(',', pos);
    if (comma == std::string::npos) comma = list.size();
    const std::string item = list.substr(pos, comma - pos);
    pos = comma + 1;
    if (item.find_first_not_of(" \t") == std::string::npos) continue;
    int id = 0;
    try {
      std::size_t used = 0;
      id = std::stoi(item, &used);
      if (item.find_first_not_of(" \t", used) != std::string::npos) throw std::invalid_argument(item);
    } catch (const std::exception&) {
      throw Error("suppress_tokens: '" + item + "' is not a token id (use comma-separated ids, -1 for the non-speech set)");
    }
    if (id == -1) {
      const auto nst = tokenizer.non_speech_tokens();
      ids.insert(ids.end(), nst.begin(), nst.end());
    } else if (id < 0 || id >= tokenizer.n_vocab()) {
      throw Error("suppress_tokens: id " + std::to_string(id) + " is outside the vocabulary");
    } else {
      ids.push_back(id);
    }
  }
  for (TokenId id : {sp.transcribe, sp.translate, sp.sot, sp.prev, sp.solm, sp.no_speech}) ids.push_back(id);
  if (semantics == Semantics::WhisperCpp) {
    ids.push_back(sp.no_timestamps);
    for (int i = 0; i < sp.n_languages; ++i) ids.push_back(sp.first_language + i);
    if (!timestamps)
      for (TokenId id = sp.timestamp_begin; id < tokenizer.n_vocab(); ++id) ids.push_back(id);
  }
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  return ids;
}

void apply_suppression(std::span<float> logits, std::span<const TokenId> sampled, const LogitRules& rules,
                       const text::Tokenizer& tokenizer) {
  if (rules.suppress_blank && sampled.empty()) {
    if (auto blank = tokenizer.find_piece(" ")) logits[*blank] = kMasked;
    logits[tokenizer.special().eot] = kMasked;
  }
  for (TokenId id : rules.suppress) logits[id] = kMasked;
}

void apply_timestamp_rules(std::span<float> logits, std::span<const TokenId> sampled, const LogitRules& rules,
                           const text::Tokenizer& tokenizer) {
  if (rules.timestamps) timestamp_rules(logits, sampled, rules, tokenizer.special());
}

void apply_logit_rules(std::span<float> logits, std::span<const TokenId> sampled, const LogitRules& rules,
                       const text::Tokenizer& tokenizer) {
  apply_suppression(logits, sampled, rules, tokenizer);
  apply_timestamp_rules(logits, sampled, rules, tokenizer);
}

double log_sum_exp(std::span<const float> logits) {
  // vectorised: a step's 51,864 exponentials through libm's double exp took 0.3-0.5 ms
  return kernels::cpu::log_sum_exp(logits.data(), static_cast<std::int64_t>(logits.size()));
}

float log_probability(std::span<const float> logits, TokenId id) {
  return static_cast<float>(logits[id] - log_sum_exp(logits));
}

std::vector<float> log_softmax(std::span<const float> logits) {
  const double log_sum = log_sum_exp(logits);
  std::vector<float> out(logits.size());
  for (std::size_t i = 0; i < logits.size(); ++i) out[i] = static_cast<float>(logits[i] - log_sum);
  return out;
}

}  // namespace amanuensis::decoding

// decoding: beam search over one 30 s window with the semantics of OpenAI's
// BeamSearchDecoder and MaximumLikelihoodRanker (whisper/decoding.py), for temperature 0.
// The candidate selection of a step, the choice of live beams added at the end and the
// ranking are pure functions, so that they can be tested without a model.
#pragma once

#include <cstddef>
#include <optional>
#include <span>
#include <vector>

#include "decoding/logit_rules.h"
#include "decoding/window_decoder.h"
#include "nn/whisper.h"
#include "text/tokenizer.h"

namespace amanuensis::decoding {

struct BeamOptions {
  int beam_size = 5;                      // live beams; >= 1
  double patience = 1.0;                  // finished candidates wanted = round(beam_size * patience); 0 means 1.0
  std::optional<double> length_penalty;   // none: rank by sum_logprob / length; else ((5 + length) / 6) ** value
};

// OpenAI's max_candidates: round(beam_size * patience) with Python's round (half to even),
// patience 0 standing for 1.0 (`patience or 1.0`). Throws Error for beam_size < 1, a
// negative patience, or a result below 1.
int max_candidates(const BeamOptions& options);

// One extension of a live beam: the beam it extends, the token, and the cumulative
// log-probability of the extended sequence.
struct BeamCandidate {
  int source = 0;
  TokenId token = 0;
  double sum_logprob = 0.0;
};

struct BeamStep {
  std::vector<BeamCandidate> live;      // the next live beams, best first (at most beam_size)
  std::vector<BeamCandidate> finished;  // newly finished (token == eot), best first, already cut to the free slots
};

// The `k` likeliest tokens of a row, best first; ties go to the lower id (like arg-max).
std::vector<TokenId> top_k(std::span<const float> row, int k);

// One step of BeamSearchDecoder.update for one audio. `sum_logprobs[j]` is live beam j's
// cumulative log-probability and `logprobs[j]` its log_softmax row (after the logit rules);
// the beams must be distinct sequences. Each beam offers its top beam_size + 1 tokens;
// the offers are ordered by cumulative log-probability, best first (a stable sort: ties
// keep beam order, then token order). Walking that order, an offer ending in `eot` is a
// finished candidate, any other becomes a live beam, until beam_size live beams are
// taken (offers after that are dropped, end-of-text ones included). Of the finished
// candidates, only the best max_candidates - n_finished are kept.
BeamStep select_beam_step(std::span<const double> sum_logprobs, std::span<const std::vector<float>> logprobs,
                          TokenId eot, const BeamOptions& options, std::size_t n_finished);

// BeamSearchDecoder.finalize: when fewer than beam_size candidates finished, the live
// beams to add (as if ended by end-of-text), in the order added: highest cumulative
// log-probability first (ties: the later beam first, as numpy's reversed argsort),
// until there are beam_size candidates. Returns indices into `live_sum_logprobs`.
std::vector<int> live_beams_to_finalize(std::span<const double> live_sum_logprobs, std::size_t n_finished,
                                        int beam_size);

// MaximumLikelihoodRanker's score of one candidate: sum_logprob / length without a length
// penalty, else sum_logprob / ((5 + length) / 6) ** length_penalty. `length` counts the
// sampled tokens without end-of-text. (OpenAI divides by zero for an empty candidate
// without a length penalty; here an empty candidate counts as length 1, as in
// WindowDecoder::decode_best_of.)
double ranking_score(double sum_logprob, std::size_t length, std::optional<double> length_penalty);

// The index of the best-ranked candidate (the first of equal scores, like np.argmax).
// Requires at least one candidate.
std::size_t rank_candidates(std::span<const double> sum_logprobs, std::span<const std::size_t> lengths,
                            std::optional<double> length_penalty);

// One candidate sequence of a beam search.
struct BeamHypothesis {
  std::vector<TokenId> tokens;          // sampled tokens, end-of-text excluded
  std::vector<TokenId> best_timestamp;  // per token, as WindowResult::best_timestamp
  std::vector<float> token_logprobs;    // per token, as WindowResult::token_logprobs
  double sum_logprob = 0.0;             // end-of-text's log-probability included when finished
  bool finished = false;                // ended by end-of-text (false: a live beam added at the end)
};

struct BeamSearchOutput {
  // OpenAI's finished_sequences of the audio after finalize: the finished candidates in
  // the order they finished (best first within a step), then the live beams added.
  std::vector<BeamHypothesis> candidates;
  std::size_t best = 0;  // rank_candidates' choice among `candidates`
  float no_speech_prob = 0.0f;
};

// Decodes one window with beam search (temperature 0). `initial_tokens` are those of
// WindowDecoder::initial_tokens (they must contain <|startoftranscript|>); at most
// `sample_len` tokens are sampled (and no more than fit in n_text_ctx). The logit rules
// are applied per beam with that beam's own sampled tokens, in the order of
// WindowDecoder::decode (suppression, `filter`, timestamp rules). Whisper.cpp's
// end-of-audio stop is not applied. The live beams advance in one decoder step (through
// `runner`); each beam holds a KV sequence, forked (its blocks shared) when a beam forks.
BeamSearchOutput beam_search_candidates(const nn::Decoder& decoder, const text::Tokenizer& tokenizer,
                                        const LogitRules& rules, std::span<const TokenId> initial_tokens,
                                        int sample_len, const nn::CrossAttentionCache& audio,
                                        const BeamOptions& options = {}, const LogitsFilter& filter = {},
                                        nn::Runner& runner = nn::direct_runner());

// The same, as the chosen candidate: its tokens, best_timestamp (the likeliest timestamp
// of the step that produced each token in its own beam, -1 when all were masked; the
// token itself for a timestamp), sum_logprob, avg_logprob = sum_logprob / (tokens + 1),
// no_speech_prob (softmax at <|startoftranscript|>, as WindowDecoder::decode),
// reached_end_of_text (false for a live beam added at the end), temperature 0.
WindowResult beam_search(const nn::Decoder& decoder, const text::Tokenizer& tokenizer, const LogitRules& rules,
                         std::span<const TokenId> initial_tokens, int sample_len, const nn::CrossAttentionCache& audio,
                         const BeamOptions& options = {}, const LogitsFilter& filter = {},
                         nn::Runner& runner = nn::direct_runner());

}  // namespace amanuensis::decoding

#include "decoding/beam_search.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>

#include "common/error.h"

namespace amanuensis::decoding {
namespace {

// Python's round() of a float to an int: halves go to the even neighbour.
double round_half_even(double x) {
  const double floor = std::floor(x);
  const double diff = x - floor;
  if (diff < 0.5) return floor;
  if (diff > 0.5) return floor + 1.0;
  return std::fmod(floor, 2.0) == 0.0 ? floor : floor + 1.0;
}

// -1 when every timestamp is masked (as in window_decoder.cpp).
TokenId likeliest_timestamp(std::span<const float> row, TokenId ts_begin) {
  if (static_cast<std::size_t>(ts_begin) >= row.size()) return -1;
  const auto tail = row.subspan(static_cast<std::size_t>(ts_begin));
  const TokenId best = ts_begin + static_cast<TokenId>(std::max_element(tail.begin(), tail.end()) - tail.begin());
  return std::isinf(row[best]) && row[best] < 0 ? -1 : best;
}

BeamHypothesis extend(const BeamHypothesis& from, TokenId token, TokenId best_timestamp, float logprob,
                      double sum_logprob) {
  BeamHypothesis h;
  h.tokens.reserve(from.tokens.size() + 1);
  h.tokens = from.tokens;
  h.tokens.push_back(token);
  h.best_timestamp.reserve(from.best_timestamp.size() + 1);
  h.best_timestamp = from.best_timestamp;
  h.best_timestamp.push_back(best_timestamp);
  h.token_logprobs.reserve(from.token_logprobs.size() + 1);
  h.token_logprobs = from.token_logprobs;
  h.token_logprobs.push_back(logprob);
  h.sum_logprob = sum_logprob;
  return h;
}

}  // namespace

int max_candidates(const BeamOptions& options) {
  if (options.beam_size < 1) throw Error("beam size must be at least 1 (got " + std::to_string(options.beam_size) + ")");
  if (!(options.patience >= 0.0)) throw Error("beam search patience must not be negative");
  const double patience = options.patience == 0.0 ? 1.0 : options.patience;  // OpenAI: `patience or 1.0`
  const double n = round_half_even(static_cast<double>(options.beam_size) * patience);
  if (n < 1.0) {
    throw Error("beam size " + std::to_string(options.beam_size) + " with patience " + std::to_string(options.patience) +
                " leaves no finished candidates to wait for");
  }
  return static_cast<int>(std::min(n, 1e9));
}

std::vector<TokenId> top_k(std::span<const float> row, int k) {
  // Kept sorted best first; ties keep the lower id because ids arrive in increasing order
  // and a new entry only goes after the equal ones.
  std::vector<std::pair<float, TokenId>> top;
  if (k <= 0) return {};
  top.reserve(static_cast<std::size_t>(k) + 1);
  const auto better = [](const std::pair<float, TokenId>& a, const std::pair<float, TokenId>& b) {
    return a.first > b.first;
  };
  for (std::size_t i = 0; i < row.size(); ++i) {
    const float v = row[i];
    if (std::isnan(v)) continue;
    if (top.size() == static_cast<std::size_t>(k) && !(v > top.back().first)) continue;
    const std::pair<float, TokenId> entry{v, static_cast<TokenId>(i)};
    top.insert(std::upper_bound(top.begin(), top.end(), entry, better), entry);
    if (top.size() > static_cast<std::size_t>(k)) top.pop_back();
  }
  std::vector<TokenId> ids;
  ids.reserve(top.size());
  for (const auto& [v, id] : top) ids.push_back(id);
  return ids;
}

BeamStep select_beam_step(std::span<const double> sum_logprobs, std::span<const std::vector<float>> logprobs,
                          TokenId eot, const BeamOptions& options, std::size_t n_finished) {
  if (sum_logprobs.size() != logprobs.size()) throw Error("select_beam_step: one log-probability row per beam needed");
  const int wanted = max_candidates(options);
  const auto beam_size = static_cast<std::size_t>(options.beam_size);

  // STEP 1: every beam's top beam_size + 1 tokens with their cumulative log-probability
  std::vector<BeamCandidate> offers;
  offers.reserve(sum_logprobs.size() * (beam_size + 1));
  for (std::size_t j = 0; j < sum_logprobs.size(); ++j) {
    for (TokenId token : top_k(logprobs[j], options.beam_size + 1)) {
      offers.push_back({static_cast<int>(j), token, sum_logprobs[j] + static_cast<double>(logprobs[j][token])});
    }
  }

  // STEP 2: best first (Python's sorted(..., reverse=True) is stable)
  std::stable_sort(offers.begin(), offers.end(),
                   [](const BeamCandidate& a, const BeamCandidate& b) { return a.sum_logprob > b.sum_logprob; });
  BeamStep step;
  for (const auto& offer : offers) {
    if (offer.token == eot) {
      step.finished.push_back(offer);
    } else {
      step.live.push_back(offer);
      if (step.live.size() == beam_size) break;
    }
  }
  const std::size_t free_slots = n_finished >= static_cast<std::size_t>(wanted) ? 0 : wanted - n_finished;
  if (step.finished.size() > free_slots) step.finished.resize(free_slots);
  return step;
}

std::vector<int> live_beams_to_finalize(std::span<const double> live_sum_logprobs, std::size_t n_finished,
                                        int beam_size) {
  std::vector<int> order;
  if (n_finished >= static_cast<std::size_t>(std::max(beam_size, 0))) return order;
  // list(np.argsort(x))[::-1]: ascending stable order reversed, so equal scores come
  // later index first.
  std::vector<int> ascending(live_sum_logprobs.size());
  for (std::size_t i = 0; i < ascending.size(); ++i) ascending[i] = static_cast<int>(i);
  std::stable_sort(ascending.begin(), ascending.end(),
                   [&](int a, int b) { return live_sum_logprobs[a] < live_sum_logprobs[b]; });
  for (auto it = ascending.rbegin(); it != ascending.rend(); ++it) {
    order.push_back(*it);
    if (n_finished + order.size() >= static_cast<std::size_t>(beam_size)) break;
  }
  return order;
}

double ranking_score(double sum_logprob, std::size_t length, std::optional<double> length_penalty) {
  const auto n = static_cast<double>(length);
  const double penalty = length_penalty ? std::pow((5.0 + n) / 6.0, *length_penalty) : std::max(1.0, n);
  return sum_logprob / penalty;
}

std::size_t rank_candidates(std::span<const double> sum_logprobs, std::span<const std::size_t> lengths,
                            std::optional<double> length_penalty) {
  if (sum_logprobs.empty() || sum_logprobs.size() != lengths.size()) {
    throw Error("rank_candidates: one length per candidate and at least one candidate needed");
  }
  std::size_t best = 0;
  double best_score = ranking_score(sum_logprobs[0], lengths[0], length_penalty);
  for (std::size_t i = 1; i < sum_logprobs.size(); ++i) {
    const double score = ranking_score(sum_logprobs[i], lengths[i], length_penalty);
    if (score > best_score || (std::isnan(best_score) && !std::isnan(score))) {
      best = i;
      best_score = score;
    }
  }
  return best;
}

BeamSearchOutput beam_search_candidates(const nn::Decoder& decoder, const text::Tokenizer& tokenizer,
                                        const LogitRules& rules, std::span<const TokenId> initial_tokens,
                                        int sample_len, const nn::CrossAttentionCache& audio,
                                        const BeamOptions& options, const LogitsFilter& filter, nn::Runner& runner) {
  const int wanted = max_candidates(options);  // validates the options
  const auto& sp = tokenizer.special();
  const auto sot_at = std::find(initial_tokens.begin(), initial_tokens.end(), sp.sot);
  if (sot_at == initial_tokens.end()) throw Error("beam_search: the initial tokens lack <|startoftranscript|>");
  const auto sot_index = static_cast<std::size_t>(sot_at - initial_tokens.begin());
  const int max_tokens =
      std::min<int>(sample_len, decoder.n_text_ctx() - static_cast<int>(initial_tokens.size()));

  BeamSearchOutput result;

  // The prompt once, for a single beam: OpenAI repeats it beam_size times, but identical
  // rows offer identical candidates, which its dictionary of sequences merges.
  std::vector<nn::KvSequence> caches;
  caches.push_back(decoder.new_sequence());
  std::vector<std::vector<float>> logits;
  logits.emplace_back();
  runner.run(nn::Work::Forward, [&] {
    logits[0] = decoder.forward(initial_tokens.first(sot_index + 1), caches[0], audio);
    result.no_speech_prob = std::exp(log_probability(logits[0], sp.no_speech));
    if (sot_index + 1 < initial_tokens.size()) {
      logits[0] = decoder.forward(initial_tokens.subspan(sot_index + 1), caches[0], audio);
    }
  });

  std::vector<BeamHypothesis> live(1);
  std::vector<BeamHypothesis> finished;

  const nn::IdleOnExit idle_on_error(runner);
  for (int step = 0; step < max_tokens; ++step) {
    // the logit rules per beam, with that beam's own tokens
    std::vector<std::vector<float>> logprobs(live.size());
    std::vector<double> sums(live.size());
    std::vector<TokenId> likeliest_ts(live.size());
    for (std::size_t j = 0; j < live.size(); ++j) {
      apply_suppression(logits[j], live[j].tokens, rules, tokenizer);
      if (filter) filter(step, live[j].tokens, logits[j]);
      apply_timestamp_rules(logits[j], live[j].tokens, rules, tokenizer);
      logprobs[j] = log_softmax(logits[j]);
      sums[j] = live[j].sum_logprob;
      likeliest_ts[j] = likeliest_timestamp(logits[j], sp.timestamp_begin);
    }

    const BeamStep chosen = select_beam_step(sums, logprobs, sp.eot, options, finished.size());
    for (const auto& c : chosen.finished) {
      BeamHypothesis done = live[c.source];
      done.sum_logprob = c.sum_logprob;
      done.finished = true;
      finished.push_back(std::move(done));
    }
    std::vector<BeamHypothesis> next;
    next.reserve(chosen.live.size());
    for (const auto& c : chosen.live) {
      const TokenId ts = tokenizer.is_timestamp(c.token) ? c.token : likeliest_ts[c.source];
      const float logprob = logprobs[static_cast<std::size_t>(c.source)][static_cast<std::size_t>(c.token)];
      next.push_back(extend(live[c.source], c.token, ts, logprob, c.sum_logprob));
    }
    live = std::move(next);

    const bool completed = finished.size() >= static_cast<std::size_t>(wanted);
    if (completed || step + 1 >= max_tokens || live.empty()) break;

    // Each new beam takes its source's sequence: moved at the source's last use, forked
    // (every block shared, none copied) before that. Dropped beams release their blocks.
    std::vector<int> uses_left(caches.size(), 0);
    for (const auto& c : chosen.live) ++uses_left[c.source];
    std::vector<nn::KvSequence> next_caches;
    next_caches.reserve(chosen.live.size());
    for (const auto& c : chosen.live) {
      auto& source = caches[static_cast<std::size_t>(c.source)];
      next_caches.push_back(--uses_left[c.source] == 0 ? std::move(source) : source.fork());
    }
    caches = std::move(next_caches);

    // every live beam advances in one step
    logits.resize(live.size());
    std::vector<nn::SequenceStep> batch(live.size());
    for (std::size_t j = 0; j < live.size(); ++j) {
      logits[j].resize(static_cast<std::size_t>(decoder.n_vocab()));
      batch[j] = {live[j].tokens.back(), &caches[j], &audio, logits[j]};
    }
    runner.step(decoder, batch);
  }
  runner.idle();

  // finalize: live beams make up for missing finished candidates
  std::vector<double> live_sums(live.size());
  for (std::size_t j = 0; j < live.size(); ++j) live_sums[j] = live[j].sum_logprob;
  for (int j : live_beams_to_finalize(live_sums, finished.size(), options.beam_size)) {
    finished.push_back(std::move(live[static_cast<std::size_t>(j)]));
  }
  std::vector<double> candidate_sums(finished.size());
  std::vector<std::size_t> lengths(finished.size());
  for (std::size_t i = 0; i < finished.size(); ++i) {
    candidate_sums[i] = finished[i].sum_logprob;
    lengths[i] = finished[i].tokens.size();
  }
  result.best = rank_candidates(candidate_sums, lengths, options.length_penalty);
  result.candidates = std::move(finished);
  return result;
}

WindowResult beam_search(const nn::Decoder& decoder, const text::Tokenizer& tokenizer, const LogitRules& rules,
                         std::span<const TokenId> initial_tokens, int sample_len, const nn::CrossAttentionCache& audio,
                         const BeamOptions& options, const LogitsFilter& filter, nn::Runner& runner) {
  auto output =
      beam_search_candidates(decoder, tokenizer, rules, initial_tokens, sample_len, audio, options, filter, runner);
  auto& best = output.candidates[output.best];
  WindowResult result;
  result.temperature = 0.0f;
  result.no_speech_prob = output.no_speech_prob;
  result.tokens = std::move(best.tokens);
  result.best_timestamp = std::move(best.best_timestamp);
  result.token_logprobs = std::move(best.token_logprobs);
  result.sum_logprob = best.sum_logprob;
  result.reached_end_of_text = best.finished;
  result.avg_logprob = result.sum_logprob / (static_cast<double>(result.tokens.size()) + 1.0);
  return result;
}

}  // namespace amanuensis::decoding

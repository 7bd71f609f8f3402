// Tests of beam search (OpenAI's BeamSearchDecoder and MaximumLikelihoodRanker,
// whisper/decoding.py): the pure candidate selection, finalize and ranking on crafted
// rows, then whole searches with the kit's micro.en-f16 model on jfk's mel: beam size 1
// equals greedy decoding, every candidate's statistics match a teacher-forced re-scoring
// (which checks the forked KV caches), the ranker's choice, determinism, and with a
// filter that makes end-of-text likely: finished candidates, patience, the early stop.
// Beam size 5 forks its beams' KV sequences without copying a block (the pool counts).
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <limits>
#include <memory>
#include <numeric>
#include <span>
#include <vector>

#include "common/error.h"
#include "decoding/beam_search.h"
#include "decoding/window_decoder.h"
#include "model/ggml_file.h"
#include "nn/runner.h"
#include "nn/whisper.h"
#include "test_paths.h"
#include "text/tokenizer.h"

namespace amanuensis::decoding {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr TokenId kEot = 0;  // the crafted rows use token 0 as end-of-text

// A log-probability row over `n` tokens with the given (token, logprob) entries and the
// rest at -inf, so that the top-k is exactly what a test sets.
std::vector<float> row(int n, std::initializer_list<std::pair<TokenId, float>> entries) {
  std::vector<float> r(static_cast<std::size_t>(n), kNegInf);
  for (auto [id, lp] : entries) r[static_cast<std::size_t>(id)] = lp;
  return r;
}

BeamOptions beams(int size, double patience = 1.0) {
  BeamOptions o;
  o.beam_size = size;
  o.patience = patience;
  return o;
}

void expect_candidate(const BeamCandidate& c, int source, TokenId token, double sum) {
  EXPECT_EQ(c.source, source);
  EXPECT_EQ(c.token, token);
  EXPECT_NEAR(c.sum_logprob, sum, 1e-6);
}

// ---- pure functions ------------------------------------------------------------------

TEST(BeamSearchPure, MaxCandidatesRoundsLikePython) {
  EXPECT_EQ(max_candidates(beams(5)), 5);
  EXPECT_EQ(max_candidates(beams(5, 2.0)), 10);
  EXPECT_EQ(max_candidates(beams(5, 0.5)), 2);   // round(2.5) == 2 (half to even)
  EXPECT_EQ(max_candidates(beams(3, 0.5)), 2);   // round(1.5) == 2
  EXPECT_EQ(max_candidates(beams(5, 0.7)), 4);   // round(3.5) == 4
  EXPECT_EQ(max_candidates(beams(4, 1.3)), 5);   // round(5.2) == 5
  EXPECT_EQ(max_candidates(beams(5, 0.0)), 5);   // `patience or 1.0`
  EXPECT_THROW(max_candidates(beams(0)), Error);
  EXPECT_THROW(max_candidates(beams(2, 0.1)), Error);  // round(0.2) == 0
  EXPECT_THROW(max_candidates(beams(2, -1.0)), Error);
}

TEST(BeamSearchPure, TopKBestFirstTiesToLowerId) {
  const std::vector<float> r = {0.5f, 2.0f, kNegInf, 2.0f, 1.0f, 3.0f};
  EXPECT_EQ(top_k(r, 3), (std::vector<TokenId>{5, 1, 3}));
  EXPECT_EQ(top_k(r, 1), (std::vector<TokenId>{5}));
  EXPECT_EQ(top_k(r, 6), (std::vector<TokenId>{5, 1, 3, 4, 0, 2}));
  EXPECT_EQ(top_k(r, 10).size(), 6u);
  const std::vector<float> masked = {kNegInf, kNegInf, 1.0f, kNegInf};
  EXPECT_EQ(top_k(masked, 3), (std::vector<TokenId>{2, 0, 1}));  // -inf ties: lowest ids
}

TEST(BeamSearchPure, FirstStepKeepsBeamSizeLiveAndOrdersByScore) {
  // one beam (the prompt), beam size 3: its top 4 offers
  const std::vector<double> sums = {0.0};
  const std::vector<std::vector<float>> rows = {row(10, {{4, -0.5f}, {7, -1.0f}, {2, -2.0f}, {9, -3.0f}, {5, -4.0f}})};
  const auto step = select_beam_step(sums, rows, kEot, beams(3), 0);
  ASSERT_EQ(step.live.size(), 3u);
  expect_candidate(step.live[0], 0, 4, -0.5);
  expect_candidate(step.live[1], 0, 7, -1.0);
  expect_candidate(step.live[2], 0, 2, -2.0);
  EXPECT_TRUE(step.finished.empty());
}

TEST(BeamSearchPure, CandidatesAcrossBeamsUseCumulativeScores) {
  // beam 0 is far behind: its best token still loses to beam 1's third
  const std::vector<double> sums = {-5.0, -1.0};
  const std::vector<std::vector<float>> rows = {
      row(10, {{1, -0.1f}, {2, -0.2f}, {3, -0.3f}}),
      row(10, {{4, -0.5f}, {5, -1.0f}, {6, -2.0f}}),
  };
  const auto step = select_beam_step(sums, rows, kEot, beams(2), 0);
  ASSERT_EQ(step.live.size(), 2u);
  expect_candidate(step.live[0], 1, 4, -1.5);
  expect_candidate(step.live[1], 1, 5, -2.0);  // both beams may come from one source
  EXPECT_TRUE(step.finished.empty());
}

TEST(BeamSearchPure, TiesKeepBeamThenTokenOrder) {
  const std::vector<double> sums = {-1.0, -1.0};
  const std::vector<std::vector<float>> rows = {
      row(10, {{3, -1.0f}, {2, -1.0f}, {1, -9.0f}}),
      row(10, {{6, -1.0f}, {5, -1.0f}, {1, -9.0f}}),
  };
  const auto step = select_beam_step(sums, rows, kEot, beams(2), 0);
  ASSERT_EQ(step.live.size(), 2u);
  // stable sort: beam 0 before beam 1; within beam 0 the top-k order (lower id first)
  expect_candidate(step.live[0], 0, 2, -2.0);
  expect_candidate(step.live[1], 0, 3, -2.0);
  const auto three = select_beam_step(sums, rows, kEot, beams(3), 0);
  ASSERT_EQ(three.live.size(), 3u);
  expect_candidate(three.live[2], 1, 5, -2.0);
}

TEST(BeamSearchPure, EndOfTextFinishesAndDoesNotTakeALiveSlot) {
  const std::vector<double> sums = {-1.0, -2.0};
  const std::vector<std::vector<float>> rows = {
      row(10, {{kEot, -0.1f}, {1, -0.5f}, {2, -3.0f}}),
      row(10, {{kEot, -0.2f}, {3, -0.3f}, {4, -4.0f}}),
  };
  const auto step = select_beam_step(sums, rows, kEot, beams(2), 0);
  // offers by score: (0,eot) -1.1, (0,1) -1.5, (1,eot) -2.2, (1,3) -2.3, ...
  ASSERT_EQ(step.finished.size(), 2u);
  expect_candidate(step.finished[0], 0, kEot, -1.1);
  expect_candidate(step.finished[1], 1, kEot, -2.2);
  ASSERT_EQ(step.live.size(), 2u);
  expect_candidate(step.live[0], 0, 1, -1.5);
  expect_candidate(step.live[1], 1, 3, -2.3);
}

TEST(BeamSearchPure, EndOfTextAfterTheLastLiveBeamIsDropped) {
  // OpenAI stops walking the offers once beam_size live beams are taken
  const std::vector<double> sums = {0.0};
  const std::vector<std::vector<float>> rows = {row(10, {{1, -0.1f}, {2, -0.2f}, {kEot, -0.3f}})};
  const auto step = select_beam_step(sums, rows, kEot, beams(2), 0);
  EXPECT_EQ(step.live.size(), 2u);
  EXPECT_TRUE(step.finished.empty());
  const auto wider = select_beam_step(sums, rows, kEot, beams(3), 0);  // now eot ranks before the 3rd live one
  ASSERT_EQ(wider.finished.size(), 1u);
  expect_candidate(wider.finished[0], 0, kEot, -0.3);
}

TEST(BeamSearchPure, PatienceLimitsFinishedCandidates) {
  // three beams all offering end-of-text first
  const std::vector<double> sums = {-1.0, -2.0, -3.0};
  std::vector<std::vector<float>> rows;
  for (int j = 0; j < 3; ++j) rows.push_back(row(10, {{kEot, -0.1f}, {static_cast<TokenId>(j + 1), -0.2f}, {9, -5.0f}, {8, -6.0f}}));
  // max_candidates 3, one finished already: room for two, the best two
  auto step = select_beam_step(sums, rows, kEot, beams(3), 1);
  ASSERT_EQ(step.finished.size(), 2u);
  expect_candidate(step.finished[0], 0, kEot, -1.1);
  expect_candidate(step.finished[1], 1, kEot, -2.1);
  EXPECT_EQ(step.live.size(), 3u);
  // full: none added
  step = select_beam_step(sums, rows, kEot, beams(3), 3);
  EXPECT_TRUE(step.finished.empty());
  // patience 2: max_candidates 6, so all three fit after three earlier ones
  step = select_beam_step(sums, rows, kEot, beams(3, 2.0), 3);
  EXPECT_EQ(step.finished.size(), 3u);
  // patience 0.5: round(1.5) = 2
  step = select_beam_step(sums, rows, kEot, beams(3, 0.5), 0);
  EXPECT_EQ(step.finished.size(), 2u);
}

TEST(BeamSearchPure, FinalizeAddsBestLiveBeamsUpToBeamSize) {
  const std::vector<double> live = {-3.0, -1.0, -2.0, -1.0};
  // none finished, beam size 4: all, best first, equal scores later index first
  EXPECT_EQ(live_beams_to_finalize(live, 0, 4), (std::vector<int>{3, 1, 2, 0}));
  EXPECT_EQ(live_beams_to_finalize(live, 2, 4), (std::vector<int>{3, 1}));
  EXPECT_EQ(live_beams_to_finalize(live, 3, 4), (std::vector<int>{3}));
  EXPECT_TRUE(live_beams_to_finalize(live, 4, 4).empty());
  EXPECT_TRUE(live_beams_to_finalize(live, 8, 4).empty());  // patience > 1 finished more
}

TEST(BeamSearchPure, RankingScoreFormulas) {
  EXPECT_DOUBLE_EQ(ranking_score(-6.0, 3, std::nullopt), -2.0);
  EXPECT_DOUBLE_EQ(ranking_score(-6.0, 0, std::nullopt), -6.0);  // empty counts as length 1
  EXPECT_DOUBLE_EQ(ranking_score(-6.0, 7, 1.0), -6.0 / 2.0);      // (5 + 7) / 6 = 2
  EXPECT_DOUBLE_EQ(ranking_score(-6.0, 19, 0.5), -6.0 / 2.0);     // sqrt(24 / 6) = 2
  EXPECT_DOUBLE_EQ(ranking_score(-6.0, 1, 0.5), -6.0);            // (6 / 6) ** 0.5 = 1
  EXPECT_DOUBLE_EQ(ranking_score(-6.0, 10, 0.0), -6.0);           // penalty 0: raw sum
  EXPECT_NEAR(ranking_score(-3.0, 4, 0.5), -3.0 / std::sqrt(1.5), 1e-12);
}

TEST(BeamSearchPure, RankerPicksBestScoreFirstOfTies) {
  const std::vector<double> sums = {-4.0, -3.0, -10.0, -2.0};
  const std::vector<std::size_t> lengths = {4, 2, 20, 1};
  // per token: -1, -1.5, -0.5, -2
  EXPECT_EQ(rank_candidates(sums, lengths, std::nullopt), 2u);
  // length penalty 0: raw sums
  EXPECT_EQ(rank_candidates(sums, lengths, 0.0), 3u);
  // length penalty 1: -4/1.5=-2.67, -3/1.17=-2.57, -10/4.17=-2.4, -2/1=-2
  EXPECT_EQ(rank_candidates(sums, lengths, 1.0), 3u);
  // ties: the first
  const std::vector<double> tied = {-2.0, -4.0, -1.0};
  const std::vector<std::size_t> tied_lengths = {1, 2, 1};
  EXPECT_EQ(rank_candidates(tied, tied_lengths, std::nullopt), 2u);
  const std::vector<double> tied2 = {-2.0, -4.0};
  EXPECT_EQ(rank_candidates(tied2, std::span(tied_lengths).first(2) /* lengths 1, 2 */, std::nullopt), 0u);
  EXPECT_THROW(rank_candidates({}, {}, std::nullopt), Error);
}

// ---- whole searches with a model -----------------------------------------------------

struct Model {
  model::ModelFile file;
  std::shared_ptr<const nn::WhisperWeights> weights;
  nn::Decoder decoder;
  text::Tokenizer tokenizer;
  nn::CrossAttentionCache audio;
};

std::vector<float> read_f32(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("cannot read " + path.string());
  in.seekg(0, std::ios::end);
  std::vector<float> data(static_cast<std::size_t>(in.tellg()) / sizeof(float));
  in.seekg(0);
  in.read(reinterpret_cast<char*>(data.data()), static_cast<std::streamsize>(data.size() * sizeof(float)));
  return data;
}

const Model& jfk_model() {
  static const Model* model = [] {
    auto file = model::ModelFile::open(testing::model_path("micro.en-f16"));
    // fp32: the re-scoring below runs all tokens in one pass (many-query attention), the
    // search one token a step; in bf16 those two paths round differently
    nn::LoadOptions options;
    options.compute.precision = kernels::Precision::Fp32;
    auto weights = nn::WhisperWeights::load(file, options);
    const auto mel = read_f32(testing::conformance_dir() / "ref" / "jfk.mel.f32");
    if (mel.size() != 80u * 3000u) throw Error("jfk.mel.f32: expected 80 x 3000 floats");
    nn::Encoder encoder(weights);
    nn::Decoder decoder(weights);
    auto audio = decoder.cross_attention(encoder.encode(mel));
    text::Tokenizer tokenizer(file.vocabulary(), file.hparams().n_vocab);
    return new Model{std::move(file), weights, decoder, std::move(tokenizer), std::move(audio)};
  }();
  return *model;
}

constexpr int kSampleLen = 20;

DecodeOptions decode_options(bool timestamps) {
  DecodeOptions o;
  o.timestamps = timestamps;
  o.sample_len = kSampleLen;
  return o;
}

BeamSearchOutput search(const WindowDecoder& wd, const BeamOptions& options) {
  const auto& m = jfk_model();
  const auto initial = wd.initial_tokens({});
  return beam_search_candidates(m.decoder, m.tokenizer, wd.rules(), initial, wd.sample_len(), m.audio, options);
}

// Re-scores a candidate with a fresh cache and all rows at once: each token's
// log-probability after the logit rules, their sum (and end-of-text's when finished), and
// the likeliest timestamp of each step.
void expect_rescored(const WindowDecoder& wd, const BeamHypothesis& c, const LogitsFilter& filter = {}) {
  const auto& m = jfk_model();
  auto tokens = wd.initial_tokens({});
  const std::size_t begin = tokens.size();
  tokens.insert(tokens.end(), c.tokens.begin(), c.tokens.end());
  auto cache = m.decoder.new_sequence();
  const auto logits = m.decoder.forward(tokens, cache, m.audio, /*all_rows=*/true);
  const std::size_t n_vocab = static_cast<std::size_t>(m.decoder.n_vocab());
  const auto& sp = m.tokenizer.special();
  double sum = 0.0;
  const std::size_t steps = c.tokens.size() + (c.finished ? 1 : 0);
  ASSERT_EQ(c.best_timestamp.size(), c.tokens.size());
  ASSERT_EQ(c.token_logprobs.size(), c.tokens.size());
  for (std::size_t i = 0; i < steps; ++i) {
    std::vector<float> r(logits.begin() + static_cast<std::ptrdiff_t>((begin - 1 + i) * n_vocab),
                         logits.begin() + static_cast<std::ptrdiff_t>((begin + i) * n_vocab));
    const auto prefix = std::span(c.tokens).first(i);
    apply_suppression(r, prefix, wd.rules(), m.tokenizer);
    if (filter) filter(static_cast<int>(i), prefix, r);
    apply_timestamp_rules(r, prefix, wd.rules(), m.tokenizer);
    const TokenId next = i < c.tokens.size() ? c.tokens[i] : sp.eot;
    const float logprob = log_softmax(r)[next];
    sum += logprob;
    if (i < c.tokens.size()) {
      EXPECT_NEAR(c.token_logprobs[i], logprob, 2e-3) << "token " << i;
      TokenId ts = next;
      if (!m.tokenizer.is_timestamp(next)) {
        const auto best = std::max_element(r.begin() + sp.timestamp_begin, r.end());
        ts = std::isinf(*best) ? -1 : static_cast<TokenId>(best - r.begin());
      }
      EXPECT_EQ(c.best_timestamp[i], ts) << "token " << i;
    }
  }
  EXPECT_NEAR(c.sum_logprob, sum, 2e-3 * std::max<double>(1.0, static_cast<double>(steps)));
}

double score(const BeamHypothesis& c, std::optional<double> penalty) {
  return ranking_score(c.sum_logprob, c.tokens.size(), penalty);
}

TEST(BeamSearchModel, BeamSizeOneIsGreedy) {
  const auto& m = jfk_model();
  for (bool timestamps : {true, false}) {
    SCOPED_TRACE(timestamps ? "timestamps" : "no timestamps");
    WindowDecoder wd(m.decoder, m.tokenizer, decode_options(timestamps));
    const auto greedy = wd.decode(m.audio, {});
    const auto initial = wd.initial_tokens({});
    const auto beam = beam_search(m.decoder, m.tokenizer, wd.rules(), initial, wd.sample_len(), m.audio, beams(1));
    EXPECT_EQ(beam.tokens, greedy.tokens);
    EXPECT_EQ(beam.best_timestamp, greedy.best_timestamp);
    EXPECT_EQ(beam.token_logprobs, greedy.token_logprobs);
    // no end-of-text within kSampleLen here: the sum is the tokens' own
    ASSERT_FALSE(greedy.reached_end_of_text);
    EXPECT_NEAR(std::accumulate(greedy.token_logprobs.begin(), greedy.token_logprobs.end(), 0.0), greedy.sum_logprob, 1e-6);
    EXPECT_NEAR(beam.sum_logprob, greedy.sum_logprob, 1e-9);
    EXPECT_NEAR(beam.avg_logprob, greedy.avg_logprob, 1e-9);
    EXPECT_EQ(beam.no_speech_prob, greedy.no_speech_prob);
    EXPECT_EQ(beam.reached_end_of_text, greedy.reached_end_of_text);
    EXPECT_EQ(beam.temperature, 0.0f);
  }
}

// Beam size 5 on jfk, with and without timestamps, searched once and shared by the tests.
const BeamSearchOutput& beam5(bool timestamps) {
  static const BeamSearchOutput with = search(WindowDecoder(jfk_model().decoder, jfk_model().tokenizer, decode_options(true)), beams(5));
  static const BeamSearchOutput without = search(WindowDecoder(jfk_model().decoder, jfk_model().tokenizer, decode_options(false)), beams(5));
  return timestamps ? with : without;
}

TEST(BeamSearchModel, CandidatesRescoreExactlyRankerChoosesBestDeterministic) {
  const auto& m = jfk_model();
  for (bool timestamps : {true, false}) {
    SCOPED_TRACE(timestamps ? "timestamps" : "no timestamps");
    WindowDecoder wd(m.decoder, m.tokenizer, decode_options(timestamps));
    const auto greedy = wd.decode(m.audio, {});
    const auto& out = beam5(timestamps);
    ASSERT_EQ(out.candidates.size(), 5u);  // patience 1: beam_size finished, or topped up with live beams
    EXPECT_FLOAT_EQ(out.no_speech_prob, greedy.no_speech_prob);
    for (const auto& c : out.candidates) {
      EXPECT_LE(c.tokens.size(), static_cast<std::size_t>(kSampleLen));
      EXPECT_TRUE(c.finished || c.tokens.size() == static_cast<std::size_t>(kSampleLen));
      EXPECT_EQ(std::count(c.tokens.begin(), c.tokens.end(), m.tokenizer.special().eot), 0);
      expect_rescored(wd, c);
    }
    // no two candidates are the same sequence
    for (std::size_t i = 0; i < out.candidates.size(); ++i) {
      for (std::size_t j = i + 1; j < out.candidates.size(); ++j) {
        EXPECT_NE(out.candidates[i].tokens, out.candidates[j].tokens);
      }
    }
    const auto& best = out.candidates[out.best];
    for (const auto& c : out.candidates) EXPECT_GE(score(best, std::nullopt), score(c, std::nullopt));
    // greedy's sequence, when beam search kept it, cannot outrank the choice
    const double greedy_score = ranking_score(greedy.sum_logprob, greedy.tokens.size(), std::nullopt);
    const bool kept_greedy = std::any_of(out.candidates.begin(), out.candidates.end(),
                                         [&](const BeamHypothesis& c) { return c.tokens == greedy.tokens; });
    if (kept_greedy) {
      EXPECT_GE(score(best, std::nullopt), greedy_score);
    }
    std::printf("[ beam 5 ] %s: %zu candidates, best score %.4f (%zu tokens, %s), greedy %.4f (%zu tokens)%s\n",
                timestamps ? "timestamps" : "no timestamps", out.candidates.size(), score(best, std::nullopt),
                best.tokens.size(), best.finished ? "finished" : "live", greedy_score, greedy.tokens.size(),
                kept_greedy ? ", greedy among candidates" : "");
  }
  // determinism, and the WindowResult is the chosen candidate: a second search
  WindowDecoder wd(m.decoder, m.tokenizer, decode_options(true));
  const auto result = beam_search(m.decoder, m.tokenizer, wd.rules(), wd.initial_tokens({}), wd.sample_len(),
                                  m.audio, beams(5));
  const auto& out = beam5(true);
  const auto& best = out.candidates[out.best];
  EXPECT_EQ(result.tokens, best.tokens);
  EXPECT_EQ(result.best_timestamp, best.best_timestamp);
  EXPECT_EQ(result.sum_logprob, best.sum_logprob);
  EXPECT_DOUBLE_EQ(result.avg_logprob, best.sum_logprob / (static_cast<double>(best.tokens.size()) + 1.0));
  EXPECT_EQ(result.no_speech_prob, out.no_speech_prob);
  EXPECT_EQ(result.reached_end_of_text, best.finished);
  EXPECT_EQ(result.temperature, 0.0f);
}

// The synthetic model hardly ever ends a window, so a filter makes end-of-text likely
// from step 3 on, more or less so depending on the beam's tokens: a pure function of
// (step, tokens, logits), so the re-scoring can apply it too.
void push_end_of_text(int step, std::span<const TokenId> sampled, std::span<float> logits) {
  if (step < 3) return;
  const float top = *std::max_element(logits.begin(), logits.end());
  const auto sum = std::accumulate(sampled.begin(), sampled.end(), std::int64_t{0});
  logits[static_cast<std::size_t>(jfk_model().tokenizer.special().eot)] = top + static_cast<float>(sum % 4) - 2.5f;
}

TEST(BeamSearchModel, EndOfTextWithBeamSizeOneIsGreedy) {
  const auto& m = jfk_model();
  WindowDecoder wd(m.decoder, m.tokenizer, decode_options(false));
  const LogitsFilter filter = push_end_of_text;
  const auto greedy = wd.decode(m.audio, {}, 0.0f, 0, filter);
  ASSERT_TRUE(greedy.reached_end_of_text);
  const auto beam = beam_search(m.decoder, m.tokenizer, wd.rules(), wd.initial_tokens({}), wd.sample_len(), m.audio,
                                beams(1), filter);
  EXPECT_EQ(beam.tokens, greedy.tokens);
  EXPECT_NEAR(beam.sum_logprob, greedy.sum_logprob, 1e-9);
  EXPECT_NEAR(beam.avg_logprob, greedy.avg_logprob, 1e-9);
  EXPECT_TRUE(beam.reached_end_of_text);
}

TEST(BeamSearchModel, FinishedCandidatesPatienceAndEarlyStop) {
  const auto& m = jfk_model();
  WindowDecoder wd(m.decoder, m.tokenizer, decode_options(false));
  const LogitsFilter filter = push_end_of_text;
  const auto initial = wd.initial_tokens({});
  for (double patience : {1.0, 2.0}) {
    SCOPED_TRACE(patience);
    BeamOptions o = beams(3, patience);
    if (patience == 2.0) o.length_penalty = 0.5;  // only changes the ranking
    const auto out = beam_search_candidates(m.decoder, m.tokenizer, wd.rules(), initial, wd.sample_len(), m.audio,
                                            o, filter);
    const auto wanted = static_cast<std::size_t>(max_candidates(o));
    ASSERT_EQ(out.candidates.size(), wanted);  // all finished: the search stopped at max_candidates
    std::size_t longest = 0;
    for (const auto& c : out.candidates) {
      EXPECT_TRUE(c.finished);
      longest = std::max(longest, c.tokens.size());
      expect_rescored(wd, c, filter);
    }
    EXPECT_LT(longest, static_cast<std::size_t>(kSampleLen));  // stopped before sample_len
    const auto& best = out.candidates[out.best];
    for (const auto& c : out.candidates) EXPECT_GE(score(best, o.length_penalty), score(c, o.length_penalty));
    const auto result = beam_search(m.decoder, m.tokenizer, wd.rules(), initial, wd.sample_len(), m.audio, o, filter);
    EXPECT_TRUE(result.reached_end_of_text);
    EXPECT_EQ(result.tokens, best.tokens);
    EXPECT_DOUBLE_EQ(result.avg_logprob, best.sum_logprob / (static_cast<double>(best.tokens.size()) + 1.0));
    std::printf("[ beam 3 patience %.0f, end-of-text pushed ] finished lengths:", patience);
    for (const auto& c : out.candidates) std::printf(" %zu", c.tokens.size());
    std::printf(" (best %zu, length penalty %s)\n", out.best, o.length_penalty ? "0.5" : "none");
  }
}

TEST(BeamSearchModel, InvalidOptionsThrow) {
  const auto& m = jfk_model();
  WindowDecoder wd(m.decoder, m.tokenizer, decode_options(true));
  const auto initial = wd.initial_tokens({});
  EXPECT_THROW(beam_search(m.decoder, m.tokenizer, wd.rules(), initial, 5, m.audio, beams(0)), Error);
  const std::vector<TokenId> no_sot = {m.tokenizer.special().no_timestamps};
  EXPECT_THROW(beam_search(m.decoder, m.tokenizer, wd.rules(), no_sot, 5, m.audio, beams(2)), Error);
}

// Runs steps directly and checks the pool around each: whatever happens between steps
// (the beams forking, dropped beams releasing) copies no KV block; a copy can only be
// copy-on-write of a shared tail, inside a step, when a forked beam writes into it.
class CountingRunner final : public nn::Runner {
 public:
  explicit CountingRunner(const nn::Decoder& decoder) : copied_after_last_step(decoder.kv_pool().stats().blocks_copied) {}
  void run(nn::Work, const std::function<void()>& work) override { work(); }
  void step(const nn::Decoder& decoder, std::span<const nn::SequenceStep> steps) override {
    const auto before = decoder.kv_pool().stats();
    EXPECT_EQ(before.blocks_copied, copied_after_last_step) << "a block was copied between steps (at a fork)";
    decoder.step(steps);
    const auto after = decoder.kv_pool().stats();
    copied_after_last_step = after.blocks_copied;
    // at most one copy per sequence of the step: its own tail
    EXPECT_LE(after.blocks_copied - before.blocks_copied, steps.size());
    ++steps_run;
  }
  std::uint64_t copied_after_last_step;
  int steps_run = 0;
};

TEST(BeamSearchKv, ForksShareBlocksCopyNoneAndReleaseEverything) {
  const auto& m = jfk_model();
  const nn::Decoder decoder(m.weights);  // a pool of its own, empty
  for (bool timestamps : {true, false}) {
    SCOPED_TRACE(timestamps ? "timestamps" : "no timestamps");
    DecodeOptions o = decode_options(timestamps);
    o.sample_len = 100;
    WindowDecoder wd(decoder, m.tokenizer, o);
    const auto initial = wd.initial_tokens({});
    CountingRunner runner(decoder);
    const auto before = decoder.kv_pool().stats();
    const auto out =
        beam_search_candidates(decoder, m.tokenizer, wd.rules(), initial, wd.sample_len(), m.audio, beams(5), {}, runner);
    const auto after = decoder.kv_pool().stats();
    ASSERT_EQ(out.candidates.size(), 5u);
    EXPECT_GT(runner.steps_run, 1);
    const auto forks = after.forks - before.forks;
    const auto shared = after.blocks_shared_at_fork - before.blocks_shared_at_fork;
    const auto copied = after.blocks_copied - before.blocks_copied;
    const auto copied_positions = after.positions_copied - before.positions_copied;
    const auto fork_positions = after.positions_shared_at_fork - before.positions_shared_at_fork;
    EXPECT_GT(forks, 0u) << "beam search 5 forks beams";
    EXPECT_GE(shared, forks) << "every fork shares the blocks its source holds";
    // copy-on-write copies only a partial tail: fewer positions than a block, once per fork
    EXPECT_LE(copied, forks);
    EXPECT_LE(copied_positions, copied * (nn::KvPool::kBlockPositions - 1));
    EXPECT_LT(copied_positions, fork_positions) << "copying whole sequences at each fork would copy more";
    // every sequence released: the pool is back to no block in use
    EXPECT_EQ(after.blocks_in_use, 0);
    EXPECT_EQ(after.used_bytes, 0);
    EXPECT_EQ(after.sequences, 0);
    std::printf("[ beam 5, %s ] %d steps, %llu forks sharing %llu blocks (%llu positions), 0 blocks copied at a fork; "
                "copy-on-write of partial tails: %llu blocks (%llu positions); pool peak %lld KiB\n",
                timestamps ? "timestamps" : "no timestamps", runner.steps_run, static_cast<unsigned long long>(forks),
                static_cast<unsigned long long>(shared), static_cast<unsigned long long>(fork_positions),
                static_cast<unsigned long long>(copied), static_cast<unsigned long long>(copied_positions),
                static_cast<long long>(after.peak_used_bytes / 1024));
  }
}

}  // namespace
}  // namespace amanuensis::decoding

// Tests of the logit rules on crafted rows: suppress-blank, the suppressed token sets and
// the timestamp rules, under OpenAI's semantics (whisper/decoding.py: SuppressBlank,
// SuppressTokens, ApplyTimestampRules, DecodingTask._get_suppress_tokens) and whisper.cpp's
// (whisper_process_logits). The tokenizer is the English-only one of the kit's
// vocab-en.bin (eot 50256, sot 50257, <|notimestamps|> 50362, <|0.00|> 50363).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <set>
#include <string>
#include <vector>

#include "common/error.h"
#include "decoding/logit_rules.h"
#include "model/ggml_file.h"
#include "test_paths.h"
#include "text/tokenizer.h"

namespace amanuensis::decoding {
namespace {

using text::SpecialTokens;
using text::Tokenizer;

Tokenizer load_tokenizer(const char* file) {
  const auto vocab = model::ModelFile::open(testing::conformance_dir() / file);
  return Tokenizer(vocab.vocabulary(), vocab.hparams().n_vocab);
}
const Tokenizer& english() {
  static const Tokenizer tok = load_tokenizer("vocab-en.bin");
  return tok;
}
const Tokenizer& multilingual() {
  static const Tokenizer tok = load_tokenizer("vocab-multi.bin");
  return tok;
}
const SpecialTokens& sp() { return english().special(); }
TokenId ts(int index) { return sp().timestamp_begin + index; }  // <|index*0.02|>

constexpr TokenId kText = 1000;   // an ordinary text token
constexpr TokenId kText2 = 2000;  // another one

bool masked(const std::vector<float>& row, TokenId id) { return std::isinf(row[id]) && row[id] < 0; }
int count_masked(const std::vector<float>& row, long begin, long end) {
  int n = 0;
  for (long i = begin; i < end; ++i) n += masked(row, static_cast<TokenId>(i)) ? 1 : 0;
  return n;
}
long n_vocab() { return english().n_vocab(); }
int n_timestamps() { return static_cast<int>(n_vocab() - sp().timestamp_begin); }  // 1501

// A zero row with one text token clearly the likeliest, so that the forced-timestamp
// rule stays out of the way unless a test wants it.
std::vector<float> row_with_strong_text() {
  std::vector<float> row(static_cast<std::size_t>(n_vocab()), 0.0f);
  row[kText] = 10.0f;  // log(1501) = 7.3 < 10: all timestamps together do not beat it
  return row;
}

// Only the timestamp rules (no blank suppression, no suppressed set, no initial limit).
LogitRules timestamp_rules(Semantics semantics) {
  LogitRules r;
  r.semantics = semantics;
  r.timestamps = true;
  r.suppress_blank = false;
  r.max_initial_timestamp = 0.0;
  return r;
}

std::vector<float> apply(std::vector<float> row, std::vector<TokenId> sampled, const LogitRules& rules) {
  apply_logit_rules(row, sampled, rules, english());
  return row;
}

const char* name_of(Semantics s) { return s == Semantics::OpenAI ? "openai" : "whisper.cpp"; }

class BothSemantics : public ::testing::TestWithParam<Semantics> {};
INSTANTIATE_TEST_SUITE_P(LogitRules, BothSemantics, ::testing::Values(Semantics::OpenAI, Semantics::WhisperCpp),
                         [](const auto& info) { return info.param == Semantics::OpenAI ? "OpenAI" : "WhisperCpp"; });

TEST(LogitRulesSetup, KitTokenLayout) {
  EXPECT_EQ(sp().eot, 50256);
  EXPECT_EQ(sp().no_timestamps, 50362);
  EXPECT_EQ(sp().timestamp_begin, 50363);
  EXPECT_EQ(n_timestamps(), 1501);
  EXPECT_EQ(english().find_piece(" ").value_or(-1), 220);
}

TEST(LogitRulesSetup, ParseSemantics) {
  EXPECT_EQ(parse_semantics("openai"), Semantics::OpenAI);
  EXPECT_EQ(parse_semantics("whisper.cpp"), Semantics::WhisperCpp);
  EXPECT_EQ(parse_semantics("whisper-cpp"), Semantics::WhisperCpp);
  EXPECT_THROW(parse_semantics("OpenAI2"), Error);
  EXPECT_THROW(parse_semantics(""), Error);
}

// (a) ------------------------------------------------------------------------------------

TEST(LogitRulesFirstStep, OpenAIAllowsOnlyTimestamps) {
  const auto row = apply(row_with_strong_text(), {}, timestamp_rules(Semantics::OpenAI));
  EXPECT_EQ(count_masked(row, 0, sp().timestamp_begin), sp().timestamp_begin) << "every non-timestamp token";
  EXPECT_EQ(count_masked(row, sp().timestamp_begin, n_vocab()), 0);
}

TEST(LogitRulesFirstStep, WhisperCppDoesNotForceATimestamp) {
  const auto row = apply(row_with_strong_text(), {}, timestamp_rules(Semantics::WhisperCpp));
  EXPECT_FALSE(masked(row, kText));
  EXPECT_EQ(count_masked(row, 0, sp().timestamp_begin), 1) << "only <|notimestamps|>";
  EXPECT_TRUE(masked(row, sp().no_timestamps));
  EXPECT_EQ(count_masked(row, sp().timestamp_begin, n_vocab()), 0);
}

// (h) ------------------------------------------------------------------------------------

TEST_P(BothSemantics, NoTimestampsTokenIsMaskedInTimestampMode) {
  for (const std::vector<TokenId>& sampled : {std::vector<TokenId>{}, {ts(0), kText}, {ts(0), kText, ts(3)}}) {
    const auto row = apply(row_with_strong_text(), sampled, timestamp_rules(GetParam()));
    EXPECT_TRUE(masked(row, sp().no_timestamps)) << sampled.size() << " sampled";
  }
  // without timestamp mode (and no suppressed set) the timestamp rules do not run at all
  LogitRules off = timestamp_rules(GetParam());
  off.timestamps = false;
  const auto row = apply(row_with_strong_text(), {}, off);
  EXPECT_EQ(count_masked(row, 0, n_vocab()), 0);
}

// (b) ------------------------------------------------------------------------------------

TEST_P(BothSemantics, MaxInitialTimestampLimitsTheFirstStepOnly) {
  LogitRules rules = timestamp_rules(GetParam());
  rules.max_initial_timestamp = 1.0;
  const auto first = apply(row_with_strong_text(), {}, rules);
  EXPECT_FALSE(masked(first, ts(0)));
  EXPECT_FALSE(masked(first, ts(50))) << "<|1.00|> is allowed";
  EXPECT_TRUE(masked(first, ts(51)));
  EXPECT_EQ(count_masked(first, ts(0), n_vocab()), n_timestamps() - 51);

  // later steps: no limit (OpenAI: the rule applies when nothing has been sampled)
  const auto later = apply(row_with_strong_text(), {ts(10), kText}, rules);
  EXPECT_FALSE(masked(later, ts(51)));
  EXPECT_FALSE(masked(later, ts(1500)));

  rules.max_initial_timestamp = 0.5;
  const auto half = apply(row_with_strong_text(), {}, rules);
  EXPECT_FALSE(masked(half, ts(25)));
  EXPECT_TRUE(masked(half, ts(26)));

  rules.max_initial_timestamp = 0.0;  // disabled
  const auto off = apply(row_with_strong_text(), {}, rules);
  EXPECT_EQ(count_masked(off, ts(0), n_vocab()), 0);
}

// OpenAI computes the index with Python's round(): halves go to the even neighbour,
// round(0.05 / 0.02) = round(2.5) = 2 and round(0.01 / 0.02) = round(0.5) = 0.
// whisper.cpp uses std::round on floats (halves away from zero): 3 and 1.
TEST(LogitRulesMaxInitial, OpenAIRoundsHalvesToEvenLikePython) {
  LogitRules rules = timestamp_rules(Semantics::OpenAI);
  rules.max_initial_timestamp = 0.05;
  const auto row = apply(row_with_strong_text(), {}, rules);
  EXPECT_FALSE(masked(row, ts(2)));
  EXPECT_TRUE(masked(row, ts(3))) << "OpenAI: last_allowed = <|0.00|> + round(2.5) = <|0.04|>";
  rules.max_initial_timestamp = 0.01;
  const auto tiny = apply(row_with_strong_text(), {}, rules);
  EXPECT_FALSE(masked(tiny, ts(0)));
  EXPECT_TRUE(masked(tiny, ts(1))) << "OpenAI: round(0.5) = 0, only <|0.00|> is allowed";
}

TEST(LogitRulesMaxInitial, WhisperCppRoundsHalvesAwayFromZero) {
  LogitRules rules = timestamp_rules(Semantics::WhisperCpp);
  for (double seconds : {0.05, 0.01, 0.03, 0.07}) {
    rules.max_initial_timestamp = seconds;
    // whisper.cpp's expression (params.max_initial_ts is a float): 3, 1, 2, 4
    const int tid0 = static_cast<int>(std::round(static_cast<float>(seconds) / (30.0f / 1500.0f)));
    const auto row = apply(row_with_strong_text(), {}, rules);
    EXPECT_FALSE(masked(row, ts(tid0))) << seconds;
    EXPECT_TRUE(masked(row, ts(tid0 + 1))) << seconds;
  }
}

// (c) ------------------------------------------------------------------------------------

TEST_P(BothSemantics, AnOpenPairMustCloseTextIsMaskedEotIsNot) {
  // [<|0.00|>, text, <|0.10|>]: the pair opened by <|0.10|> must close with a timestamp,
  // or the window ends
  // (eot gets the highest logit: with the text masked, the 1496 open timestamps would
  // otherwise outweigh an eot at 0 and the forced-timestamp rule would mask it too)
  auto logits = row_with_strong_text();
  logits[sp().eot] = 10.0f;
  const auto row = apply(logits, {ts(0), kText, ts(5)}, timestamp_rules(GetParam()));
  EXPECT_EQ(count_masked(row, 0, sp().eot), sp().eot) << "every text token";
  EXPECT_FALSE(masked(row, sp().eot));
  EXPECT_FALSE(masked(row, ts(5))) << "the closing timestamp may repeat the opening one";
  EXPECT_FALSE(masked(row, ts(6)));
  EXPECT_TRUE(masked(row, ts(4)));
}

TEST_P(BothSemantics, AfterAClosedPairAllTimestampsAreMasked) {
  for (const std::vector<TokenId>& sampled :
       {std::vector<TokenId>{ts(0), kText, ts(5), ts(5)}, {ts(0), kText, ts(5), ts(9)}, {ts(3)}}) {
    const auto row = apply(row_with_strong_text(), sampled, timestamp_rules(GetParam()));
    EXPECT_EQ(count_masked(row, ts(0), n_vocab()), n_timestamps()) << sampled.size() << " sampled";
    EXPECT_FALSE(masked(row, kText)) << sampled.size() << " sampled";
    EXPECT_FALSE(masked(row, sp().eot)) << sampled.size() << " sampled";
  }
}

// (d) ------------------------------------------------------------------------------------

TEST(LogitRulesMonotonic, OpenAIMovesStrictlyForwardAfterText) {
  // [<|0.50|>, text]: OpenAI masks < last + 1, so <|0.50|> itself is masked
  const auto row = apply(row_with_strong_text(), {ts(25), kText}, timestamp_rules(Semantics::OpenAI));
  EXPECT_EQ(count_masked(row, ts(0), ts(26)), 26);
  EXPECT_FALSE(masked(row, ts(26)));
  EXPECT_EQ(count_masked(row, ts(26), n_vocab()), 0);
  // also after <|0.00|>: the next segment cannot start at 0 again
  const auto zero = apply(row_with_strong_text(), {ts(0), kText}, timestamp_rules(Semantics::OpenAI));
  EXPECT_TRUE(masked(zero, ts(0)));
  EXPECT_FALSE(masked(zero, ts(1)));
  // after a closed pair and more text, the last timestamp of the pair counts
  const auto later =
      apply(row_with_strong_text(), {ts(0), kText, ts(10), ts(10), kText2, kText}, timestamp_rules(Semantics::OpenAI));
  EXPECT_TRUE(masked(later, ts(10)));
  EXPECT_FALSE(masked(later, ts(11)));
}

TEST(LogitRulesMonotonic, WhisperCppMayRepeatTheLastTimestamp) {
  // whisper.cpp masks [<|0.00|>, last) where last is the latest timestamp above <|0.00|>
  const auto row = apply(row_with_strong_text(), {ts(25), kText}, timestamp_rules(Semantics::WhisperCpp));
  EXPECT_EQ(count_masked(row, ts(0), ts(25)), 25);
  EXPECT_FALSE(masked(row, ts(25)));
  EXPECT_EQ(count_masked(row, ts(25), n_vocab()), 0);
  // <|0.00|> does not count as a timestamp to move past
  const auto zero = apply(row_with_strong_text(), {ts(0), kText}, timestamp_rules(Semantics::WhisperCpp));
  EXPECT_EQ(count_masked(zero, ts(0), n_vocab()), 0);
  const auto later = apply(row_with_strong_text(), {ts(0), kText, ts(10), ts(10), kText2, kText},
                           timestamp_rules(Semantics::WhisperCpp));
  EXPECT_TRUE(masked(later, ts(9)));
  EXPECT_FALSE(masked(later, ts(10)));
}

// (e) ------------------------------------------------------------------------------------

// Text logits 0; ten timestamps <|2.00|>..<|2.18|> at `ts_logit`, the other timestamps at
// -1000. Together the ten weigh 10*e^ts_logit against e^0 for the best text token, so
// they win exactly when ts_logit > -ln 10 = -2.303, although none of them alone does.
std::vector<float> ten_timestamps_at(float ts_logit) {
  std::vector<float> row(static_cast<std::size_t>(n_vocab()), 0.0f);
  for (TokenId id = ts(0); id < n_vocab(); ++id) row[id] = -1000.0f;
  for (int i = 100; i < 110; ++i) row[ts(i)] = ts_logit;
  return row;
}

TEST_P(BothSemantics, TimestampsTogetherLikelierThanAnyTextTokenForceATimestamp) {
  const auto row = apply(ten_timestamps_at(-2.0f), {ts(0), kText}, timestamp_rules(GetParam()));
  EXPECT_EQ(count_masked(row, 0, sp().timestamp_begin), sp().timestamp_begin) << "text, eot and specials";
  for (int i = 100; i < 110; ++i) EXPECT_FALSE(masked(row, ts(i)));
}

TEST_P(BothSemantics, TimestampsTogetherLessLikelyLeaveTextOpen) {
  const auto row = apply(ten_timestamps_at(-2.6f), {ts(0), kText}, timestamp_rules(GetParam()));
  EXPECT_EQ(count_masked(row, 0, sp().eot), 0);
  EXPECT_FALSE(masked(row, sp().eot));
  for (int i = 100; i < 110; ++i) EXPECT_FALSE(masked(row, ts(i)));
}

TEST_P(BothSemantics, ForcedRuleCountsOnlyTimestampsLeftByTheEarlierRules) {
  // 1500 timestamps at logit 0 beat a text token at 7.0 (log 1500 = 7.31) ...
  std::vector<float> row(static_cast<std::size_t>(n_vocab()), 0.0f);
  row[kText] = 7.0f;
  const auto forced = apply(row, {ts(0), kText}, timestamp_rules(GetParam()));
  EXPECT_TRUE(masked(forced, kText));
  // ... but not once the monotonic rule has removed most of them (only <|29.02|>.. remain)
  const auto open = apply(row, {ts(1450), kText}, timestamp_rules(GetParam()));
  EXPECT_FALSE(masked(open, kText));
  // and at 7.6 the text token wins against all of them
  row[kText] = 7.6f;
  EXPECT_FALSE(masked(apply(row, {ts(0), kText}, timestamp_rules(GetParam())), kText));
}

// (f) ------------------------------------------------------------------------------------

TEST_P(BothSemantics, SuppressBlankMasksSpaceAndEotAtTheFirstStepOnly) {
  LogitRules rules;
  rules.semantics = GetParam();
  rules.timestamps = false;
  rules.suppress_blank = true;
  const TokenId blank = *english().find_piece(" ");
  const auto first = apply(row_with_strong_text(), {}, rules);
  EXPECT_TRUE(masked(first, blank));
  EXPECT_TRUE(masked(first, sp().eot));
  EXPECT_EQ(count_masked(first, 0, n_vocab()), 2);
  const auto second = apply(row_with_strong_text(), {kText}, rules);
  EXPECT_EQ(count_masked(second, 0, n_vocab()), 0);
  rules.suppress_blank = false;
  EXPECT_EQ(count_masked(apply(row_with_strong_text(), {}, rules), 0, n_vocab()), 0);
}

TEST_P(BothSemantics, SuppressedIdsAreMaskedAtEveryStep) {
  LogitRules rules;
  rules.semantics = GetParam();
  rules.timestamps = false;
  rules.suppress_blank = false;
  rules.suppress = {5, kText2, sp().sot};
  for (const std::vector<TokenId>& sampled : {std::vector<TokenId>{}, {kText}, {kText, kText}}) {
    const auto row = apply(row_with_strong_text(), sampled, rules);
    EXPECT_EQ(count_masked(row, 0, n_vocab()), 3);
    EXPECT_TRUE(masked(row, 5));
    EXPECT_TRUE(masked(row, kText2));
    EXPECT_TRUE(masked(row, sp().sot));
  }
}

// (g) ------------------------------------------------------------------------------------

std::set<TokenId> as_set(const std::vector<TokenId>& ids) { return {ids.begin(), ids.end()}; }

std::set<TokenId> openai_specials(const Tokenizer& tok) {
  const auto& s = tok.special();
  return {s.transcribe, s.translate, s.sot, s.prev, s.solm, s.no_speech};
}

TEST(SuppressedTokens, OpenAIMinusOneIsNonSpeechPlusSpecials) {
  for (bool timestamps : {true, false}) {
    const auto ids = suppressed_tokens(english(), "-1", Semantics::OpenAI, timestamps);
    EXPECT_TRUE(std::is_sorted(ids.begin(), ids.end()));
    EXPECT_EQ(as_set(ids).size(), ids.size()) << "unique";
    std::set<TokenId> expected = openai_specials(english());
    for (TokenId id : english().non_speech_tokens()) expected.insert(id);
    EXPECT_EQ(as_set(ids), expected);
    EXPECT_FALSE(as_set(ids).count(sp().no_timestamps));
    EXPECT_FALSE(as_set(ids).count(sp().first_language));
    EXPECT_FALSE(as_set(ids).count(sp().eot));
    EXPECT_FALSE(as_set(ids).count(ts(0)));
  }
  EXPECT_GT(english().non_speech_tokens().size(), 50u);
}

TEST(SuppressedTokens, OpenAIEmptyListIsOnlyTheSpecials) {
  EXPECT_EQ(as_set(suppressed_tokens(english(), "", Semantics::OpenAI, true)), openai_specials(english()));
  EXPECT_EQ(as_set(suppressed_tokens(multilingual(), "", Semantics::OpenAI, true)), openai_specials(multilingual()));
}

TEST(SuppressedTokens, ExplicitIds) {
  const auto ids = as_set(suppressed_tokens(english(), "1, 2,3 ,, 50256", Semantics::OpenAI, true));
  for (TokenId id : {1, 2, 3, 50256}) EXPECT_TRUE(ids.count(id)) << id;
  EXPECT_EQ(ids.size(), 4u + openai_specials(english()).size());
  // -1 together with other ids
  const auto mixed = as_set(suppressed_tokens(english(), "7,-1", Semantics::OpenAI, true));
  EXPECT_TRUE(mixed.count(7));
  EXPECT_TRUE(mixed.count(english().non_speech_tokens().front()));
}

TEST(SuppressedTokens, WhisperCppAddsNoTimestampsAndLanguages) {
  for (const Tokenizer* tok : {&english(), &multilingual()}) {
    const auto& s = tok->special();
    const auto ids = as_set(suppressed_tokens(*tok, "", Semantics::WhisperCpp, true));
    std::set<TokenId> expected = openai_specials(*tok);
    expected.insert(s.no_timestamps);
    for (int i = 0; i < s.n_languages; ++i) expected.insert(s.first_language + i);
    EXPECT_EQ(ids, expected);
    EXPECT_EQ(ids.size(), 6u + 1u + 99u);
    EXPECT_FALSE(ids.count(s.timestamp_begin));
    EXPECT_FALSE(ids.count(s.eot));

    // no timestamps: every timestamp token too
    const auto off = as_set(suppressed_tokens(*tok, "", Semantics::WhisperCpp, false));
    EXPECT_EQ(off.size(), expected.size() + 1501u);
    EXPECT_TRUE(off.count(s.timestamp_begin));
    EXPECT_TRUE(off.count(tok->n_vocab() - 1));

    // "-1" adds the non-speech set as well
    const auto nst = as_set(suppressed_tokens(*tok, "-1", Semantics::WhisperCpp, true));
    for (TokenId id : tok->non_speech_tokens()) EXPECT_TRUE(nst.count(id)) << id;
  }
}

TEST(SuppressedTokens, BadListsThrowError) {
  for (const char* bad : {"abc", "99999999", "1x", "-2", "51864", "1.5", "99999999999", "1;2", "--1"}) {
    EXPECT_THROW(suppressed_tokens(english(), bad, Semantics::OpenAI, true), Error) << bad;
    EXPECT_THROW(suppressed_tokens(english(), bad, Semantics::WhisperCpp, false), Error) << bad;
  }
  EXPECT_NO_THROW(suppressed_tokens(english(), "51863", Semantics::OpenAI, true));  // the last id
}

// Everything together, as the CLI's defaults configure it --------------------------------

TEST(LogitRulesDefaults, OpenAIFirstStepLeavesOnlyTheFirstSecondOfTimestamps) {
  LogitRules rules;  // OpenAI, timestamps, suppress_blank, max_initial_timestamp 1.0
  rules.suppress = suppressed_tokens(english(), "-1", Semantics::OpenAI, true);
  const auto row = apply(row_with_strong_text(), {}, rules);
  EXPECT_EQ(count_masked(row, 0, ts(0)), ts(0));
  EXPECT_EQ(count_masked(row, ts(0), ts(51)), 0);
  EXPECT_EQ(count_masked(row, ts(51), n_vocab()), n_timestamps() - 51);
}

TEST(LogitRulesDefaults, RulesNeverProduceNaN) {
  // a row already all -inf (everything suppressed) and rows with huge values
  for (float fill : {-std::numeric_limits<float>::infinity(), 1e30f, -1e30f}) {
    for (Semantics s : {Semantics::OpenAI, Semantics::WhisperCpp}) {
      std::vector<float> row(static_cast<std::size_t>(n_vocab()), fill);
      LogitRules rules;
      rules.semantics = s;
      apply_logit_rules(row, std::vector<TokenId>{ts(0), kText}, rules, english());
      EXPECT_EQ(std::count_if(row.begin(), row.end(), [](float v) { return std::isnan(v); }), 0)
          << name_of(s) << " fill " << fill;
    }
  }
}

TEST(LogSoftmax, NormalizesAndKeepsMaskedEntries) {
  std::vector<float> row = {1.0f, 2.0f, 3.0f, -std::numeric_limits<float>::infinity(), 1000.0f};
  const auto lp = log_softmax(row);
  ASSERT_EQ(lp.size(), row.size());
  double sum = 0.0;
  for (float v : lp) sum += std::exp(static_cast<double>(v));
  EXPECT_NEAR(sum, 1.0, 1e-6);
  EXPECT_TRUE(std::isinf(lp[3]) && lp[3] < 0);
  EXPECT_NEAR(lp[4], 0.0f, 1e-6);
  EXPECT_NEAR(lp[1] - lp[0], 1.0f, 1e-4);
  const auto small = log_softmax(std::vector<float>{0.0f, 0.0f});
  EXPECT_NEAR(small[0], -std::log(2.0f), 1e-6);
}

// A whole vocabulary's row (a length no vector width divides), with masked entries and
// values far below the largest, against the sum in long double: the vectorised float
// exponentials stay within 2e-7 of each term.
TEST(LogSumExp, MatchesLongDoubleOnAVocabularyRow) {
  for (const std::size_t n : {std::size_t{51865}, std::size_t{1501}, std::size_t{7}}) {
    std::vector<float> row(n);
    std::uint32_t state = 7;
    for (auto& v : row) {
      state = state * 1664525u + 1013904223u;
      v = static_cast<float>(state >> 8) / 16777216.0f * 60.0f - 40.0f;  // [-40, 20)
    }
    for (std::size_t i = 0; i < n; i += 5) row[i] = -std::numeric_limits<float>::infinity();
    row[n / 2] = -200.0f;  // below exp's float range after the shift
    long double max = -INFINITY, sum = 0.0L;
    for (float v : row) max = std::max<long double>(max, v);
    for (float v : row) sum += std::exp(static_cast<long double>(v) - max);
    const long double expect = max + std::log(sum);
    EXPECT_NEAR(log_sum_exp(row), static_cast<double>(expect), 1e-6 * std::abs(static_cast<double>(expect))) << n;
  }
  const float masked = -std::numeric_limits<float>::infinity();
  EXPECT_EQ(log_sum_exp(std::vector<float>(40, masked)), -INFINITY);
  EXPECT_EQ(log_sum_exp(std::vector<float>{}), -INFINITY);
  EXPECT_NEAR(log_sum_exp(std::vector<float>{0.0f, 0.0f}), std::log(2.0), 1e-7);
}

}  // namespace
}  // namespace amanuensis::decoding

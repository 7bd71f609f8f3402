// The long-form loop of OpenAI's transcribe() end to end (transcribe() on real audio and the
// micro model): temperature fallback, skipping no-speech windows, where each window starts
// (seek), and the previous-text prompt each window is conditioned on.
//
// Most tests script the decoder: a logits filter forces the tokens every decode samples
// (all other logits -inf, so the forced token has probability 1 at any temperature), and
// TranscribeOptions::on_window reports what each window saw. The expected seeks and
// prompts are worked out below from OpenAI's transcribe.py, not taken from our output.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "audio/decode.h"
#include "pipeline/transcriber.h"
#include "test_paths.h"

namespace amanuensis::pipeline {
namespace {

using Tokens = std::vector<TokenId>;

constexpr float kMinusInf = -std::numeric_limits<float>::infinity();

// One scripted decode: the tokens it samples (end-of-text follows them). `unlikely`: the
// forced token stays the arg-max, but the other tokens of its kind (text or timestamps)
// sit 3 below it, so its log-probability is low (a "no speech" looking decode).
struct ScriptedDecode {
  Tokens tokens;
  bool unlikely = false;
};

// Forces decode k of a transcription to sample script[k] (the last script repeats). A
// decode starts with the filter's step 0; the tests decode greedily or with best_of 1, so
// every decode is one sequence and calls the filter once per step.
class Script {
 public:
  Script(const text::Tokenizer& tok, std::vector<ScriptedDecode> decodes) : tok_(tok), decodes_(std::move(decodes)) {}

  decoding::LogitsFilter filter() {
    return [this](int step, std::span<const TokenId> sampled, std::span<float> logits) {
      if (step == 0) ++started_;
      const auto& d = decodes_[std::min(decodes_.size(), started_) - 1];
      const TokenId forced = sampled.size() < d.tokens.size() ? d.tokens[sampled.size()] : tok_.special().eot;
      force(logits, forced, d.unlikely);
    };
  }
  std::size_t decodes_started() const { return started_; }

 private:
  void force(std::span<float> logits, TokenId token, bool unlikely) const {
    const bool timestamp = tok_.is_timestamp(token);
    for (std::size_t i = 0; i < logits.size(); ++i) {
      const bool same_kind = tok_.is_timestamp(static_cast<TokenId>(i)) == timestamp;
      logits[i] = unlikely && same_kind ? -3.0f : kMinusInf;
    }
    logits[static_cast<std::size_t>(token)] = 0.0f;
  }

  const text::Tokenizer& tok_;
  std::vector<ScriptedDecode> decodes_;
  std::size_t started_ = 0;
};

class WindowLoopTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    model_ = Model::load(testing::model_path("micro.en-f16"));
    speech_ = std::make_shared<const std::vector<float>>(
        audio::load_audio_file(testing::conformance_dir() / "audio" / "speech-75s.wav"));
  }

  const text::Tokenizer& tok() const { return model_->tokenizer(); }
  const text::SpecialTokens& sp() const { return tok().special(); }
  // <|seconds|>
  TokenId ts(double seconds) const { return sp().timestamp_begin + static_cast<TokenId>(std::lround(seconds / 0.02)); }
  Tokens words(const std::string& text) const { return tok().encode(text); }
  static Tokens cat(std::initializer_list<Tokens> parts) {
    Tokens out;
    for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
    return out;
  }
  // What a window's decoder starts from: <|startofprev|> and the prompt when there is one,
  // then <|startoftranscript|> (the English-only micro model has no language or task token).
  Tokens initial(const Tokens& prompt) const {
    Tokens out;
    if (!prompt.empty()) out = cat({{sp().prev}, prompt});
    out.push_back(sp().sot);
    return out;
  }
  static Tokens without_last(Tokens t) {
    t.pop_back();
    return t;
  }

  // Greedy decoding without fallback; each window's trace collected in `traces`.
  static TranscribeOptions options(std::vector<WindowTrace>& traces) {
    TranscribeOptions o;
    o.temperatures = {0.0f};
    o.best_of = 1;
    o.on_window = [&traces](const WindowTrace& w) { traces.push_back(w); };
    return o;
  }
  Transcript run(TranscribeOptions o, Script& script) const {
    o.logits_filter = script.filter();
    return transcribe(*model_, *speech_, o);
  }
  static int content_frames() { return static_cast<int>(speech_->size() / 160); }

  static inline std::shared_ptr<const Model> model_;
  static inline std::shared_ptr<const std::vector<float>> speech_;
};

// Every window's kept decode sampled what its script said (the logit rules let it through).
void expect_scripted(const std::vector<WindowTrace>& traces, const std::vector<Tokens>& kept) {
  ASSERT_EQ(traces.size(), kept.size());
  for (std::size_t i = 0; i < kept.size(); ++i) EXPECT_EQ(traces[i].kept.tokens, kept[i]) << "window " << i;
}

std::vector<const Segment*> segments_of_window(const Transcript& t, int seek) {
  std::vector<const Segment*> out;
  for (const auto& s : t.segments)
    if (s.seek == seek) out.push_back(&s);
  return out;
}

// ---- Temperature fallback and no-speech windows ---------------------------------------

// OpenAI's decode_with_fallback(): a decode whose text compresses more than 2.4 times is
// retried at the next temperature (0, 0.2, ... 1.0), the segments carry the temperature of
// the decode that was kept, and a window kept above 0.5 does not condition the next one
// (prompt_reset_since); a window kept at 0.4 still does.
TEST_F(WindowLoopTest, RepetitiveDecodesAreRetriedAtHigherTemperatures) {
  const Tokens the_40_times(40, words(" the").front());
  const Tokens repetitive = cat({{ts(0)}, the_40_times, {ts(8)}});
  // Window 0 (seek 0): kept at 0.2; it ends with the pair <|9.00|><|9.00|>: next seek 900.
  const Tokens w0 = cat({{ts(0)}, words(" Hello world."), {ts(4), ts(4)}, words(" Good night."), {ts(9), ts(9)}});
  // Window 1 (seek 900): kept at 0.6, ends with <|6.00|><|6.00|>: next seek 900 + 600.
  const Tokens w1 = cat({{ts(0)}, words(" Far away."), {ts(6), ts(6)}});
  // Window 2 (seek 1500): kept at 0.4; one timestamp at the end: next seek 1500 + 3000.
  const Tokens w2 = cat({{ts(0)}, words(" The end."), {ts(2)}});
  // Window 3 (seek 4500): kept at 0; next seek 7500, the end of the audio.
  const Tokens w3 = cat({{ts(0)}, words(" Once more."), {ts(1)}});
  Script script(tok(), {{repetitive}, {w0},
                        {repetitive}, {repetitive}, {repetitive}, {w1},
                        {repetitive}, {repetitive}, {w2},
                        {w3}});
  std::vector<WindowTrace> traces;
  auto o = options(traces);
  o.temperatures = {0.0f, 0.2f, 0.4f, 0.6f, 0.8f, 1.0f};  // OpenAI's default schedule
  const auto t = run(o, script);

  EXPECT_EQ(script.decodes_started(), 10u);
  expect_scripted(traces, {w0, w1, w2, w3});
  ASSERT_EQ(traces.size(), 4u);
  for (const auto& w : traces) ASSERT_LT(w.kept.no_speech_prob, 0.6f) << "a no-speech window is never retried";
  EXPECT_EQ(traces[0].temperatures_tried, (std::vector<float>{0.0f, 0.2f}));
  EXPECT_EQ(traces[1].temperatures_tried, (std::vector<float>{0.0f, 0.2f, 0.4f, 0.6f}));
  EXPECT_EQ(traces[2].temperatures_tried, (std::vector<float>{0.0f, 0.2f, 0.4f}));
  EXPECT_EQ(traces[3].temperatures_tried, (std::vector<float>{0.0f}));
  EXPECT_EQ(t.window_seeks, (std::vector<int>{0, 900, 1500, 4500}));

  const std::vector<std::pair<int, float>> kept_at = {{0, 0.2f}, {900, 0.6f}, {1500, 0.4f}, {4500, 0.0f}};
  for (const auto& [seek, temperature] : kept_at) {
    const auto segments = segments_of_window(t, seek);
    ASSERT_FALSE(segments.empty()) << "window at " << seek;
    for (const auto* s : segments) EXPECT_EQ(s->temperature, temperature) << "window at " << seek;
  }
  ASSERT_EQ(t.segments.size(), 5u);
  EXPECT_EQ(t.segments[0].text, " Hello world.");
  EXPECT_EQ(t.segments[1].text, " Good night.");
  EXPECT_GT(t.segments[0].compression_ratio, 0.0);
  EXPECT_LT(t.segments[0].compression_ratio, 2.4) << "the kept decode's ratio, not the repetitive one's";

  // Prompts: window 1 continues window 0 (its segments' tokens: all but the closing
  // <|9.00|>); window 2 starts afresh after the 0.6 window; window 3 continues window 2.
  EXPECT_EQ(traces[0].initial_tokens, initial({}));
  EXPECT_EQ(traces[1].initial_tokens, initial(without_last(w0)));
  EXPECT_EQ(traces[2].initial_tokens, initial({})) << "a window kept at 0.6 must not condition the next";
  EXPECT_EQ(traces[3].initial_tokens, initial(w2)) << "a window kept at 0.4 conditions the next";
}

// OpenAI's transcribe(): a window whose no-speech probability is above the threshold and
// whose decode is unlikely (average log-probability under -1) gives no segment, moves the
// seek by the whole window whatever its tokens say, and does not condition the next window.
TEST_F(WindowLoopTest, NoSpeechWindowIsSkippedByTheWholeWindow) {
  const Tokens w0 = cat({{ts(0)}, words(" Hello"), {ts(5), ts(5)}});     // 0 -> 500
  const Tokens w1 = cat({{ts(0)}, words(" noise"), {ts(2), ts(2)}});     // would be 500 -> 700
  const Tokens w2 = cat({{ts(0)}, words(" Back"), {ts(4), ts(4)}});      // 3500 -> 3900
  const Tokens w3 = cat({{ts(0)}, words(" again"), {ts(1)}});            // 3900 -> 6900
  const Tokens w4 = cat({{ts(0)}, words(" end"), {ts(1)}});              // 6900 -> past the end
  Script script(tok(), {{w0}, {w1, /*unlikely=*/true}, {w2}, {w3}, {w4}});
  std::vector<WindowTrace> traces;
  auto o = options(traces);
  // The random model's no-speech probability is tiny but positive: with a threshold of 0
  // every window counts as no-speech unless its decode is likely, which the script decides.
  o.thresholds.no_speech = 0.0;
  const auto t = run(o, script);

  expect_scripted(traces, {w0, w1, w2, w3, w4});
  ASSERT_EQ(traces.size(), 5u);
  for (const auto& w : traces) ASSERT_GT(w.kept.no_speech_prob, 0.0f);
  EXPECT_LT(traces[1].kept.avg_logprob, -1.0);
  EXPECT_EQ(traces[0].kept.avg_logprob, 0.0);
  EXPECT_TRUE(traces[1].skipped_as_silence);
  for (std::size_t i : {0u, 2u, 3u, 4u}) EXPECT_FALSE(traces[i].skipped_as_silence) << "window " << i;

  EXPECT_EQ(t.window_seeks, (std::vector<int>{0, 500, 500 + 3000, 3900, 6900}));
  EXPECT_TRUE(segments_of_window(t, 500).empty()) << "the no-speech window has no segment";
  std::string texts;
  for (const auto& s : t.segments) texts += s.text;
  EXPECT_EQ(texts, " Hello Back again end");
  EXPECT_EQ(t.text, texts);
  EXPECT_EQ(traces[2].initial_tokens, initial(without_last(w0))) << "the skipped window adds nothing to the prompt";
}

// ---- Seeking -----------------------------------------------------------------------------

// OpenAI's rule for the next window, written out from transcribe.py: when the tokens hold
// consecutive timestamps, the segments end at each such pair, and the seek moves to the
// first timestamp of the last pair -- unless the tokens end with a single timestamp (text,
// then one timestamp), which means no speech after it: then by the whole window. Without
// consecutive timestamps the window is one segment and the seek moves by the window.
// Returns mel frames (one timestamp step, 0.02 s, is two frames).
int openai_seek_advance(const Tokens& tokens, int segment_size, TokenId timestamp_begin) {
  auto is_timestamp = [&](TokenId t) { return t >= timestamp_begin; };
  const std::size_t n = tokens.size();
  const bool single_timestamp_ending = n >= 2 && !is_timestamp(tokens[n - 2]) && is_timestamp(tokens[n - 1]);
  std::size_t last_slice = 0;  // index of the second timestamp of the last pair
  for (std::size_t i = 0; i + 1 < n; ++i)
    if (is_timestamp(tokens[i]) && is_timestamp(tokens[i + 1])) last_slice = i + 1;
  if (last_slice == 0 || single_timestamp_ending) return segment_size;
  return (tokens[last_slice - 1] - timestamp_begin) * 2;
}

// Made-up windows covering each case of the rule; speech-75s has 7500 mel frames.
TEST_F(WindowLoopTest, SeekFollowsOpenAiRuleForEachKindOfWindowEnding) {
  // ends with the pair <|9.00|><|9.50|>: to its first timestamp, 0 + 900
  const Tokens last_pair = cat({{ts(0)}, words(" A"), {ts(4), ts(5)}, words(" B"), {ts(9), ts(9.5)}});
  // text after the last pair <|3.00|><|3.50|> is unfinished: 900 + 300
  const Tokens unfinished = cat({{ts(0)}, words(" C"), {ts(3), ts(3.5)}, words(" D E")});
  // a pair, then text and one timestamp at the end: the whole window, 1200 + 3000
  const Tokens single_end = cat({{ts(0)}, words(" F"), {ts(2), ts(2.5)}, words(" G"), {ts(7)}});
  // no pair, one timestamp at the end: one segment to <|6.00|>, the whole window, 4200 + 3000
  const Tokens no_pair = cat({{ts(0)}, words(" H I"), {ts(6)}});
  // the last window is 300 frames; the pair <|1.00|><|1.50|> moves it by 100: 7200 + 100
  const Tokens short_pair = cat({{ts(0)}, words(" J"), {ts(1), ts(1.5)}, words(" K")});
  // only <|0.00|>: one segment over the whole (200-frame) window, 7300 + 200 = the end
  const Tokens only_start = cat({{ts(0)}, words(" L M")});
  Script script(tok(), {{last_pair}, {unfinished}, {single_end}, {no_pair}, {short_pair}, {only_start}});
  std::vector<WindowTrace> traces;
  const auto t = run(options(traces), script);

  expect_scripted(traces, {last_pair, unfinished, single_end, no_pair, short_pair, only_start});
  EXPECT_EQ(t.window_seeks, (std::vector<int>{0, 900, 1200, 4200, 7200, 7300}));
  struct Expected {
    double start, end;
    std::string text;
  };
  const std::vector<Expected> expected = {{0, 4, " A"},       {5, 9, " B"},       {9, 12, " C"},
                                          {12, 14, " F"},     {14.5, 19, " G"},   {42, 48, " H I"},
                                          {72, 73, " J"},     {73, 75, " L M"}};
  ASSERT_EQ(t.segments.size(), expected.size());
  for (std::size_t i = 0; i < expected.size(); ++i) {
    EXPECT_DOUBLE_EQ(t.segments[i].start, expected[i].start) << "segment " << i;
    EXPECT_DOUBLE_EQ(t.segments[i].end, expected[i].end) << "segment " << i;
    EXPECT_EQ(t.segments[i].text, expected[i].text) << "segment " << i;
  }
}

// Without timestamps every window is one segment and the seek moves by the window.
TEST_F(WindowLoopTest, WithoutTimestampsEveryWindowAdvancesByItsLength) {
  const Tokens text_only = words(" A B C");
  Script script(tok(), {{text_only}});
  std::vector<WindowTrace> traces;
  auto o = options(traces);
  o.decode.timestamps = false;
  const auto t = run(o, script);

  expect_scripted(traces, {text_only, text_only, text_only});
  EXPECT_EQ(t.window_seeks, (std::vector<int>{0, 3000, 6000}));
  ASSERT_EQ(t.segments.size(), 3u);
  EXPECT_DOUBLE_EQ(t.segments[2].start, 60.0);
  EXPECT_DOUBLE_EQ(t.segments[2].end, 75.0);
}

// The micro model's own decodes of speech-75s with OpenAI semantics (the CLI's and the
// server's default), greedy, 224 tokens a window: every window starts where OpenAI's rule,
// applied to the previous window's tokens, says.
TEST_F(WindowLoopTest, SpeechWindowsStartWhereOpenAiRuleSays) {
  std::vector<WindowTrace> traces;
  const auto t = transcribe(*model_, *speech_, options(traces));
  ASSERT_EQ(traces.size(), t.window_seeks.size());

  std::vector<int> expected = {0};
  bool some_window_moved_less_than_its_length = false;
  for (const auto& w : traces) {
    ASSERT_FALSE(w.skipped_as_silence);
    const int seek = expected.back();
    const int segment_size = std::min(3000, content_frames() - seek);
    EXPECT_EQ(w.segment_size, segment_size) << "window at " << seek;
    const int advance = openai_seek_advance(w.kept.tokens, segment_size, sp().timestamp_begin);
    some_window_moved_less_than_its_length |= advance < segment_size;
    // (OpenAI's loop would never end on an advance of 0; ours moves on by one frame)
    const int next = seek + std::max(advance, 1);
    if (next >= content_frames()) break;
    expected.push_back(next);
  }
  EXPECT_EQ(t.window_seeks, expected);
  EXPECT_TRUE(some_window_moved_less_than_its_length)
      << "the model's windows all ended with a single timestamp or none: this test would not see a seek that goes too far";
}

// ---- The previous-text prompt --------------------------------------------------------------

// Each window is conditioned on <|startofprev|>, the initial prompt (" " + --prompt) and
// the tokens of every segment so far, blank segments removed (OpenAI empties a segment
// whose text is only whitespace, and its tokens with it).
TEST_F(WindowLoopTest, PromptIsTheInitialPromptAndThePreviousSegmentsTokens) {
  // Segments <|0.00|> a <|2.00|>, <|2.00|> " " <|3.00|> (blank), <|3.00|> b <|5.00|>; " c"
  // after the last pair is unfinished. Next seek 500.
  const Tokens w0 = cat({{ts(0)}, words(" a"), {ts(2), ts(2)}, words(" "), {ts(3), ts(3)}, words(" b"),
                         {ts(5), ts(6)}, words(" c")});
  const Tokens w1 = cat({{ts(0)}, words(" d"), {ts(4), ts(4)}});  // 500 -> 900
  const Tokens w2 = cat({{ts(0)}, words(" e"), {ts(1)}});         // 900 -> 3900 -> 6900 -> end
  Script script(tok(), {{w0}, {w1}, {w2}});
  std::vector<WindowTrace> traces;
  auto o = options(traces);
  o.initial_prompt = "Kennedy spoke";
  const auto t = run(o, script);

  expect_scripted(traces, {w0, w1, w2, w2, w2});
  ASSERT_EQ(words(" "), Tokens{words(" ")[0]});
  const Tokens prompt = words(" Kennedy spoke");
  const Tokens from_w0 = cat({{ts(0)}, words(" a"), {ts(2)}, {ts(3)}, words(" b"), {ts(5)}});
  const Tokens from_w1 = cat({{ts(0)}, words(" d"), {ts(4)}});
  EXPECT_EQ(traces[0].initial_tokens, initial(prompt));
  EXPECT_EQ(traces[1].initial_tokens, initial(cat({prompt, from_w0})));
  EXPECT_EQ(traces[2].initial_tokens, initial(cat({prompt, from_w0, from_w1})));
  EXPECT_EQ(traces[3].initial_tokens, initial(cat({prompt, from_w0, from_w1, w2})));

  ASSERT_GE(t.segments.size(), 3u);
  EXPECT_EQ(t.segments[1].text, "") << "the blank segment is emptied";
  EXPECT_TRUE(t.segments[1].tokens.empty());
  EXPECT_EQ(t.window_seeks, (std::vector<int>{0, 500, 900, 3900, 6900}));
}

// --no-context (condition_on_previous_text false): the initial prompt conditions the first
// window only, as OpenAI resets the prompt after every window.
TEST_F(WindowLoopTest, WithoutContextOnlyTheFirstWindowHasThePrompt) {
  const Tokens w = cat({{ts(0)}, words(" a"), {ts(4)}});  // windows at 0, 30 and 60 s
  Script script(tok(), {{w}});
  std::vector<WindowTrace> traces;
  auto o = options(traces);
  o.initial_prompt = "Kennedy spoke";
  o.condition_on_previous_text = false;
  (void)run(o, script);

  ASSERT_EQ(traces.size(), 3u);
  EXPECT_EQ(traces[0].initial_tokens, initial(words(" Kennedy spoke")));
  for (std::size_t i = 1; i < traces.size(); ++i) EXPECT_EQ(traces[i].initial_tokens, initial({})) << "window " << i;
}

}  // namespace
}  // namespace amanuensis::pipeline

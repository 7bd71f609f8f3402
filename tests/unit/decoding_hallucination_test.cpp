// OpenAI's hallucination-silence heuristics on crafted words and segments.
#include <gtest/gtest.h>

#include "decoding/hallucination.h"

namespace amanuensis::decoding {
namespace {

TimedWord word(double start, double end, double p, std::string text = " word") { return {text, start, end, p}; }

TimedSegment segment(std::vector<TimedWord> words) {
  return {words.front().start, words.back().end, std::move(words)};
}

TEST(WordAnomaly, Scores) {
  EXPECT_DOUBLE_EQ(word_anomaly_score(word(0, 0.5, 0.9)), 0.0);
  EXPECT_DOUBLE_EQ(word_anomaly_score(word(0, 0.5, 0.1)), 1.0) << "improbable";
  EXPECT_NEAR(word_anomaly_score(word(0, 0.033, 0.9)), 1.5, 1e-9) << "too short: (0.133 - 0.033) * 15";
  EXPECT_NEAR(word_anomaly_score(word(0, 3.5, 0.9)), 1.5, 1e-9) << "too long: 3.5 - 2";
}

TEST(SegmentAnomaly, ThresholdsAndPunctuation) {
  EXPECT_FALSE(is_segment_anomaly(nullptr));
  EXPECT_FALSE(is_segment_anomaly(&(const TimedSegment&)TimedSegment{}));
  const auto good = segment({word(0, 0.4, 0.9), word(0.4, 0.8, 0.8)});
  EXPECT_FALSE(is_segment_anomaly(&good));
  const auto bad = segment({word(0, 0.4, 0.05), word(0.4, 0.8, 0.05)});
  EXPECT_TRUE(is_segment_anomaly(&bad)) << "score 2 >= 2 words";
  // punctuation is not scored: one improbable word plus a comma is still an anomaly
  const auto with_comma = segment({word(0, 0.4, 0.05), word(0.4, 0.41, 0.01, ",")});
  EXPECT_TRUE(is_segment_anomaly(&with_comma));
  // three improbable words among many good ones: score 3 is an anomaly
  std::vector<TimedWord> many;
  for (int i = 0; i < 8; ++i) many.push_back(word(i * 0.5, i * 0.5 + 0.4, i < 3 ? 0.01 : 0.9));
  const auto mixed = segment(many);
  EXPECT_TRUE(is_segment_anomaly(&mixed));
}

WindowTiming window_at(double offset) {
  WindowTiming w;
  w.time_offset = offset;
  w.window_end = offset + 30;
  w.segment_duration = 30;
  w.content_duration = 120;
  w.previous_seek = static_cast<int>(offset * 100);
  w.segment_size = 3000;
  w.content_frames = 12000;
  return w;
}

TEST(HallucinationThreshold, LeadingAnomalyAfterSilenceSkipsTheWindowToIt) {
  // one garbage segment starting 10 s into the window
  const std::vector<TimedSegment> segs = {segment({word(40.0, 40.05, 0.01), word(40.05, 40.1, 0.01)})};
  const auto d = apply_hallucination_threshold(segs, window_at(30), 4010, 2.0, 29.0);
  EXPECT_TRUE(d.skip_window);
  EXPECT_EQ(d.seek, 3000 + 1000) << "seek to the start of the suspicious segment";
}

TEST(HallucinationThreshold, AnomalySurroundedBySilenceIsCut) {
  const std::vector<TimedSegment> segs = {
      segment({word(30.5, 31.0, 0.9), word(31.0, 31.5, 0.9)}),  // speech
      segment({word(40.0, 40.05, 0.01), word(40.05, 40.1, 0.01)}),  // garbage after 8.5 s of silence
  };
  const auto d = apply_hallucination_threshold(segs, window_at(30), 6000, 2.0, 29.0);
  EXPECT_FALSE(d.skip_window);
  EXPECT_EQ(d.keep, 1u);
  EXPECT_EQ(d.seek, 4000);
}

TEST(HallucinationThreshold, NormalSpeechKeepsEverything) {
  const std::vector<TimedSegment> segs = {segment({word(30.5, 31.0, 0.9), word(31.0, 31.5, 0.9)}),
                                          segment({word(58.0, 58.4, 0.9), word(58.4, 58.9, 0.9)})};
  auto w = window_at(30);
  w.single_timestamp_ending = true;
  const auto d = apply_hallucination_threshold(segs, w, 6000, 2.0, 29.0);
  EXPECT_FALSE(d.skip_window);
  EXPECT_EQ(d.keep, 2u);
  EXPECT_EQ(d.seek, 6000);
}

TEST(HallucinationThreshold, LongSilenceAfterTheLastWordMovesSeekToIt) {
  const std::vector<TimedSegment> segs = {segment({word(34.0, 34.5, 0.9), word(34.5, 35.0, 0.9)})};
  const auto d = apply_hallucination_threshold(segs, window_at(30), 6000, 2.0, 29.0);
  EXPECT_EQ(d.seek, 3500) << "25 s of silence remain after the last word";
}

}  // namespace
}  // namespace amanuensis::decoding

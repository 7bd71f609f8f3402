// The quality checks behind temperature fallback and silent-window skipping, on crafted
// values (random-weight models cannot show them end to end).
#include <gtest/gtest.h>

#include "decoding/quality.h"

namespace amanuensis::decoding {
namespace {

TEST(CompressionRatio, MatchesPythonZlib) {
  // expected values from Python: len(b) / len(zlib.compress(b))
  EXPECT_NEAR(compression_ratio("hello world"), 0.5789473684210527, 1e-12);
  EXPECT_NEAR(compression_ratio(" the the the the the the the the the the the the the the the the the the the the"),
              5.333333333333333, 1e-12);
  EXPECT_NEAR(compression_ratio(" And so my fellow Americans, ask not what your country can do for you, ask what you "
                                "can do for your country."),
              1.3670886075949367, 1e-12);
  EXPECT_EQ(compression_ratio(""), 0.0);
}

TEST(Fallback, RepetitiveOrUnlikelyTextFallsBack) {
  const QualityThresholds t;  // OpenAI's defaults: 2.4, -1.0, 0.6
  EXPECT_FALSE(needs_fallback({1.5, -0.3, 0.01}, t));
  EXPECT_TRUE(needs_fallback({2.5, -0.3, 0.01}, t)) << "too repetitive";
  EXPECT_TRUE(needs_fallback({1.5, -1.2, 0.01}, t)) << "too unlikely";
  EXPECT_FALSE(needs_fallback({2.4, -1.0, 0.01}, t)) << "thresholds are strict inequalities";
}

TEST(Fallback, SilenceOverridesFallback) {
  const QualityThresholds t;
  EXPECT_FALSE(needs_fallback({3.0, -2.0, 0.7}, t)) << "a silent window is not retried";
  EXPECT_TRUE(needs_fallback({3.0, -2.0, 0.6}, t));
}

TEST(Fallback, DisabledThresholdsNeverTrigger) {
  QualityThresholds t;
  t.compression_ratio.reset();
  t.logprob.reset();
  EXPECT_FALSE(needs_fallback({9.0, -9.0, 0.0}, t));
}

TEST(SilentWindow, NoSpeechNeedsLowLogprobToo) {
  const QualityThresholds t;
  EXPECT_TRUE(is_silent_window({1.0, -1.5, 0.9}, t));
  EXPECT_FALSE(is_silent_window({1.0, -0.5, 0.9}, t)) << "confident text is kept despite a high no-speech probability";
  EXPECT_FALSE(is_silent_window({1.0, -1.5, 0.5}, t));
  QualityThresholds no_logprob = t;
  no_logprob.logprob.reset();
  EXPECT_TRUE(is_silent_window({1.0, -0.1, 0.9}, no_logprob));
  QualityThresholds off = t;
  off.no_speech.reset();
  EXPECT_FALSE(is_silent_window({1.0, -5.0, 1.0}, off));
}

}  // namespace
}  // namespace amanuensis::decoding

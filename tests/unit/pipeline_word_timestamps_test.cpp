// Word-level timestamps end to end on a synthetic model (3 decoder layers, so the
// fallback alignment heads of the upper half are used): every segment gets words that
// spell its text, in order, inside the segment.
#include <gtest/gtest.h>

#include "audio/wav.h"
#include "pipeline/transcriber.h"
#include "test_paths.h"

namespace amanuensis::testing {
namespace {

pipeline::Transcript transcribe_with_words(const std::string& audio, std::optional<double> hallucination_threshold) {
  static const auto model = pipeline::Model::load(model_path("micro3.en-f16"));
  pipeline::TranscribeOptions o;
  o.decode.sample_len = 40;
  o.temperatures = {0.0f};
  o.word_timestamps = true;
  o.hallucination_silence_threshold = hallucination_threshold;
  return pipeline::transcribe(*model, audio::read_wav_file(conformance_dir() / "audio" / (audio + ".wav")), o);
}

TEST(WordTimestamps, WordsSpellTheSegmentsInOrder) {
  for (const std::string audio : {"jfk", "speech-30s"}) {
    SCOPED_TRACE(audio);
    const auto t = transcribe_with_words(audio, std::nullopt);
    ASSERT_FALSE(t.segments.empty());
    double previous_end = 0.0;
    int with_words = 0;
    for (const auto& s : t.segments) {
      std::string spelled;
      for (const auto& w : s.words) {
        spelled += w.word;
        EXPECT_LE(w.start, w.end);
        EXPECT_GE(w.start, previous_end - 1e-9) << "words move forward";
        EXPECT_GE(w.start, s.start - 1e-9);
        EXPECT_LE(w.end, s.end + 1e-9);
        EXPECT_GE(w.probability, 0.0);
        EXPECT_LE(w.probability, 1.0);
        previous_end = w.end;
      }
      if (!s.words.empty()) {
        ++with_words;
        EXPECT_EQ(spelled, s.text);
      }
    }
    EXPECT_GT(with_words, 0);
  }
}

TEST(WordTimestamps, HallucinationThresholdOnlyRemovesSegments) {
  const auto plain = transcribe_with_words("speech-30s", std::nullopt);
  const auto filtered = transcribe_with_words("speech-30s", 2.0);
  // random weights give improbable words everywhere: the rule may drop segments, never add
  double plain_words = 0, filtered_words = 0;
  for (const auto& s : plain.segments) plain_words += static_cast<double>(s.words.size());
  for (const auto& s : filtered.segments) filtered_words += static_cast<double>(s.words.size());
  EXPECT_LE(filtered_words, plain_words);
  for (std::size_t i = 1; i < filtered.segments.size(); ++i)
    EXPECT_GE(filtered.segments[i].start, filtered.segments[i - 1].start);
}

}  // namespace
}  // namespace amanuensis::testing

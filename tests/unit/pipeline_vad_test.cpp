// --vad end to end: silence costs no decoder work and gives no text; speech is kept and
// its times stay those of the original recording.
#include <gtest/gtest.h>

#include "audio/wav.h"
#include "pipeline/transcriber.h"
#include "test_paths.h"

namespace amanuensis::testing {
namespace {

const pipeline::Model& model() {
  static const auto m = pipeline::Model::load(model_path("micro.en-f16"));
  return *m;
}

std::vector<float> audio(const std::string& name) {
  return audio::read_wav_file(conformance_dir() / "audio" / (name + ".wav"));
}

struct Run {
  pipeline::Transcript transcript;
  int decoder_steps = 0;
};

Run transcribe(std::span<const float> samples, bool vad) {
  pipeline::TranscribeOptions o;
  o.decode.sample_len = 8;
  o.temperatures = {0.0f};
  if (vad) o.vad = vad::VadOptions{};
  Run run;
  o.logits_filter = [&](int, std::span<const text::TokenId>, std::span<float>) { ++run.decoder_steps; };
  run.transcript = pipeline::transcribe(model(), samples, o);
  return run;
}

TEST(VadPipeline, SilenceAndNoiseNeedNoDecoding) {
  for (const std::string name : {"silence-5s", "noise-5s"}) {
    SCOPED_TRACE(name);
    const auto with_vad = transcribe(audio(name), true);
    EXPECT_TRUE(with_vad.transcript.segments.empty());
    EXPECT_TRUE(with_vad.transcript.text.empty());
    EXPECT_EQ(with_vad.decoder_steps, 0);
    EXPECT_TRUE(with_vad.transcript.window_seeks.empty()) << "not even the encoder ran";
    EXPECT_DOUBLE_EQ(with_vad.transcript.duration, 5.0);
    // without VAD the same file is decoded (and a random model writes text for it)
    EXPECT_GT(transcribe(audio(name), false).decoder_steps, 0);
  }
}

TEST(VadPipeline, SpeechIsKeptAtItsOriginalTime) {
  // 3 s of silence, jfk, 3 s of silence
  const auto jfk = audio("jfk");
  std::vector<float> padded(3 * 16000, 0.0f);
  padded.insert(padded.end(), jfk.begin(), jfk.end());
  padded.insert(padded.end(), 3 * 16000, 0.0f);
  const auto run = transcribe(padded, true);
  ASSERT_FALSE(run.transcript.segments.empty());
  EXPECT_GT(run.decoder_steps, 0);
  EXPECT_DOUBLE_EQ(run.transcript.duration, 17.0);
  for (const auto& s : run.transcript.segments) {
    // jfk's speech starts 0.3 s into it; the detector pads by 0.4 s at most
    EXPECT_GE(s.start, 2.8) << "segment times are in the original recording";
    EXPECT_LE(s.end, 14.2);
    EXPECT_LE(s.start, s.end);
  }
  for (const std::string name : {"speech-5s", "speech-30s"}) {
    SCOPED_TRACE(name);
    EXPECT_FALSE(transcribe(audio(name), true).transcript.segments.empty()) << "speech keeps its text";
  }
}

}  // namespace
}  // namespace amanuensis::testing

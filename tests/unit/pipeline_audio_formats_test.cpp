// Every common input format decodes to what the 16 kHz WAV gives. Fixtures are made at
// test time from the conformance WAV with the ffmpeg command-line tool.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>

#include "audio/decode.h"
#include "audio/wav.h"
#include "common/error.h"
#include "mel/log_mel.h"
#include "pipeline/transcriber.h"
#include "test_paths.h"

namespace amanuensis::testing {
namespace {

namespace fs = std::filesystem;

fs::path fixture_dir() {
  static const fs::path dir = [] {
    auto d = fs::temp_directory_path() / ("amanuensis-formats-" + std::to_string(::getpid()));
    fs::create_directories(d);
    return d;
  }();
  return dir;
}

int run_ffmpeg(const std::string& args) { return std::system(("ffmpeg -nostdin -loglevel error -y " + args).c_str()); }

std::vector<float> reference_samples() { return audio::read_wav_file(conformance_dir() / "audio" / "jfk.wav"); }

const pipeline::Model& model() {
  static auto m = pipeline::Model::load(model_path("micro.en-f16"));
  return *m;
}

// Mean and max absolute difference of the 30 s log-mel of two recordings.
std::pair<double, double> mel_difference(std::span<const float> a, std::span<const float> b) {
  const auto& filters = model().file().mel_filters();
  auto mel_of = [&](std::span<const float> s) {
    auto cut = s.first(std::min<std::size_t>(s.size(), mel::kChunkSamples));
    return mel::log_mel_spectrogram(cut, filters, 80, mel::kChunkSamples - cut.size()).data;
  };
  const auto ma = mel_of(a), mb = mel_of(b);
  double sum = 0, max = 0;
  for (std::size_t i = 0; i < ma.size(); ++i) {
    const double d = std::abs(ma[i] - mb[i]);
    sum += d;
    max = std::max(max, d);
  }
  return {sum / static_cast<double>(ma.size()), max};
}

std::vector<text::TokenId> transcript_tokens(std::span<const float> samples) {
  pipeline::TranscribeOptions o;
  o.decode.sample_len = 24;
  o.temperatures = {0.0f};
  std::vector<text::TokenId> tokens;
  for (const auto& s : pipeline::transcribe(model(), samples, o).segments) tokens.insert(tokens.end(), s.tokens.begin(), s.tokens.end());
  return tokens;
}

struct Format {
  std::string file;         // fixture name
  std::string ffmpeg_args;  // output options
  bool lossless;
  double max_mean_mel_diff;  // for lossy codecs and resampling: about 3x what was measured
};

void PrintTo(const Format& f, std::ostream* os) { *os << f.file; }

class AudioFormats : public ::testing::TestWithParam<Format> {};

TEST_P(AudioFormats, DecodesLikeTheSixteenKilohertzWav) {
  const auto& f = GetParam();
  const auto path = fixture_dir() / f.file;
  const auto source = conformance_dir() / "audio" / "jfk.wav";
  ASSERT_EQ(run_ffmpeg("-i '" + source.string() + "' " + f.ffmpeg_args + " '" + path.string() + "'"), 0)
      << "ffmpeg could not make the fixture (is the ffmpeg package installed? scripts/setup.sh installs it)";

  const auto expected = reference_samples();
  const auto decoded = audio::load_audio_file(path);
  // codecs add priming/padding samples: the length may differ by a few milliseconds
  EXPECT_NEAR(static_cast<double>(decoded.size()), static_cast<double>(expected.size()), 0.06 * 16000) << f.file;

  const auto [mean_diff, max_diff] = mel_difference(decoded, expected);
  std::printf("[ format ] %-22s samples %zu (wav %zu), log-mel diff mean %.2e max %.3f\n", f.file.c_str(),
              decoded.size(), expected.size(), mean_diff, max_diff);
  if (f.lossless) {
    EXPECT_LE(max_diff, 1e-4) << "a lossless format must give the WAV's mel";
    EXPECT_EQ(transcript_tokens(decoded), transcript_tokens(expected));
  } else {
    EXPECT_LE(mean_diff, f.max_mean_mel_diff);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Decode, AudioFormats,
    ::testing::Values(Format{"jfk.flac", "-c:a flac", true, 0},
                      Format{"jfk-s32.wav", "-c:a pcm_s32le", true, 0},
                      Format{"jfk-f32.wav", "-c:a pcm_f32le", true, 0},
                      Format{"jfk-8k-stereo.wav", "-ar 8000 -ac 2", false, 0.025},
                      Format{"jfk-44k1-stereo.wav", "-ar 44100 -ac 2 -c:a pcm_s24le", false, 1e-4},
                      Format{"jfk.mp3", "-c:a libmp3lame -b:a 128k", false, 0.035},
                      Format{"jfk.ogg", "-c:a libopus -b:a 64k", false, 0.01},
                      Format{"jfk.oga", "-c:a libvorbis -q:a 5", false, 0.025},
                      Format{"jfk.m4a", "-c:a aac -b:a 128k", false, 0.007},
                      Format{"jfk.webm", "-c:a libopus -b:a 64k", false, 0.01},
                      Format{"jfk-video.mp4", "-f lavfi -i color=c=black:s=32x32:r=5:d=11 -map 1:v -map 0:a -c:v mpeg4 -c:a aac -shortest", false, 0.007}),
    [](const auto& info) {
      std::string s = info.param.file;
      for (char& c : s) if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
      return s;
    });

TEST(AudioInput, RejectsEmptyTruncatedAndNonAudio) {
  EXPECT_THROW(audio::decode_audio({}), Error);
  const std::string text = "this is not audio at all, just some text that is long enough to probe";
  EXPECT_THROW(audio::decode_audio(std::as_bytes(std::span(text))), Error);
  // a WAV header that promises data but holds none
  std::ifstream in(conformance_dir() / "audio" / "jfk.wav", std::ios::binary);
  std::vector<char> bytes(std::istreambuf_iterator<char>(in), {});
  bytes.resize(44);
  EXPECT_THROW(audio::decode_audio(std::as_bytes(std::span(bytes))), Error);
  // a truncated mp3 still gives its first part or a clear error, never a crash
  const auto mp3 = fixture_dir() / "cut.mp3";
  ASSERT_EQ(run_ffmpeg("-i '" + (conformance_dir() / "audio" / "jfk.wav").string() + "' -c:a libmp3lame '" + mp3.string() + "'"), 0);
  std::ifstream m(mp3, std::ios::binary);
  std::vector<char> mp3_bytes(std::istreambuf_iterator<char>(m), {});
  mp3_bytes.resize(mp3_bytes.size() / 3);
  try {
    const auto samples = audio::decode_audio(std::as_bytes(std::span(mp3_bytes)));
    EXPECT_GT(samples.size(), 16000u);
    EXPECT_LT(samples.size(), 176000u);
  } catch (const Error&) {
  }
  EXPECT_THROW(audio::load_audio_file("/nonexistent/file.wav"), Error);
  EXPECT_THROW(audio::load_audio_file(conformance_dir()), Error);
}

TEST(AudioInput, RawPcmDownmixesAndResamples) {
  const auto expected = reference_samples();
  // stereo s16 at 16 kHz with identical channels: exactly the mono samples
  std::vector<std::int16_t> stereo;
  for (float v : expected) {
    const auto s = static_cast<std::int16_t>(std::lround(v * 32768.0f));
    stereo.push_back(s);
    stereo.push_back(s);
  }
  const auto mono = audio::decode_raw_pcm(std::as_bytes(std::span(stereo)), audio::PcmFormat::S16, 16000, 2);
  ASSERT_EQ(mono.size(), expected.size());
  for (std::size_t i = 0; i < mono.size(); i += 997) EXPECT_FLOAT_EQ(mono[i], expected[i]);
  // f32 at 48 kHz: resampled to 16 kHz, one third of the samples
  std::vector<float> at48k;
  for (float v : expected)
    for (int k = 0; k < 3; ++k) at48k.push_back(v);
  const auto resampled = audio::decode_raw_pcm(std::as_bytes(std::span(at48k)), audio::PcmFormat::F32, 48000, 1);
  EXPECT_NEAR(static_cast<double>(resampled.size()), static_cast<double>(expected.size()), 64);
  EXPECT_THROW(audio::decode_raw_pcm({}, audio::PcmFormat::S16, 16000, 1), Error);
  EXPECT_THROW(audio::decode_raw_pcm(std::as_bytes(std::span(stereo)), audio::PcmFormat::S16, 10, 1), Error);
}

}  // namespace
}  // namespace amanuensis::testing

// Tests for the FFT and the log-mel frontend: against a naive DFT, against the conformance
// kit's reference mels (numpy float64), and the whole-recording / window behaviour.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <complex>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iostream>
#include <numbers>
#include <random>
#include <string>
#include <vector>

#include "common/error.h"
#include "mel/fft.h"
#include "mel/log_mel.h"
#include "test_paths.h"

namespace amanuensis::mel {
namespace {

constexpr int kMels = 80;

std::vector<char> read_bytes(const std::filesystem::path& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) throw std::runtime_error("cannot open " + path.string());
  return {std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>()};
}

template <typename T>
T read_le(const std::vector<char>& bytes, std::size_t at) {
  T value;
  std::memcpy(&value, bytes.data() + at, sizeof value);  // the test hosts are little-endian
  return value;
}

// The mel filterbank stored in a ggml model header: magic, 11 hparams, n_mel, n_fft, floats.
std::vector<float> load_filters(const std::filesystem::path& path) {
  const auto bytes = read_bytes(path);
  if (read_le<std::uint32_t>(bytes, 0) != 0x67676d6cu) throw std::runtime_error("bad magic in " + path.string());
  const std::size_t at = 4 + 11 * 4;
  const auto n_mel = read_le<std::int32_t>(bytes, at);
  const auto n_fft = read_le<std::int32_t>(bytes, at + 4);
  if (n_mel != kMels || n_fft != kNFreqBins) throw std::runtime_error("unexpected filterbank shape");
  std::vector<float> filters(static_cast<std::size_t>(n_mel) * n_fft);
  std::memcpy(filters.data(), bytes.data() + at + 8, filters.size() * sizeof(float));
  return filters;
}

const std::vector<float>& filters() {
  static const std::vector<float> loaded = load_filters(amanuensis::testing::conformance_dir() / "vocab-en.bin");
  return loaded;
}

std::vector<float> reference_mel(const std::string& audio) {
  const auto bytes = read_bytes(amanuensis::testing::conformance_dir() / "ref" / (audio + ".mel.f32"));
  std::vector<float> mel(bytes.size() / sizeof(float));
  std::memcpy(mel.data(), bytes.data(), mel.size() * sizeof(float));
  return mel;
}

// The kit's 16 kHz mono s16 samples / 32768. A minimal chunk walk instead of audio::read_wav_file,
// because this test links only the mel layer.
std::vector<float> load_audio(const std::string& audio) {
  const auto bytes = read_bytes(amanuensis::testing::conformance_dir() / "audio" / (audio + ".wav"));
  std::size_t at = 12;
  while (std::string(bytes.data() + at, 4) != "data") at += 8 + read_le<std::uint32_t>(bytes, at + 4);
  const auto size = read_le<std::uint32_t>(bytes, at + 4);
  std::vector<float> samples(size / 2);
  for (std::size_t i = 0; i < samples.size(); ++i) samples[i] = read_le<std::int16_t>(bytes, at + 8 + 2 * i) / 32768.0f;
  return samples;
}

LogMel single_window_mel(const std::vector<float>& samples) {
  return log_mel_spectrogram(samples, filters(), kMels, kChunkSamples - samples.size());
}

std::vector<std::complex<double>> naive_dft(const std::vector<double>& x) {
  const std::size_t n = x.size();
  std::vector<std::complex<double>> out(n / 2 + 1);
  for (std::size_t k = 0; k < out.size(); ++k) {
    for (std::size_t j = 0; j < n; ++j) out[k] += x[j] * std::polar(1.0, -2.0 * std::numbers::pi * double(j * k % n) / n);
  }
  return out;
}

// The float32 lane FFT against a float64 DFT, for sizes of every factor mix it takes
// (n / 2 = 2^a 5^b, Whisper's 400 among them); float32 rounding grows with log n.
TEST(RealFft, MatchesNaiveDftInFloat32) {
  std::mt19937 rng(7);
  std::normal_distribution<double> gauss;
  for (std::size_t n : {4u, 8u, 10u, 20u, 40u, 50u, 64u, 100u, 400u, 512u, 1000u}) {
    std::vector<double> x(n);
    for (double& v : x) v = gauss(rng);
    const std::vector<float> frame(x.begin(), x.end());
    const auto fast = real_dft(FftPlan(n), frame);
    const auto slow = naive_dft(std::vector<double>(frame.begin(), frame.end()));
    ASSERT_EQ(fast.size(), slow.size());
    for (std::size_t k = 0; k < slow.size(); ++k) {
      ASSERT_NEAR(std::abs(std::complex<double>(fast[k]) - slow[k]), 0.0, 2e-6 * std::sqrt(double(n)) * std::log2(double(n) + 1))
          << "n=" << n << " k=" << k;
    }
  }
  EXPECT_THROW(FftPlan(6), std::invalid_argument);  // 3 is not a radix of the plan
  EXPECT_THROW(FftPlan(7), std::invalid_argument);
  EXPECT_THROW(FftPlan(2), std::invalid_argument);  // no inner FFT to run
}

class ReferenceMel : public ::testing::TestWithParam<std::string> {};

TEST_P(ReferenceMel, MatchesNumpyFloat64Reference) {
  const auto samples = load_audio(GetParam());
  const LogMel mel = single_window_mel(samples);
  ASSERT_EQ(mel.n_mels, kMels);
  ASSERT_EQ(mel.n_frames, kChunkFrames);
  const auto reference = reference_mel(GetParam());
  ASSERT_EQ(reference.size(), mel.data.size());

  double max_diff = 0.0;
  double sum_diff = 0.0;
  for (std::size_t i = 0; i < reference.size(); ++i) {
    const double diff = std::abs(static_cast<double>(mel.data[i]) - reference[i]);
    max_diff = std::max(max_diff, diff);
    sum_diff += diff;
  }
  const double mean_diff = sum_diff / reference.size();
  std::cout << "[ mel diff ] " << GetParam() << ": max " << max_diff << ", mean " << mean_diff << "\n";
  RecordProperty("max_abs_diff", std::to_string(max_diff));
  RecordProperty("mean_abs_diff", std::to_string(mean_diff));
  EXPECT_LE(max_diff, 1e-4);
}

INSTANTIATE_TEST_SUITE_P(ConformanceAudio, ReferenceMel, ::testing::Values("jfk", "silence-5s", "speech-30s"),
                         [](const auto& info) {
                           std::string name = info.param;
                           std::erase(name, '-');
                           return name;
                         });

TEST(LogMel, WholeRecordingFirstWindowEqualsSingleWindowForShortAudio) {
  const auto samples = load_audio("jfk");
  const LogMel single = single_window_mel(samples);
  const LogMel whole = log_mel_spectrogram(samples, filters(), kMels, kChunkSamples);
  EXPECT_EQ(whole.n_frames, (176000 + kChunkSamples) / kHopLength);

  const auto first = whole.window(0);
  ASSERT_EQ(first.size(), single.data.size());
  double max_diff = 0.0;
  for (std::size_t i = 0; i < first.size(); ++i) max_diff = std::max(max_diff, double(std::abs(first[i] - single.data[i])));
  EXPECT_LE(max_diff, 1e-6);
  EXPECT_EQ(whole.floor_value, single.floor_value);
}

TEST(LogMel, ZeroAudioFramesAndFramesPastTheEndHoldTheFloorValue) {
  const LogMel mel = log_mel_spectrogram(load_audio("jfk"), filters(), kMels, kChunkSamples);
  // The trailing frames see only appended zeros, so they sit at the clamp.
  for (int band = 0; band < kMels; ++band) ASSERT_EQ(mel.at(band, mel.n_frames - 1), mel.floor_value);

  const int first = mel.n_frames - 1000;
  const auto window = mel.window(first);
  ASSERT_EQ(window.size(), static_cast<std::size_t>(kMels) * kChunkFrames);
  for (int band = 0; band < kMels; ++band) {
    for (int i = 0; i < kChunkFrames; ++i) {
      const float expected = i < 1000 ? mel.at(band, first + i) : mel.floor_value;
      ASSERT_EQ(window[static_cast<std::size_t>(band) * kChunkFrames + i], expected) << band << "," << i;
    }
  }
  for (float v : mel.window(mel.n_frames + 5)) ASSERT_EQ(v, mel.floor_value);
  EXPECT_THROW(mel.window(-1), Error);
}

TEST(LogMel, SilenceIsFlatAtItsFloorValue) {
  const LogMel mel = single_window_mel(load_audio("silence-5s"));
  // log10(1e-10) = -10 everywhere, so nothing is clamped: (-10 + 4) / 4.
  EXPECT_EQ(mel.floor_value, -1.5f);
  for (float v : mel.data) ASSERT_EQ(v, -1.5f);
}

TEST(LogMel, ShortInputsDoNotCrash) {
  for (std::size_t n : {0u, 1u, 2u, 150u, 159u, 160u, 201u, 399u, 400u, 1000u}) {
    std::vector<float> samples(n);
    for (std::size_t i = 0; i < n; ++i) samples[i] = std::sin(0.1f * i);
    const LogMel mel = log_mel_spectrogram(samples, filters(), kMels, 0);
    EXPECT_EQ(mel.n_frames, static_cast<int>(n / kHopLength));
    EXPECT_EQ(mel.data.size(), static_cast<std::size_t>(kMels) * mel.n_frames);
    for (float v : mel.data) ASSERT_TRUE(std::isfinite(v));
  }
}

TEST(LogMel, RejectsFilterbankOfWrongSize) {
  const std::vector<float> samples(1600);
  EXPECT_THROW(log_mel_spectrogram(samples, std::span(filters()).first(100), kMels, 0), Error);
  EXPECT_THROW(log_mel_spectrogram(samples, filters(), 0, 0), Error);
}

}  // namespace
}  // namespace amanuensis::mel

namespace amanuensis::mel {
namespace {

// The streaming spectrogram must give exactly the windows of the whole-recording one.
TEST(StreamingLogMel, WindowsEqualTheFullComputation) {
  std::vector<float> samples(16000 * 75);
  std::uint32_t state = 12345;
  for (std::size_t i = 0; i < samples.size(); ++i) {
    state = state * 1664525u + 1013904223u;
    const float noise = static_cast<float>(state >> 8) / 16777216.0f - 0.5f;
    samples[i] = 0.3f * std::sin(0.01f * static_cast<float>(i)) * (i % 40000 < 20000 ? 1.0f : 0.01f) + 0.05f * noise;
  }
  std::vector<float> filters(80 * kNFreqBins);
  for (int band = 0; band < 80; ++band)
    for (int k = 2 * band; k < 2 * band + 4 && k < kNFreqBins; ++k) filters[band * kNFreqBins + k] = 0.01f;
  const auto full = log_mel_spectrogram(samples, filters, 80, kChunkSamples);
  StreamingLogMel streaming(samples, filters, 80, kChunkSamples);
  ASSERT_EQ(streaming.n_frames(), full.n_frames);
  EXPECT_EQ(streaming.floor_value(), full.floor_value);
  for (int seek : {0, 1234, 3000, 6000, 7499, full.n_frames - 100}) {
    EXPECT_EQ(streaming.window(seek), full.window(seek)) << "window at " << seek;
  }
}

// A recording that exists only as it is read, handed out in pieces of uneven sizes (as a
// decoder hands out frames), counting its passes.
class GeneratedSource final : public SampleSource {
 public:
  explicit GeneratedSource(std::size_t length) : length_(length) {}
  static float sample(std::size_t i) {
    return 0.3f * std::sin(0.013f * static_cast<float>(i)) * (i % 56000 < 30000 ? 1.0f : 0.02f);
  }
  std::size_t read(std::span<float> out) override {
    const std::size_t n = std::min({out.size(), length_ - position_, piece_sizes_[pieces_++ % 3]});
    for (std::size_t i = 0; i < n; ++i) out[i] = sample(position_ + i);
    position_ += n;
    // the contract: fewer than asked only at the end
    if (n < out.size() && position_ < length_) return n + read(out.subspan(n));
    return n;
  }
  void rewind() override {
    position_ = 0;
    ++rewinds;
  }
  int rewinds = 0;

 private:
  std::size_t length_;
  std::size_t position_ = 0;
  std::size_t pieces_ = 0;
  std::size_t piece_sizes_[3] = {1152, 960, 4097};
};

// The windows of a recording read through a source, in pieces, are those of the whole
// recording in memory, asked for forward (the long-form loop) or backward (a rewind).
TEST(StreamingLogMel, WindowsFromASourceEqualTheFullComputation) {
  const std::size_t length = 16000 * 95 + 77;
  std::vector<float> samples(length);
  for (std::size_t i = 0; i < length; ++i) samples[i] = GeneratedSource::sample(i);
  std::vector<float> filters(80 * kNFreqBins);
  for (int band = 0; band < 80; ++band)
    for (int k = 2 * band; k < 2 * band + 4 && k < kNFreqBins; ++k) filters[band * kNFreqBins + k] = 0.01f;
  const auto full = log_mel_spectrogram(samples, filters, 80, kChunkSamples);

  GeneratedSource source(length);
  StreamingLogMel streaming(source, filters, 80, kChunkSamples);
  EXPECT_EQ(streaming.n_samples(), length);
  ASSERT_EQ(streaming.n_frames(), full.n_frames);
  EXPECT_EQ(streaming.floor_value(), full.floor_value);
  const int rewinds_after_scan = source.rewinds;
  for (int seek : {0, 1, 2, 1234, 3000, 3001, 6000, 9499}) {
    EXPECT_EQ(streaming.window(seek), full.window(seek)) << "window at " << seek;
  }
  EXPECT_EQ(source.rewinds, rewinds_after_scan + 1) << "forward windows read the source in one more pass";
  EXPECT_EQ(streaming.window(500), full.window(500)) << "a window before the samples held";
  EXPECT_EQ(source.rewinds, rewinds_after_scan + 2);
  EXPECT_EQ(streaming.window(full.n_frames - 10), full.window(full.n_frames - 10));
}

}  // namespace
}  // namespace amanuensis::mel

// Tests for the voice activity detector: the conformance audio (silence, noise, a tone and
// speech), synthetic buffers (digital silence, faint noise, speech padded with silence, a
// noise burst and a tone between silences, a 2-hour recording), and the stretch logic
// (hysteresis, minimum durations, padding, splitting) on hand-made scores.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iostream>
#include <iterator>
#include <limits>
#include <numbers>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "test_paths.h"
#include "vad/vad.h"
#include "vad/vad_features.h"

namespace amanuensis::vad {
namespace {

constexpr int kRate = 16000;

// A minimal reader for the kit's 16 kHz mono 16-bit PCM WAVs (chunks in any order, as in
// jfk.wav, which has a LIST chunk before `data`); samples as int16 / 32768. Throws on
// anything else.
std::vector<float> read_wav(const std::string& name) {
  const auto path = amanuensis::testing::conformance_dir() / "audio" / name;
  std::ifstream file(path, std::ios::binary);
  if (!file) throw std::runtime_error("cannot open " + path.string());
  const std::vector<char> b{std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>()};
  const auto u16 = [&](std::size_t at) {
    return static_cast<std::uint16_t>(static_cast<unsigned char>(b[at]) | static_cast<unsigned char>(b[at + 1]) << 8);
  };
  const auto u32 = [&](std::size_t at) {
    return static_cast<std::uint32_t>(u16(at)) | static_cast<std::uint32_t>(u16(at + 2)) << 16;
  };
  if (b.size() < 12 || std::memcmp(b.data(), "RIFF", 4) != 0 || std::memcmp(b.data() + 8, "WAVE", 4) != 0)
    throw std::runtime_error(name + ": not a RIFF/WAVE file");
  bool format_ok = false;
  for (std::size_t at = 12; at + 8 <= b.size();) {
    const std::uint32_t size = u32(at + 4);
    const std::size_t body = at + 8;
    if (body + size > b.size()) throw std::runtime_error(name + ": truncated chunk");
    if (std::memcmp(b.data() + at, "fmt ", 4) == 0) {
      format_ok = size >= 16 && u16(body) == 1 && u16(body + 2) == 1 && u32(body + 4) == kRate && u16(body + 14) == 16;
    } else if (std::memcmp(b.data() + at, "data", 4) == 0) {
      if (!format_ok) throw std::runtime_error(name + ": not 16 kHz mono 16-bit PCM");
      std::vector<float> samples(size / 2);
      for (std::size_t i = 0; i < samples.size(); ++i)
        samples[i] = static_cast<float>(static_cast<std::int16_t>(u16(body + 2 * i))) / 32768.0f;
      return samples;
    }
    at = body + size + (size & 1);
  }
  throw std::runtime_error(name + ": no data chunk");
}

std::string describe(const std::vector<SpeechSpan>& spans) {
  std::ostringstream out;
  out.precision(2);
  out << std::fixed;
  if (spans.empty()) out << "(none)";
  for (const auto& s : spans)
    out << "[" << static_cast<double>(s.start) / kRate << ", " << static_cast<double>(s.end) / kRate << ") ";
  return out.str();
}

void report(const std::string& what, const std::vector<SpeechSpan>& spans) {
  std::cout << "[vad] " << what << ": " << describe(spans) << "\n";
}

// Sorted, non-empty, non-overlapping and inside the recording.
void expect_well_formed(const std::vector<SpeechSpan>& spans, std::size_t n_samples) {
  for (std::size_t i = 0; i < spans.size(); ++i) {
    EXPECT_GE(spans[i].start, 0) << describe(spans);
    EXPECT_LT(spans[i].start, spans[i].end) << describe(spans);
    EXPECT_LE(spans[i].end, static_cast<std::int64_t>(n_samples)) << describe(spans);
    if (i > 0) {
      EXPECT_LE(spans[i - 1].end, spans[i].start) << describe(spans);
    }
  }
}

bool covered(const std::vector<SpeechSpan>& spans, std::int64_t sample) {
  for (const auto& s : spans)
    if (sample >= s.start && sample < s.end) return true;
  return false;
}

// Share of the 30 ms frames (10 ms hop) in [from_s, to_s) louder than `db` (mean square,
// full scale = 0 dB) whose centre lies inside a span; -1 when there are none.
double loud_coverage(const std::vector<float>& x, const std::vector<SpeechSpan>& spans, double db, double from_s = 0,
                     double to_s = 1e9) {
  int loud = 0, hit = 0;
  for (std::size_t start = 0; start + 480 <= x.size(); start += 160) {
    const double centre_s = (static_cast<double>(start) + 240) / kRate;
    if (centre_s < from_s || centre_s >= to_s) continue;
    double ms = 0;
    for (std::size_t i = start; i < start + 480; ++i) ms += static_cast<double>(x[i]) * x[i];
    if (10 * std::log10(ms / 480 + 1e-30) <= db) continue;
    ++loud;
    hit += covered(spans, static_cast<std::int64_t>(start) + 240);
  }
  return loud == 0 ? -1 : static_cast<double>(hit) / loud;
}

// Share of [from_s, to_s) that lies inside spans.
double time_coverage(const std::vector<SpeechSpan>& spans, double from_s, double to_s) {
  const auto from = static_cast<std::int64_t>(from_s * kRate), to = static_cast<std::int64_t>(to_s * kRate);
  std::int64_t inside = 0;
  for (const auto& s : spans) inside += std::max<std::int64_t>(0, std::min(s.end, to) - std::max(s.start, from));
  return static_cast<double>(inside) / static_cast<double>(to - from);
}

std::vector<float> zeros(double seconds) { return std::vector<float>(static_cast<std::size_t>(seconds * kRate), 0.0f); }

void append(std::vector<float>& to, const std::vector<float>& from, double from_s = 0, double to_s = 1e9) {
  const auto a = static_cast<std::size_t>(from_s * kRate);
  const auto b = std::min(from.size(), static_cast<std::size_t>(to_s * kRate));
  to.insert(to.end(), from.begin() + static_cast<std::ptrdiff_t>(a), from.begin() + static_cast<std::ptrdiff_t>(b));
}

std::vector<float> gaussian(double seconds, double stddev, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, static_cast<float>(stddev));
  std::vector<float> x(static_cast<std::size_t>(seconds * kRate));
  for (float& v : x) v = dist(rng);
  return x;
}

std::vector<float> sine(double seconds, double hz, double amplitude) {
  std::vector<float> x(static_cast<std::size_t>(seconds * kRate));
  for (std::size_t i = 0; i < x.size(); ++i)
    x[i] = static_cast<float>(amplitude * std::sin(2 * std::numbers::pi * hz * static_cast<double>(i) / kRate));
  return x;
}

// ---- Conformance audio -------------------------------------------------------------

TEST(VadConformance, SilenceFileHasNoSpeech) {
  const auto x = read_wav("silence-5s.wav");
  const auto spans = detect_speech(x);
  report("silence-5s.wav", spans);
  EXPECT_TRUE(spans.empty()) << describe(spans);
}

TEST(VadConformance, JfkKeepsItsSpeech) {
  const auto x = read_wav("jfk.wav");
  const auto spans = detect_speech(x);
  report("jfk.wav", spans);
  ASSERT_FALSE(spans.empty());
  expect_well_formed(spans, x.size());
  EXPECT_GE(loud_coverage(x, spans, -35), 0.85) << describe(spans);
  // Speech runs from about 0.3 s to 10.5 s with pauses of at most 1.1 s, under the
  // default 2 s minimum silence: one stretch, padded.
  EXPECT_LE(spans.front().start, static_cast<std::int64_t>(0.3 * kRate));
  EXPECT_GE(spans.back().end, static_cast<std::int64_t>(10.5 * kRate));
}

TEST(VadConformance, JfkPausesAreSkippedWithShortMinimumSilence) {
  const auto x = read_wav("jfk.wav");
  VadOptions options;
  options.min_silence_duration_ms = 500;
  options.speech_pad_ms = 100;
  const auto spans = detect_speech(x, options);
  report("jfk.wav (min silence 500 ms, pad 100 ms)", spans);
  expect_well_formed(spans, x.size());
  EXPECT_GE(spans.size(), 3u) << describe(spans);
  EXPECT_GE(loud_coverage(x, spans, -35), 0.85) << describe(spans);
  // The middles of the two longest pauses (background noise only).
  EXPECT_FALSE(covered(spans, static_cast<std::int64_t>(2.75 * kRate))) << describe(spans);
  EXPECT_FALSE(covered(spans, static_cast<std::int64_t>(4.9 * kRate))) << describe(spans);
}

TEST(VadConformance, Speech30sStopsWhereTheSpeechDoes) {
  const auto x = read_wav("speech-30s.wav");  // speech until 24.25 s, then zeros
  const auto spans = detect_speech(x);
  report("speech-30s.wav", spans);
  ASSERT_FALSE(spans.empty());
  expect_well_formed(spans, x.size());
  for (const auto& s : spans) EXPECT_LT(s.start, 25 * kRate) << describe(spans);
  EXPECT_LE(spans.back().end, static_cast<std::int64_t>((24.25 + 0.4 + 0.05) * kRate)) << describe(spans);
  EXPECT_GE(loud_coverage(x, spans, -35, 0, 24.25), 0.95) << describe(spans);
  EXPECT_GE(time_coverage(spans, 0.5, 24.0), 0.95) << describe(spans);
}

TEST(VadConformance, SpeechFilesKeepTheirSpeech) {
  for (const char* name : {"speech-1s.wav", "speech-5s.wav", "speech-75s.wav"}) {
    const auto x = read_wav(name);
    const auto spans = detect_speech(x);
    report(name, spans);
    ASSERT_FALSE(spans.empty()) << name;
    expect_well_formed(spans, x.size());
    EXPECT_GE(loud_coverage(x, spans, -35), 0.95) << name << ": " << describe(spans);
  }
}

// White noise (std 0.05) and a 440 Hz sine are steady: nothing rises above the floor they
// set themselves, so neither is speech.
TEST(VadConformance, NoiseAndToneFilesAreNotSpeech) {
  for (const char* name : {"noise-5s.wav", "tone-1s.wav"}) {
    const auto x = read_wav(name);
    const auto spans = detect_speech(x);
    report(name, spans);
    EXPECT_TRUE(spans.empty()) << name << ": " << describe(spans);
  }
}

// ---- Synthetic buffers -------------------------------------------------------------

TEST(VadSynthetic, EmptyAndAllZeroBuffersHaveNoSpeech) {
  EXPECT_TRUE(detect_speech({}).empty());
  EXPECT_TRUE(speech_scores({}).empty());
  for (double seconds : {0.001, 0.25, 3.0, 61.7}) {
    const auto x = zeros(seconds);
    EXPECT_TRUE(detect_speech(x).empty()) << seconds << " s";
    for (float s : speech_scores(x)) ASSERT_EQ(s, 0.0f);
  }
}

TEST(VadSynthetic, FaintNoiseIsNotSpeech) {
  const auto x = gaussian(10, 1e-4, 1);  // -80 dB: dither-level hiss
  const auto spans = detect_speech(x);
  EXPECT_TRUE(spans.empty()) << describe(spans);
  // Even when it is the quietest thing around and comes and goes.
  auto bursts = zeros(2);
  for (int i = 0; i < 5; ++i) {
    append(bursts, gaussian(0.7, 1e-4, 2 + i));
    append(bursts, zeros(0.5));
  }
  EXPECT_TRUE(detect_speech(bursts).empty()) << describe(detect_speech(bursts));
}

// A burst of white noise or a sine far above a quiet background: loud enough, so only the
// spectral shape (noise) and the predictor (sine) keep them out.
TEST(VadSynthetic, NoiseBurstAndToneAreNotSpeech) {
  const auto background = [](unsigned seed) { return gaussian(2, 5e-4, seed); };  // -66 dB
  auto noise = background(10);
  append(noise, gaussian(1, 0.05, 11));
  append(noise, background(12));
  const auto noise_spans = detect_speech(noise);
  report("1 s white noise (std 0.05) over a -66 dB background", noise_spans);
  EXPECT_TRUE(noise_spans.empty()) << describe(noise_spans);

  for (double hz : {200.0, 440.0, 1000.0, 3000.0}) {
    auto tone = background(13);
    auto s = sine(1, hz, 0.5);
    const auto bg = gaussian(1, 5e-4, 14);
    for (std::size_t i = 0; i < s.size(); ++i) s[i] += bg[i];
    append(tone, s);
    append(tone, background(15));
    const auto tone_spans = detect_speech(tone);
    report("1 s " + std::to_string(static_cast<int>(hz)) + " Hz sine over a -66 dB background", tone_spans);
    EXPECT_TRUE(tone_spans.empty()) << hz << " Hz: " << describe(tone_spans);
  }

  // Between digital silences too.
  auto alone = zeros(1);
  append(alone, gaussian(1, 0.05, 16));
  append(alone, zeros(1));
  append(alone, sine(1, 440, 0.5));
  append(alone, zeros(1));
  EXPECT_TRUE(detect_speech(alone).empty()) << describe(detect_speech(alone));
}

TEST(VadSynthetic, SpeechBetweenSilencesStartsAndEndsNearIt) {
  const auto jfk = read_wav("jfk.wav");
  auto x = zeros(3);
  append(x, jfk, 0, 5);  // speech from 0.3 s to about 4.4 s of jfk
  append(x, zeros(3));
  const auto spans = detect_speech(x);
  report("3 s silence + jfk 0-5 s + 3 s silence", spans);
  ASSERT_FALSE(spans.empty());
  expect_well_formed(spans, x.size());
  // The speech starts at 3.3 s, after jfk's own background noise: the span starts within
  // the padding (and a hop or two) before it, not at that noise.
  const double pad = 0.4;
  EXPECT_GE(spans.front().start, static_cast<std::int64_t>((3.3 - pad - 0.05) * kRate)) << describe(spans);
  EXPECT_LE(spans.front().start, static_cast<std::int64_t>(3.3 * kRate)) << describe(spans);
  EXPECT_LE(spans.back().end, static_cast<std::int64_t>(8.0 * kRate)) << describe(spans);
  EXPECT_EQ(time_coverage(spans, 0, 2.5), 0.0) << describe(spans);
  EXPECT_EQ(time_coverage(spans, 8.0, 11.0), 0.0) << describe(spans);
  EXPECT_GE(loud_coverage(x, spans, -35), 0.9) << describe(spans);
}

TEST(VadSynthetic, SpeechInSteadyNoiseIsFound) {
  const auto clean = read_wav("jfk.wav");
  for (double stddev : {0.01, 0.03}) {  // -40 and -30 dB white noise under the whole recording
    auto x = clean;
    const auto noise = gaussian(11, stddev, 4);
    for (std::size_t i = 0; i < x.size(); ++i) x[i] += noise[i];
    VadOptions options;
    options.min_silence_duration_ms = 500;
    options.speech_pad_ms = 100;
    const auto spans = detect_speech(x, options);
    report("jfk + white noise std " + std::to_string(stddev) + " (min silence 500 ms, pad 100 ms)", spans);
    expect_well_formed(spans, x.size());
    EXPECT_GE(loud_coverage(clean, spans, -35), 0.85) << stddev << ": " << describe(spans);
    EXPECT_FALSE(covered(spans, static_cast<std::int64_t>(2.75 * kRate))) << stddev << ": " << describe(spans);
    EXPECT_FALSE(covered(spans, static_cast<std::int64_t>(4.9 * kRate))) << stddev << ": " << describe(spans);
  }
}

// Steady low-frequency noise (which looks voiced to the spectral shape) starting after a
// quiet recording: the floor follows it within seconds, so it is not taken for speech,
// and speech over it is still found.
TEST(VadSynthetic, FloorFollowsAChangeOfBackground) {
  const auto jfk = read_wav("jfk.wav");
  std::mt19937 rng(6);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  double state = 0;
  const auto rumble = [&] {  // white noise through a one-pole low-pass: about -40 dB
    state = 0.9 * state + dist(rng);
    return static_cast<float>(0.015 * state);
  };
  auto x = jfk;
  for (int i = 0; i < 20 * kRate; ++i) x.push_back(rumble());
  for (float v : jfk) x.push_back(v + rumble());
  const auto spans = detect_speech(x);
  report("jfk, 20 s of rumble, jfk over rumble", spans);
  expect_well_formed(spans, x.size());
  EXPECT_EQ(time_coverage(spans, 20, 30), 0.0) << describe(spans);
  EXPECT_GE(loud_coverage(jfk, spans, -35), 0.85) << describe(spans);
  std::vector<SpeechSpan> later;
  for (const auto& s : spans)
    if (s.end > 31 * kRate) later.push_back({s.start - 31 * kRate, s.end - 31 * kRate});
  EXPECT_GE(loud_coverage(jfk, later, -35), 0.85) << describe(spans);
}

TEST(VadSynthetic, ShortPausesMergeLongOnesSplit) {
  const auto jfk = read_wav("jfk.wav");
  auto x = zeros(1);
  append(x, jfk, 0.2, 2.3);  // "And so my fellow Americans"
  append(x, zeros(1.2));
  append(x, jfk, 3.2, 4.5);  // "ask not"
  append(x, zeros(1));
  const auto merged = detect_speech(x);  // 2 s minimum silence: one stretch
  report("two phrases 1.2 s apart, default options", merged);
  EXPECT_EQ(merged.size(), 1u) << describe(merged);
  VadOptions options;
  options.min_silence_duration_ms = 500;
  const auto split = detect_speech(x, options);
  report("two phrases 1.2 s apart, min silence 500 ms", split);
  ASSERT_EQ(split.size(), 2u) << describe(split);
  expect_well_formed(split, x.size());
  // The pause (3.1 s to 4.3 s) is longer than twice the padding: 400 ms on each side.
  EXPECT_LT(split[0].end, static_cast<std::int64_t>(3.7 * kRate));
  EXPECT_GT(split[1].start, static_cast<std::int64_t>(3.7 * kRate));
}

TEST(VadSynthetic, PaddingIsClippedToTheRecording) {
  const auto jfk = read_wav("jfk.wav");
  std::vector<float> x;
  append(x, jfk, 0.33, 2.2 + 37.0 / kRate);  // speech from the first sample to the last;
  ASSERT_NE(x.size() % kHopSamples, 0u);     // not a whole number of hops
  const auto spans = detect_speech(x);
  ASSERT_EQ(spans.size(), 1u) << describe(spans);
  EXPECT_EQ(spans[0].start, 0);
  EXPECT_EQ(spans[0].end, static_cast<std::int64_t>(x.size()));
}

TEST(VadSynthetic, NonFiniteSamplesAreTolerated) {
  auto x = read_wav("jfk.wav");
  x[1000] = std::numeric_limits<float>::quiet_NaN();
  x[50000] = std::numeric_limits<float>::infinity();
  x[90000] = -std::numeric_limits<float>::infinity();
  const auto spans = detect_speech(x);
  expect_well_formed(spans, x.size());
  EXPECT_GE(loud_coverage(read_wav("jfk.wav"), spans, -35), 0.85) << describe(spans);
  for (float s : speech_scores(x)) ASSERT_TRUE(s >= 0 && s <= 1);
}

// The filters run over several stretches of the recording at once; where those stretches
// begin must not matter, nor where the recording is placed (by whole seconds).
TEST(VadSynthetic, ResultDoesNotDependOnPlacement) {
  const auto jfk = read_wav("jfk.wav");
  VadOptions options;
  options.min_silence_duration_ms = 300;
  options.speech_pad_ms = 0;
  auto a = zeros(2);
  append(a, jfk);
  append(a, zeros(2));
  auto b = zeros(37);
  append(b, jfk);
  append(b, zeros(50));
  b.resize(b.size() + 77, 0.0f);
  const auto spans_a = detect_speech(a, options);
  const auto spans_b = detect_speech(b, options);
  report("jfk at 2 s (min silence 300 ms, no pad)", spans_a);
  ASSERT_EQ(spans_a.size(), spans_b.size()) << describe(spans_a) << " vs " << describe(spans_b);
  for (std::size_t i = 0; i < spans_a.size(); ++i) {
    EXPECT_EQ(spans_a[i].start + 35 * kRate, spans_b[i].start);
    EXPECT_EQ(spans_a[i].end + 35 * kRate, spans_b[i].end);
  }
  EXPECT_EQ(detect_speech(b, options).size(), spans_b.size());  // and it is deterministic

  // The features themselves agree (up to rounding) wherever there is sound.
  const auto fa = detail::compute_features(a);
  const auto fb = detail::compute_features(b);
  const std::size_t shift = 35 * kRate / kHopSamples;
  double worst = 0;
  for (std::size_t h = 0; h < fa.band.size(); ++h) {
    if (fa.band[h] < 1e-7f) continue;
    worst = std::max(worst, std::abs(static_cast<double>(fa.band[h]) - fb.band[h + shift]) / fa.band[h]);
    worst = std::max(worst, std::abs(static_cast<double>(fa.high[h]) - fb.high[h + shift]) / (fa.high[h] + 1e-9));
  }
  EXPECT_LT(worst, 1e-4);
}

// Its speed is measured by bench/vad_bench.cpp (Google Benchmark), not asserted here: a
// time limit fails on a loaded machine without any change in the code.
TEST(VadSynthetic, TwoHourRecordingGivesOneSpanPerRepetition) {
  // jfk, 2 s of silence, 2 s of faint noise, repeated for two hours (ten minutes in builds
  // that are not optimised or are instrumented, where two hours would take minutes).
#if defined(NDEBUG) && !defined(__SANITIZE_ADDRESS__)
  constexpr double kSeconds = 7200;
#else
  constexpr double kSeconds = 600;
#endif
  const auto jfk = read_wav("jfk.wav");
  const auto noise = gaussian(2, 0.002, 5);
  std::vector<float> x;
  x.reserve(static_cast<std::size_t>(kSeconds * kRate));
  while (x.size() < static_cast<std::size_t>(kSeconds * kRate)) {
    append(x, jfk);
    append(x, zeros(2));
    append(x, noise);
  }
  x.resize(static_cast<std::size_t>(kSeconds * kRate));
  const auto spans = detect_speech(x);
  expect_well_formed(spans, x.size());
  // One stretch per repetition (jfk padded; the 4 s gap is longer than the 2 s minimum).
  EXPECT_EQ(spans.size(), static_cast<std::size_t>(std::ceil(kSeconds / 15)));
}

// ---- Features -----------------------------------------------------------------------

// The order-2 predictor cancels a 16-bit sine almost entirely but not speech.
TEST(VadFeatures, PredictorGainSeparatesSinesFromSpeech) {
  for (double hz : {200.0, 440.0, 1000.0, 3000.0}) {
    auto x = sine(1, hz, 0.5);
    for (float& v : x) v = std::round(v * 32767.0f) / 32768.0f;
    const auto f = detail::compute_features(x);
    double lowest = 1e9;
    for (std::size_t h = 5; h + 5 < f.lp_gain.size(); ++h) lowest = std::min(lowest, 10 * std::log10(static_cast<double>(f.lp_gain[h])));
    EXPECT_GT(lowest, 60) << hz << " Hz";
  }
  const auto jfk = detail::compute_features(read_wav("jfk.wav"));
  double highest = 0;
  for (std::size_t h = 0; h < jfk.band.size(); ++h)
    if (jfk.band[h] > 1e-4f) highest = std::max(highest, 10 * std::log10(static_cast<double>(jfk.lp_gain[h])));
  EXPECT_GT(highest, 0);
  EXPECT_LT(highest, 40);
}

// ---- Stretch logic on hand-made scores ---------------------------------------------

// Scores from runs of (value, hops).
std::vector<float> runs(std::initializer_list<std::pair<float, int>> parts) {
  std::vector<float> s;
  for (auto [v, n] : parts) s.insert(s.end(), static_cast<std::size_t>(n), v);
  return s;
}

std::vector<SpeechSpan> spans_of(const std::vector<float>& scores, const VadOptions& options,
                                 std::int64_t n_samples = -1) {
  const std::vector<float> energy(scores.size(), 1.0f);
  if (n_samples < 0) n_samples = static_cast<std::int64_t>(scores.size()) * kHopSamples;
  return detail::spans_from_scores(scores, energy, n_samples, options);
}

constexpr std::int64_t hop(std::int64_t h) { return h * kHopSamples; }
constexpr std::int64_t kPad = 400 * kRate / 1000;

TEST(VadStretches, PaddingAndMinimumSilence) {
  const auto scores = runs({{0, 100}, {1, 50}, {0, 100}, {1, 50}, {0, 300}});
  const auto merged = spans_of(scores, {});  // 1 s pause < 2 s minimum silence
  ASSERT_EQ(merged.size(), 1u) << describe(merged);
  EXPECT_EQ(merged[0].start, hop(100) - kPad);
  EXPECT_EQ(merged[0].end, hop(300) + kPad);

  VadOptions options;
  options.min_silence_duration_ms = 500;
  const auto split = spans_of(scores, options);  // 1 s pause >= 2 * 400 ms padding
  ASSERT_EQ(split.size(), 2u) << describe(split);
  EXPECT_EQ(split[0].start, hop(100) - kPad);
  EXPECT_EQ(split[0].end, hop(150) + kPad);
  EXPECT_EQ(split[1].start, hop(250) - kPad);
  EXPECT_EQ(split[1].end, hop(300) + kPad);
}

TEST(VadStretches, CloseNeighboursShareThePause) {
  // A 0.6 s pause with 0.4 s padding: each side gets half, the spans touch, never overlap.
  VadOptions options;
  options.min_silence_duration_ms = 300;
  const auto spans = spans_of(runs({{0, 100}, {1, 50}, {0, 60}, {1, 50}, {0, 300}}), options);
  ASSERT_EQ(spans.size(), 2u) << describe(spans);
  EXPECT_EQ(spans[0].end, hop(180));
  EXPECT_EQ(spans[1].start, hop(180));
}

TEST(VadStretches, PaddingIsClippedAtBothEnds) {
  const auto spans = spans_of(runs({{1, 80}, {0, 10}, {1, 80}}), {}, hop(170) - 37);
  ASSERT_EQ(spans.size(), 1u) << describe(spans);
  EXPECT_EQ(spans[0].start, 0);
  EXPECT_EQ(spans[0].end, hop(170) - 37);

  VadOptions options;
  options.min_silence_duration_ms = 500;
  const auto two = spans_of(runs({{0, 10}, {1, 50}, {0, 200}, {1, 50}, {0, 10}}), options);
  ASSERT_EQ(two.size(), 2u) << describe(two);
  EXPECT_EQ(two.front().start, 0);
  EXPECT_EQ(two.back().end, hop(320));
}

TEST(VadStretches, MinimumSpeechDuration) {
  VadOptions options;
  options.speech_pad_ms = 0;
  EXPECT_TRUE(spans_of(runs({{0, 100}, {1, 20}, {0, 300}}), options).empty());  // 200 ms
  const auto kept = spans_of(runs({{0, 100}, {1, 30}, {0, 300}}), options);      // 300 ms
  ASSERT_EQ(kept.size(), 1u);
  EXPECT_EQ(kept[0].start, hop(100));
  EXPECT_EQ(kept[0].end, hop(130));
}

TEST(VadStretches, Hysteresis) {
  VadOptions options;
  options.speech_pad_ms = 0;
  // Between threshold - 0.15 and threshold: does not start speech ...
  EXPECT_TRUE(spans_of(runs({{0.45f, 500}}), options).empty());
  // ... and does not end it, however long.
  const auto held = spans_of(runs({{0, 10}, {0.9f, 50}, {0.4f, 400}, {0.9f, 50}, {0, 300}}), options);
  ASSERT_EQ(held.size(), 1u) << describe(held);
  EXPECT_EQ(held[0].start, hop(10));
  EXPECT_EQ(held[0].end, hop(510));
  // Just below it ends speech once it lasts the minimum silence.
  const auto ended = spans_of(runs({{0, 10}, {0.9f, 50}, {0.34f, 400}, {0.9f, 50}, {0, 300}}), options);
  EXPECT_EQ(ended.size(), 2u) << describe(ended);
  // A higher threshold ignores what a lower one keeps.
  options.threshold = 0.95;
  EXPECT_TRUE(spans_of(runs({{0, 10}, {0.9f, 50}, {0, 300}}), options).empty());
}

TEST(VadStretches, LongStretchesAreSplitAtTheirQuietestPoint) {
  VadOptions options;
  options.max_speech_duration_s = 30;
  const std::vector<float> scores = runs({{0, 100}, {1, 6000}, {0, 300}});  // 60 s of speech
  std::vector<float> energy(scores.size(), 1.0f);
  for (int h = 2095; h < 2106; ++h) energy[static_cast<std::size_t>(h)] = 1e-4f;  // a breath at 21 s
  const auto n_samples = static_cast<std::int64_t>(scores.size()) * kHopSamples;
  const auto spans = detail::spans_from_scores(scores, energy, n_samples, options);
  ASSERT_GE(spans.size(), 2u) << describe(spans);
  expect_well_formed(spans, static_cast<std::size_t>(n_samples));
  EXPECT_EQ(spans[0].end, hop(2100)) << describe(spans);
  EXPECT_EQ(spans[1].start, hop(2100)) << describe(spans);
  for (const auto& s : spans) EXPECT_LE(s.end - s.start, 30 * kRate) << describe(spans);
  EXPECT_EQ(spans.front().start, hop(100) - kPad);
  EXPECT_EQ(spans.back().end, hop(6100) + kPad);

  // On real speech: every piece within the limit, the speech still covered.
  const auto x = read_wav("speech-75s.wav");
  options.max_speech_duration_s = 10;
  const auto pieces = detect_speech(x, options);
  report("speech-75s.wav (max speech 10 s)", pieces);
  expect_well_formed(pieces, x.size());
  EXPECT_GE(pieces.size(), 7u);
  for (const auto& s : pieces) EXPECT_LE(s.end - s.start, 10 * kRate) << describe(pieces);
  EXPECT_GE(loud_coverage(x, pieces, -35), 0.95) << describe(pieces);
}

}  // namespace
}  // namespace amanuensis::vad

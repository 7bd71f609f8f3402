// Speed of the voice activity detector on a two-hour recording (jfk, 2 s of silence, 2 s
// of faint noise, repeated), the case tests/unit/vad_detect_test.cpp checks for
// correctness. The detector is documented as linear time, about a second of one core for
// two hours; this is where that is measured (a test asserting it failed on loaded machines).
// The kit's jfk.wav is read from AMANUENSIS_SHARED_DIR (../shared by default).
#include <benchmark/benchmark.h>

#include <filesystem>
#include <random>
#include <vector>

#include "audio/wav.h"
#include "vad/vad.h"

namespace {

using namespace amanuensis;

std::vector<float> two_hour_recording(const std::vector<float>& speech) {
  constexpr std::size_t kSamples = 7200u * vad::kSampleRate;
  std::mt19937 rng(5);
  std::normal_distribution<float> dist(0.0f, 0.002f);
  std::vector<float> noise(2u * vad::kSampleRate);
  for (float& v : noise) v = dist(rng);
  const std::vector<float> silence(2u * vad::kSampleRate, 0.0f);
  std::vector<float> x;
  x.reserve(kSamples + speech.size() + silence.size() + noise.size());
  while (x.size() < kSamples) {
    x.insert(x.end(), speech.begin(), speech.end());
    x.insert(x.end(), silence.begin(), silence.end());
    x.insert(x.end(), noise.begin(), noise.end());
  }
  x.resize(kSamples);
  return x;
}

void BM_DetectSpeechTwoHours(benchmark::State& state) {
  const auto jfk = std::filesystem::path(AMANUENSIS_SHARED_DIR) / "conformance" / "audio" / "jfk.wav";
  if (!std::filesystem::exists(jfk)) {
    state.SkipWithError(("no " + jfk.string() + " (the conformance kit)").c_str());
    return;
  }
  const auto x = two_hour_recording(audio::read_wav_file(jfk));
  std::size_t spans = 0;
  for (auto _ : state) {
    const auto found = vad::detect_speech(x);
    spans = found.size();
    benchmark::DoNotOptimize(found.data());
  }
  state.counters["spans"] = static_cast<double>(spans);
  state.counters["audio_s_per_s"] =
      benchmark::Counter(7200.0 * static_cast<double>(state.iterations()), benchmark::Counter::kIsRate);
}
BENCHMARK(BM_DetectSpeechTwoHours)->Unit(benchmark::kMillisecond)->MeasureProcessCPUTime()->UseRealTime();

}  // namespace

BENCHMARK_MAIN();

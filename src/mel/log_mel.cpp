// mel: the log-mel spectrogram (OpenAI Whisper's log_mel_spectrogram; the transform in
// float32 on SIMD lanes, mel/stft.h, as whisper.cpp computes it, within 1e-4 of the
// float64 numpy reference) and the 30 s windows cut from it.
#include "mel/log_mel.h"

#include <algorithm>
#include <array>
#include <climits>
#include <cmath>
#include <complex>
#include <limits>
#include <memory>
#include <numbers>
#include <optional>
#include <string>
#include <thread>

#include "common/error.h"
#include "mel/stft.h"

namespace amanuensis::mel {
namespace {

constexpr double kLogFloor = 1e-10;      // mel power floor before log10
constexpr double kDynamicRangeLog = 8.0;  // values are clamped to global max - 8 (80 dB)
constexpr int kMinFramesPerThread = 1000;
constexpr unsigned kMaxThreads = 8;

std::array<float, kNFft> periodic_hann() {
  std::array<float, kNFft> window{};
  for (int n = 0; n < kNFft; ++n) window[n] = static_cast<float>(0.5 - 0.5 * std::cos(2.0 * std::numbers::pi * n / kNFft));
  return window;
}

std::vector<FilterBand> filter_bands(std::span<const float> filters, int n_mels) {
  std::vector<FilterBand> bands(n_mels);
  for (int band = 0; band < n_mels; ++band) {
    const auto row = filters.subspan(static_cast<std::size_t>(band) * kNFreqBins, kNFreqBins);
    int first = 0;
    int end = kNFreqBins;
    while (first < end && row[first] == 0.0f) ++first;
    while (end > first && row[end - 1] == 0.0f) --end;
    bands[band] = {first, end, row};
  }
  return bands;
}

unsigned thread_count(int n_frames) {
  const unsigned hardware = std::max(1u, std::thread::hardware_concurrency());
  const unsigned useful = static_cast<unsigned>(std::max(1, n_frames / kMinFramesPerThread));
  return std::min({hardware, useful, kMaxThreads});
}

// Computes frames [offset, offset + n_frames) into a [band][n_frames] block (split over
// threads by contiguous frame ranges, each writing only its own columns) and returns the
// maximum of the log values.
double compute_log_mel(const Frontend& frontend, int offset, int n_frames, std::span<float> data) {
  const unsigned n_threads = thread_count(n_frames);
  std::vector<double> maxima(n_threads, -std::numeric_limits<double>::infinity());
  {
    std::vector<std::jthread> workers;
    for (unsigned t = 1; t < n_threads; ++t) {
      const int first = static_cast<int>(static_cast<long long>(n_frames) * t / n_threads);
      const int last = static_cast<int>(static_cast<long long>(n_frames) * (t + 1) / n_threads);
      workers.emplace_back([&, t, first, last] { maxima[t] = log_mel_columns(frontend, offset, first, last, n_frames, data); });
    }
    maxima[0] = log_mel_columns(frontend, offset, 0, static_cast<int>(n_frames / n_threads), n_frames, data);
  }  // joins the workers
  return *std::max_element(maxima.begin(), maxima.end());
}

void check_length(std::size_t total) {
  if (total / kHopLength > static_cast<std::size_t>(INT_MAX)) {
    throw Error("log-mel: the audio is too long (" + std::to_string(total) + " samples)");
  }
}

void validate(std::span<const float> filters, int n_mels, std::size_t total) {
  if (n_mels <= 0) throw Error("log-mel: the number of mel bands must be positive, got " + std::to_string(n_mels));
  if (filters.size() != static_cast<std::size_t>(n_mels) * kNFreqBins) {
    throw Error("log-mel: the mel filterbank has " + std::to_string(filters.size()) + " values, expected " +
                std::to_string(n_mels) + " x " + std::to_string(kNFreqBins) + " (is the model file damaged?)");
  }
  check_length(total);
}

}  // namespace

LogMel log_mel_spectrogram(std::span<const float> samples, std::span<const float> filters, int n_mels,
                           std::size_t padding_samples) {
  const std::size_t total = samples.size() + padding_samples;
  validate(filters, n_mels, total);

  LogMel mel;
  mel.n_mels = n_mels;
  // torch.stft gives total / hop + 1 frames; Whisper drops the last one.
  mel.n_frames = static_cast<int>(total / kHopLength);
  mel.data.resize(static_cast<std::size_t>(n_mels) * mel.n_frames);

  Frontend frontend{samples, total, periodic_hann(), filter_bands(filters, n_mels)};
  const double global_max = mel.n_frames > 0 ? compute_log_mel(frontend, 0, mel.n_frames, mel.data) : std::log10(kLogFloor);

  const double clamp = global_max - kDynamicRangeLog;
  for (float& value : mel.data) value = static_cast<float>((std::max<double>(value, clamp) + 4.0) / 4.0);
  // Zero audio has mel energy 0 -> log10 floor -> clamped; for near-silent input the clamp
  // lies below the log floor itself.
  mel.floor_value = static_cast<float>((std::max(clamp, std::log10(kLogFloor)) + 4.0) / 4.0);
  return mel;
}

// The stretch of the recording that the window being computed reads, and the source it
// comes from.
struct StreamingLogMel::State {
  SampleSource* source = nullptr;
  std::optional<SpanSource> owned;  // for the constructor over samples in memory
  Frontend frontend;                // its samples view `held`
  std::size_t padding = 0;
  std::vector<float> held;
  std::size_t held_base = 0;  // recording index of held[0]
  bool exhausted = false;     // the source has no more samples

  std::size_t held_end() const { return held_base + held.size(); }

  // Back to the recording's first sample, holding nothing.
  void restart() {
    source->rewind();
    held.clear();
    held_base = 0;
    exhausted = false;
  }

  // Makes `held` cover [lo, hi) of the recording, or [lo, its end) when it ends sooner.
  void hold(std::size_t lo, std::size_t hi) {
    if (lo < held_base) restart();
    for (;;) {
      const std::size_t drop = std::min(lo - held_base, held.size());
      held.erase(held.begin(), held.begin() + static_cast<std::ptrdiff_t>(drop));
      held_base += drop;
      if (exhausted || (held_base >= lo && held_end() >= hi)) break;
      constexpr std::size_t kBlock = 1 << 16;
      const std::size_t want = std::min(kBlock, hi - held_end());
      const std::size_t before = held.size();
      held.resize(before + want);
      const std::size_t got = source->read(std::span(held).subspan(before));
      held.resize(before + got);
      exhausted = got < want;
    }
    frontend.samples = held;
    frontend.base = held_base;
  }
};

namespace {
// The samples frames [first, first + count) read: 200 on either side of their hops.
std::size_t first_sample_of(int first_frame) {
  return static_cast<std::size_t>(std::max<long long>(0, static_cast<long long>(first_frame) * kHopLength - kNFft / 2));
}
std::size_t end_sample_of(int first_frame, int count) {
  return static_cast<std::size_t>(static_cast<long long>(first_frame + count) * kHopLength + kNFft / 2);
}
}  // namespace

StreamingLogMel::StreamingLogMel(SampleSource& source, std::span<const float> filters, int n_mels,
                                 std::size_t padding_samples)
    : state_(std::make_unique<State>()), n_mels_(n_mels) {
  validate(filters, n_mels, padding_samples);
  state_->source = &source;
  state_->frontend = Frontend{{}, 0, periodic_hann(), filter_bands(filters, n_mels)};
  state_->padding = padding_samples;
  scan_for_maximum();
}

StreamingLogMel::StreamingLogMel(std::span<const float> samples, std::span<const float> filters, int n_mels,
                                 std::size_t padding_samples)
    : state_(std::make_unique<State>()), n_mels_(n_mels) {
  validate(filters, n_mels, samples.size() + padding_samples);
  state_->owned.emplace(samples);
  state_->source = &*state_->owned;
  state_->frontend = Frontend{{}, 0, periodic_hann(), filter_bands(filters, n_mels)};
  state_->padding = padding_samples;
  scan_for_maximum();
}

StreamingLogMel::~StreamingLogMel() = default;
StreamingLogMel::StreamingLogMel(StreamingLogMel&&) noexcept = default;
StreamingLogMel& StreamingLogMel::operator=(StreamingLogMel&&) noexcept = default;

// The first pass: the maximum over the whole recording, one window's worth of frames at a
// time, learning the recording's length on the way (a decoder knows it only at the end).
void StreamingLogMel::scan_for_maximum() {
  State& s = *state_;
  s.restart();
  double global_max = std::log10(kLogFloor);
  std::vector<float> scratch(static_cast<std::size_t>(n_mels_) * kChunkFrames);
  for (int first = 0;; first += kChunkFrames) {
    s.hold(first_sample_of(first), end_sample_of(first, kChunkFrames));
    // Until the end is seen, the frames computed here read only held samples, so any total
    // past them gives the same values.
    const std::size_t total = s.held_end() + s.padding;
    check_length(total);
    s.frontend.total = total;
    const int frames = static_cast<int>(total / kHopLength);
    if (s.exhausted) n_frames_ = frames;
    if (first >= frames) break;
    const int count = std::min(kChunkFrames, frames - first);
    global_max = std::max(global_max, compute_log_mel(s.frontend, first, count, scratch));
  }
  n_samples_ = s.held_end();
  clamp_ = global_max - kDynamicRangeLog;
  floor_value_ = static_cast<float>((std::max(clamp_, std::log10(kLogFloor)) + 4.0) / 4.0);
}

std::vector<float> StreamingLogMel::window(int first_frame) {
  if (first_frame < 0) throw Error("log-mel: window start must not be negative, got " + std::to_string(first_frame));
  std::vector<float> out(static_cast<std::size_t>(n_mels_) * kChunkFrames, floor_value_);
  const int available = std::clamp(n_frames_ - first_frame, 0, kChunkFrames);
  if (available == 0) return out;
  State& s = *state_;
  s.hold(std::min(first_sample_of(first_frame), n_samples_), std::min(end_sample_of(first_frame, available), n_samples_));
  std::vector<float> block(static_cast<std::size_t>(n_mels_) * available);
  compute_log_mel(s.frontend, first_frame, available, block);
  for (int band = 0; band < n_mels_; ++band) {
    for (int i = 0; i < available; ++i) {
      const double v = block[static_cast<std::size_t>(band) * available + i];
      out[static_cast<std::size_t>(band) * kChunkFrames + i] = static_cast<float>((std::max(v, clamp_) + 4.0) / 4.0);
    }
  }
  return out;
}

std::vector<float> LogMel::window(int first_frame) const {
  if (first_frame < 0) throw Error("log-mel: window start must not be negative, got " + std::to_string(first_frame));
  std::vector<float> out(static_cast<std::size_t>(n_mels) * kChunkFrames, floor_value);
  const int available = std::clamp(n_frames - first_frame, 0, kChunkFrames);
  if (available == 0) return out;
  for (int band = 0; band < n_mels; ++band) {
    const auto source = data.begin() + static_cast<std::ptrdiff_t>(band) * n_frames + first_frame;
    std::copy(source, source + available, out.begin() + static_cast<std::ptrdiff_t>(band) * kChunkFrames);
  }
  return out;
}

}  // namespace amanuensis::mel

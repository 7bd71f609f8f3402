// mel: the log-mel spectrogram (OpenAI Whisper's log_mel_spectrogram, computed in float64
// so it matches the numpy reference) and the 30 s windows cut from it.
#include "mel/log_mel.h"

#include <algorithm>
#include <array>
#include <climits>
#include <cmath>
#include <complex>
#include <limits>
#include <memory>
#include <numbers>
#include <string>
#include <thread>

#include "common/error.h"
#include "mel/fft.h"

namespace amanuensis::mel {
namespace {

constexpr double kLogFloor = 1e-10;      // mel power floor before log10
constexpr double kDynamicRangeLog = 8.0;  // values are clamped to global max - 8 (80 dB)
constexpr int kPad = kNFft / 2;           // reflect padding at both ends (torch.stft center=True)
constexpr int kMinFramesPerThread = 1000;
constexpr unsigned kMaxThreads = 8;

// The range of frequency bins where one mel filter is non-zero. Whisper's filters are
// triangles a few bins wide, so skipping the zeros makes the filterbank ~40x cheaper.
struct FilterBand {
  int first_bin = 0;
  int end_bin = 0;  // exclusive
  std::span<const float> weights;  // all kNFreqBins weights of the band
};

// Everything the per-frame computation reads; shared read-only by the worker threads.
struct Frontend {
  std::span<const float> samples;
  std::size_t total = 0;  // samples.size() + padding
  std::array<double, kNFft> window{};
  std::vector<FilterBand> bands;
  RealFft fft{kNFft};
};

std::array<double, kNFft> periodic_hann() {
  std::array<double, kNFft> window{};
  for (int n = 0; n < kNFft; ++n) window[n] = 0.5 - 0.5 * std::cos(2.0 * std::numbers::pi * n / kNFft);
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

// Sample j of the signal (samples, then zeros up to `total`), reflect-padded: indices
// outside [0, total) mirror without repeating the edge sample, as numpy's "reflect" does
// (repeatedly, for signals shorter than the padding).
double padded_sample(const Frontend& frontend, std::ptrdiff_t j) {
  const auto total = static_cast<std::ptrdiff_t>(frontend.total);
  if (j < 0 || j >= total) {
    if (total == 1) return frontend.samples.empty() ? 0.0 : frontend.samples[0];
    const std::ptrdiff_t period = 2 * (total - 1);
    j %= period;
    if (j < 0) j += period;
    if (j >= total) j = period - j;
  }
  return static_cast<std::size_t>(j) < frontend.samples.size() ? frontend.samples[j] : 0.0;
}

// log10 of the mel energies of one frame, written to data[band * stride + column];
// returns the frame's largest value.
double process_frame(const Frontend& frontend, int frame, int column, int stride, std::span<float> data) {
  std::array<double, kNFft> windowed;
  std::array<std::complex<double>, kNFreqBins> spectrum;
  std::array<double, kNFreqBins> power;

  const std::ptrdiff_t start = static_cast<std::ptrdiff_t>(frame) * kHopLength - kPad;
  const bool inside = start >= 0 && static_cast<std::size_t>(start) + kNFft <= frontend.samples.size();
  for (int n = 0; n < kNFft; ++n) {
    const double x = inside ? frontend.samples[start + n] : padded_sample(frontend, start + n);
    windowed[n] = x * frontend.window[n];
  }
  frontend.fft.forward(windowed, spectrum);
  for (int k = 0; k < kNFreqBins; ++k) power[k] = std::norm(spectrum[k]);

  double frame_max = -std::numeric_limits<double>::infinity();
  for (std::size_t band = 0; band < frontend.bands.size(); ++band) {
    const FilterBand& filter = frontend.bands[band];
    double energy = 0.0;
    for (int k = filter.first_bin; k < filter.end_bin; ++k) energy += filter.weights[k] * power[k];
    const double value = std::log10(std::max(energy, kLogFloor));
    data[band * static_cast<std::size_t>(stride) + column] = static_cast<float>(value);
    frame_max = std::max(frame_max, value);
  }
  return frame_max;
}

// Frames [offset + first, offset + last) into columns [first, last) of a [band][stride] block.
double process_frames(const Frontend& frontend, int offset, int first, int last, int stride, std::span<float> data) {
  double max_value = -std::numeric_limits<double>::infinity();
  for (int column = first; column < last; ++column) {
    max_value = std::max(max_value, process_frame(frontend, offset + column, column, stride, data));
  }
  return max_value;
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
      workers.emplace_back([&, t, first, last] { maxima[t] = process_frames(frontend, offset, first, last, n_frames, data); });
    }
    maxima[0] = process_frames(frontend, offset, 0, static_cast<int>(n_frames / n_threads), n_frames, data);
  }  // joins the workers
  return *std::max_element(maxima.begin(), maxima.end());
}

void validate(std::span<const float> filters, int n_mels, std::size_t total) {
  if (n_mels <= 0) throw Error("log-mel: the number of mel bands must be positive, got " + std::to_string(n_mels));
  if (filters.size() != static_cast<std::size_t>(n_mels) * kNFreqBins) {
    throw Error("log-mel: the mel filterbank has " + std::to_string(filters.size()) + " values, expected " +
                std::to_string(n_mels) + " x " + std::to_string(kNFreqBins) + " (is the model file damaged?)");
  }
  if (total / kHopLength > static_cast<std::size_t>(INT_MAX)) {
    throw Error("log-mel: the audio is too long (" + std::to_string(total) + " samples)");
  }
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

struct StreamingLogMel::State {
  Frontend frontend;
};

StreamingLogMel::StreamingLogMel(std::span<const float> samples, std::span<const float> filters, int n_mels,
                                 std::size_t padding_samples)
    : n_mels_(n_mels) {
  const std::size_t total = samples.size() + padding_samples;
  validate(filters, n_mels, total);
  n_frames_ = static_cast<int>(total / kHopLength);
  state_ = std::make_shared<State>(State{Frontend{samples, total, periodic_hann(), filter_bands(filters, n_mels)}});
  // First pass: the maximum over the whole recording, one window's worth of frames at a time.
  double global_max = std::log10(kLogFloor);
  std::vector<float> scratch(static_cast<std::size_t>(n_mels) * kChunkFrames);
  for (int first = 0; first < n_frames_; first += kChunkFrames) {
    const int count = std::min(kChunkFrames, n_frames_ - first);
    global_max = std::max(global_max, compute_log_mel(state_->frontend, first, count, scratch));
  }
  clamp_ = global_max - kDynamicRangeLog;
  floor_value_ = static_cast<float>((std::max(clamp_, std::log10(kLogFloor)) + 4.0) / 4.0);
}

std::vector<float> StreamingLogMel::window(int first_frame) const {
  if (first_frame < 0) throw Error("log-mel: window start must not be negative, got " + std::to_string(first_frame));
  std::vector<float> out(static_cast<std::size_t>(n_mels_) * kChunkFrames, floor_value_);
  const int available = std::clamp(n_frames_ - first_frame, 0, kChunkFrames);
  if (available == 0) return out;
  std::vector<float> block(static_cast<std::size_t>(n_mels_) * available);
  compute_log_mel(state_->frontend, first_frame, available, block);
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

// mel: OpenAI Whisper's log-mel spectrogram (n_fft 400, hop 160, periodic Hann,
// reflect padding, power spectrum, mel filterbank, log10 floor, clamp to max-8, (x+4)/4).
#pragma once

#include <cstddef>
#include <memory>
#include <span>
#include <vector>

#include "common/sample_source.h"

namespace amanuensis::mel {

inline constexpr int kNFft = 400;
inline constexpr int kHopLength = 160;
inline constexpr int kNFreqBins = kNFft / 2 + 1;  // 201
inline constexpr int kChunkSamples = 480000;      // 30 s at 16 kHz
inline constexpr int kChunkFrames = 3000;         // frames in one 30 s window

// A log-mel spectrogram, row-major [n_mels][n_frames] (all frames of band 0 first).
struct LogMel {
  int n_mels = 0;
  int n_frames = 0;
  std::vector<float> data;

  float at(int band, int frame) const { return data[static_cast<std::size_t>(band) * n_frames + frame]; }
  // Copies frames [first_frame, first_frame + kChunkFrames) into a [n_mels][3000] window;
  // frames past the end are filled with the spectrogram's floor value (the value that
  // zero audio has after clamping); the pipeline never reads that far (it appends 30 s of zeros).
  std::vector<float> window(int first_frame) const;
  float floor_value = 0.0f;
};

// The log-mel of `samples` followed by `padding_samples` zeros, with frames
// n_frames = (samples.size() + padding_samples) / 160, clamped with the maximum over
// the whole spectrogram. `filters` is the model file's [n_mels][201] filterbank.
// With samples of at most 30 s and padding = 480000 - samples.size() this gives exactly
// OpenAI's single-window mel (3000 frames); the transcription pipeline uses padding
// = 480000 (OpenAI's transcribe(): the whole recording with 30 s of zeros appended).
LogMel log_mel_spectrogram(std::span<const float> samples, std::span<const float> filters, int n_mels,
                           std::size_t padding_samples);

// The same spectrogram computed window by window, so a long recording never has its whole
// log-mel, nor its whole audio, in memory: construction reads the source once to its end
// for the global maximum (the clamp needs it) and the length; each window is then computed
// on demand from the stretch of samples around it, reading the source forward again
// (rewinding it when a window lies before the stretch held). Windows equal LogMel::window
// of the full computation. `source` and `filters` must outlive this object.
class StreamingLogMel {
 public:
  StreamingLogMel(SampleSource& source, std::span<const float> filters, int n_mels, std::size_t padding_samples);
  // Over samples in memory, which must outlive this object.
  StreamingLogMel(std::span<const float> samples, std::span<const float> filters, int n_mels,
                  std::size_t padding_samples);
  ~StreamingLogMel();
  StreamingLogMel(StreamingLogMel&&) noexcept;
  StreamingLogMel& operator=(StreamingLogMel&&) noexcept;

  int n_mels() const { return n_mels_; }
  int n_frames() const { return n_frames_; }
  std::size_t n_samples() const { return n_samples_; }  // of the recording, without padding
  float floor_value() const { return floor_value_; }
  std::vector<float> window(int first_frame);  // [n_mels][3000]

 private:
  struct State;
  void scan_for_maximum();
  std::unique_ptr<State> state_;
  int n_mels_ = 0;
  int n_frames_ = 0;
  std::size_t n_samples_ = 0;
  double clamp_ = 0.0;
  float floor_value_ = 0.0f;
};

}  // namespace amanuensis::mel

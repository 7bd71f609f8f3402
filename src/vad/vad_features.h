// vad internals: the per-frame features behind detect_speech(), exposed for tests and for
// tuning. Not part of the stable API.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "vad/vad.h"

namespace amanuensis::vad::detail {

// One entry per 10 ms hop; each describes the 30 ms frame centred on its hop.
struct FrameFeatures {
  std::vector<float> band;       // mean square of the 300-3400 Hz band
  std::vector<float> high;       // mean square above 3400 Hz
  std::vector<float> lp_gain;    // order-2 linear-prediction gain of the band signal, linear
  std::vector<float> band_floor; // noise floor of `band` around the frame (at least -75 dB)
  std::vector<float> high_floor; // noise floor of `high` around the frame (at least -75 dB)
};

FrameFeatures compute_features(std::span<const float> samples);

// Speech score in 0..1 for every hop, from the features.
std::vector<float> scores_from_features(const FrameFeatures& features);

// Hysteresis, minimum durations, splitting of long stretches (at the lowest `band_energy`,
// one value per score) and padding; spans in samples of a recording of `n_samples`.
std::vector<SpeechSpan> spans_from_scores(std::span<const float> scores, std::span<const float> band_energy,
                                          std::int64_t n_samples, const VadOptions& options);

}  // namespace amanuensis::vad::detail

// mel (internal): the short-time Fourier transform and filterbank of the log-mel, in
// float32 with one frame per SIMD lane (16 with AVX-512, 8 with AVX2, else 4), chosen at
// run time from the CPU's features. Every frame goes through the same operations whatever
// its lane or block, so a frame's values do not depend on the frames around it.
#pragma once

#include <array>
#include <cstddef>
#include <span>
#include <vector>

#include "mel/fft.h"
#include "mel/log_mel.h"

namespace amanuensis::mel {

// The range of frequency bins where one mel filter is non-zero. Whisper's filters are
// triangles a few bins wide, so skipping the zeros makes the filterbank ~40x cheaper.
struct FilterBand {
  int first_bin = 0;
  int end_bin = 0;                 // exclusive
  std::span<const float> weights;  // all kNFreqBins weights of the band
};

// Everything the per-frame computation reads; shared read-only by the worker threads.
struct Frontend {
  std::span<const float> samples;  // the recording's samples [base, base + samples.size())
  std::size_t total = 0;  // the recording's length + padding
  std::array<float, kNFft> window{};
  std::vector<FilterBand> bands;
  FftPlan fft{kNFft};
  // Where `samples` starts in the recording: a window of a long recording is computed from
  // the stretch of samples around it alone.
  std::size_t base = 0;
};

// Sample j of the signal (the recording, then zeros up to `total`), reflect-padded as numpy's
// "reflect" does (torch.stft center=True).
float padded_sample(const Frontend& frontend, std::ptrdiff_t j);

// log10 of the mel energies (floored at 1e-10) of frames [offset + first, offset + last),
// written to data[band * stride + column] for column in [first, last); returns their
// largest value.
float log_mel_columns(const Frontend& frontend, int offset, int first, int last, int stride, std::span<float> data);

}  // namespace amanuensis::mel

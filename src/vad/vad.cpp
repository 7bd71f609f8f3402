// Classical voice activity detection (no model file).
//
// One pass of IIR filters over the samples gives, per 10 ms hop, the energy of the speech
// band (300-3400 Hz), the energy above 3400 Hz, and the sums for an order-2 linear
// predictor of the band signal. Each hop is scored from the 30 ms frame centred on it:
//   * level: band energy above a noise floor tracked over the recording (a low percentile
//     of each second's audible frames, then the minimum over +-5 s). Frames below -75 dB
//     (digital silence, dither) are never speech and are left out of the floor, so the
//     floor is the recording's own background noise even next to spliced-in zeros, and
//     steady noise of any level is not speech;
//   * spectral shape: of the energy above the floors, how much lies above 3400 Hz (taking
//     the most voiced-like frame within +-100 ms, so fricatives next to vowels pass); white
//     noise puts most of its energy there, voiced speech little;
//   * tonality: an order-2 linear predictor cancels a pure tone almost entirely (gain above
//     80 dB for a 16-bit sine in the band) but not speech (at most about 35 dB), so a sine
//     is rejected.
// score = level * shape * tone, smoothed over 50 ms. Stretches are then found the way
// Silero VAD's get_speech_timestamps() does (as used by faster-whisper): hysteresis between
// `threshold` and `threshold - 0.15`, minimum speech and silence durations, padding shared
// between close neighbours; stretches over the maximum length are split at their quietest
// point.
//
// Cost: six biquads and four multiply-adds per sample, run on four stretches of the
// recording at once so the recursions overlap; a 2-hour recording takes about 0.7 s of one
// core. Memory: about 100 bytes per 10 ms hop besides the input.
#include "vad/vad.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numbers>

#include "vad/vad_features.h"

namespace amanuensis::vad {
namespace detail {
namespace {

constexpr int kChunkHops = 100;          // noise-floor percentile over 1 s chunks
constexpr int kFloorReachChunks = 5;     // then the minimum over +-5 chunks
constexpr double kFloorPercentile = 0.1;
constexpr std::size_t kMinAudibleHops = 20;
// Mean square (full scale = 1) below which a frame is digital silence: never speech, and
// not part of the noise floor estimate. -75 dB: 16-bit dither and quantization noise lie
// near -100 dB, any microphone's noise well above this.
constexpr double kSilenceLevel = 3.1622776601683795e-8;

// Score = level * shape * tone, each mapped linearly to 0..1 between its zero and zero+span.
constexpr double kLevelZeroDb = 4;       // band energy this far above the floor scores 0 ...
constexpr double kLevelSpanDb = 12;      // ... and 1 at 16 dB (0.5 at 10 dB)
constexpr double kFeatureMinSnrDb = 6;   // shape and tonality are measured above this level only
constexpr std::size_t kShapeReach = 10;  // hops
constexpr double kShapeZeroDb = -2;      // high/band excess energy ratio: >= -2 dB scores 0 ...
constexpr double kShapeSpanDb = 6;       // ... <= -8 dB scores 1 (white noise: about +2 dB)
constexpr std::size_t kToneReach = 3;    // hops
constexpr double kToneZeroDb = 50;       // predictor gain >= 50 dB scores 0 (a clean sine: 80+) ...
constexpr double kToneSpanDb = 10;       // ... <= 40 dB scores 1 (speech: at most about 35)

// Coefficients of a second-order section (a0 = 1), run in transposed direct form II.
struct Biquad {
  double b0 = 1, b1 = 0, b2 = 0, a1 = 0, a2 = 0;
};

// RBJ cookbook low-/high-pass with quality factor q.
Biquad design(bool high_pass, double cutoff_hz, double q) {
  const double w0 = 2 * std::numbers::pi * cutoff_hz / kSampleRate;
  const double c = std::cos(w0);
  const double alpha = std::sin(w0) / (2 * q);
  const double a0 = 1 + alpha;
  Biquad f;
  if (high_pass) {
    f.b0 = (1 + c) / 2 / a0;
    f.b1 = -(1 + c) / a0;
  } else {
    f.b0 = (1 - c) / 2 / a0;
    f.b1 = (1 - c) / a0;
  }
  f.b2 = f.b0;
  f.a1 = -2 * c / a0;
  f.a2 = (1 - alpha) / a0;
  return f;
}

// Fourth-order Butterworth as two sections.
constexpr double kButterQ1 = 0.54119610014619698;
constexpr double kButterQ2 = 1.3065629648763766;

// Noise floor of a per-hop energy track: a low percentile of every 1 s chunk's audible
// frames (those above `silence`; a chunk with fewer than kMinAudibleHops of them says
// nothing), then for each chunk the minimum over its neighbours within kFloorReachChunks,
// never below `silence`. Ignoring digital silence keeps the floor at the recording's own
// background noise when it is spliced with (or padded by) zeros.
std::vector<float> noise_floor(const std::vector<float>& energy, double silence) {
  const std::size_t n = energy.size();
  const std::size_t n_chunks = (n + kChunkHops - 1) / kChunkHops;
  const auto none = std::numeric_limits<float>::infinity();
  std::vector<float> chunk_floor(n_chunks, none);
  std::vector<float> audible;
  for (std::size_t c = 0; c < n_chunks; ++c) {
    audible.clear();
    for (std::size_t i = c * kChunkHops; i < std::min(n, (c + 1) * kChunkHops); ++i)
      if (energy[i] >= silence) audible.push_back(energy[i]);
    if (audible.size() < kMinAudibleHops) continue;
    const auto k = static_cast<std::size_t>(kFloorPercentile * static_cast<double>(audible.size()));
    std::nth_element(audible.begin(), audible.begin() + static_cast<std::ptrdiff_t>(k), audible.end());
    chunk_floor[c] = audible[k];
  }
  std::vector<float> floor(n);
  for (std::size_t c = 0; c < n_chunks; ++c) {
    const std::size_t lo = c >= kFloorReachChunks ? c - kFloorReachChunks : 0;
    const std::size_t hi = std::min(n_chunks, c + kFloorReachChunks + 1);
    float m = none;
    for (std::size_t j = lo; j < hi; ++j) m = std::min(m, chunk_floor[j]);
    m = std::isfinite(m) ? std::max(m, static_cast<float>(silence)) : static_cast<float>(silence);
    for (std::size_t i = c * kChunkHops; i < std::min(n, (c + 1) * kChunkHops); ++i) floor[i] = m;
  }
  return floor;
}

// Per-hop sums of the filtered signals. For the predictor, the covariance-method sums
// c_jk = sum y[t-j] y[t-k] (j, k = 0..2) of the band signal y; c00 is the band energy.
struct HopSums {
  double c00 = 0, high = 0, c01 = 0, c02 = 0, c11 = 0, c12 = 0, c22 = 0;
};

// The filters: 300-3400 Hz band pass (4th-order Butterworth high- and low-pass) and a
// 4th-order Butterworth high-pass at 3400 Hz.
struct FilterBank {
  Biquad s[6] = {design(true, 300, kButterQ1),  design(true, 300, kButterQ2),  design(false, 3400, kButterQ1),
                 design(false, 3400, kButterQ2), design(true, 3400, kButterQ1), design(true, 3400, kButterQ2)};
};

// The filters run over kLanes stretches of whole hops at once, in lock step, so that the
// recursions (latency-bound one at a time) overlap. The lanes are 16-byte vectors (GCC and
// Clang vector extensions: SSE2 on x86-64, NEON on ARM), so the speed does not depend on
// the optimiser vectorising a loop. Each lane starts from rest kWarmupHops before its
// first hop (zeros before the recording), long enough for every filter's start-up
// transient to decay far below its rounding noise: the slowest pole (300 Hz, Q 1.31)
// decays with a time constant of 1.4 ms, the warm-up (70 ms) is 50 of them. The filters
// run in single precision (rounding noise near -140 dB); the sums are kept in double,
// which the predictor's residual of a clean tone needs.
using Float4 = float __attribute__((vector_size(16)));
using Double2 = double __attribute__((vector_size(16)));
constexpr int kLanes = 4;  // one Float4
constexpr std::int64_t kWarmupHops = 7;

struct SectionCoefficients {
  float b0, b1, b2, a1, a2;
};
struct SectionState {
  Float4 z1, z2;
};

// One sample of a second-order section on every lane, transposed direct form II.
inline Float4 section(const SectionCoefficients& c, Float4 x, SectionState& s) {
  const Float4 y = c.b0 * x + s.z1;
  s.z1 = c.b1 * x - c.a1 * y + s.z2;
  s.z2 = c.b2 * x - c.a2 * y;
  return y;
}

// Hops [first_hop[l], first_hop[l] + n_lane_hops) of the first `active` lanes (the others
// compute but store nothing).
void filter_lanes(std::span<const float> samples, const std::int64_t (&first_hop)[kLanes], int active,
                  std::int64_t n_lane_hops, std::vector<HopSums>& out) {
  const FilterBank bank;
  SectionCoefficients c[6];
  for (int k = 0; k < 6; ++k) {
    c[k] = {static_cast<float>(bank.s[k].b0), static_cast<float>(bank.s[k].b1), static_cast<float>(bank.s[k].b2),
            static_cast<float>(bank.s[k].a1), static_cast<float>(bank.s[k].a2)};
  }
  const auto n = static_cast<std::int64_t>(samples.size());
  // Sample t (counted from the lane's first hop) of lane l; zeros outside the recording,
  // and NaN and infinities count as 0.
  const auto input = [&](int l, std::int64_t t) {
    const std::int64_t i = first_hop[l] * kHopSamples + t;
    const float v = (i >= 0 && i < n) ? samples[static_cast<std::size_t>(i)] : 0.0f;
    return std::isfinite(v) ? v : 0.0f;
  };
  SectionState z[6] = {};
  Float4 y1 = {}, y2 = {};  // the last two band samples
  for (std::int64_t hop = -kWarmupHops; hop < n_lane_hops; ++hop) {
    // The sums in double, as two halves (lanes 0-1, lanes 2-3).
    Double2 c00[2] = {}, high[2] = {}, c01[2] = {}, c02[2] = {};
    const Float4 before1 = y1, before2 = y2;  // y[first - 1], y[first - 2]
    // Every hop is whole except perhaps the recording's last, which only the last lane holds.
    const std::int64_t begin = hop * kHopSamples;
    const std::int64_t end = std::min(begin + kHopSamples, n - first_hop[kLanes - 1] * kHopSamples);
    for (std::int64_t t = begin; t < end; ++t) {
      const Float4 x = {input(0, t), input(1, t), input(2, t), input(3, t)};
      // Band: sections 0..3 in series; high: sections 4, 5.
      const Float4 u = section(c[3], section(c[2], section(c[1], section(c[0], x, z[0]), z[1]), z[2]), z[3]);
      const Float4 h = section(c[5], section(c[4], x, z[4]), z[5]);
      const Double2 u_lo = {u[0], u[1]}, u_hi = {u[2], u[3]};
      const Double2 h_lo = {h[0], h[1]}, h_hi = {h[2], h[3]};
      const Double2 p_lo = {y1[0], y1[1]}, p_hi = {y1[2], y1[3]};
      const Double2 q_lo = {y2[0], y2[1]}, q_hi = {y2[2], y2[3]};
      c00[0] += u_lo * u_lo;
      c00[1] += u_hi * u_hi;
      high[0] += h_lo * h_lo;
      high[1] += h_hi * h_hi;
      c01[0] += u_lo * p_lo;
      c01[1] += u_hi * p_hi;
      c02[0] += u_lo * q_lo;
      c02[1] += u_hi * q_hi;
      y2 = y1;
      y1 = u;
    }
    if (hop < 0) continue;  // warming up
    // The lagged sums differ from c00 and c01 only at the ends of the hop.
    for (int l = 0; l < active; ++l) {
      const double last = y1[l], last1 = y2[l], first1 = before1[l], first2 = before2[l];
      HopSums& o = out[static_cast<std::size_t>(first_hop[l] + hop)];
      o.c00 = c00[l / 2][l % 2];
      o.high = high[l / 2][l % 2];
      o.c01 = c01[l / 2][l % 2];
      o.c02 = c02[l / 2][l % 2];
      o.c11 = o.c00 - last * last + first1 * first1;
      o.c22 = o.c11 - last1 * last1 + first2 * first2;
      o.c12 = o.c01 - last * last1 + first1 * first2;
    }
  }
}

// Fills out[h] for every hop. The result depends only on the samples (the split into
// lanes is a function of their number).
void filter_hops(std::span<const float> samples, std::vector<HopSums>& out) {
  const auto n = static_cast<std::int64_t>(samples.size());
  const std::int64_t full_hops = n / kHopSamples;
  const std::int64_t per_lane = full_hops / kLanes;
  std::int64_t first[kLanes];
  if (per_lane > 0) {
    for (int l = 0; l < kLanes; ++l) first[l] = l * per_lane;
    filter_lanes(samples, first, kLanes, per_lane, out);
  }
  // The remaining hops (fewer than kLanes + 1, the last possibly partial) in one lane.
  const std::int64_t done = kLanes * per_lane;
  const auto n_hops = static_cast<std::int64_t>(out.size());
  if (done < n_hops) {
    for (auto& f : first) f = done;
    filter_lanes(samples, first, 1, n_hops - done, out);
  }
}

double clamp01(double v) { return std::clamp(v, 0.0, 1.0); }

}  // namespace

FrameFeatures compute_features(std::span<const float> samples) {
  const std::size_t n = samples.size();
  const std::size_t n_hops = (n + kHopSamples - 1) / kHopSamples;

  std::vector<HopSums> hop(n_hops);
  filter_hops(samples, hop);

  FrameFeatures f;
  f.band.resize(n_hops);
  f.high.resize(n_hops);
  f.lp_gain.resize(n_hops);
  for (std::size_t h = 0; h < n_hops; ++h) {
    const std::size_t lo = h > 0 ? h - 1 : 0;
    const std::size_t hi = std::min(n_hops, h + 2);
    HopSums s;
    for (std::size_t j = lo; j < hi; ++j) {
      s.high += hop[j].high;
      s.c00 += hop[j].c00;
      s.c01 += hop[j].c01;
      s.c02 += hop[j].c02;
      s.c11 += hop[j].c11;
      s.c12 += hop[j].c12;
      s.c22 += hop[j].c22;
    }
    const auto count = static_cast<double>(std::min(n, hi * kHopSamples) - lo * kHopSamples);
    f.band[h] = static_cast<float>(s.c00 / count);
    f.high[h] = static_cast<float>(s.high / count);
    // Least-squares order-2 predictor; gain = energy / residual energy.
    double gain = 1;
    if (s.c00 > 0 && s.c11 > 0 && s.c22 > 0) {
      const double det = s.c11 * s.c22 - s.c12 * s.c12;
      double residual;
      if (det > 1e-9 * s.c11 * s.c22) {
        const double a1 = (s.c01 * s.c22 - s.c02 * s.c12) / det;
        const double a2 = (s.c02 * s.c11 - s.c01 * s.c12) / det;
        residual = s.c00 - a1 * s.c01 - a2 * s.c02;
      } else {
        residual = s.c00 - s.c01 * s.c01 / s.c11;
      }
      gain = s.c00 / std::max(residual, s.c00 * 1e-12);
    }
    f.lp_gain[h] = static_cast<float>(gain);
  }
  f.band_floor = noise_floor(f.band, kSilenceLevel);
  f.high_floor = noise_floor(f.high, kSilenceLevel);
  return f;
}

std::vector<float> scores_from_features(const FrameFeatures& f) {
  const std::size_t n = f.band.size();
  constexpr double kInf = 1e30;
  // Per frame: level above the floor, and (where that is meaningful) the share of the
  // excess energy above 3400 Hz and the predictor gain, both in dB.
  std::vector<double> level(n), ratio_db(n, kInf), gain_db(n, 0);
  for (std::size_t i = 0; i < n; ++i) {
    const double snr_db = 10 * std::log10(std::max<double>(f.band[i], 1e-30) / f.band_floor[i]);
    level[i] = clamp01((snr_db - kLevelZeroDb) / kLevelSpanDb);
    if (snr_db < kFeatureMinSnrDb) continue;
    const double band_excess = std::max<double>(f.band[i] - f.band_floor[i], 0);
    const double high_excess = std::max<double>(f.high[i] - f.high_floor[i], 0);
    ratio_db[i] = 10 * std::log10((high_excess + 1e-30) / (band_excess + 1e-30));
    gain_db[i] = 10 * std::log10(f.lp_gain[i]);
  }
  std::vector<float> raw(n);
  for (std::size_t i = 0; i < n; ++i) {
    if (level[i] <= 0) continue;
    // Spectral shape: the most speech-like (least high-frequency) frame within +-100 ms,
    // so fricatives next to voiced sounds pass but a burst of hiss does not.
    double ratio = kInf;
    for (std::size_t j = i >= kShapeReach ? i - kShapeReach : 0; j < std::min(n, i + kShapeReach + 1); ++j)
      ratio = std::min(ratio, ratio_db[j]);
    const double shape = clamp01((kShapeZeroDb - ratio) / kShapeSpanDb);
    // Tonality: the most predictable frame within +-30 ms, so a tone's onset and end
    // (which the predictor does not follow) are rejected with it.
    double gain = 0;
    for (std::size_t j = i >= kToneReach ? i - kToneReach : 0; j < std::min(n, i + kToneReach + 1); ++j)
      gain = std::max(gain, gain_db[j]);
    const double tone = clamp01((kToneZeroDb - gain) / kToneSpanDb);
    raw[i] = static_cast<float>(level[i] * shape * tone);
  }
  // Smooth over 5 hops (50 ms).
  std::vector<float> out(n);
  for (std::size_t i = 0; i < n; ++i) {
    const std::size_t lo = i >= 2 ? i - 2 : 0;
    const std::size_t hi = std::min(n, i + 3);
    double s = 0;
    for (std::size_t j = lo; j < hi; ++j) s += raw[j];
    out[i] = static_cast<float>(s / static_cast<double>(hi - lo));
  }
  return out;
}

std::vector<SpeechSpan> spans_from_scores(std::span<const float> scores, std::span<const float> band_energy,
                                          std::int64_t n_samples, const VadOptions& options) {
  const auto n = static_cast<std::int64_t>(scores.size());
  const double threshold = options.threshold;
  const double neg_threshold = std::max(threshold - 0.15, 0.01);
  const auto hops = [](double ms) {
    return static_cast<std::int64_t>(std::llround(ms * kSampleRate / 1000.0 / kHopSamples));
  };
  const std::int64_t min_speech = hops(std::max(options.min_speech_duration_ms, 0));
  const std::int64_t min_silence = hops(std::max(options.min_silence_duration_ms, 0));

  // Hysteresis (Silero's get_speech_timestamps without its in-loop max-duration rule).
  std::vector<std::pair<std::int64_t, std::int64_t>> raw;  // [start, end) in hops
  bool triggered = false;
  std::int64_t start = 0, temp_end = -1;
  for (std::int64_t i = 0; i < n; ++i) {
    const double p = scores[static_cast<std::size_t>(i)];
    if (p >= threshold) {
      temp_end = -1;
      if (!triggered) {
        triggered = true;
        start = i;
      }
      continue;
    }
    if (triggered && p < neg_threshold) {
      if (temp_end < 0) temp_end = i;
      if (i - temp_end >= min_silence) {
        if (temp_end - start > min_speech) raw.emplace_back(start, temp_end);
        triggered = false;
        temp_end = -1;
      }
    }
  }
  if (triggered && n - start > min_speech) raw.emplace_back(start, n);

  // Split stretches longer than the limit (less the padding) at their quietest point.
  if (options.max_speech_duration_s > 0) {
    const double limit_samples = options.max_speech_duration_s * kSampleRate;
    double usable = limit_samples - 2.0 * std::max(options.speech_pad_ms, 0) * kSampleRate / 1000.0;
    if (usable < limit_samples / 2) usable = limit_samples / 2;
    const auto max_hops = std::max<std::int64_t>(2, static_cast<std::int64_t>(usable / kHopSamples));
    std::vector<std::pair<std::int64_t, std::int64_t>> split;
    for (auto [s, e] : raw) {
      while (e - s > max_hops) {
        const std::int64_t lo = s + max_hops / 2;
        const std::int64_t hi = std::min(s + max_hops, e - max_hops / 2);
        // Quietest point: lowest mean band energy over the 110 ms around the cut (the
        // latest such point, so pieces stay long).
        std::int64_t best = hi;
        double best_energy = 0;
        for (std::int64_t c = hi; c >= lo; --c) {
          const std::int64_t from = std::max<std::int64_t>(0, c - 5), to = std::min(n, c + 6);
          double energy = 0;
          for (std::int64_t j = from; j < to; ++j) energy += band_energy[static_cast<std::size_t>(j)];
          energy /= static_cast<double>(std::max<std::int64_t>(1, to - from));
          if (c == hi || energy < best_energy) {
            best = c;
            best_energy = energy;
          }
        }
        split.emplace_back(s, best);
        s = best;
      }
      split.emplace_back(s, e);
    }
    raw = std::move(split);
  }

  // To samples, with padding shared between close neighbours (as Silero does).
  std::vector<SpeechSpan> spans;
  spans.reserve(raw.size());
  for (auto [s, e] : raw)
    if (s * kHopSamples < n_samples) spans.push_back({s * kHopSamples, std::min(e * kHopSamples, n_samples)});
  const std::int64_t pad = static_cast<std::int64_t>(std::max(options.speech_pad_ms, 0)) * kSampleRate / 1000;
  for (std::size_t i = 0; i < spans.size(); ++i) {
    if (i == 0) spans[i].start = std::max<std::int64_t>(0, spans[i].start - pad);
    if (i + 1 < spans.size()) {
      const std::int64_t gap = spans[i + 1].start - spans[i].end;
      if (gap < 2 * pad) {
        spans[i].end += gap / 2;
        spans[i + 1].start -= gap - gap / 2;
      } else {
        spans[i].end += pad;
        spans[i + 1].start -= pad;
      }
    } else {
      spans[i].end = std::min(n_samples, spans[i].end + pad);
    }
  }
  return spans;
}

}  // namespace detail

std::vector<SpeechSpan> detect_speech(std::span<const float> samples, const VadOptions& options) {
  const auto features = detail::compute_features(samples);
  const auto scores = detail::scores_from_features(features);
  return detail::spans_from_scores(scores, features.band, static_cast<std::int64_t>(samples.size()), options);
}

std::vector<float> speech_scores(std::span<const float> samples) {
  return detail::scores_from_features(detail::compute_features(samples));
}

}  // namespace amanuensis::vad

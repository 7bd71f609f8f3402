// decoding: the checks OpenAI's transcribe() uses to judge a window's decode: gzip
// compression ratio (repetition), average log-probability, and the no-speech probability,
// and the decisions built on them (temperature fallback, skipping a silent window).
#pragma once

#include <optional>
#include <string_view>

namespace amanuensis::decoding {

// len(text) / len(zlib.compress(text)), as OpenAI computes it (zlib's default level).
double compression_ratio(std::string_view text);

struct QualityThresholds {
  std::optional<double> compression_ratio = 2.4;  // above: too repetitive
  std::optional<double> logprob = -1.0;           // below: too unlikely
  std::optional<double> no_speech = 0.6;          // above (with a low log-probability): silence
};

struct DecodeQuality {
  double compression_ratio = 0.0;
  double avg_logprob = 0.0;
  double no_speech_prob = 0.0;
};

// OpenAI's decode_with_fallback(): retry at the next temperature when the result looks
// repetitive or unlikely, unless the window looks like silence.
bool needs_fallback(const DecodeQuality& q, const QualityThresholds& t);

// OpenAI's transcribe(): a window is silent when the no-speech probability is above its
// threshold, unless the decoded text was likely anyway.
bool is_silent_window(const DecodeQuality& q, const QualityThresholds& t);

}  // namespace amanuensis::decoding

#include "decoding/quality.h"

#include <zlib.h>

#include <vector>

#include "common/error.h"

namespace amanuensis::decoding {

double compression_ratio(std::string_view text) {
  if (text.empty()) return 0.0;
  uLongf size = compressBound(static_cast<uLong>(text.size()));
  std::vector<Bytef> buffer(size);
  if (compress2(buffer.data(), &size, reinterpret_cast<const Bytef*>(text.data()), static_cast<uLong>(text.size()),
                Z_DEFAULT_COMPRESSION) != Z_OK) {
    throw InternalError("zlib compression failed");
  }
  return static_cast<double>(text.size()) / static_cast<double>(size);
}

bool needs_fallback(const DecodeQuality& q, const QualityThresholds& t) {
  bool fallback = false;
  if (t.compression_ratio && q.compression_ratio > *t.compression_ratio) fallback = true;
  if (t.logprob && q.avg_logprob < *t.logprob) fallback = true;
  if (t.no_speech && q.no_speech_prob > *t.no_speech) fallback = false;
  return fallback;
}

bool is_silent_window(const DecodeQuality& q, const QualityThresholds& t) {
  if (!t.no_speech) return false;
  bool silent = q.no_speech_prob > *t.no_speech;
  if (t.logprob && q.avg_logprob > *t.logprob) silent = false;
  return silent;
}

}  // namespace amanuensis::decoding

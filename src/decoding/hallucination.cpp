#include "decoding/hallucination.h"

#include <algorithm>
#include <cmath>
#include <string_view>

namespace amanuensis::decoding {
namespace {

constexpr int kFramesPerSecond = 100;
constexpr std::string_view kPunctuation = "\"'“¿([{-\"'.。,，!！?？:：”)]}、";

bool is_punctuation(const std::string& word) { return kPunctuation.find(word) != std::string_view::npos; }

int frames(double seconds) { return static_cast<int>(std::nearbyint(seconds * kFramesPerSecond)); }

const TimedSegment* next_words_segment(std::span<const TimedSegment> segments) {
  for (const auto& s : segments)
    if (!s.words.empty()) return &s;
  return nullptr;
}

std::optional<double> last_word_end(std::span<const TimedSegment> segments) {
  for (auto it = segments.rbegin(); it != segments.rend(); ++it)
    if (!it->words.empty()) return it->words.back().end;
  return std::nullopt;
}

}  // namespace

double word_anomaly_score(const TimedWord& word) {
  const double duration = word.end - word.start;
  double score = 0.0;
  if (word.probability < 0.15) score += 1.0;
  if (duration < 0.133) score += (0.133 - duration) * 15;
  if (duration > 2.0) score += duration - 2.0;
  return score;
}

bool is_segment_anomaly(const TimedSegment* segment) {
  if (!segment || segment->words.empty()) return false;
  double score = 0.0;
  int counted = 0;
  for (const auto& w : segment->words) {
    if (is_punctuation(w.word)) continue;
    if (counted == 8) break;
    score += word_anomaly_score(w);
    ++counted;
  }
  return score >= 3 || score + 0.01 >= counted;
}

HallucinationDecision apply_hallucination_threshold(std::span<const TimedSegment> segments, const WindowTiming& w,
                                                    int seek, double threshold, double last_speech_timestamp) {
  HallucinationDecision d{seek, segments.size(), false};
  if (!w.single_timestamp_ending) {
    const auto end = last_word_end(segments);
    if (end && *end > w.time_offset) {
      const double remaining = w.window_end - *end;
      d.seek = remaining > threshold ? frames(*end) : w.previous_seek + w.segment_size;
    }
  }

  // a possible hallucination at the start: skip the silence before it
  const TimedSegment* first = next_words_segment(segments);
  if (first && is_segment_anomaly(first)) {
    const double gap = first->start - w.time_offset;
    if (gap > threshold) {
      d.seek = w.previous_seek + frames(gap);
      d.skip_window = true;
      d.keep = 0;
      return d;
    }
  }

  // skip silence before a possible hallucination surrounded by silence or more hallucinations
  double hal_last_end = last_speech_timestamp;
  for (std::size_t i = 0; i < segments.size(); ++i) {
    const auto& segment = segments[i];
    if (segment.words.empty()) continue;
    if (is_segment_anomaly(&segment)) {
      const TimedSegment* next = next_words_segment(segments.subspan(i + 1));
      const double hal_next_start = next ? next->words.front().start : w.time_offset + w.segment_duration;
      const bool silence_before = segment.start - hal_last_end > threshold || segment.start < threshold ||
                                  segment.start - w.time_offset < 2.0;
      const bool silence_after =
          hal_next_start - segment.end > threshold || is_segment_anomaly(next) || w.window_end - segment.end < 2.0;
      if (silence_before && silence_after) {
        d.seek = frames(std::max(w.time_offset + 1, segment.start));
        if (w.content_duration - segment.end < threshold) d.seek = w.content_frames;
        d.keep = i;
        return d;
      }
    }
    hal_last_end = segment.end;
  }
  return d;
}

}  // namespace amanuensis::decoding

// decoding: OpenAI's heuristics for hallucinations in silence (`hallucination_silence_threshold`):
// a segment whose words are improbable, very short or very long is an anomaly, and an
// anomaly surrounded by silence is skipped. Works on word timings (word_timestamps).
#pragma once

#include <optional>
#include <span>
#include <string>
#include <vector>

namespace amanuensis::decoding {

struct TimedWord {
  std::string word;
  double start = 0.0;  // seconds, absolute
  double end = 0.0;
  double probability = 0.0;
};

struct TimedSegment {
  double start = 0.0;
  double end = 0.0;
  std::vector<TimedWord> words;
};

double word_anomaly_score(const TimedWord& word);
// At most the first 8 non-punctuation words are scored; an empty segment is no anomaly.
bool is_segment_anomaly(const TimedSegment* segment);

struct WindowTiming {
  double time_offset = 0.0;       // window start, seconds
  double window_end = 0.0;        // time_offset + decoded window length
  double segment_duration = 0.0;  // seconds of audio in the window
  double content_duration = 0.0;  // seconds of audio in the recording
  int previous_seek = 0;          // frames
  int segment_size = 0;           // frames in the window
  int content_frames = 0;
  bool single_timestamp_ending = false;
};

struct HallucinationDecision {
  int seek = 0;              // where the next window starts (frames)
  std::size_t keep = 0;      // segments of this window to keep (a prefix)
  bool skip_window = false;  // drop every segment of this window
};

// OpenAI transcribe()'s hallucination step for one window, given the window's segments
// (with words) and the end of the last speech before it. `seek` is the seek the window
// would move to without the rule.
HallucinationDecision apply_hallucination_threshold(std::span<const TimedSegment> segments, const WindowTiming& w,
                                                    int seek, double threshold, double last_speech_timestamp);

}  // namespace amanuensis::decoding

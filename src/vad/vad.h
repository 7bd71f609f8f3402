// vad: finds the stretches of a recording that hold speech, with a built-in detector
// that needs no model file, so transcription can skip silence (as faster-whisper does
// with Silero VAD) instead of letting the decoder hallucinate over it.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace amanuensis::vad {

inline constexpr int kSampleRate = 16000;  // detect_speech() expects 16 kHz mono
inline constexpr int kHopSamples = 160;    // one score per 10 ms hop (30 ms analysis frames)

struct VadOptions {
  double threshold = 0.5;             // speech-probability-like score above which a frame is speech
  int min_speech_duration_ms = 250;   // shorter bursts are dropped
  int min_silence_duration_ms = 2000; // shorter pauses do not split speech
  int speech_pad_ms = 400;            // kept around each speech stretch
  double max_speech_duration_s = 0;   // 0: no limit; otherwise long stretches are split
};

// A stretch of speech, in samples of the 16 kHz input: [start, end).
struct SpeechSpan {
  std::int64_t start = 0;
  std::int64_t end = 0;
};

// Speech stretches of `samples` (16 kHz mono), in order, non-overlapping, padded.
// Built in, no model file: a classical detector (speech-band energy above a tracked noise
// floor, spectral shape, tonality; see vad.cpp), then Silero VAD's stretch rules as
// faster-whisper uses them: speech starts where the score reaches `threshold` and ends
// after `min_silence_duration_ms` below `threshold - 0.15`; stretches of at most
// `min_speech_duration_ms` are dropped; each gets `speech_pad_ms` on both sides, clipped
// to the recording, and neighbours closer than twice the padding split the pause between
// them (so one may end exactly where the next starts); with `max_speech_duration_s` set,
// longer stretches are cut at their quietest point so that no span exceeds it. Digital
// silence, faint hiss (below -75 dB), steady noise, white noise and pure tones give no
// spans. Deterministic; linear time (a 2-hour recording in under a second on one core).
std::vector<SpeechSpan> detect_speech(std::span<const float> samples, const VadOptions& options = {});

// The detector's per-hop speech score in 0..1 (hop i covers samples [160 i, 160 i + 160)),
// what `threshold` is compared with. For diagnostics and tuning.
std::vector<float> speech_scores(std::span<const float> samples);

}  // namespace amanuensis::vad

// audio: decoding any common audio container/codec (wav, flac, mp3, ogg/opus, m4a/aac,
// webm, mp4 audio tracks) to the 16 kHz mono float samples Whisper takes, through
// FFmpeg's libraries (libavformat, libavcodec, libswresample).
#pragma once

#include <cstddef>
#include <filesystem>
#include <span>
#include <vector>

#include "common/error.h"

namespace amanuensis::audio {

// What a decode found that the caller may want to tell its user about.
struct DecodeReport {
  // NaN or infinite samples (float WAV/PCM), replaced by silence: one of them would turn
  // every window it touches into NaN logits
  std::size_t non_finite_samples = 0;
};

// What a decode may produce. A small compressed file can hold hours (6 kbit/s Opus of
// silence: 18 h in 25 MB, 1.1 GB as float), so a program taking files from others bounds
// the duration; the bound is checked as the samples are produced, not after.
struct DecodeLimits {
  double max_seconds = 0.0;  // 0: no limit
};

// Thrown when the audio passes DecodeLimits::max_seconds; decoding stops there.
class AudioTooLong : public Error {
 public:
  explicit AudioTooLong(double limit_seconds);
  double limit_seconds;
};

// Decodes an encoded audio file held in memory: the first audio stream, down-mixed and
// resampled to 16 kHz mono. 16 kHz mono 16-bit PCM WAV takes a direct path that gives
// exactly int16 / 32768. Throws amanuensis::Error for empty, truncated or non-audio input,
// and for input whose sizes cannot be held (a header claiming years of audio); AudioTooLong
// past the limits.
std::vector<float> decode_audio(std::span<const std::byte> encoded, DecodeReport* report = nullptr,
                                const DecodeLimits& limits = {});

// Reads and decodes a file; "-" reads standard input.
std::vector<float> load_audio_file(const std::filesystem::path& path, DecodeReport* report = nullptr,
                                   const DecodeLimits& limits = {});

// Raw little-endian PCM (s16 or f32), any rate and channel count, to 16 kHz mono.
enum class PcmFormat { S16, F32 };
std::vector<float> decode_raw_pcm(std::span<const std::byte> bytes, PcmFormat format, int sample_rate, int channels,
                                  DecodeReport* report = nullptr, const DecodeLimits& limits = {});

// Replaces NaN and infinite samples by 0 and returns how many there were.
std::size_t replace_non_finite(std::span<float> samples);

}  // namespace amanuensis::audio

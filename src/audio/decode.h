// audio: decoding any common audio container/codec (wav, flac, mp3, ogg/opus, m4a/aac,
// webm, mp4 audio tracks) to the 16 kHz mono float samples Whisper takes, through
// FFmpeg's libraries (libavformat, libavcodec, libswresample).
#pragma once

#include <cstddef>
#include <filesystem>
#include <memory>
#include <span>
#include <vector>

#include "common/error.h"
#include "common/sample_source.h"

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
  // A reader (open_audio) of compressed audio keeps a file up to this long as float after
  // its first pass (10 min: 38 MB) and reads it from there; a longer one is decoded again
  // at each pass. 0: always decoded again.
  double hold_seconds = 600.0;
};

// Thrown when the audio passes DecodeLimits::max_seconds; decoding stops there.
class AudioTooLong : public Error {
 public:
  explicit AudioTooLong(double limit_seconds);
  double limit_seconds;
};

// An encoded file decoded as it is read: a pass through a long one (past
// DecodeLimits::hold_seconds) decodes it again from its start, so it is never held whole
// as float (the mel frontend reads two passes, the server one more to check the upload
// before it queues it); a shorter one is held after its first pass. The samples are
// those decode_audio gives, NaN and infinite ones already replaced by 0; the limits are
// checked as samples are produced, throwing AudioTooLong.
class AudioReader : public SampleSource {
 public:
  // NaN or infinite samples replaced, the most of any pass so far: after one whole pass,
  // the file's count
  virtual std::size_t non_finite_samples() const = 0;
};

// Opens an encoded file held in memory (what decode_audio takes), throwing Error when it
// is not audio this build can decode. `encoded` must outlive the reader; `owner`, when
// given, is kept by the reader for that.
std::unique_ptr<AudioReader> open_audio(std::span<const std::byte> encoded, const DecodeLimits& limits = {},
                                        std::shared_ptr<const void> owner = {});

// Reads `reader` through once and rewinds it: the number of samples, with the report. Throws
// what decode_audio throws for the same file (an empty, broken or too long one).
std::size_t scan_audio(AudioReader& reader, DecodeReport* report = nullptr);

// Decodes an encoded audio file held in memory: the first audio stream, down-mixed and
// resampled to 16 kHz mono. 16 kHz mono 16-bit PCM WAV takes a direct path that gives
// exactly int16 / 32768. Throws amanuensis::Error for empty, truncated or non-audio input,
// and for input whose sizes cannot be held (a header claiming years of audio); AudioTooLong
// past the limits.
std::vector<float> decode_audio(std::span<const std::byte> encoded, DecodeReport* report = nullptr,
                                const DecodeLimits& limits = {});

// The bytes of a file; "-" reads standard input.
std::vector<std::byte> read_encoded_file(const std::filesystem::path& path);

// Reads and decodes a file; "-" reads standard input. Errors name the file.
std::vector<float> load_audio_file(const std::filesystem::path& path, DecodeReport* report = nullptr,
                                   const DecodeLimits& limits = {});

// Reads a file (as load_audio_file) and opens it (open_audio): a reader over the encoded
// bytes, which it keeps. Errors name the file.
std::unique_ptr<AudioReader> open_audio_file(const std::filesystem::path& path, const DecodeLimits& limits = {});

// A reader over samples already decoded, `non_finite_samples` of which were replaced.
std::unique_ptr<AudioReader> reader_over(std::vector<float> samples, std::size_t non_finite_samples);

// Raw little-endian PCM (s16 or f32), any rate and channel count, to 16 kHz mono.
enum class PcmFormat { S16, F32 };
std::vector<float> decode_raw_pcm(std::span<const std::byte> bytes, PcmFormat format, int sample_rate, int channels,
                                  DecodeReport* report = nullptr, const DecodeLimits& limits = {});

// Replaces NaN and infinite samples by 0 and returns how many there were.
std::size_t replace_non_finite(std::span<float> samples);

}  // namespace amanuensis::audio

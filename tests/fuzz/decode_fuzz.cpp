// Fuzzes the audio decoder's entry point (FFmpeg from memory, and the direct WAV path), as
// the server calls it on an uploaded file: with a duration limit, it returns finite 16 kHz
// samples or throws amanuensis::Error (AudioTooLong included).
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "audio/decode.h"
#include "audio/ffmpeg_log.h"
#include "common/error.h"

// FFmpeg logs a line for nearly every mutated input: dropped, as the server routes them.
extern "C" int LLVMFuzzerInitialize(int*, char***) {
  static amanuensis::audio::FfmpegLogRoute quiet([](std::string_view) {});
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace amanuensis;
  try {
    audio::DecodeReport report;
    audio::DecodeLimits limits;
    limits.max_seconds = 120;
    const auto samples = audio::decode_audio({reinterpret_cast<const std::byte*>(data), size}, &report, limits);
    if (samples.size() > std::size_t{121} * 16000) __builtin_trap();
    for (float s : samples)
      if (!std::isfinite(s)) __builtin_trap();
  } catch (const Error&) {
  }
  return 0;
}

// Fuzzes the audio decoder's entry points (FFmpeg from memory, and the direct WAV path), as
// the server calls them on an uploaded file: with a duration limit, decode_audio returns
// finite 16 kHz samples or throws amanuensis::Error (AudioTooLong included), and a reader
// (open_audio, scan_audio, a second pass) gives exactly the same samples.
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "audio/decode.h"
#include "audio/ffmpeg_log.h"
#include "common/error.h"
#include "common/sample_source.h"

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
    for (const double hold : {0.0, 600.0}) {  // decoded at every pass, and held after the first
      limits.hold_seconds = hold;
      const auto reader = audio::open_audio({reinterpret_cast<const std::byte*>(data), size}, limits);
      if (audio::scan_audio(*reader) != samples.size()) __builtin_trap();
      if (amanuensis::read_remaining(*reader) != samples) __builtin_trap();
    }
  } catch (const Error&) {
  }
  return 0;
}

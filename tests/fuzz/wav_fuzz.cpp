// Fuzzes the direct WAV reader (16 kHz mono 16-bit PCM): it returns samples in [-1, 1) or
// throws amanuensis::Error.
#include <cstddef>
#include <cstdint>

#include "audio/wav.h"
#include "common/error.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace amanuensis;
  try {
    const auto samples = audio::decode_wav({reinterpret_cast<const std::byte*>(data), size});
    if (samples.size() * 2 > size) __builtin_trap();  // two bytes per sample, all from the input
    for (float s : samples)
      if (!(s >= -1.0f && s < 1.0f)) __builtin_trap();
  } catch (const Error&) {
  }
  return 0;
}

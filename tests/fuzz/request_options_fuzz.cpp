// Fuzzes the request-field parser: the input is one field a line, "name=value" (a field
// named "file" is the audio); the form is checked and, when it passes, turned into the
// pipeline's options over the defaults. Anything refused must be a FieldError (or another
// amanuensis::Error), never a crash or a hang.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "server/request_options.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace amanuensis;
  std::string_view input(reinterpret_cast<const char*>(data), size);
  std::vector<server::FormPart> parts;
  while (!input.empty() && parts.size() < 64) {
    const auto eol = input.find('\n');
    const std::string_view line = input.substr(0, eol);
    input.remove_prefix(eol == std::string_view::npos ? input.size() : eol + 1);
    const auto eq = line.find('=');
    server::FormPart part;
    part.name = std::string(line.substr(0, eq));
    part.data = eq == std::string_view::npos ? std::string_view{} : line.substr(eq + 1);
    if (part.name == "file") part.filename = "audio.wav";
    parts.push_back(std::move(part));
  }
  server::RequestLimits limits;
  limits.word_timestamps = size % 2 == 0;
  try {
    const auto request = server::parse_transcription_request(parts, limits);
    pipeline::TranscribeOptions defaults;
    for (bool translate : {false, true}) {
      const auto options = server::transcribe_options(request, translate, defaults, {});
      if (options.temperatures.empty() || options.temperatures.size() > 1000) __builtin_trap();
    }
  } catch (const Error&) {
  }
  return 0;
}

// Fuzzes the multipart/form-data parser. The input is a Content-Type value, a line break,
// then the body; without a usable boundary in the first line the body is parsed with the
// boundary "B". Every part's data must lie inside the body.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "common/error.h"
#include "server/multipart.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace amanuensis;
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  const auto eol = input.find('\n');
  const std::string_view content_type = input.substr(0, eol);
  const std::string_view body = eol == std::string_view::npos ? std::string_view{} : input.substr(eol + 1);
  std::string boundary = "B";
  try {
    if (auto b = server::multipart_boundary(content_type)) boundary = *b;
  } catch (const Error&) {
  }
  try {
    for (const auto& part : server::parse_multipart(body, boundary)) {
      if (part.data.data() < body.data() || part.data.data() + part.data.size() > body.data() + body.size())
        __builtin_trap();
    }
  } catch (const Error&) {
  }
  return 0;
}

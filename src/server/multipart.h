// server: parsing multipart/form-data request bodies (RFC 7578), as OpenAI's audio API
// takes them. Never throws on malformed input other than by amanuensis::Error.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace amanuensis::server {

struct FormPart {
  std::string name;
  std::optional<std::string> filename;  // set for file fields
  std::string content_type;
  std::string_view data;  // points into the parsed body
};

inline constexpr std::size_t kMaxBoundaryLength = 200;

// The boundary parameter of a "multipart/form-data; boundary=..." Content-Type, or nothing
// when the type is another one or has no boundary. Throws amanuensis::Error naming the
// limit for a boundary longer than kMaxBoundaryLength.
std::optional<std::string> multipart_boundary(std::string_view content_type);

// Splits the body into its parts. Throws amanuensis::Error naming the problem when the
// body is not well-formed multipart with this boundary.
std::vector<FormPart> parse_multipart(std::string_view body, std::string_view boundary);

}  // namespace amanuensis::server

#include "server/multipart.h"

#include <algorithm>
#include <cctype>

#include "common/error.h"

namespace amanuensis::server {

namespace {

std::string lower(std::string_view s) {
  std::string out(s);
  for (auto& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) s.remove_suffix(1);
  return s;
}

// Value of parameter `key` in a header value like `form-data; name="file"; filename="a.wav"`.
std::optional<std::string> header_param(std::string_view value, std::string_view key) {
  std::size_t pos = 0;
  while (pos < value.size()) {
    // skip to after the next ';' (the first item is the type itself)
    bool in_quotes = false;
    while (pos < value.size() && (in_quotes || value[pos] != ';')) {
      if (value[pos] == '"') in_quotes = !in_quotes;
      if (in_quotes && value[pos] == '\\') ++pos;
      ++pos;
    }
    if (pos >= value.size()) break;
    ++pos;
    while (pos < value.size() && (value[pos] == ' ' || value[pos] == '\t')) ++pos;
    const auto eq = value.find('=', pos);
    if (eq == std::string_view::npos) break;
    const std::string name = lower(trim(value.substr(pos, eq - pos)));
    pos = eq + 1;
    std::string v;
    if (pos < value.size() && value[pos] == '"') {
      ++pos;
      while (pos < value.size() && value[pos] != '"') {
        if (value[pos] == '\\' && pos + 1 < value.size()) ++pos;
        v += value[pos++];
      }
      if (pos < value.size()) ++pos;  // closing quote
    } else {
      const auto end = value.find(';', pos);
      v = std::string(trim(value.substr(pos, end == std::string_view::npos ? std::string_view::npos : end - pos)));
      pos = end == std::string_view::npos ? value.size() : end;
    }
    if (name == key) return v;
  }
  return std::nullopt;
}

}  // namespace

std::optional<std::string> multipart_boundary(std::string_view content_type) {
  const auto semi = content_type.find(';');
  if (lower(trim(content_type.substr(0, semi))) != "multipart/form-data") return std::nullopt;
  auto b = header_param(content_type, "boundary");
  if (!b || b->empty()) return std::nullopt;
  // RFC 2046 allows 70 characters; clients stay far below 200. A longer one is the form's
  // fault, not a wrong content type, so the error says so.
  if (b->size() > kMaxBoundaryLength)
    throw Error("the multipart boundary is " + std::to_string(b->size()) + " characters long; at most " +
                std::to_string(kMaxBoundaryLength) + " are accepted (RFC 2046 allows 70)");
  return b;
}

std::vector<FormPart> parse_multipart(std::string_view body, std::string_view boundary) {
  const std::string delimiter = "--" + std::string(boundary);
  std::vector<FormPart> parts;
  // The first delimiter may be preceded by a preamble.
  std::size_t pos;
  if (body.substr(0, delimiter.size()) == delimiter) {
    pos = 0;
  } else {
    pos = body.find("\r\n" + delimiter);
    if (pos == std::string_view::npos) throw Error("the multipart body has no part with its boundary");
    pos += 2;
  }
  const std::string next = "\r\n" + delimiter;
  for (;;) {
    pos += delimiter.size();
    if (body.substr(pos, 2) == "--") return parts;  // close delimiter
    // transport padding, then CRLF
    while (pos < body.size() && (body[pos] == ' ' || body[pos] == '\t')) ++pos;
    if (body.substr(pos, 2) != "\r\n") throw Error("malformed multipart body (no line break after a boundary)");
    pos += 2;
    const auto headers_end = body.find("\r\n\r\n", pos - 2);
    if (headers_end == std::string_view::npos) throw Error("malformed multipart body (a part's headers do not end)");
    FormPart part;
    bool has_disposition = false;
    std::string_view headers = headers_end + 2 > pos ? body.substr(pos, headers_end + 2 - pos) : std::string_view{};
    while (!headers.empty()) {
      const auto eol = headers.find("\r\n");
      const auto line = headers.substr(0, eol);
      headers.remove_prefix(eol == std::string_view::npos ? headers.size() : eol + 2);
      const auto colon = line.find(':');
      if (colon == std::string_view::npos) continue;
      const std::string name = lower(trim(line.substr(0, colon)));
      const auto value = trim(line.substr(colon + 1));
      if (name == "content-disposition") {
        has_disposition = true;
        part.name = header_param(value, "name").value_or("");
        part.filename = header_param(value, "filename");
      } else if (name == "content-type") {
        part.content_type = std::string(value);
      }
    }
    if (!has_disposition) throw Error("malformed multipart body (a part has no Content-Disposition)");
    const auto data_begin = headers_end + 4;
    const auto data_end = body.find(next, data_begin);
    if (data_end == std::string_view::npos) throw Error("malformed multipart body (the closing boundary is missing)");
    part.data = body.substr(data_begin, data_end - data_begin);
    parts.push_back(std::move(part));
    pos = data_end + 2;
    if (parts.size() > 1000) throw Error("too many parts in the multipart body");
  }
}

}  // namespace amanuensis::server

// text: GPT-2's pre-tokenizer pattern as a hand-written scanner over UTF-8 characters.
#include "text/pretokenizer.h"

#include <cstddef>
#include <cstdint>
#include <span>
#include <utility>

#include "text/unicode_classes.h"

namespace amanuensis::text {
namespace {

enum class CharClass { Letter, Number, Space, Other };

struct Char {
  std::size_t offset = 0;  // byte offset in the text
  std::size_t size = 0;    // bytes
  char32_t cp = 0;         // code point; invalid bytes get a value no class contains
  CharClass cls = CharClass::Other;
};

constexpr char32_t kInvalid = 0xFFFFFFFF;

// Length of the well-formed UTF-8 sequence at the start of `s` and its code point, or
// {1, kInvalid} (overlong forms, surrogates, values past U+10FFFF, truncated sequences).
std::pair<std::size_t, char32_t> decode_utf8(std::string_view s) {
  const auto byte = [&](std::size_t i) { return static_cast<std::uint8_t>(s[i]); };
  const std::uint8_t b0 = byte(0);
  if (b0 < 0x80) return {1, b0};
  std::size_t len = 0;
  char32_t cp = 0;
  char32_t min = 0;
  if ((b0 & 0xE0) == 0xC0) {
    len = 2, cp = b0 & 0x1F, min = 0x80;
  } else if ((b0 & 0xF0) == 0xE0) {
    len = 3, cp = b0 & 0x0F, min = 0x800;
  } else if ((b0 & 0xF8) == 0xF0) {
    len = 4, cp = b0 & 0x07, min = 0x10000;
  } else {
    return {1, kInvalid};
  }
  if (s.size() < len) return {1, kInvalid};
  for (std::size_t i = 1; i < len; ++i) {
    if ((byte(i) & 0xC0) != 0x80) return {1, kInvalid};
    cp = (cp << 6) | (byte(i) & 0x3F);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return {1, kInvalid};
  return {len, cp};
}

CharClass classify(char32_t cp) {
  if (cp == kInvalid) return CharClass::Other;
  if (is_letter(cp)) return CharClass::Letter;
  if (is_number(cp)) return CharClass::Number;
  if (is_whitespace(cp)) return CharClass::Space;
  return CharClass::Other;
}

std::vector<Char> split_chars(std::string_view text) {
  std::vector<Char> chars;
  chars.reserve(text.size());
  for (std::size_t offset = 0; offset < text.size();) {
    const auto [size, cp] = decode_utf8(text.substr(offset));
    chars.push_back({offset, size, cp, classify(cp)});
    offset += size;
  }
  return chars;
}

// Scans one match at a time, trying the pattern's alternatives in order.
class Scanner {
 public:
  explicit Scanner(std::span<const Char> chars) : chars_(chars) {}

  // Number of characters the match starting at `i` covers (at least 1).
  std::size_t match_length(std::size_t i) const {
    if (std::size_t n = contraction(i)) return n;
    if (std::size_t n = word(i)) return n;
    return whitespace(i);
  }

 private:
  bool is(std::size_t i, char32_t cp) const { return i < chars_.size() && chars_[i].cp == cp; }

  std::size_t run_of(std::size_t i, CharClass cls) const {
    std::size_t end = i;
    while (end < chars_.size() && chars_[end].cls == cls) ++end;
    return end - i;
  }

  // 's|'t|'re|'ve|'m|'ll|'d (lower case only, as in GPT-2)
  std::size_t contraction(std::size_t i) const {
    if (!is(i, U'\'')) return 0;
    for (char32_t c : {U's', U't', U'm', U'd'}) {
      if (is(i + 1, c)) return 2;
    }
    for (auto [a, b] : {std::pair{U'r', U'e'}, {U'v', U'e'}, {U'l', U'l'}}) {
      if (is(i + 1, a) && is(i + 2, b)) return 3;
    }
    return 0;
  }

  // ` ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+`: the optional prefix is U+0020 only.
  std::size_t word(std::size_t i) const {
    const std::size_t start = (is(i, U' ') && i + 1 < chars_.size() &&
                               chars_[i + 1].cls != CharClass::Space)
                                  ? i + 1
                                  : i;
    const CharClass cls = chars_[start].cls;
    if (cls == CharClass::Space) return 0;
    return start - i + run_of(start, cls);
  }

  // `\s+(?!\S)|\s+`: a run of spaces leaves its last one to prefix the next word.
  std::size_t whitespace(std::size_t i) const {
    const std::size_t run = run_of(i, CharClass::Space);
    const bool at_end = i + run == chars_.size();
    return (at_end || run == 1) ? run : run - 1;
  }

  std::span<const Char> chars_;
};

}  // namespace

std::vector<std::string_view> pretokenize(std::string_view text) {
  const std::vector<Char> chars = split_chars(text);
  const Scanner scanner(chars);
  std::vector<std::string_view> pieces;
  for (std::size_t i = 0; i < chars.size();) {
    const std::size_t end = i + scanner.match_length(i);
    const std::size_t first_byte = chars[i].offset;
    const std::size_t end_byte = end < chars.size() ? chars[end].offset : text.size();
    pieces.push_back(text.substr(first_byte, end_byte - first_byte));
    i = end;
  }
  return pieces;
}

}  // namespace amanuensis::text

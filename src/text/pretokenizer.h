// text: GPT-2's pre-tokenizer, the split that comes before BPE.
#pragma once

#include <string_view>
#include <vector>

namespace amanuensis::text {

// Splits `text` the way the pattern
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// does, written out by hand. The pieces are consecutive views into `text` that together
// cover all of it. Bytes that are not valid UTF-8 count as single characters that are
// neither letters, numbers nor space (so arbitrary bytes still round-trip).
std::vector<std::string_view> pretokenize(std::string_view text);

}  // namespace amanuensis::text

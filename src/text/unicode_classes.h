// text: Unicode classes that GPT-2's pre-tokenizer pattern needs (\p{L}, \p{N}, \s).
#pragma once

namespace amanuensis::text {

bool is_letter(char32_t cp);      // \p{L}
bool is_number(char32_t cp);      // \p{N}
bool is_whitespace(char32_t cp);  // \s (Unicode White_Space)

}  // namespace amanuensis::text

// text: Whisper's tokenizer, built from the vocabulary stored in the model file:
// byte-level BPE pieces (already raw bytes), special tokens, languages, timestamps.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace amanuensis::text {

using TokenId = std::int32_t;

// Ids of the special tokens. They depend on the vocabulary kind: English-only (n_vocab
// 51864), multilingual (51865) and large-v3 (51866, one more language).
struct SpecialTokens {
  TokenId eot = 0;            // <|endoftext|>
  TokenId sot = 0;            // <|startoftranscript|>
  TokenId first_language = 0; // <|en|>
  int n_languages = 0;        // 99, or 100 for large-v3
  TokenId translate = 0;
  TokenId transcribe = 0;
  TokenId solm = 0;           // <|startoflm|>
  TokenId prev = 0;           // <|startofprev|>
  TokenId no_speech = 0;      // <|nospeech|>
  TokenId no_timestamps = 0;  // <|notimestamps|>
  TokenId timestamp_begin = 0;  // <|0.00|>; timestamps run to n_vocab - 1, 0.02 s apart
};

class Tokenizer {
 public:
  // `pieces` are the vocabulary entries of the file (ids 0..pieces.size()-1); ids from
  // pieces.size() to n_vocab-1 are special tokens. Throws Error for an n_vocab that
  // matches no known vocabulary layout (less than 51864).
  Tokenizer(std::vector<std::string> pieces, int n_vocab);

  int n_vocab() const;
  bool is_multilingual() const;  // n_vocab >= 51865
  const SpecialTokens& special() const;

  // Raw bytes of a text token ("" for special tokens).
  std::string_view piece(TokenId id) const;
  // Printable form of any token: the piece for text tokens, "<|endoftext|>", "<|en|>",
  // "<|1.24|>" and so on for special ones.
  std::string token_to_string(TokenId id) const;
  // Concatenated bytes of the text tokens; special and timestamp tokens are skipped.
  std::string decode(std::span<const TokenId> tokens) const;

  // Byte-level BPE as tiktoken does it: the text is split with GPT-2's pre-tokenizer
  // pattern, then in each piece the adjacent pair whose merge has the lowest id is merged
  // until no pair is in the vocabulary. Special-token text is not recognised (treated as
  // plain text), as in OpenAI's prompt handling. A byte with no single-byte piece gets
  // the id GPT-2's fixed byte order gives it: some vocabulary files (the conformance kit's
  // vocab-*.bin) store the pieces that are not valid UTF-8 as U+FFFD, so there such bytes,
  // and merges that pass through them, do not round-trip. Files written by today's
  // converter hold raw bytes, and then decode(encode(s)) == s for any bytes s.
  std::vector<TokenId> encode(std::string_view text) const;
  // Id of an exact vocabulary piece, if present (text tokens only; the lowest id where a
  // lossy file repeats a piece).
  std::optional<TokenId> find_piece(std::string_view bytes) const;

  bool is_timestamp(TokenId id) const { return id >= special_.timestamp_begin; }
  bool is_special(TokenId id) const { return id >= special_.eot; }
  double timestamp_seconds(TokenId id) const { return (id - special_.timestamp_begin) * 0.02; }

  // Language codes in OpenAI's order ("en", "zh", ... "yue"); the first n_languages apply.
  std::optional<TokenId> language_token(std::string_view code) const;
  std::string_view language_code(TokenId id) const;  // "" if not a language token
  std::span<const std::string_view> language_codes() const;

  // OpenAI's non_speech_tokens(): symbols and punctuation that are suppressed by the
  // default suppress_tokens "-1" (ids of " -", " '", "♪" pieces etc.).
  std::vector<TokenId> non_speech_tokens() const;

 private:
  int n_vocab_ = 0;
  SpecialTokens special_;
  // The pieces and the map bytes -> id (for BPE merges and find_piece). Immutable and
  // shared, so copies of a Tokenizer are cheap and the map's views stay valid.
  struct PieceIndex;
  std::shared_ptr<const PieceIndex> index_;
};

// OpenAI's name of a language code ("en" -> "english", "yue" -> "cantonese"); "" for a code
// Whisper does not know. Any model's: the codes a given model has are its language_codes().
std::string_view language_name(std::string_view code);

}  // namespace amanuensis::text

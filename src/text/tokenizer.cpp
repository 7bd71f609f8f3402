// text: the tokenizer proper: special-token layout per vocabulary kind, piece lookup,
// tiktoken-exact byte-level BPE, decoding and OpenAI's non-speech token set.
#include "text/tokenizer.h"

#include <algorithm>
#include <array>
#include <cstdio>
#include <functional>
#include <queue>
#include <set>
#include <string>
#include <unordered_map>

#include "common/error.h"
#include "text/pretokenizer.h"

namespace amanuensis::text {
namespace {

constexpr int kEnglishVocab = 51864;
constexpr int kMultilingualVocab = 51865;
constexpr int kLargeV3Vocab = 51866;

// OpenAI's LANGUAGES order: the position is the offset from <|en|>.
constexpr std::array<std::string_view, 100> kLanguageCodes = {
    "en", "zh", "de", "es", "ru", "ko", "fr", "ja", "pt", "tr", "pl", "ca", "nl",  "ar",
    "sv", "it", "id", "hi", "fi", "vi", "he", "uk", "el", "ms", "cs", "ro", "da",  "hu",
    "ta", "no", "th", "ur", "hr", "bg", "lt", "la", "mi", "ml", "cy", "sk", "te",  "fa",
    "lv", "bn", "sr", "az", "sl", "kn", "et", "mk", "br", "eu", "is", "hy", "ne",  "mn",
    "bs", "kk", "sq", "sw", "gl", "mr", "pa", "si", "km", "sn", "yo", "so", "af",  "oc",
    "ka", "be", "tg", "sd", "gu", "am", "yi", "lo", "uz", "fo", "ht", "ps", "tk",  "nn",
    "mt", "sa", "lb", "my", "bo", "tl", "mg", "as", "tt", "haw", "ln", "ha", "ba", "jw",
    "su", "yue",
};

// Their names in the same order, as OpenAI's LANGUAGES has them (what its API reports).
constexpr std::array<std::string_view, 100> kLanguageNames = {
    "english", "chinese", "german", "spanish", "russian", "korean", "french", "japanese", "portuguese",
    "turkish", "polish", "catalan", "dutch", "arabic", "swedish", "italian", "indonesian", "hindi",
    "finnish", "vietnamese", "hebrew", "ukrainian", "greek", "malay", "czech", "romanian", "danish",
    "hungarian", "tamil", "norwegian", "thai", "urdu", "croatian", "bulgarian", "lithuanian", "latin",
    "maori", "malayalam", "welsh", "slovak", "telugu", "persian", "latvian", "bengali", "serbian",
    "azerbaijani", "slovenian", "kannada", "estonian", "macedonian", "breton", "basque", "icelandic",
    "armenian", "nepali", "mongolian", "bosnian", "kazakh", "albanian", "swahili", "galician", "marathi",
    "punjabi", "sinhala", "khmer", "shona", "yoruba", "somali", "afrikaans", "occitan", "georgian",
    "belarusian", "tajik", "sindhi", "gujarati", "amharic", "yiddish", "lao", "uzbek", "faroese",
    "haitian creole", "pashto", "turkmen", "nynorsk", "maltese", "sanskrit", "luxembourgish", "myanmar",
    "tibetan", "tagalog", "malagasy", "assamese", "tatar", "hawaiian", "lingala", "hausa", "bashkir",
    "javanese", "sundanese", "cantonese",
};

// whisper.cpp's rule: English-only vocabularies have no gap after the 50256 BPE pieces,
// multilingual ones start one later, and each token past 51865 is one more language
// (large-v3's "yue") inserted before <|translate|>.
SpecialTokens special_tokens_for(int n_vocab) {
  if (n_vocab < kEnglishVocab || n_vocab > kLargeV3Vocab) {
    throw Error("unsupported vocabulary size n_vocab = " + std::to_string(n_vocab) +
                ": Whisper models have 51864 (English-only), 51865 (multilingual) or "
                "51866 (large-v3) tokens; the model file's header is wrong or this is "
                "not a Whisper model");
  }
  const TokenId multilingual = n_vocab >= kMultilingualVocab ? 1 : 0;
  const TokenId extra_languages = n_vocab - kEnglishVocab - multilingual;
  SpecialTokens s;
  s.eot = 50256 + multilingual;
  s.sot = s.eot + 1;
  s.first_language = s.sot + 1;
  s.translate = 50357 + multilingual + extra_languages;
  s.transcribe = s.translate + 1;
  s.solm = s.translate + 2;
  s.prev = s.translate + 3;
  s.no_speech = s.translate + 4;
  s.no_timestamps = s.translate + 5;
  s.timestamp_begin = s.translate + 6;
  s.n_languages = s.translate - s.first_language;
  return s;
}

// GPT-2's byte order (bytes_to_unicode): the printable bytes first, then the others.
// Ids 0..255 of every Whisper vocabulary are the single bytes in this order.
std::array<TokenId, 256> gpt2_byte_ranks() {
  const auto printable = [](int b) {
    return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
  };
  std::array<TokenId, 256> rank{};
  TokenId next = 0;
  for (int b = 0; b < 256; ++b) {
    if (printable(b)) rank[b] = next++;
  }
  for (int b = 0; b < 256; ++b) {
    if (!printable(b)) rank[b] = next++;
  }
  return rank;
}

// A candidate merge of the adjacent parts [left, mid) and [mid, end) of a word.
struct Merge {
  TokenId rank;
  std::size_t left, mid, end;
  // Lowest rank first, then the leftmost pair, which is the order tiktoken merges in.
  bool operator>(const Merge& o) const {
    return rank != o.rank ? rank > o.rank : left > o.left;
  }
};

std::string timestamp_string(TokenId offset) {
  const int centiseconds = 2 * offset;  // integer arithmetic: no "%.2f" rounding surprises
  char buf[32];
  std::snprintf(buf, sizeof buf, "<|%d.%02d|>", centiseconds / 100, centiseconds % 100);
  return buf;
}

}  // namespace

struct Tokenizer::PieceIndex {
  std::vector<std::string> pieces;
  std::unordered_map<std::string_view, TokenId> ids;  // views into `pieces`
  std::array<TokenId, 256> byte_ids{};                 // -1: no token for that byte

  PieceIndex(std::vector<std::string> vocabulary, TokenId eot) : pieces(std::move(vocabulary)) {
    index_text_pieces(eot);
    assign_byte_ids();
  }

  std::optional<TokenId> find(std::string_view bytes) const {
    const auto it = ids.find(bytes);
    if (it == ids.end()) return std::nullopt;
    return it->second;
  }

  // Appends the BPE tokens of one pre-tokenized piece.
  void bpe(std::string_view word, std::vector<TokenId>& out) const;

 private:
  // Merges the bytes of `word` in rank order; returns where each surviving part ends.
  std::vector<std::size_t> merge_parts(std::string_view word) const;

  // Only text tokens: the English file stores "<|endoftext|>" as its last entry, which
  // must not match user text, and the multilingual file has one empty entry. Where a
  // lossy file repeats a piece, try_emplace keeps the lowest id (the best merge rank).
  void index_text_pieces(TokenId eot) {
    const std::size_t n_text = std::min(pieces.size(), static_cast<std::size_t>(eot));
    ids.reserve(n_text);
    for (std::size_t id = 0; id < n_text; ++id) {
      if (!pieces[id].empty()) ids.try_emplace(pieces[id], static_cast<TokenId>(id));
    }
  }

  // Lossy files (pieces that are not valid UTF-8 stored as U+FFFD) lack half of the byte
  // pieces; those bytes still get their GPT-2 id so that any input can be encoded.
  void assign_byte_ids() {
    const std::array<TokenId, 256> ranks = gpt2_byte_ranks();
    for (int b = 0; b < 256; ++b) {
      const char c = static_cast<char>(b);
      const TokenId fallback =
          ranks[b] < static_cast<TokenId>(pieces.size()) ? ranks[b] : TokenId{-1};
      byte_ids[b] = find(std::string_view(&c, 1)).value_or(fallback);
    }
  }

  TokenId token_of(std::string_view part) const {
    if (part.size() > 1) return ids.at(part);  // BPE only forms parts that are pieces
    const TokenId id = byte_ids[static_cast<unsigned char>(part[0])];
    if (id < 0) {
      char hex[8];
      std::snprintf(hex, sizeof hex, "0x%02X", static_cast<unsigned char>(part[0]));
      throw Error(std::string("cannot encode byte ") + hex + ": the vocabulary (" +
                  std::to_string(pieces.size()) +
                  " entries) has no token for it; a Whisper vocabulary starts with the 256 "
                  "byte tokens, so the model file's vocabulary is truncated");
    }
    return id;
  }
};

void Tokenizer::PieceIndex::bpe(std::string_view word, std::vector<TokenId>& out) const {
  // tiktoken takes a pre-tokenized piece that is itself a token as is.
  if (const auto whole = find(word)) {
    out.push_back(*whole);
    return;
  }
  const std::vector<std::size_t> end = merge_parts(word);
  for (std::size_t i = 0; i < word.size(); i = end[i]) {
    out.push_back(token_of(word.substr(i, end[i] - i)));
  }
}

std::vector<std::size_t> Tokenizer::PieceIndex::merge_parts(std::string_view word) const {
  // Parts are identified by their start offset: end[start] is where the part ends, 0 once
  // it has been merged into its left neighbour; prev[start] is the neighbour's start.
  // A heap with lazy invalidation keeps long pieces (CJK runs, whitespace) O(n log n).
  const std::size_t n = word.size();
  std::vector<std::size_t> end(n), prev(n);
  for (std::size_t i = 0; i < n; ++i) end[i] = i + 1, prev[i] = i - 1;

  std::priority_queue<Merge, std::vector<Merge>, std::greater<>> queue;
  const auto consider = [&](std::size_t left, std::size_t mid) {
    if (mid >= n) return;
    if (const auto rank = find(word.substr(left, end[mid] - left))) {
      queue.push({*rank, left, mid, end[mid]});
    }
  };
  for (std::size_t i = 0; i + 1 < n; ++i) consider(i, i + 1);

  while (!queue.empty()) {
    const Merge m = queue.top();
    queue.pop();
    if (end[m.left] != m.mid || end[m.mid] != m.end) continue;  // a part changed since
    end[m.left] = m.end;
    end[m.mid] = 0;
    if (m.end < n) prev[m.end] = m.left;
    if (m.left > 0) consider(prev[m.left], m.left);
    consider(m.left, m.end);
  }
  return end;
}

Tokenizer::Tokenizer(std::vector<std::string> pieces, int n_vocab)
    : n_vocab_(n_vocab), special_(special_tokens_for(n_vocab)) {
  if (pieces.size() > static_cast<std::size_t>(n_vocab)) {
    throw Error("the vocabulary has " + std::to_string(pieces.size()) +
                " entries but the model header says n_vocab = " + std::to_string(n_vocab) +
                "; the model file is inconsistent");
  }
  index_ = std::make_shared<const PieceIndex>(std::move(pieces), special_.eot);
}

int Tokenizer::n_vocab() const { return n_vocab_; }
bool Tokenizer::is_multilingual() const { return n_vocab_ >= kMultilingualVocab; }
const SpecialTokens& Tokenizer::special() const { return special_; }

std::string_view Tokenizer::piece(TokenId id) const {
  if (id < 0 || id >= n_vocab_) {
    throw Error("token id " + std::to_string(id) + " is outside the vocabulary (0.." +
                std::to_string(n_vocab_ - 1) + ")");
  }
  if (is_special(id) || static_cast<std::size_t>(id) >= index_->pieces.size()) return {};
  return index_->pieces[id];
}

std::string Tokenizer::token_to_string(TokenId id) const {
  const std::string_view text = piece(id);  // also checks the range
  const SpecialTokens& s = special_;
  if (id < s.eot) {
    if (static_cast<std::size_t>(id) < index_->pieces.size()) return std::string(text);
    return "[_extra_token_" + std::to_string(id) + "]";
  }
  if (is_timestamp(id)) return timestamp_string(id - s.timestamp_begin);
  if (const std::string_view code = language_code(id); !code.empty()) {
    return std::string("<|").append(code).append("|>");
  }
  if (id == s.eot) return "<|endoftext|>";
  if (id == s.sot) return "<|startoftranscript|>";
  if (id == s.translate) return "<|translate|>";
  if (id == s.transcribe) return "<|transcribe|>";
  if (id == s.solm) return "<|startoflm|>";
  if (id == s.prev) return "<|startofprev|>";
  if (id == s.no_speech) return "<|nospeech|>";
  if (id == s.no_timestamps) return "<|notimestamps|>";
  return "[_extra_token_" + std::to_string(id) + "]";
}

std::string Tokenizer::decode(std::span<const TokenId> tokens) const {
  std::string text;
  for (const TokenId id : tokens) text += piece(id);  // "" for special tokens
  return text;
}

std::vector<TokenId> Tokenizer::encode(std::string_view text) const {
  std::vector<TokenId> tokens;
  for (const std::string_view word : pretokenize(text)) index_->bpe(word, tokens);
  return tokens;
}

std::optional<TokenId> Tokenizer::find_piece(std::string_view bytes) const {
  return index_->find(bytes);
}

std::optional<TokenId> Tokenizer::language_token(std::string_view code) const {
  const auto codes = language_codes();
  for (std::size_t i = 0; i < codes.size(); ++i) {
    if (codes[i] == code) return special_.first_language + static_cast<TokenId>(i);
  }
  return std::nullopt;
}

std::string_view Tokenizer::language_code(TokenId id) const {
  const TokenId offset = id - special_.first_language;
  if (offset < 0 || offset >= special_.n_languages) return {};
  return kLanguageCodes[offset];
}

std::span<const std::string_view> Tokenizer::language_codes() const {
  return std::span(kLanguageCodes).first(static_cast<std::size_t>(special_.n_languages));
}

std::string_view language_name(std::string_view code) {
  for (std::size_t i = 0; i < kLanguageCodes.size(); ++i)
    if (kLanguageCodes[i] == code) return kLanguageNames[i];
  return {};
}

std::vector<TokenId> Tokenizer::non_speech_tokens() const {
  // Transcribed from OpenAI's whisper/tokenizer.py. A symbol counts when it is a single
  // token, alone or after a space; for the musical signs the first token is taken even
  // when they split (a partial UTF-8 byte token), as OpenAI does.
  static constexpr std::string_view kSymbols[] = {
      "\"", "#",   "(",   ")",   "*",  "+",   "/",  ":",  ";",  "<",  "=",  ">",
      "@",  "[",   "\\",  "]",   "^",  "_",   "`",  "{",  "|",  "}",  "~",  "「",
      "」", "『",  "』",  "<<",  ">>", "<<<", ">>>", "--", "---", "-(", "-[", "('",
      "(\"", "((", "))",  "(((", ")))", "[[", "]]", "{{", "}}", "♪♪", "♪♪♪",
  };
  static constexpr std::string_view kMusicalSigns[] = {"♩", "♪", "♫", "♬", "♭", "♮", "♯"};

  std::set<TokenId> result = {encode(" -").front(), encode(" '").front()};
  const auto add = [&](std::string_view symbol, bool always) {
    for (const std::string& text : {std::string(symbol), std::string(" ").append(symbol)}) {
      const std::vector<TokenId> tokens = encode(text);
      if (tokens.size() == 1 || always) result.insert(tokens.front());
    }
  };
  for (const std::string_view symbol : kSymbols) add(symbol, false);
  for (const std::string_view sign : kMusicalSigns) add(sign, true);
  return {result.begin(), result.end()};
}

}  // namespace amanuensis::text

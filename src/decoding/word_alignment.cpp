#include "decoding/word_alignment.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "common/error.h"

namespace amanuensis::decoding {
namespace {

constexpr double kSecondsPerAudioPosition = 0.02;  // 1500 positions per 30 s

// whisper.cpp's tables of OpenAI's alignment heads, as (decoder layer, head).
struct KnownModel {
  int n_text_layer, n_text_state;
  bool multilingual;
  std::vector<AlignmentHead> heads;
};

const std::vector<KnownModel>& known_models() {
  static const std::vector<KnownModel> models = {
      {4, 384, false, {{1, 0}, {2, 0}, {2, 5}, {3, 0}, {3, 1}, {3, 2}, {3, 3}, {3, 4}}},
      {4, 384, true, {{2, 2}, {3, 0}, {3, 2}, {3, 3}, {3, 4}, {3, 5}}},
      {6, 512, false, {{3, 3}, {4, 7}, {5, 1}, {5, 5}, {5, 7}}},
      {6, 512, true, {{3, 1}, {4, 2}, {4, 3}, {4, 7}, {5, 1}, {5, 2}, {5, 4}, {5, 6}}},
      {12, 768, false, {{6, 6}, {7, 0}, {7, 3}, {7, 8}, {8, 2}, {8, 5}, {8, 7}, {9, 0}, {9, 4}, {9, 8}, {9, 10},
                        {10, 0}, {10, 1}, {10, 2}, {10, 3}, {10, 6}, {10, 11}, {11, 2}, {11, 4}}},
      {12, 768, true, {{5, 3}, {5, 9}, {8, 0}, {8, 4}, {8, 7}, {8, 8}, {9, 0}, {9, 7}, {9, 9}, {10, 5}}},
      {24, 1024, false, {{11, 4}, {14, 1}, {14, 12}, {14, 14}, {15, 4}, {16, 0}, {16, 4}, {16, 9}, {17, 12},
                         {17, 14}, {18, 7}, {18, 10}, {18, 15}, {20, 0}, {20, 3}, {20, 9}, {20, 14}, {21, 12}}},
      {24, 1024, true, {{13, 15}, {15, 4}, {15, 15}, {16, 1}, {20, 0}, {23, 4}}},
      {4, 1280, true, {{2, 4}, {2, 11}, {3, 3}, {3, 6}, {3, 11}, {3, 14}}},  // large-v3-turbo
  };
  return models;
}

const std::vector<AlignmentHead> kLargeV2 = {{10, 12}, {13, 17}, {16, 11}, {16, 12}, {16, 13}, {17, 15}, {17, 16}, {18, 4},
                                             {18, 11}, {18, 19}, {19, 11}, {21, 2},  {21, 3},  {22, 3},  {22, 9},  {22, 12},
                                             {23, 5},  {23, 7},  {23, 13}, {25, 5},  {26, 1},  {26, 12}, {27, 15}};
const std::vector<AlignmentHead> kLargeV3 = {{7, 0},  {10, 17}, {12, 18}, {13, 12}, {16, 1},
                                             {17, 14}, {19, 11}, {21, 4},  {24, 1},  {25, 6}};

bool is_punctuation(std::string_view s) {
  // Python's string.punctuation
  static constexpr std::string_view kPunctuation = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";
  return s.size() == 1 && kPunctuation.find(s[0]) != std::string_view::npos;
}

std::string_view strip(std::string_view s) {
  const auto first = s.find_first_not_of(" \t\n\r");
  if (first == std::string_view::npos) return {};
  const auto last = s.find_last_not_of(" \t\n\r");
  return s.substr(first, last - first + 1);
}

// True when `bytes` ends in the middle of a UTF-8 character.
bool ends_inside_character(std::string_view bytes) {
  int i = static_cast<int>(bytes.size()) - 1;
  int continuation = 0;
  while (i >= 0 && (static_cast<unsigned char>(bytes[i]) & 0xC0) == 0x80 && continuation < 3) {
    --i;
    ++continuation;
  }
  if (i < 0) return continuation > 0;
  const auto lead = static_cast<unsigned char>(bytes[i]);
  const int length = lead < 0x80 ? 1 : (lead >> 5) == 0x6 ? 2 : (lead >> 4) == 0xE ? 3 : (lead >> 3) == 0x1E ? 4 : 1;
  return continuation + 1 < length;
}

}  // namespace

std::vector<AlignmentHead> alignment_heads(const model::HyperParams& hp) {
  for (const auto& m : known_models()) {
    if (m.n_text_layer == hp.n_text_layer && m.n_text_state == hp.n_text_state && m.multilingual == hp.is_multilingual())
      return m.heads;
  }
  if (hp.n_text_layer == 32 && hp.n_text_state == 1280) return hp.n_vocab == 51866 ? kLargeV3 : kLargeV2;
  std::vector<AlignmentHead> heads;
  for (int layer = hp.n_text_layer / 2; layer < hp.n_text_layer; ++layer)
    for (int head = 0; head < hp.n_text_head; ++head) heads.push_back({layer, head});
  return heads;
}

std::pair<std::vector<int>, std::vector<int>> dynamic_time_warping(std::span<const float> x, int rows, int cols) {
  if (rows <= 0 || cols <= 0) return {};
  const int stride = cols + 1;
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<float> cost(static_cast<std::size_t>(rows + 1) * stride, inf);
  std::vector<signed char> trace(cost.size(), -1);
  cost[0] = 0.0f;
  for (int j = 1; j <= cols; ++j) {
    for (int i = 1; i <= rows; ++i) {
      const float c0 = cost[(i - 1) * stride + j - 1], c1 = cost[(i - 1) * stride + j], c2 = cost[i * stride + j - 1];
      float c;
      signed char t;
      if (c0 < c1 && c0 < c2) {
        c = c0, t = 0;
      } else if (c1 < c0 && c1 < c2) {
        c = c1, t = 1;
      } else {
        c = c2, t = 2;
      }
      cost[i * stride + j] = x[static_cast<std::size_t>(i - 1) * cols + j - 1] + c;
      trace[i * stride + j] = t;
    }
  }
  for (int j = 0; j <= cols; ++j) trace[j] = 2;
  for (int i = 0; i <= rows; ++i) trace[i * stride] = 1;
  std::vector<int> row_path, col_path;
  int i = rows, j = cols;
  while (i > 0 || j > 0) {
    row_path.push_back(i - 1);
    col_path.push_back(j - 1);
    switch (trace[i * stride + j]) {
      case 0: --i, --j; break;
      case 1: --i; break;
      case 2: --j; break;
      default: throw InternalError("dynamic time warping left its table");
    }
  }
  std::reverse(row_path.begin(), row_path.end());
  std::reverse(col_path.begin(), col_path.end());
  return {row_path, col_path};
}

std::vector<float> median_filter_rows(std::span<const float> x, int rows, int cols, int width) {
  if (width % 2 == 0 || width < 1) throw InternalError("median filter width must be odd");
  const int pad = width / 2;
  if (cols <= pad) return {x.begin(), x.end()};  // OpenAI skips the filter when the row is too short
  std::vector<float> out(x.size());
  std::vector<float> window(width);
  auto reflect = [cols](int j) { return j < 0 ? -j : j >= cols ? 2 * (cols - 1) - j : j; };
  for (int r = 0; r < rows; ++r) {
    const float* row = x.data() + static_cast<std::size_t>(r) * cols;
    for (int j = 0; j < cols; ++j) {
      for (int k = 0; k < width; ++k) window[k] = row[reflect(j + k - pad)];
      std::nth_element(window.begin(), window.begin() + pad, window.end());
      out[static_cast<std::size_t>(r) * cols + j] = window[pad];
    }
  }
  return out;
}

bool is_space_delimited(std::string_view language) {
  for (std::string_view l : {"zh", "ja", "th", "lo", "my", "yue"})
    if (language == l) return false;
  return true;
}

std::vector<WordTokens> split_into_words(const text::Tokenizer& tokenizer, std::span<const TokenId> tokens,
                                         bool space_delimited) {
  // whole characters first: a token that ends inside a UTF-8 character waits for the next
  std::vector<WordTokens> subwords;
  WordTokens current;
  for (TokenId t : tokens) {
    current.tokens.push_back(t);
    current.word += tokenizer.is_special(t) ? tokenizer.token_to_string(t) : std::string(tokenizer.piece(t));
    if (!ends_inside_character(current.word)) {
      subwords.push_back(std::move(current));
      current = {};
    }
  }
  if (!current.tokens.empty()) subwords.push_back(std::move(current));
  if (!space_delimited) return subwords;

  std::vector<WordTokens> words;
  for (auto& sub : subwords) {
    const bool special = tokenizer.is_special(sub.tokens.front());
    const bool with_space = !sub.word.empty() && sub.word.front() == ' ';
    if (special || with_space || is_punctuation(strip(sub.word)) || words.empty()) {
      words.push_back(std::move(sub));
    } else {
      words.back().word += sub.word;
      words.back().tokens.insert(words.back().tokens.end(), sub.tokens.begin(), sub.tokens.end());
    }
  }
  return words;
}

std::vector<WordTiming> align_words(const text::Tokenizer& tokenizer, std::span<const TokenId> text_tokens,
                                    std::span<const float> attention, int n_heads, int n_tokens, int audio_positions,
                                    int sot_sequence_length, std::span<const float> text_probabilities,
                                    bool space_delimited) {
  if (text_tokens.empty() || n_heads <= 0 || audio_positions <= 0) return {};
  const std::size_t plane = static_cast<std::size_t>(n_tokens) * audio_positions;
  if (attention.size() != plane * n_heads) throw InternalError("attention size does not match its shape");

  // standardise each head over the tokens (per audio position), median-filter, average heads
  std::vector<float> matrix(plane, 0.0f);
  for (int h = 0; h < n_heads; ++h) {
    std::vector<float> w(attention.begin() + h * plane, attention.begin() + (h + 1) * plane);
    for (int a = 0; a < audio_positions; ++a) {
      double mean = 0, sq = 0;
      for (int t = 0; t < n_tokens; ++t) mean += w[t * audio_positions + a];
      mean /= n_tokens;
      for (int t = 0; t < n_tokens; ++t) sq += std::pow(w[t * audio_positions + a] - mean, 2);
      const double std = std::sqrt(sq / n_tokens);
      for (int t = 0; t < n_tokens; ++t) {
        auto& v = w[t * audio_positions + a];
        v = static_cast<float>((v - mean) / (std > 0 ? std : 1.0));
      }
    }
    const auto filtered = median_filter_rows(w, n_tokens, audio_positions, 7);
    for (std::size_t i = 0; i < plane; ++i) matrix[i] += filtered[i] / static_cast<float>(n_heads);
  }

  // the rows of the text tokens and end-of-text, negated: DTW minimises cost
  const int rows = n_tokens - sot_sequence_length - 1;
  std::vector<float> cost(static_cast<std::size_t>(rows) * audio_positions);
  for (int r = 0; r < rows; ++r)
    for (int a = 0; a < audio_positions; ++a)
      cost[static_cast<std::size_t>(r) * audio_positions + a] =
          -matrix[static_cast<std::size_t>(r + sot_sequence_length) * audio_positions + a];
  const auto [text_indices, time_indices] = dynamic_time_warping(cost, rows, audio_positions);

  std::vector<TokenId> with_end(text_tokens.begin(), text_tokens.end());
  with_end.push_back(tokenizer.special().eot);
  const auto words = split_into_words(tokenizer, with_end, space_delimited);
  if (words.size() <= 1) return {};

  // time of the path's first step into each token row
  std::vector<double> jump_times;
  for (std::size_t k = 0; k < text_indices.size(); ++k) {
    if (k == 0 || text_indices[k] != text_indices[k - 1]) jump_times.push_back(time_indices[k] * kSecondsPerAudioPosition);
  }
  std::vector<WordTiming> timings;
  std::size_t boundary = 0;
  for (std::size_t w = 0; w + 1 < words.size(); ++w) {  // the last "word" is end-of-text
    const std::size_t next = boundary + words[w].tokens.size();
    double probability = 0;
    for (std::size_t i = boundary; i < next && i < text_probabilities.size(); ++i) probability += text_probabilities[i];
    probability /= static_cast<double>(next - boundary);
    timings.push_back({words[w].word, words[w].tokens, jump_times.at(boundary), jump_times.at(next), probability});
    boundary = next;
  }
  return timings;
}

void merge_punctuations(std::vector<WordTiming>& words, std::string_view prepended, std::string_view appended) {
  // Python's `s in set` (substring test; the empty string is in every set)
  auto contains = [](std::string_view set, std::string_view s) { return set.find(s) != std::string_view::npos; };
  if (words.size() < 2) return;
  // leading marks ("(", "¿", ...) join the word after them
  for (int i = static_cast<int>(words.size()) - 2, j = static_cast<int>(words.size()) - 1; i >= 0; --i) {
    auto& previous = words[i];
    auto& following = words[j];
    if (!previous.word.empty() && previous.word.front() == ' ' && contains(prepended, strip(previous.word))) {
      following.word = previous.word + following.word;
      following.tokens.insert(following.tokens.begin(), previous.tokens.begin(), previous.tokens.end());
      previous.word.clear();
      previous.tokens.clear();
    } else {
      j = i;
    }
  }
  // trailing marks (".", ",", ...) join the word before them
  for (std::size_t i = 0, j = 1; j < words.size(); ++j) {
    auto& previous = words[i];
    auto& following = words[j];
    if ((previous.word.empty() || previous.word.back() != ' ') && contains(appended, following.word)) {
      previous.word += following.word;
      previous.tokens.insert(previous.tokens.end(), following.tokens.begin(), following.tokens.end());
      following.word.clear();
      following.tokens.clear();
    } else {
      i = j;
    }
  }
}

}  // namespace amanuensis::decoding

// decoding: word-level timestamps as OpenAI's `word_timestamps` computes them: the
// cross-attention of the alignment heads over the audio, normalised and median-filtered,
// aligned to the text tokens by dynamic time warping, then grouped into words.
#pragma once

#include <span>
#include <string>
#include <utility>
#include <vector>

#include "model/ggml_file.h"
#include "text/tokenizer.h"

namespace amanuensis::decoding {

using text::TokenId;

struct AlignmentHead {
  int layer = 0;
  int head = 0;
  bool operator==(const AlignmentHead&) const = default;
};

// The published alignment heads of each official model (recognised by its dimensions and
// vocabulary); for any other model all heads of the upper half of the decoder.
std::vector<AlignmentHead> alignment_heads(const model::HyperParams& hp);

// Dynamic time warping over a cost matrix (rows x cols, row-major): the monotonic path
// from (0,0) to (rows-1, cols-1) with the least total cost, as OpenAI's dtw_cpu, ties
// resolved the same way. Returns (row indices, column indices) of the path.
std::pair<std::vector<int>, std::vector<int>> dynamic_time_warping(std::span<const float> cost, int rows, int cols);

// Median filter of odd `width` along each row (rows x cols), reflect-padded at the edges.
std::vector<float> median_filter_rows(std::span<const float> x, int rows, int cols, int width);

struct WordTokens {
  std::string word;
  std::vector<TokenId> tokens;
};

// OpenAI's split_to_word_tokens: tokens are grouped into whole UTF-8 characters; for
// space-delimited languages these are then joined into words that start at a space or
// punctuation (Chinese, Japanese, Thai, Lao, Burmese and Cantonese keep the characters).
std::vector<WordTokens> split_into_words(const text::Tokenizer& tokenizer, std::span<const TokenId> tokens,
                                         bool space_delimited = true);
bool is_space_delimited(std::string_view language);

struct WordTiming {
  std::string word;
  std::vector<TokenId> tokens;
  double start = 0.0;  // seconds from the window start
  double end = 0.0;
  double probability = 0.0;
};

// OpenAI's find_alignment after the attention is captured. `attention` holds, per
// alignment head, the softmax-normalised cross-attention of every token of
// [sot sequence..., <|notimestamps|>, text..., <|endoftext|>] over the first
// `audio_positions` positions: heads x tokens x audio_positions; `sot_sequence_length`
// is the length of the sot sequence (the row of <|notimestamps|> predicts the first text
// token). `text_probabilities` holds each text token's probability. Returns one timing
// per word.
std::vector<WordTiming> align_words(const text::Tokenizer& tokenizer, std::span<const TokenId> text_tokens,
                                    std::span<const float> attention, int n_heads, int n_tokens, int audio_positions,
                                    int sot_sequence_length, std::span<const float> text_probabilities,
                                    bool space_delimited = true);

// OpenAI's merge_punctuations: leading marks join the next word, trailing marks the previous.
void merge_punctuations(std::vector<WordTiming>& words, std::string_view prepended = "\"'“¿([{-",
                        std::string_view appended = "\"'.。,，!！?？:：”)]}、");

}  // namespace amanuensis::decoding

// Word-level timestamps: DTW, median filter, word splitting and punctuation merging on
// hand-made inputs, and the alignment of a hand-made attention matrix.
#include <gtest/gtest.h>

#include "decoding/word_alignment.h"
#include "model/ggml_file.h"
#include "test_paths.h"

namespace amanuensis::decoding {
namespace {

const text::Tokenizer& english() {
  static const text::Tokenizer tok = [] {
    const auto file = model::ModelFile::open(testing::conformance_dir() / "vocab-en.bin");
    return text::Tokenizer(file.vocabulary(), file.hparams().n_vocab);
  }();
  return tok;
}

TEST(DynamicTimeWarping, FollowsTheCheapDiagonal) {
  // 3 x 4 cost with a cheap staircase: (0,0) (1,1) (1,2) (2,3)
  const std::vector<float> cost = {0, 9, 9, 9,  //
                                   9, 0, 0, 9,  //
                                   9, 9, 9, 0};
  const auto [rows, cols] = dynamic_time_warping(cost, 3, 4);
  EXPECT_EQ(rows, (std::vector<int>{0, 1, 1, 2}));
  EXPECT_EQ(cols, (std::vector<int>{0, 1, 2, 3}));
}

TEST(DynamicTimeWarping, PathIsMonotonicAndComplete) {
  std::vector<float> cost(5 * 7);
  for (int i = 0; i < 35; ++i) cost[i] = static_cast<float>((i * 37) % 11);
  const auto [rows, cols] = dynamic_time_warping(cost, 5, 7);
  ASSERT_FALSE(rows.empty());
  EXPECT_EQ(rows.front(), 0);
  EXPECT_EQ(cols.front(), 0);
  EXPECT_EQ(rows.back(), 4);
  EXPECT_EQ(cols.back(), 6);
  for (std::size_t k = 1; k < rows.size(); ++k) {
    EXPECT_GE(rows[k], rows[k - 1]);
    EXPECT_GE(cols[k], cols[k - 1]);
    EXPECT_LE(rows[k] - rows[k - 1] + cols[k] - cols[k - 1], 2);
    EXPECT_GE(rows[k] - rows[k - 1] + cols[k] - cols[k - 1], 1);
  }
}

TEST(MedianFilter, RemovesSpikesAndReflectsAtEdges) {
  const std::vector<float> row = {1, 1, 1, 9, 1, 1, 1, 1};
  const auto out = median_filter_rows(row, 1, 8, 3);
  EXPECT_EQ(out, (std::vector<float>{1, 1, 1, 1, 1, 1, 1, 1}));
  // reflect padding: [2,1,2,3] around index 0 with width 3 -> median(2,1,2) = 2
  const std::vector<float> ramp = {1, 2, 3, 4};
  EXPECT_EQ(median_filter_rows(ramp, 1, 4, 3), (std::vector<float>{2, 2, 3, 3}));
  // width 7 on 4 values: reflect-padded to [4,3,2,1,2,3,4,3,2,1] (as torch's reflect pad)
  EXPECT_EQ(median_filter_rows(ramp, 1, 4, 7), (std::vector<float>{3, 3, 2, 2}));
  const std::vector<float> short_row = {5, 1, 3};
  EXPECT_EQ(median_filter_rows(short_row, 1, 3, 7), short_row) << "rows no longer than half the width are left alone";
}

TEST(SplitIntoWords, SpacesAndPunctuationStartWords) {
  const auto& tok = english();
  const auto tokens = tok.encode(" And so my fellow Americans, ask not");
  const auto words = split_into_words(tok, tokens);
  std::vector<std::string> texts;
  for (const auto& w : words) texts.push_back(w.word);
  EXPECT_EQ(texts, (std::vector<std::string>{" And", " so", " my", " fellow", " Americans", ",", " ask", " not"}));
  // a word made of several tokens stays one word
  const auto long_word = split_into_words(tok, tok.encode(" antidisestablishmentarianism"));
  ASSERT_EQ(long_word.size(), 1u);
  EXPECT_GT(long_word[0].tokens.size(), 1u);
}

TEST(SplitIntoWords, LanguagesWithoutSpacesKeepCharacters) {
  const auto& tok = english();
  const auto tokens = tok.encode(" And so");
  EXPECT_EQ(split_into_words(tok, tokens, false).size(), tokens.size()) << "every whole-character token is a word";
  EXPECT_FALSE(is_space_delimited("ja"));
  EXPECT_FALSE(is_space_delimited("yue"));
  EXPECT_TRUE(is_space_delimited("en"));
}

TEST(MergePunctuations, LikeOpenAI) {
  std::vector<WordTiming> words = {{" \"", {1}}, {"Hello", {2}}, {",", {3}}, {" world", {4}}, {".", {5}}, {"\"", {6}}};
  merge_punctuations(words);
  std::vector<std::string> texts;
  for (const auto& w : words) texts.push_back(w.word);
  EXPECT_EQ(texts, (std::vector<std::string>{"", " \"Hello,", "", " world.\"", "", ""}));
  EXPECT_EQ(words[1].tokens, (std::vector<TokenId>{1, 2, 3}));
  EXPECT_EQ(words[3].tokens, (std::vector<TokenId>{4, 5, 6}));
}

TEST(AlignWords, FollowsAHandMadeAttentionDiagonal) {
  const auto& tok = english();
  const auto text_tokens = tok.encode(" one two three");
  ASSERT_EQ(text_tokens.size(), 3u);
  // tokens: [sot, notimestamps, one, two, three, eot]; the row at position i predicts
  // token i+1, so rows 1..4 (from <|notimestamps|>) align "one", "two", "three" and the end
  const int sot_len = 1, n_tokens = 6, positions = 50;  // 50 audio positions = 1 s
  std::vector<float> attention(n_tokens * positions, 1.0f / positions);
  auto attend = [&](int row, int from, int to) {
    for (int a = 0; a < positions; ++a) attention[row * positions + a] = (a >= from && a < to) ? 1.0f : 0.0f;
  };
  attend(1, 0, 15);   // one: 0.0-0.3 s
  attend(2, 15, 30);  // two: 0.3-0.6 s
  attend(3, 30, 45);  // three: 0.6-0.9 s
  attend(4, 45, 50);  // end of text
  const std::vector<float> probabilities = {0.9f, 0.8f, 0.7f};
  const auto words = align_words(tok, text_tokens, attention, 1, n_tokens, positions, sot_len, probabilities);
  ASSERT_EQ(words.size(), 3u);
  EXPECT_EQ(words[0].word, " one");
  EXPECT_EQ(words[2].word, " three");
  EXPECT_NEAR(words[0].start, 0.0, 0.041);
  EXPECT_NEAR(words[1].start, 0.30, 0.041);
  EXPECT_NEAR(words[2].start, 0.60, 0.041);
  EXPECT_NEAR(words[2].end, 0.90, 0.041);
  EXPECT_NEAR(words[1].probability, 0.8, 1e-6);
  for (const auto& w : words) EXPECT_LE(w.start, w.end);
}

TEST(AlignmentHeads, KnownModelsAndFallback) {
  model::HyperParams tiny_en{51864, 1500, 384, 6, 4, 448, 384, 6, 4, 80, 1};
  EXPECT_EQ(alignment_heads(tiny_en).size(), 8u);
  model::HyperParams base{51865, 1500, 512, 8, 6, 448, 512, 8, 6, 80, 1};
  EXPECT_EQ(alignment_heads(base).front(), (AlignmentHead{3, 1}));
  model::HyperParams large_v3{51866, 1500, 1280, 20, 32, 448, 1280, 20, 32, 128, 1};
  EXPECT_EQ(alignment_heads(large_v3).size(), 10u);
  model::HyperParams micro{51864, 1500, 64, 2, 2, 448, 64, 2, 3, 80, 1};
  const auto fallback = alignment_heads(micro);  // upper half of 3 layers: layers 1 and 2, all heads
  EXPECT_EQ(fallback, (std::vector<AlignmentHead>{{1, 0}, {1, 1}, {2, 0}, {2, 1}}));
}

}  // namespace
}  // namespace amanuensis::decoding

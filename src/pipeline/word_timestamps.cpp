#include "pipeline/word_timestamps.h"

#include <algorithm>
#include <cmath>
#include <string_view>

#include "decoding/logit_rules.h"
#include "decoding/word_alignment.h"
#include "pipeline/transcriber.h"

namespace amanuensis::pipeline {
namespace {

using decoding::WordTiming;

constexpr std::string_view kSentenceEnds[] = {".", "。", "!", "！", "?", "？"};

bool is_sentence_end(const std::string& word) {
  return std::find(std::begin(kSentenceEnds), std::end(kSentenceEnds), word) != std::end(kSentenceEnds);
}

double round2(double seconds) { return std::nearbyint(seconds * 100.0) / 100.0; }

// OpenAI's find_alignment: one decoder pass over [sot sequence, <|notimestamps|>, text,
// <|endoftext|>] that keeps the alignment heads' attention, then DTW.
std::vector<WordTiming> find_alignment(const WordTimingInput& in, std::span<const text::TokenId> text_tokens) {
  const auto& sp = in.tokenizer->special();
  std::vector<text::TokenId> tokens = in.sot_sequence;
  tokens.push_back(sp.no_timestamps);
  tokens.insert(tokens.end(), text_tokens.begin(), text_tokens.end());
  tokens.push_back(sp.eot);
  if (static_cast<int>(tokens.size()) > in.decoder->n_text_ctx()) return {};

  nn::AttentionCapture capture;
  for (const auto& h : in.heads) capture.heads.push_back({h.layer, h.head});
  auto cache = in.decoder->new_sequence();
  std::vector<float> logits;
  nn::Runner& runner = in.runner ? *in.runner : nn::direct_runner();
  runner.run(nn::Work::Forward,
             [&] { logits = in.decoder->forward(tokens, cache, *in.audio, /*all_rows=*/true, &capture); });

  const int n_tokens = static_cast<int>(tokens.size());
  const int n_vocab = in.decoder->n_vocab();
  const int sot_length = static_cast<int>(in.sot_sequence.size());
  // probability of each text token among text tokens, from the row that predicts it
  std::vector<float> probabilities;
  for (std::size_t i = 0; i < text_tokens.size(); ++i) {
    const float* row = logits.data() + (sot_length + i) * n_vocab;
    const auto logprobs = decoding::log_softmax(std::span(row, static_cast<std::size_t>(sp.eot)));
    probabilities.push_back(std::exp(logprobs[text_tokens[i]]));
  }
  // attention over the audio of this window only, renormalised there
  const int positions = std::max(1, std::min<int>(in.num_frames / 2, static_cast<int>(in.audio->n_ctx)));
  const auto n_ctx = static_cast<std::size_t>(in.audio->n_ctx);
  std::vector<float> attention;
  for (const auto& scores : capture.scores) {
    for (int t = 0; t < n_tokens; ++t) {
      std::vector<float> row(scores.begin() + t * n_ctx, scores.begin() + t * n_ctx + positions);
      const auto logp = decoding::log_softmax(row);
      for (float v : logp) attention.push_back(std::exp(v));
    }
  }
  return decoding::align_words(*in.tokenizer, text_tokens, attention, static_cast<int>(capture.scores.size()), n_tokens,
                               positions, sot_length, probabilities, in.space_delimited);
}

double median_word_duration(const std::vector<WordTiming>& words) {
  std::vector<double> durations;
  for (const auto& w : words)
    if (w.end - w.start != 0.0) durations.push_back(w.end - w.start);
  if (durations.empty()) return 0.0;
  std::sort(durations.begin(), durations.end());
  const std::size_t n = durations.size();
  const double median = n % 2 ? durations[n / 2] : (durations[n / 2 - 1] + durations[n / 2]) / 2;
  return std::min(0.7, median);
}

}  // namespace

void add_word_timestamps(std::span<Segment> segments, const WordTimingInput& in, double last_speech_timestamp) {
  if (segments.empty()) return;
  std::vector<std::vector<text::TokenId>> text_per_segment;
  std::vector<text::TokenId> text_tokens;
  for (const auto& s : segments) {
    auto& mine = text_per_segment.emplace_back();
    for (auto t : s.tokens)
      if (t < in.tokenizer->special().eot) mine.push_back(t);
    text_tokens.insert(text_tokens.end(), mine.begin(), mine.end());
  }
  auto alignment = find_alignment(in, text_tokens);
  const double median_duration = median_word_duration(alignment);
  const double max_duration = median_duration * 2;

  // truncate long words at sentence boundaries
  if (median_duration > 0) {
    for (std::size_t i = 1; i < alignment.size(); ++i) {
      if (alignment[i].end - alignment[i].start > max_duration) {
        if (is_sentence_end(alignment[i].word)) {
          alignment[i].end = alignment[i].start + max_duration;
        } else if (is_sentence_end(alignment[i - 1].word)) {
          alignment[i].start = alignment[i].end - max_duration;
        }
      }
    }
  }
  decoding::merge_punctuations(alignment);

  std::size_t word_index = 0;
  for (std::size_t si = 0; si < segments.size(); ++si) {
    auto& segment = segments[si];
    std::size_t saved_tokens = 0;
    std::vector<decoding::TimedWord> words;
    while (word_index < alignment.size() && saved_tokens < text_per_segment[si].size()) {
      const auto& timing = alignment[word_index];
      if (!timing.word.empty()) {
        words.push_back({timing.word, round2(in.time_offset + timing.start), round2(in.time_offset + timing.end),
                         timing.probability});
      }
      saved_tokens += timing.tokens.size();
      ++word_index;
    }
    if (!words.empty()) {
      // the first and second word after a pause are not longer than twice the median
      if (words[0].end - last_speech_timestamp > median_duration * 4 &&
          (words[0].end - words[0].start > max_duration ||
           (words.size() > 1 && words[1].end - words[0].start > max_duration * 2))) {
        if (words.size() > 1 && words[1].end - words[1].start > max_duration) {
          const double boundary = std::max(words[1].end / 2, words[1].end - max_duration);
          words[0].end = words[1].start = boundary;
        }
        words[0].start = std::max(0.0, words[0].end - max_duration);
      }
      // prefer the segment-level start if the first word is too long
      if (segment.start < words[0].end && segment.start - 0.5 > words[0].start) {
        words[0].start = std::max(0.0, std::min(words[0].end - median_duration, segment.start));
      } else {
        segment.start = words[0].start;
      }
      // prefer the segment-level end if the last word is too long
      if (segment.end > words.back().start && segment.end + 0.5 < words.back().end) {
        words.back().end = std::max(words.back().start + median_duration, segment.end);
      } else {
        segment.end = words.back().end;
      }
      last_speech_timestamp = segment.end;
    }
    segment.words = std::move(words);
  }
}

}  // namespace amanuensis::pipeline

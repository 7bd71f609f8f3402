// pipeline: OpenAI's add_word_timestamps(): aligns the text of a window's segments to the
// audio through the alignment heads' cross-attention and gives every segment its words,
// with OpenAI's corrections for over-long words at pauses and segment edges.
#pragma once

#include <span>
#include <vector>

#include "decoding/window_decoder.h"
#include "decoding/word_alignment.h"
#include "nn/runner.h"
#include "nn/whisper.h"
#include "text/tokenizer.h"

namespace amanuensis::pipeline {

struct Segment;

struct WordTimingInput {
  const nn::Decoder* decoder = nullptr;
  const text::Tokenizer* tokenizer = nullptr;
  const nn::CrossAttentionCache* audio = nullptr;
  std::vector<decoding::AlignmentHead> heads;
  std::vector<text::TokenId> sot_sequence;  // [sot, language, task] as decoded (no prompt)
  int num_frames = 0;                       // mel frames of audio in the window
  double time_offset = 0.0;                 // seconds
  bool space_delimited = true;              // false for zh, ja, th, lo, my, yue
  nn::Runner* runner = nullptr;             // runs the alignment pass; nullptr: directly
};

// Fills `segments[i].words` (and may move segment starts/ends to the words, as OpenAI
// does). `last_speech_timestamp` is the end of the last word before this window.
void add_word_timestamps(std::span<Segment> segments, const WordTimingInput& in, double last_speech_timestamp);

}  // namespace amanuensis::pipeline

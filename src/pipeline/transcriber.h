// pipeline: audio samples to a transcript. Owns the loaded model (weights, tokenizer,
// mel filters) and the long-form loop over 30 s windows that turns each window's tokens
// into timed segments.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "common/sample_source.h"
#include "decoding/beam_search.h"
#include "decoding/hallucination.h"
#include "decoding/quality.h"
#include "decoding/window_decoder.h"
#include "model/ggml_file.h"
#include "nn/runner.h"
#include "nn/whisper.h"
#include "text/tokenizer.h"
#include "vad/vad.h"

namespace amanuensis::pipeline {

using text::TokenId;

// One window as the long-form loop decoded it, reported through
// TranscribeOptions::on_window: what conditioned the decoder and every decode tried.
struct WindowTrace {
  int seek = 0;                              // mel frame where the window starts
  int segment_size = 0;                      // mel frames of audio in the window
  std::vector<TokenId> initial_tokens;       // [<|startofprev|> prompt...] <|startoftranscript|> ...
  std::vector<float> temperatures_tried;     // in order; the last one gave `kept`
  decoding::WindowResult kept;               // the decode the window's segments come from
  bool skipped_as_silence = false;           // no-speech window: no segments, seek moved by the window
};

struct TranscribeOptions {
  decoding::DecodeOptions decode;
  // Temperature fallback: each window is decoded at the first temperature, and again at
  // the next one while the result fails the quality thresholds.
  std::vector<float> temperatures{0.0f, 0.2f, 0.4f, 0.6f, 0.8f, 1.0f};
  int best_of = 5;          // sampled candidates per window at temperatures above 0
  std::optional<decoding::BeamOptions> beam;  // beam search at temperature 0; greedy when unset
  std::uint64_t seed = 0;   // sampling is seeded so that a run is reproducible
  decoding::QualityThresholds thresholds;
  bool condition_on_previous_text = true;
  std::string initial_prompt;
  // Words placed at the start of every window's prompt, ahead of the previous text (which
  // is cut to make room), as faster-whisper's hotwords: names and terms to favour.
  std::string hotwords;
  bool word_timestamps = false;  // OpenAI semantics only
  // Voice activity detection: only the stretches with speech are decoded (as
  // faster-whisper's vad_filter); times stay those of the original recording.
  std::optional<vad::VadOptions> vad;
  // Skip silent stretches longer than this (seconds) around suspected hallucinations;
  // needs word_timestamps.
  std::optional<double> hallucination_silence_threshold;
  decoding::LogitsFilter logits_filter;  // applied at every step of every decode
  // Executes the network calls (the server's batching scheduler); nullptr: directly.
  nn::Runner* runner = nullptr;
  // Called after every window with the seconds of audio done and in total.
  std::function<void(double done, double total)> progress;
  // Called after every window is decoded, before its segments are built: lets tests and
  // debugging tools see the prompt, the fallback and the tokens the seek is computed from.
  std::function<void(const WindowTrace&)> on_window;
};

struct Segment {
  int id = 0;
  int seek = 0;          // mel frame (10 ms) where the window of this segment starts
  double start = 0.0;    // seconds
  double end = 0.0;
  std::string text;
  std::vector<TokenId> tokens;  // including timestamp tokens
  std::vector<float> token_logprobs;  // per entry of `tokens`: its log-probability when sampled
  std::vector<decoding::TimedWord> words;  // with word_timestamps
  double avg_logprob = 0.0;
  double compression_ratio = 0.0;
  float no_speech_prob = 0.0f;
  float temperature = 0.0f;
};

struct Transcript {
  std::string text;
  std::string task = "transcribe";
  std::string language;
  double duration = 0.0;  // seconds of audio
  std::vector<Segment> segments;
  std::vector<int> window_seeks;  // mel frame of every decoded window, in order
};

// A loaded model, ready to transcribe. Immutable after construction, so one instance
// can serve several threads that each transcribe their own audio.
class Model {
 public:
  static std::shared_ptr<const Model> load(const std::filesystem::path& path, const nn::LoadOptions& options = {});

  const model::ModelFile& file() const { return file_; }
  const model::HyperParams& hparams() const { return file_.hparams(); }
  const text::Tokenizer& tokenizer() const { return tokenizer_; }
  const nn::Encoder& encoder() const { return encoder_; }
  const nn::Decoder& decoder() const { return decoder_; }

  Model(model::ModelFile file, std::shared_ptr<const nn::WhisperWeights> weights);

 private:
  model::ModelFile file_;
  text::Tokenizer tokenizer_;
  nn::Encoder encoder_;
  nn::Decoder decoder_;
};

// OpenAI's detect_language() for a recording: from its first 30 s (the log-mel scaled over
// the whole recording, as transcribe() does), every language's probability and the
// likeliest. Throws Error for an English-only model. `runner` as TranscribeOptions::runner.
decoding::LanguageGuess detect_language(const Model& model, SampleSource& audio, nn::Runner* runner = nullptr);
decoding::LanguageGuess detect_language(const Model& model, std::span<const float> samples,
                                        nn::Runner* runner = nullptr);

// Transcribes 16 kHz mono samples window by window, seeking as the options' semantics
// say: OpenAI's transcribe() by default, whisper.cpp's whisper_full() for conformance.
// Reads `audio` from its start as often as the log-mel needs (twice; the whole recording
// once with options.vad), never holding it whole otherwise.
Transcript transcribe(const Model& model, SampleSource& audio, const TranscribeOptions& options);
Transcript transcribe(const Model& model, std::span<const float> samples, const TranscribeOptions& options);

// Whether a window may be decoded by sampling (a temperature above 0 is in the schedule),
// with options.best_of candidates.
bool may_sample(const TranscribeOptions& options);

// The most decoder memory one transcription with `options` holds at once: one window's
// cross-attention entry and the KV blocks of the sequences it decodes together (its beams,
// or its best_of candidates when a temperature above 0 may be tried), each at its longest
// (decoding::WindowDecoder::max_positions). Windows are decoded one after the other, the
// word alignment after a window's decode: neither adds to it. What admission counts.
std::int64_t decoder_memory_bytes(const Model& model, const TranscribeOptions& options);

}  // namespace amanuensis::pipeline

// server: the fields of a transcription request (OpenAI's multipart form, plus this
// server's own decoding options), parsed and checked into one struct, and turned into the
// pipeline's TranscribeOptions over the server's defaults. Owns which fields exist and what
// values each takes: a field it does not know, or a value it cannot honour, is refused
// with a FieldError naming the field (the server answers 400 with param = that name), so
// no field is ever silently ignored. It does not know HTTP or the model being used
// (checks that need the model, such as an English-only model's language, are the
// server's).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/error.h"
#include "pipeline/transcriber.h"
#include "server/multipart.h"

namespace amanuensis::server {

// A field of the form with a value that is refused; `field` is the form field's name as
// OpenAI's error `param` gives it.
class FieldError : public Error {
 public:
  FieldError(std::string field, const std::string& message) : Error(message), field(std::move(field)) {}
  std::string field;
};

// What the server allows a request to ask for.
struct RequestLimits {
  int max_beam_size = 8;
  int max_best_of = 8;
  bool word_timestamps = true;  // false with whisper.cpp semantics, which have none
};

// A transcription request, checked. Optional members are unset when the form did not
// have the field: the server's default applies.
struct TranscriptionRequest {
  std::optional<std::string_view> file;  // views the request body
  std::string model;
  std::string response_format = "json";
  std::string language;  // "" or "auto": detected
  std::string prompt;
  std::string hotwords;  // placed ahead of every window's prompt (faster-whisper's hotwords)
  std::optional<double> temperature;
  bool word_granularity = false;  // timestamp_granularities[] has "word": words in verbose_json
  bool include_timing = false;
  bool include_logprobs = false;  // include[]=logprobs: OpenAI's `logprobs` of the text tokens
  bool detect_language = false;  // answer the language and its probabilities, without transcribing
  // this server's decoding options
  std::optional<int> beam_size;
  std::optional<int> best_of;
  std::optional<double> temperature_inc;
  std::optional<double> no_speech_threshold;
  std::optional<double> compression_ratio_threshold;
  std::optional<double> logprob_threshold;
  std::optional<bool> condition_on_previous_text;
  std::optional<bool> no_timestamps;
  std::optional<bool> word_timestamps;
  std::optional<bool> vad;
  std::optional<vad::VadOptions> chunking_strategy;  // OpenAI's server_vad settings, or auto
  std::optional<double> vad_threshold;
  std::optional<vad::VadOptions> vad_options;  // VAD on: chunking_strategy, vad and vad_threshold together
  // OpenAI transcribe()'s skipping of silences around suspected hallucinations (seconds);
  // 0 turns a server default off. Computes word timings, shown only when asked for.
  std::optional<double> hallucination_silence_threshold;
  double offset = 0.0;                         // seconds of the file skipped
  std::optional<double> duration;              // seconds transcribed from `offset`

  // Word timings are computed: asked for by either field.
  bool wants_words() const { return word_granularity || word_timestamps.value_or(false); }
};

// Every field this server takes, OpenAI's and its own, for error messages and docs.
const std::vector<std::string_view>& known_fields();

// Parses the parts of the form. Throws FieldError naming the field at fault: an unknown
// field, a bad value, a value for what is not supported (stream=true),
// a missing file, options that contradict each other.
TranscriptionRequest parse_transcription_request(const std::vector<FormPart>& parts, const RequestLimits& limits);

// How the server applies a request's temperature: the schedule continues from it in
// steps of `increment` while `fallback` holds (serve --no-fallback, --temperature-increment).
struct TemperaturePolicy {
  bool fallback = true;
  double increment = 0.2;
};

// The request's options over the server's defaults. Seeded by the audio and the options,
// so the same request always gives the same output.
pipeline::TranscribeOptions transcribe_options(const TranscriptionRequest& request, bool translate,
                                               const pipeline::TranscribeOptions& defaults,
                                               const TemperaturePolicy& temperature);

}  // namespace amanuensis::server

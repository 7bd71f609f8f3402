// pipeline: renders a transcript in the formats users of Whisper expect (OpenAI's
// writers: txt, json, verbose_json, srt, vtt, tsv). Shared by the CLI and the server.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "pipeline/transcriber.h"

namespace amanuensis::pipeline {

enum class OutputFormat { Text, Json, VerboseJson, Srt, Vtt, Tsv };

OutputFormat parse_output_format(std::string_view name);  // throws Error naming the choices
std::string_view file_extension(OutputFormat format);     // "txt", "json", "srt", ...

std::string render(const Transcript& transcript, OutputFormat format);

// A text token of the transcript with its log-probability when it was sampled: OpenAI's
// `logprobs` entries. `bytes` is the token's raw bytes (a token may hold part of a UTF-8
// character).
struct TokenLogprob {
  std::string bytes;
  float logprob = 0.0f;
};

// The text tokens of every segment in order (special and timestamp tokens left out).
// Throws InternalError when a segment lacks its tokens' log-probabilities.
std::vector<TokenLogprob> text_token_logprobs(const Transcript& transcript, const text::Tokenizer& tokenizer);

// "HH:MM:SS,mmm" (srt) or "HH:MM:SS.mmm" (vtt); hours are always shown.
std::string format_timestamp(double seconds, char decimal_marker);

}  // namespace amanuensis::pipeline

// cli: the decoding flags that `transcribe` and `serve` share (OpenAI's DecodingOptions
// and transcribe() thresholds), parsed in one place.
#pragma once

#include <optional>
#include <set>
#include <string>
#include <vector>

#include "cli/args.h"
#include "pipeline/transcriber.h"

namespace amanuensis::cli {

extern const std::set<std::string> kDecodingFlags;    // flags without a value
extern const std::set<std::string> kDecodingOptions;  // options with a value
extern const char* const kDecodingUsage;

// Fills the decoding settings of `o` from the flags; `whisper_cpp` picks that mode's
// defaults (greedy, no fallback, whisper.cpp's suppressed set).
void apply_decoding_flags(const Args& args, bool whisper_cpp, pipeline::TranscribeOptions& o);

// 0.0 (or `start`), then `increment` steps up to 1.0 when falling back is allowed.
std::vector<float> temperature_schedule(double start, double increment, bool fallback);

// --vad and --vad-threshold (transcribe and serve): the VAD settings, or none without --vad.
std::optional<vad::VadOptions> vad_flags(const Args& args);

// The union of two name sets, for building an Args parser.
std::set<std::string> with(std::set<std::string> a, const std::set<std::string>& b);

}  // namespace amanuensis::cli

#include "cli/decoding_flags.h"

#include "common/error.h"

namespace amanuensis::cli {

const std::set<std::string> kDecodingFlags = {"no-context", "no-suppress-blank", "no-fallback"};
const std::set<std::string> kDecodingOptions = {
    "language",        "sample-len",        "suppress-tokens", "max-initial-timestamp",       "temperature",
    "temperature-increment", "best-of",     "beam-size",       "patience",                    "length-penalty",
    "seed",            "logprob-threshold", "no-speech-threshold", "compression-ratio-threshold"};

const char* const kDecodingUsage = R"(decoding options (transcribe and serve):
  --language CODE         spoken language for multilingual models (default: detected)
  --sample-len N          tokens sampled per window at most (default n_text_ctx/2 = 224)
  --suppress-tokens IDS   comma-separated ids to suppress; -1 = non-speech symbols (default -1)
  --no-suppress-blank     allow a blank or end-of-text as the first token
  --max-initial-timestamp S   latest first timestamp in seconds (default 1.0)
  --no-context            do not condition a window on the text of the previous ones
  --temperature T         first decoding temperature (default 0)
  --temperature-increment T   fallback step (default 0.2)
  --no-fallback           never retry a window at a higher temperature
  --best-of N             sampled candidates at temperatures above 0 (default 5)
  --beam-size N           beams at temperature 0 (default 5; 1 or 0 = greedy)
  --patience X            beam search patience (default 1.0)
  --length-penalty X      rank beams by ((5 + length) / 6) ** X instead of length
  --seed N                seed of the sampling generator (default 0; runs are reproducible)
  --compression-ratio-threshold X  fallback above this gzip ratio (default 2.4)
  --logprob-threshold X   fallback below this average log-probability (default -1.0)
  --no-speech-threshold X skip a window above this no-speech probability (default 0.6)
)";

std::vector<float> temperature_schedule(double start, double increment, bool fallback) {
  if (start < 0 || start > 1.0) throw Error("--temperature must be between 0 and 1");
  if (!fallback || increment <= 0) return {static_cast<float>(start)};
  std::vector<float> temperatures;
  for (double t = start; t <= 1.0 + 1e-6; t += increment) temperatures.push_back(static_cast<float>(t));
  return temperatures;
}

void apply_decoding_flags(const Args& args, bool whisper_cpp, pipeline::TranscribeOptions& o) {
  auto& d = o.decode;
  d.language = args.get_or("language", "");
  d.sample_len = args.get_int("sample-len", 0);
  if (d.sample_len < 0) throw Error("--sample-len must be positive");
  d.suppress_tokens = args.get_or("suppress-tokens", whisper_cpp ? "" : "-1");
  d.suppress_blank = !args.flag("no-suppress-blank");
  d.max_initial_timestamp = args.get_double("max-initial-timestamp", 1.0);
  o.condition_on_previous_text = !args.flag("no-context");
  o.temperatures = temperature_schedule(args.get_double("temperature", 0.0), args.get_double("temperature-increment", 0.2),
                                        !(args.flag("no-fallback") || whisper_cpp));
  // Bounded: each candidate or beam is a sequence with its own KV cache decoded every
  // step, so thousands would take the machine's memory and minutes per second of audio.
  constexpr int kMaxCandidates = 32;
  o.best_of = args.get_int("best-of", 5);
  if (o.best_of < 1 || o.best_of > kMaxCandidates)
    throw Error("--best-of must be between 1 and " + std::to_string(kMaxCandidates));
  const int beam_size = args.get_int("beam-size", whisper_cpp ? 0 : 5);
  if (beam_size < 0 || beam_size > kMaxCandidates)
    throw Error("--beam-size must be between 0 and " + std::to_string(kMaxCandidates) + " (0 or 1: greedy)");
  o.beam.reset();
  if (beam_size > 1) {
    decoding::BeamOptions beam;
    beam.beam_size = beam_size;
    beam.patience = args.get_double("patience", 1.0);
    if (args.get("length-penalty")) beam.length_penalty = args.get_double("length-penalty", 0.0);
    o.beam = beam;
  }
  o.seed = static_cast<std::uint64_t>(args.get_int("seed", 0));
  o.thresholds.compression_ratio = args.get_double("compression-ratio-threshold", 2.4);
  o.thresholds.logprob = args.get_double("logprob-threshold", -1.0);
  o.thresholds.no_speech = args.get_double("no-speech-threshold", 0.6);
}

std::optional<vad::VadOptions> vad_flags(const Args& args) {
  if (args.get("vad-threshold") && !args.flag("vad")) throw Error("--vad-threshold needs --vad");
  if (!args.flag("vad")) return std::nullopt;
  vad::VadOptions v;
  v.threshold = args.get_double("vad-threshold", v.threshold);
  if (!(v.threshold > 0.0 && v.threshold < 1.0)) throw Error("--vad-threshold must be between 0 and 1");
  return v;
}

std::set<std::string> with(std::set<std::string> a, const std::set<std::string>& b) {
  a.insert(b.begin(), b.end());
  return a;
}

}  // namespace amanuensis::cli

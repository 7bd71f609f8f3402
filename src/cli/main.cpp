// cli: the `amanuensis` command: transcribe files, dump decoder logits for conformance.
#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "audio/wav.h"
#include "cli/args.h"
#include "common/error.h"
#include "kernels/cpu/thread_pool.h"
#include "mel/log_mel.h"
#include "pipeline/transcriber.h"

namespace amanuensis::cli {
namespace {

constexpr const char* kUsage = R"(amanuensis - Whisper speech recognition

usage:
  amanuensis transcribe --model MODEL.bin [options] FILE.wav [FILE.wav ...]
  amanuensis dump-logits --model MODEL.bin (--audio FILE.wav | --mel MEL.f32) --tokens ID,ID,... --out OUT.f32
  amanuensis --help | --version

transcribe options:
  --output-format FMT     txt (default) or json
  --no-timestamps         decode without timestamp tokens
  --language CODE         spoken language for multilingual models (default en)
  --task TASK             transcribe (default) or translate
  --prompt TEXT           initial prompt (previous-context text)
  --no-context            do not condition a window on the text of the previous ones
  --sample-len N          tokens sampled per window at most (default n_text_ctx/2 = 224)
  --suppress-tokens IDS   comma-separated ids to suppress; -1 = non-speech symbols (default -1)
  --no-suppress-blank     allow a blank or end-of-text as the first token
  --max-initial-timestamp S   latest first timestamp in seconds (default 1.0)
  --compat whisper.cpp    follow whisper.cpp's whisper_full() instead of OpenAI's transcribe():
                          its suppressed tokens and timestamp rules, 220 tokens per window,
                          no conditioning on previous text, its segmentation and seeking
  --threads N             compute threads (default: all cores)
)";

std::vector<float> read_audio(const std::string& path) { return audio::read_wav_file(path); }

void apply_common_options(const Args& args) {
  if (auto threads = args.get("threads")) {
    const int n = args.get_int("threads", 0);
    if (n < 1) throw Error("--threads must be at least 1");
    kernels::cpu::set_thread_count(n);
  }
}

pipeline::TranscribeOptions transcribe_options(const Args& args, const pipeline::Model& model) {
  pipeline::TranscribeOptions o;
  auto& d = o.decode;
  d.semantics = decoding::parse_semantics(args.get_or("compat", "openai"));
  const bool whisper_cpp = d.semantics == decoding::Semantics::WhisperCpp;
  d.timestamps = !args.flag("no-timestamps");
  d.language = args.get_or("language", "en");
  d.task = args.get_or("task", "transcribe");
  d.sample_len = args.get_int("sample-len", whisper_cpp ? model.hparams().n_text_ctx / 2 - 4 : 0);
  if (d.sample_len < 0) throw Error("--sample-len must be positive");
  d.suppress_tokens = args.get_or("suppress-tokens", whisper_cpp ? "" : "-1");
  d.suppress_blank = !args.flag("no-suppress-blank");
  d.max_initial_timestamp = args.get_double("max-initial-timestamp", 1.0);
  o.condition_on_previous_text = !(args.flag("no-context") || whisper_cpp);
  o.initial_prompt = args.get_or("prompt", "");
  return o;
}

std::string format_time(double seconds) {
  if (seconds < 0) seconds = 0;
  const auto ms = static_cast<long long>(seconds * 1000.0 + 0.5);
  char buf[32];
  std::snprintf(buf, sizeof buf, "%02lld:%02lld:%02lld.%03lld", ms / 3600000, ms / 60000 % 60, ms / 1000 % 60, ms % 1000);
  return buf;
}

nlohmann::json transcript_json(const pipeline::Transcript& t) {
  nlohmann::json segments = nlohmann::json::array();
  for (const auto& s : t.segments) {
    segments.push_back({{"id", s.id}, {"seek", s.seek}, {"start", s.start}, {"end", s.end}, {"text", s.text},
                        {"tokens", s.tokens}, {"avg_logprob", s.avg_logprob}, {"no_speech_prob", s.no_speech_prob}});
  }
  return {{"text", t.text}, {"language", t.language}, {"duration", t.duration}, {"segments", segments}};
}

int run_transcribe(const Args& args) {
  apply_common_options(args);
  if (args.positional().empty()) throw Error("transcribe needs at least one audio file");
  const std::string format = args.get_or("output-format", "txt");
  if (format != "txt" && format != "json") throw Error("unknown --output-format '" + format + "' (use txt or json)");
  const auto model = pipeline::Model::load(args.required("model"));
  const auto options = transcribe_options(args, *model);
  int failures = 0;
  for (const auto& file : args.positional()) {
    try {
      const auto transcript = pipeline::transcribe(*model, read_audio(file), options);
      if (format == "json") {
        std::cout << transcript_json(transcript).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
      } else if (options.decode.timestamps) {
        for (const auto& s : transcript.segments)
          std::cout << "[" << format_time(s.start) << " --> " << format_time(s.end) << "] " << s.text << "\n";
      } else {
        std::cout << transcript.text << "\n";
      }
    } catch (const Error& e) {
      std::cerr << "amanuensis: " << file << ": " << e.what() << "\n";
      ++failures;
    }
  }
  return failures == 0 ? 0 : 1;
}

std::vector<nn::TokenId> parse_token_list(const std::string& list) {
  std::vector<nn::TokenId> tokens;
  std::size_t pos = 0;
  while (pos <= list.size()) {
    auto comma = list.find(',', pos);
    if (comma == std::string::npos) comma = list.size();
    const std::string item = list.substr(pos, comma - pos);
    try {
      std::size_t used = 0;
      tokens.push_back(std::stoi(item, &used));
      if (used != item.size()) throw std::invalid_argument(item);
    } catch (const std::exception&) {
      throw Error("--tokens: '" + item + "' is not a token id");
    }
    pos = comma + 1;
  }
  return tokens;
}

std::vector<float> read_mel_file(const std::string& path, int n_mels) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) throw Error("cannot open mel file " + path);
  const auto expected = static_cast<std::streamoff>(n_mels) * mel::kChunkFrames * sizeof(float);
  if (in.tellg() != expected) {
    throw Error("mel file " + path + " has " + std::to_string(static_cast<long long>(in.tellg())) + " bytes; the model needs " +
                std::to_string(n_mels) + " x 3000 float32 = " + std::to_string(static_cast<long long>(expected)));
  }
  std::vector<float> mel(static_cast<std::size_t>(n_mels) * mel::kChunkFrames);
  in.seekg(0);
  in.read(reinterpret_cast<char*>(mel.data()), expected);
  return mel;
}

int run_dump_logits(const Args& args) {
  apply_common_options(args);
  const auto model = pipeline::Model::load(args.required("model"));
  const int n_mels = model->hparams().n_mels;
  std::vector<float> mel_window;
  if (auto mel_path = args.get("mel")) {
    mel_window = read_mel_file(*mel_path, n_mels);
  } else if (auto audio_path = args.get("audio")) {
    auto samples = read_audio(*audio_path);
    if (samples.size() > mel::kChunkSamples) samples.resize(mel::kChunkSamples);
    mel_window = mel::log_mel_spectrogram(samples, model->file().mel_filters(), n_mels,
                                          mel::kChunkSamples - samples.size()).data;
  } else {
    throw Error("dump-logits needs --audio FILE.wav or --mel MEL.f32");
  }
  const auto tokens = parse_token_list(args.required("tokens"));
  const auto features = model->encoder().encode(mel_window);
  const auto cross = model->decoder().cross_attention(features);
  auto cache = model->decoder().new_cache();
  const auto logits = model->decoder().forward(tokens, cache, cross, /*all_rows=*/true);
  const std::string out_path = args.required("out");
  std::ofstream out(out_path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(logits.data()), static_cast<std::streamsize>(logits.size() * sizeof(float)));
  if (!out) throw Error("cannot write " + out_path);
  std::cerr << "wrote " << tokens.size() << " x " << model->hparams().n_vocab << " logits to " << out_path << "\n";
  return 0;
}

int run(const std::vector<std::string>& argv) {
  if (argv.empty() || argv[0] == "--help" || argv[0] == "-h" || argv[0] == "help") {
    std::cout << kUsage;
    return argv.empty() ? 2 : 0;
  }
  if (argv[0] == "--version") {
    std::cout << "amanuensis 0.1.0\n";
    return 0;
  }
  const std::string command = argv[0];
  const std::vector<std::string> rest(argv.begin() + 1, argv.end());
  if (command == "transcribe") {
    Args args(rest, {"no-timestamps", "no-context", "no-suppress-blank"},
              {"model", "output-format", "language", "task", "prompt", "sample-len", "suppress-tokens",
               "max-initial-timestamp", "compat", "threads"});
    return run_transcribe(args);
  }
  if (command == "dump-logits") {
    Args args(rest, {}, {"model", "audio", "mel", "tokens", "out", "threads"});
    return run_dump_logits(args);
  }
  throw Error("unknown command '" + command + "' (try --help)");
}

}  // namespace
}  // namespace amanuensis::cli

int main(int argc, char** argv) {
  try {
    return amanuensis::cli::run(std::vector<std::string>(argv + 1, argv + argc));
  } catch (const amanuensis::Error& e) {
    std::cerr << "amanuensis: " << e.what() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "amanuensis: internal error: " << e.what() << "\n";
    return 70;
  }
}

// cli: the `amanuensis` command: transcribe files, dump decoder logits for conformance.
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <functional>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <iostream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "audio/decode.h"
#include "cli/args.h"
#include "cli/bench.h"
#include "cli/compute_flags.h"
#include "cli/decoding_flags.h"
#include "cli/download.h"
#include "cli/loadtest.h"
#include "cli/model_cache.h"
#include "cli/serve.h"
#include "common/error.h"
#include "kernels/backend.h"
#include "kernels/cpu/thread_pool.h"
#include "mel/log_mel.h"
#include "model/quantize.h"
#include "pipeline/output_formats.h"
#include "pipeline/transcriber.h"

namespace amanuensis::cli {
namespace {

constexpr const char* kUsage = R"(amanuensis - Whisper speech recognition

usage:
  amanuensis transcribe --model MODEL.bin [options] FILE [FILE ...]   (FILE "-" reads standard input)
  amanuensis dump-logits --model MODEL.bin (--audio FILE.wav | --mel MEL.f32) --tokens ID,ID,... --out OUT.f32
  amanuensis serve --model MODEL.bin [--model MODEL2.bin ...] [--host ADDR] [--port N] [options]   (HTTP API, see below)
  amanuensis bench --model MODEL.bin [options]   (stage timings; --help for its options)
  amanuensis loadtest --url http://HOST:PORT [options] FILE [FILE ...]   (load a running server, see below)
  amanuensis quantize IN.bin OUT.bin TYPE   (TYPE: q8_0, q5_0, q5_1, q4_0 or q4_1; IN f32 or f16)
  amanuensis download NAME [NAME ...] | --list   (official models into the model cache, see below)
  amanuensis --help | --version

MODEL is a ggml .bin file or a model name: tiny, tiny.en, base, base.en, small, small.en,
medium, medium.en, large-v1, large-v2, large-v3, large-v3-turbo (and their -q5_0 files),
or any NAME whose ggml-NAME.bin is in the model cache ($XDG_CACHE_HOME/amanuensis, else
~/.cache/amanuensis), where `amanuensis download NAME` puts it.

transcribe options:
  --output-format FMT     txt (default), json, verbose_json, srt, vtt or tsv
  --output-dir DIR        write one file per input (NAME.FMT) instead of printing
  --no-timestamps         decode without timestamp tokens
  --task TASK             transcribe (default) or translate
  --prompt TEXT           initial prompt (previous-context text)
  --hotwords TEXT         words put ahead of every window's prompt (names, terms), as faster-whisper
  --compat whisper.cpp    follow whisper.cpp's whisper_full() instead of OpenAI's transcribe():
                          its suppressed tokens and timestamp rules, 220 tokens per window,
                          no temperature fallback, its context, segmentation and seeking
  --vad                   decode only the stretches with speech (built-in detector)
  --vad-threshold X       speech score threshold of the detector (default 0.5)
  --word-timestamps       word-level times from cross-attention alignment (verbose_json "words")
  --hallucination-silence-threshold S   with word timestamps: skip silences longer than S
                          around suspected hallucinations
  --max-audio-seconds S   refuse a file whose audio is longer (checked while decoding; default 0:
                          no limit)
  --pcm-rate HZ           FILE "-" is raw little-endian PCM at this rate
  --pcm-channels N        channels of the raw PCM (default 1)
  --pcm-format FMT        s16 (default) or f32
  --threads N             compute threads (default: all cores)
  --precision P           matrix arithmetic: auto (default), fp32, bf16 or int8; auto is bf16
                          where it runs fast (AMX-BF16; AVX512_BF16 on AMD), else int8 for
                          quantized models on CPUs with VNNI, else fp32
  --max-isa CAP           the most the kernels may use: native (default), avx512 (no AMX),
                          avx2 (no AVX-512: an AVX2-only machine's paths) or baseline (no AVX)

Audio files of any common format are decoded with FFmpeg's libraries (wav, flac, mp3,
ogg/opus, m4a/aac, webm, mp4) and resampled to 16 kHz mono.
)";

// --max-audio-seconds: 0 (the default) lets a local file be as long as it is.
audio::DecodeLimits decode_limits(const Args& args) {
  const double max = args.get_double("max-audio-seconds", 0.0);
  if (!(max >= 0.0 && max <= 86400.0 * 365))
    throw Error("--max-audio-seconds must be between 0 (no limit) and a year, in seconds");
  return {max};
}

// The file's audio, decoded as it is read (raw PCM from standard input is in memory anyway).
std::unique_ptr<audio::AudioReader> open_input(const std::string& path, const Args& args) {
  const auto limits = decode_limits(args);
  if (path != "-" || !args.get("pcm-rate")) return audio::open_audio_file(path, limits);
  const std::string format = args.get_or("pcm-format", "s16");
  if (format != "s16" && format != "f32") throw Error("--pcm-format must be s16 or f32");
  std::vector<char> bytes(std::istreambuf_iterator<char>(std::cin), {});
  audio::DecodeReport report;
  auto samples = audio::decode_raw_pcm(std::as_bytes(std::span(bytes)),
                                       format == "s16" ? audio::PcmFormat::S16 : audio::PcmFormat::F32,
                                       args.get_int("pcm-rate", 16000), args.get_int("pcm-channels", 1), &report, limits);
  return audio::reader_over(std::move(samples), report.non_finite_samples);
}

// Runs `work` on the file's audio, which it reads as it goes: a file found broken or too
// long on the way is an error naming it.
template <typename Work>
auto with_input(const std::string& path, const Args& args, Work&& work) {
  try {
    const auto audio = open_input(path, args);
    auto result = [&] {
      try {
        return work(*audio);
      } catch (const audio::AudioTooLong&) {
        throw;
      } catch (const Error& e) {
        throw Error(path + ": " + e.what());
      }
    }();
    if (const std::size_t replaced = audio->non_finite_samples())
      std::fprintf(stderr, "amanuensis: warning: %s: %zu NaN or infinite samples replaced by silence\n", path.c_str(),
                   replaced);
    return result;
  } catch (const audio::AudioTooLong& e) {
    throw Error(path + ": " + e.what() + " (--max-audio-seconds)");
  }
}

void apply_common_options(const Args& args) {
  apply_thread_flag(args);
  apply_isa_flag(args);
}

pipeline::TranscribeOptions transcribe_options(const Args& args) {
  pipeline::TranscribeOptions o;
  o.decode.semantics = decoding::parse_semantics(args.get_or("compat", "openai"));
  const bool whisper_cpp = o.decode.semantics == decoding::Semantics::WhisperCpp;
  apply_decoding_flags(args, whisper_cpp, o);
  o.decode.timestamps = !args.flag("no-timestamps");
  o.decode.task = args.get_or("task", "transcribe");
  o.initial_prompt = args.get_or("prompt", "");
  o.hotwords = args.get_or("hotwords", "");
  o.word_timestamps = args.flag("word-timestamps");
  o.vad = vad_flags(args);
  if (args.get("hallucination-silence-threshold")) {
    if (!o.word_timestamps) throw Error("--hallucination-silence-threshold needs --word-timestamps");
    o.hallucination_silence_threshold = args.get_double("hallucination-silence-threshold", 0.0);
  }
  if (o.word_timestamps && whisper_cpp) throw Error("--word-timestamps follows OpenAI's semantics; drop --compat");
  return o;
}

void write_output(const std::string& input, const std::string& rendered, pipeline::OutputFormat format,
                  const std::optional<std::string>& output_dir) {
  if (!output_dir) {
    std::cout << rendered << std::flush;
    return;
  }
  const std::string stem = input == "-" ? "stdin" : std::filesystem::path(input).stem().string();
  const auto path = std::filesystem::path(*output_dir) / (stem + "." + std::string(pipeline::file_extension(format)));
  std::ofstream out(path, std::ios::binary);
  out << rendered;
  if (!out) throw Error("cannot write " + path.string());
  std::cerr << "wrote " << path.string() << "\n";
}

// --output-dir must be a directory this process can write to: checked (and created)
// before any work, not after a long transcription.
void prepare_output_dir(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec || !std::filesystem::is_directory(dir))
    throw Error("--output-dir " + dir + " is not a directory that can be created" + (ec ? " (" + ec.message() + ")" : ""));
  if (::access(dir.c_str(), W_OK | X_OK) != 0) throw Error("--output-dir " + dir + " is not writable");
}

// A one-line progress bar on the terminal; silent when output goes to a file or pipe.
std::function<void(double, double)> progress_bar(const std::string& name) {
  if (!isatty(STDOUT_FILENO) || !isatty(STDERR_FILENO)) return {};
  return [name](double done, double total) {
    constexpr int kWidth = 30;
    const double fraction = total > 0 ? std::min(1.0, done / total) : 1.0;
    const int filled = static_cast<int>(fraction * kWidth);
    std::fprintf(stderr, "\r%s [%s%s] %3d%% %s / %s%s", name.c_str(), std::string(filled, '#').c_str(),
                 std::string(kWidth - filled, '.').c_str(), static_cast<int>(fraction * 100),
                 pipeline::format_timestamp(done, '.').c_str(), pipeline::format_timestamp(total, '.').c_str(),
                 fraction >= 1.0 ? "\n" : "");
    std::fflush(stderr);
  };
}

int run_transcribe(const Args& args) {
  apply_common_options(args);
  if (args.positional().empty()) throw Error("transcribe needs at least one audio file");
  const auto format = pipeline::parse_output_format(args.get_or("output-format", "txt"));
  if (const auto dir = args.get("output-dir")) prepare_output_dir(*dir);
  (void)decode_limits(args);  // a bad value is refused before any work, not once per file
  const auto model = pipeline::Model::load(resolve_model(args.required("model")), load_options(args));
  const auto options = transcribe_options(args);
  int failures = 0;
  for (const auto& file : args.positional()) {
    try {
      auto file_options = options;
      file_options.progress = progress_bar(file == "-" ? "stdin" : std::filesystem::path(file).filename().string());
      const auto transcript =
          with_input(file, args, [&](SampleSource& audio) { return pipeline::transcribe(*model, audio, file_options); });
      write_output(file, pipeline::render(transcript, format), format, args.get("output-dir"));
    } catch (const Error& e) {
      std::cerr << "amanuensis: " << e.what() << "\n";
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
  if (static_cast<std::streamoff>(in.tellg()) != static_cast<std::streamoff>(expected)) {
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
  const auto model = pipeline::Model::load(resolve_model(args.required("model")), load_options(args));
  const int n_mels = model->hparams().n_mels;
  std::vector<float> mel_window;
  if (auto mel_path = args.get("mel")) {
    mel_window = read_mel_file(*mel_path, n_mels);
  } else if (auto audio_path = args.get("audio")) {
    auto samples = with_input(*audio_path, args, [](SampleSource& audio) { return read_remaining(audio); });
    if (samples.size() > mel::kChunkSamples) samples.resize(mel::kChunkSamples);
    mel_window = mel::log_mel_spectrogram(samples, model->file().mel_filters(), n_mels,
                                          mel::kChunkSamples - samples.size()).data;
  } else {
    throw Error("dump-logits needs --audio FILE.wav or --mel MEL.f32");
  }
  const auto tokens = parse_token_list(args.required("tokens"));
  const auto features = model->encoder().encode(mel_window);
  const auto cross = model->decoder().cross_attention(features);
  auto cache = model->decoder().new_sequence();
  const auto logits = model->decoder().forward(tokens, cache, cross, /*all_rows=*/true);
  const std::string out_path = args.required("out");
  std::ofstream out(out_path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(logits.data()), static_cast<std::streamsize>(logits.size() * sizeof(float)));
  if (!out) throw Error("cannot write " + out_path);
  std::cerr << "wrote " << tokens.size() << " x " << model->hparams().n_vocab << " logits to " << out_path << "\n";
  return 0;
}

// Writes IN quantized to TYPE as OUT, byte for byte what whisper.cpp's quantize tool makes.
int run_quantize(const Args& args) {
  const auto& files = args.positional();
  if (files.size() != 3) throw Error("usage: amanuensis quantize IN.bin OUT.bin TYPE (TYPE: q8_0, q5_0, q5_1, q4_0, q4_1)");
  const auto type = model::parse_quantization_type(files[2]);
  const auto summary = model::quantize_model_file(files[0], files[1], type);
  const auto megabytes = [](std::size_t bytes) {
    char text[32];
    std::snprintf(text, sizeof text, "%.2f MB", bytes / 1e6);
    return std::string(text);
  };
  std::cerr << "quantized " << summary.quantized << " of " << summary.tensors << " tensors from "
            << model::tensor_type_name(summary.source_type) << " to " << model::tensor_type_name(type) << ": "
            << files[0] << " (" << megabytes(summary.bytes_in) << ") -> " << files[1] << " ("
            << megabytes(summary.bytes_out) << ")\n";
  return 0;
}

int run(const std::vector<std::string>& argv) {
  if (argv.empty() || argv[0] == "--help" || argv[0] == "-h" || argv[0] == "help") {
    std::cout << kUsage << "\n" << kDecodingUsage << "\n" << kServeUsage << "\n" << kLoadtestUsage << "\n" << kDownloadUsage;
    return argv.empty() ? 2 : 0;
  }
  if (argv[0] == "--version") {
    std::cout << "amanuensis 0.1.0\n";
    return 0;
  }
  const std::string command = argv[0];
  const std::vector<std::string> rest(argv.begin() + 1, argv.end());
  // `amanuensis COMMAND --help`: that command's options (bench and loadtest answer it
  // themselves)
  const bool help = std::any_of(rest.begin(), rest.end(), [](const std::string& a) { return a == "--help" || a == "-h"; });
  if (help && (command == "transcribe" || command == "dump-logits" || command == "quantize")) {
    std::cout << kUsage << (command == "transcribe" ? std::string("\n") + kDecodingUsage : std::string());
    return 0;
  }
  if (help && command == "serve") {
    std::cout << kServeUsage << "\n" << kDecodingUsage;
    return 0;
  }
  if (help && command == "download") {
    std::cout << kDownloadUsage;
    return 0;
  }
  if (command == "transcribe") {
    Args args(rest, with({"no-timestamps", "word-timestamps", "vad"}, kDecodingFlags),
              with({"model", "output-format", "output-dir", "task", "prompt", "hotwords", "compat", "threads", "pcm-rate",
                    "pcm-channels", "pcm-format", "hallucination-silence-threshold", "vad-threshold", "precision",
                    "max-audio-seconds", "max-isa"},
                   kDecodingOptions));
    return run_transcribe(args);
  }
  if (command == "serve") {
    return run_serve(rest);
  }
  if (command == "bench") return run_bench(rest);
  if (command == "loadtest") return run_loadtest(rest);
  if (command == "quantize") return run_quantize(Args(rest, {}, {}));
  if (command == "download") return run_download(rest);
  if (command == "dump-logits") {
    Args args(rest, {}, {"model", "audio", "mel", "tokens", "out", "threads", "pcm-rate", "pcm-channels", "pcm-format",
                         "precision", "max-isa"});
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

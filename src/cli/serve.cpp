#include "cli/serve.h"

#include <cstdio>
#include <filesystem>
#include <iostream>

#include "audio/ffmpeg_log.h"
#include "cli/args.h"
#include "cli/compute_flags.h"
#include "cli/decoding_flags.h"
#include "cli/model_cache.h"
#include "common/error.h"
#include "kernels/cpu/thread_pool.h"
#include "server/rate_limited_log.h"
#include "server/server.h"

namespace amanuensis::cli {

const char* const kServeUsage = R"(serve options (OpenAI-compatible HTTP API: POST /v1/audio/transcriptions,
/v1/audio/translations; GET /v1/models, /health, /metrics):
  --host ADDR             address to listen on (default 127.0.0.1)
  --port N                port (default 8080; 0 = any free port, printed at start)
  --threads N             compute threads (default: all cores)
  --precision P           matrix arithmetic: auto (default), fp32, bf16 or int8; auto is bf16
                          where it runs fast (AMX-BF16; AVX512_BF16 on AMD), else int8 for
                          quantized models on CPUs with VNNI, else fp32
  --max-isa CAP           the most the kernels may use: native (default), avx512, avx2, baseline
  --workers N             transcriptions decoded at once (per model); their decoder steps run
                          as one batch and their encoder windows share one queue (default 8)
  --max-queue-seconds S   audio waiting for a free slot at most (per model), else 429 (default 600)
  --max-admitted-seconds S  audio of the requests running and waiting together, at most (per
                          model), else 429; one request alone is always taken (default 21600;
                          0 = no bound)
  --max-kv-mb N           decoder memory of the transcriptions running at once (per model): each
                          counts its KV blocks and one window's audio states at their most
                          (more for beams and best_of); a request waits in the queue until its
                          share fits, and one that alone needs more is refused with 400
                          (default 8192: 8 large-v3 requests with fallback; 0 = no bound)
  --max-audio-seconds S   longest audio a request may hold, checked while it is decoded, else
                          413 audio_too_long (default 10800 = 3 h; 0 = no limit)
  --max-upload-mb N       largest upload accepted, else 413 (default 25)
  --api-key KEY           require "Authorization: Bearer KEY" on /v1/*
  --request-timeout S     seconds to send a request's body, and at most to wait in the queue
                          (default 300)
  --header-timeout S      seconds a connection has to send a complete request header, else it
                          is closed (default 10)
  --keep-alive-timeout S  seconds a kept-alive connection may wait for its next request
                          (default 30)
  --max-connections N     connections open at once; one more is answered 503
                          too_many_connections and closed (default 256)
  --model M               a model to serve, by name or path; repeat it to serve several: a
                          request's `model` field picks one by id (its catalog name, as in
                          `--model tiny.en`, else its file name without .bin), whisper-1
                          means the first. The first loads at start, the others on first use
  --model-id NAME         the id of the model (one --model only; default as above)
  --model-idle-unload S   unload a model after S seconds without requests; it loads again on
                          the next request (default 0: never)
  --max-loaded-models N   models loaded at once: loading one more unloads the least recently
                          used idle one; when all have requests, 503 model_capacity with
                          Retry-After (default: all of them)
  --max-beam-size N       largest beam_size a request may ask for (default 8)
  --max-best-of N         largest best_of a request may ask for (default 8)
  --vad                   decode only the stretches with speech (default of a request's `vad`)
  --vad-threshold X       speech threshold of --vad, between 0 and 1 (default 0.5)
  --hallucination-silence-threshold S   skip silences longer than S seconds around suspected
                          hallucinations (computes word timings; default of a request's field)
  and the decoding options above: the defaults of every request
)";

namespace {

int positive_int(const Args& args, const std::string& name, int fallback, int min) {
  const int v = args.get_int(name, fallback);
  if (v < min) throw Error("--" + name + " must be at least " + std::to_string(min));
  return v;
}

// A bound in seconds where 0 means none: at most a year (larger values are typos, and some
// overflow the conversions to nanoseconds), never negative or NaN.
double seconds_or_none(const Args& args, const std::string& name, double fallback) {
  const double v = args.get_double(name, fallback);
  if (!(v >= 0.0 && v <= 86400.0 * 365))
    throw Error("--" + name + " must be between 0 (no limit) and a year, in seconds (got " + *args.get(name) + ")");
  return v;
}

// A timeout: positive, and a day at most (the deadlines are kept in nanoseconds, where
// 1e10 s and more overflow); inf and negative values are refused, NaN by get_double.
double timeout_seconds(const Args& args, const std::string& name, double fallback) {
  const double v = args.get_double(name, fallback);
  if (!(v > 0.0 && v <= 86400.0))
    throw Error("--" + name + " must be between 0 and 86400 seconds (got " + *args.get(name) + ")");
  return v;
}

// The id a --model argument serves under: the name itself when it named a model of the
// cache (`--model tiny.en`), else the file name without its extension.
std::string model_id_of(const std::string& argument, const std::filesystem::path& resolved) {
  if (resolved != std::filesystem::path(argument)) return argument;
  return resolved.stem().string();
}

// Every --model, resolved, with its id; the load itself waits for the server.
std::vector<server::ModelSpec> served_models(const Args& args) {
  const auto arguments = args.get_all("model");
  if (arguments.empty()) throw Error("missing required option --model");
  const auto given_id = args.get("model-id");
  if (given_id && arguments.size() > 1)
    throw Error("--model-id names the only model; with several --model options each model's id is its catalog "
                "name or file name (see GET /v1/models)");
  std::vector<server::ModelSpec> models;
  for (const auto& argument : arguments) {
    server::ModelSpec spec;
    spec.path = resolve_model(argument);
    std::error_code ec;
    if (!std::filesystem::is_regular_file(spec.path, ec))
      throw Error("--model " + argument + ": no such model file (" + spec.path.string() + ")");
    spec.id = given_id && !given_id->empty() ? *given_id : model_id_of(argument, spec.path);
    models.push_back(std::move(spec));
  }
  return models;
}

}  // namespace

int run_serve(const std::vector<std::string>& argv) {
  Args args(argv, with(kDecodingFlags, {"vad"}),
            with({"model", "host", "port", "threads", "workers", "max-queue-seconds", "max-upload-mb", "api-key",
                  "request-timeout", "model-id", "io-threads", "precision", "model-idle-unload",
                  "max-loaded-models", "max-beam-size", "max-best-of", "vad-threshold", "max-audio-seconds",
                  "max-admitted-seconds", "hallucination-silence-threshold", "header-timeout", "keep-alive-timeout",
                  "max-connections", "max-kv-mb", "max-isa"},
                 kDecodingOptions));
  if (!args.positional().empty()) throw Error("serve takes no positional arguments (got '" + args.positional()[0] + "')");
  server::ServerOptions o;
  o.models = served_models(args);
  o.load_options = load_options(args);
  o.host = args.get_or("host", "127.0.0.1");
  const int port = args.get_int("port", 8080);
  if (port < 0 || port > 65535) throw Error("--port must be between 0 and 65535");
  o.port = static_cast<unsigned short>(port);
  apply_thread_flag(args);
  apply_isa_flag(args);
  o.workers = positive_int(args, "workers", 8, 1);
  o.io_threads = positive_int(args, "io-threads", 2, 1);
  o.max_queue_seconds = args.get_double("max-queue-seconds", 600.0);
  if (!(o.max_queue_seconds > 0)) throw Error("--max-queue-seconds must be positive");
  o.max_audio_seconds = seconds_or_none(args, "max-audio-seconds", 3 * 3600.0);
  o.max_admitted_seconds = seconds_or_none(args, "max-admitted-seconds", 6 * 3600.0);
  const int kv_mb = args.get_int("max-kv-mb", 8192);
  if (kv_mb < 0) throw Error("--max-kv-mb must be 0 (no bound) or a number of megabytes");
  o.max_kv_bytes = std::int64_t{kv_mb} << 20;
  const int upload_mb = positive_int(args, "max-upload-mb", 25, 1);
  o.max_upload_bytes = static_cast<std::size_t>(upload_mb) << 20;
  o.api_key = args.get_or("api-key", "");
  o.request_timeout = timeout_seconds(args, "request-timeout", 300.0);
  o.header_timeout = timeout_seconds(args, "header-timeout", 10.0);
  o.keep_alive_timeout = timeout_seconds(args, "keep-alive-timeout", 30.0);
  o.max_connections = static_cast<std::size_t>(positive_int(args, "max-connections", 256, 1));
  o.model_idle_unload = args.get_double("model-idle-unload", 0.0);
  if (!(o.model_idle_unload >= 0.0 && o.model_idle_unload <= 86400.0 * 365))
    throw Error("--model-idle-unload must be between 0 (never) and a year, in seconds");
  o.max_loaded_models = static_cast<std::size_t>(
      positive_int(args, "max-loaded-models", static_cast<int>(o.models.size()), 1));

  apply_decoding_flags(args, /*whisper_cpp=*/false, o.defaults);
  // a request's own temperature starts the fallback schedule
  o.temperature_fallback = !args.flag("no-fallback");
  o.temperature_increment = args.get_double("temperature-increment", 0.2);
  o.max_beam_size = positive_int(args, "max-beam-size", 8, 1);
  o.max_best_of = positive_int(args, "max-best-of", 8, 1);
  const int beam_size = o.defaults.beam ? o.defaults.beam->beam_size : 1;
  if (beam_size > o.max_beam_size)
    throw Error("--beam-size " + std::to_string(beam_size) + " is above --max-beam-size " + std::to_string(o.max_beam_size));
  if (o.defaults.best_of > o.max_best_of)
    throw Error("--best-of " + std::to_string(o.defaults.best_of) + " is above --max-best-of " + std::to_string(o.max_best_of));
  o.defaults.vad = vad_flags(args);
  if (args.get("hallucination-silence-threshold")) {
    const double t = args.get_double("hallucination-silence-threshold", 0.0);
    if (!(t >= 0.0 && t <= 3600.0))
      throw Error("--hallucination-silence-threshold must be between 0 (off) and 3600 seconds");
    if (t > 0) {
      o.defaults.hallucination_silence_threshold = t;
      o.defaults.word_timestamps = true;  // the silences are found between the words
    }
  }

  // FFmpeg writes a line to stderr for every damaged packet of an upload, and the uploads are
  // the clients': its lines go through the server's log, prefixed and rate-limited. Both
  // outlive the server, whose threads decode.
  server::RateLimitedLog ffmpeg_log("amanuensis serve: ffmpeg: ", /*lines_per_second=*/2.0, /*burst=*/20.0);
  audio::FfmpegLogRoute ffmpeg_route([&ffmpeg_log](std::string_view line) { ffmpeg_log.line(line); });
  server::Server srv(o);
  std::string others;
  for (std::size_t i = 1; i < o.models.size(); ++i) others += ", " + o.models[i].id;
  if (!others.empty()) others = "; on first use:" + others.substr(1);
  const int status = srv.run([&](unsigned short bound) {
    std::printf("amanuensis serve: listening on http://%s:%u (model %s, loading%s)\n", o.host.c_str(),
                static_cast<unsigned>(bound), o.models.front().path.string().c_str(), others.c_str());
    std::fflush(stdout);
  });
  std::fprintf(stderr, "amanuensis serve: stopped\n");
  return status;
}

}  // namespace amanuensis::cli

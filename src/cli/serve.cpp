#include "cli/serve.h"

#include <cstdio>
#include <iostream>

#include "cli/args.h"
#include "cli/compute_flags.h"
#include "cli/decoding_flags.h"
#include "common/error.h"
#include "model/catalog.h"
#include "kernels/cpu/thread_pool.h"
#include "server/server.h"

namespace amanuensis::cli {

const char* const kServeUsage = R"(serve options (OpenAI-compatible HTTP API: POST /v1/audio/transcriptions,
/v1/audio/translations; GET /v1/models, /health, /metrics):
  --host ADDR             address to listen on (default 127.0.0.1)
  --port N                port (default 8080; 0 = any free port, printed at start)
  --threads N             compute threads (default: all cores)
  --precision P           matrix arithmetic: auto (default: bf16 where the CPU has it natively), fp32 or bf16
  --workers N             transcriptions decoded at once; their decoder steps run as one
                          batch and their encoder windows share one queue (default 8)
  --max-queue-seconds S   audio waiting for a free slot at most, else 429 (default 600)
  --max-upload-mb N       largest upload accepted, else 413 (default 25)
  --api-key KEY           require "Authorization: Bearer KEY" on /v1/*
  --request-timeout S     seconds to send a request, and at most to wait in the queue (default 300)
  --model-id NAME         model id reported by /v1/models (default: the file name)
  and the decoding options above: the defaults of every request
)";

namespace {

int positive_int(const Args& args, const std::string& name, int fallback, int min) {
  const int v = args.get_int(name, fallback);
  if (v < min) throw Error("--" + name + " must be at least " + std::to_string(min));
  return v;
}

}  // namespace

int run_serve(const std::vector<std::string>& argv) {
  Args args(argv, kDecodingFlags,
            with({"model", "host", "port", "threads", "workers", "max-queue-seconds", "max-upload-mb", "api-key",
                  "request-timeout", "model-id", "io-threads", "precision"},
                 kDecodingOptions));
  if (!args.positional().empty()) throw Error("serve takes no positional arguments (got '" + args.positional()[0] + "')");
  server::ServerOptions o;
  o.model_path = model::resolve_model(args.required("model"));
  o.load_options = load_options(args);
  o.host = args.get_or("host", "127.0.0.1");
  const int port = args.get_int("port", 8080);
  if (port < 0 || port > 65535) throw Error("--port must be between 0 and 65535");
  o.port = static_cast<unsigned short>(port);
  apply_thread_flag(args);
  o.workers = positive_int(args, "workers", 8, 1);
  o.io_threads = positive_int(args, "io-threads", 2, 1);
  o.max_queue_seconds = args.get_double("max-queue-seconds", 600.0);
  if (!(o.max_queue_seconds > 0)) throw Error("--max-queue-seconds must be positive");
  const int upload_mb = positive_int(args, "max-upload-mb", 25, 1);
  o.max_upload_bytes = static_cast<std::size_t>(upload_mb) << 20;
  o.api_key = args.get_or("api-key", "");
  o.request_timeout = args.get_double("request-timeout", 300.0);
  // a day at most: the deadline is kept in nanoseconds, where 1e10 s and more overflow
  if (!(o.request_timeout > 0 && o.request_timeout <= 86400.0))
    throw Error("--request-timeout must be between 0 and 86400 seconds");
  o.model_id = args.get_or("model-id", "");

  apply_decoding_flags(args, /*whisper_cpp=*/false, o.defaults);
  // a request's own temperature starts the fallback schedule
  o.temperature_fallback = !args.flag("no-fallback");
  o.temperature_increment = args.get_double("temperature-increment", 0.2);

  server::Server srv(o);
  const int status = srv.run([&](unsigned short bound) {
    std::printf("amanuensis serve: listening on http://%s:%u (model %s, loading)\n", o.host.c_str(),
                static_cast<unsigned>(bound), o.model_path.string().c_str());
    std::fflush(stdout);
  });
  std::fprintf(stderr, "amanuensis serve: stopped\n");
  return status;
}

}  // namespace amanuensis::cli

// server: an HTTP server for transcription with an API compatible with OpenAI's audio
// endpoints (POST /v1/audio/transcriptions, /v1/audio/translations, GET /v1/models), plus
// GET /health and GET /metrics (Prometheus). Built on Boost.Beast; requests are queued on
// a pipeline::TranscriptionScheduler that runs them on the shared, immutable model.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>

#include "pipeline/transcriber.h"

namespace amanuensis::server {

struct ServerOptions {
  std::string host = "127.0.0.1";
  unsigned short port = 8080;          // 0: any free port (see the on_listening callback)
  std::filesystem::path model_path;    // loaded after the socket is bound (/health says 503 meanwhile)
  nn::LoadOptions load_options;        // how model_path is computed (precision, backend)
  std::shared_ptr<const pipeline::Model> model;  // or an already loaded model
  std::string model_id;                // reported by /v1/models; default: the file name's stem
  int workers = 8;                     // transcriptions decoded at once, as one batch
  int io_threads = 2;                  // threads running the network side
  double max_queue_seconds = 600.0;    // audio waiting for a worker, at most
  std::size_t max_upload_bytes = 25u << 20;
  std::string api_key;                 // when set, /v1/* needs "Authorization: Bearer KEY"
  double request_timeout = 300.0;      // seconds: reading a request, waiting in the queue
  // Decoding defaults of every request; a request may change language, prompt, task,
  // temperature and word timestamps.
  pipeline::TranscribeOptions defaults;
  bool temperature_fallback = true;    // a request's temperature starts the fallback schedule
  double temperature_increment = 0.2;
  bool handle_signals = true;          // SIGTERM/SIGINT stop the server gracefully
  bool log_requests = true;            // one line per request on stderr
};

class Server {
 public:
  explicit Server(ServerOptions options);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Binds and serves until stop() (or SIGTERM/SIGINT): then takes no new connection or
  // request, finishes the accepted requests and returns 0. Returns 1 when the model fails
  // to load. on_listening is called with the bound port once the socket listens. Throws
  // amanuensis::Error when the address cannot be bound.
  int run(const std::function<void(unsigned short port)>& on_listening = {});
  // Starts a graceful stop; callable from any thread.
  void stop();

  class Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace amanuensis::server

// server: an HTTP server for transcription with an API compatible with OpenAI's audio
// endpoints (POST /v1/audio/transcriptions, /v1/audio/translations, GET /v1/models), plus
// GET /health and GET /metrics (Prometheus). Built on Boost.Beast; a request's `model`
// field picks one of the served models (ModelRegistry), and it is queued on that model's
// pipeline::TranscriptionScheduler, which runs it on the shared, immutable model.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "pipeline/transcriber.h"
#include "server/model_registry.h"

namespace amanuensis::server {

struct ServerOptions {
  std::string host = "127.0.0.1";
  unsigned short port = 8080;          // 0: any free port (see the on_listening callback)
  // The models served, by id ("whisper-1" also means the first). The first is loaded after
  // the socket is bound (/health says 503 meanwhile), the others on their first request.
  std::vector<ModelSpec> models;
  nn::LoadOptions load_options;        // how the models are computed (precision, backend)
  double model_idle_unload = 0.0;      // seconds without requests before a model unloads; 0: never
  std::size_t max_loaded_models = 0;   // models loaded at once (LRU idle one evicted); 0: all
  int workers = 8;                     // transcriptions of one model decoded at once, as one batch
  int io_threads = 2;                  // threads running the network side
  double max_queue_seconds = 600.0;    // audio waiting for a worker, at most
  // Audio of the requests waiting and running together, at most (per model): a running
  // request holds its samples until done. 0: no bound.
  double max_admitted_seconds = 6 * 3600.0;
  // Decoder memory (KV blocks, a window's cross-attention entry) of the requests running at
  // once, at most (per model; pipeline::decoder_memory_bytes() of each): a request waits
  // until its share fits, one that alone exceeds it is refused. 0: no bound.
  std::int64_t max_kv_bytes = std::int64_t{8192} << 20;  // 8 large-v3 requests with fallback (980 MB each)
  // The longest audio one request may hold, checked while it is decoded (a small upload
  // can decode to hours); 0: no limit.
  double max_audio_seconds = 3 * 3600.0;
  std::size_t max_upload_bytes = 25u << 20;
  std::string api_key;                 // when set, /v1/* needs "Authorization: Bearer KEY"
  double request_timeout = 300.0;      // seconds: reading a request's body, waiting in the queue
  // Connections open at once, at most: one more is answered 503 too_many_connections and
  // closed, so that idle or slow clients cannot take every file descriptor.
  std::size_t max_connections = 256;
  // Seconds a connection has to send a complete request header: from its start, or for a
  // later request on a kept-alive connection, from that request's first byte. Short, as a
  // header is small: a client that sends none (or a byte a minute) is closed long before
  // request_timeout.
  double header_timeout = 10.0;
  // Seconds a kept-alive connection may wait for its next request before it is closed.
  double keep_alive_timeout = 30.0;
  // Decoding defaults of every request; a request's fields may change most of them (see
  // server/request_options.h).
  pipeline::TranscribeOptions defaults;
  bool temperature_fallback = true;    // a request's temperature starts the fallback schedule
  double temperature_increment = 0.2;
  // The most a request's beam_size and best_of may ask for: each beam or candidate is a
  // sequence decoded every step, with its own KV cache.
  int max_beam_size = 8;
  int max_best_of = 8;
  bool handle_signals = true;          // SIGTERM/SIGINT stop the server gracefully
  bool log_requests = true;            // one line per request on stderr
};

class Server {
 public:
  // Throws amanuensis::Error for bad options (no model, duplicate model ids).
  explicit Server(ServerOptions options);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Binds and serves until stop() (or SIGTERM/SIGINT): then takes no new connection or
  // request, finishes the accepted requests and returns 0. Returns 1 when the first model
  // fails to load. on_listening is called with the bound port once the socket listens.
  // The network runs on io_threads threads of its own; the calling thread waits for the
  // stop and then finishes the work, so stopping creates no thread. Throws
  // amanuensis::Error when the address cannot be bound or the threads cannot be started.
  int run(const std::function<void(unsigned short port)>& on_listening = {});
  // Starts a graceful stop; callable from any thread.
  void stop();

  class Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace amanuensis::server

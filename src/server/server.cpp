// server: Server's own part (see server.h): binds, runs the network threads, accepts
// connections (each a Session, session.cpp), loads the first model, and stops: closes the
// doors on a network thread, then finishes the accepted work on the thread that called
// run(), so that stopping needs no new thread.
#include "server/server.h"

#include <array>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "pipeline/scheduler.h"
#include "server/server_impl.h"

namespace amanuensis::server {

namespace beast = boost::beast;
namespace http = beast::http;

void Server::Impl::register_session(const std::shared_ptr<Session>& s) {
  std::lock_guard lock(sessions_mutex);
  std::erase_if(sessions, [](const auto& w) { return w.expired(); });
  sessions.push_back(s);
}

namespace {

// Refusals answered at once, at most; beyond them a refused connection is closed unanswered
// (each answer holds its descriptor for up to kRefusalSeconds).
constexpr std::size_t kMaxRefusalsInFlight = 64;
constexpr int kRefusalSeconds = 2;

// A connection over --max-connections: answered 503 in OpenAI's shape, then closed after
// reading (and dropping) what the client sends for a moment, so that it gets the answer
// rather than a reset of a connection with its request unread.
class Refusal : public std::enable_shared_from_this<Refusal> {
 public:
  Refusal(tcp::socket socket, std::size_t limit, std::atomic<std::size_t>& in_flight)
      : stream_(std::move(socket)), in_flight_(in_flight) {
    ++in_flight_;
    const nlohmann::json body = {
        {"error",
         {{"message", "the server has " + std::to_string(limit) +
                          " connections open, its limit (--max-connections); retry shortly, or reuse a connection"},
          {"type", "server_error"},
          {"param", nullptr},
          {"code", "too_many_connections"}}}};
    response_.result(http::status::service_unavailable);
    response_.set(http::field::server, "amanuensis");
    response_.set(http::field::content_type, "application/json");
    response_.set(http::field::retry_after, "1");
    response_.keep_alive(false);
    response_.body() = body.dump() + "\n";
    response_.prepare_payload();
  }
  ~Refusal() { --in_flight_; }
  Refusal(const Refusal&) = delete;
  Refusal& operator=(const Refusal&) = delete;

  void start() {
    stream_.expires_after(std::chrono::seconds(kRefusalSeconds));
    http::async_write(stream_, response_, [self = shared_from_this()](beast::error_code ec, std::size_t) {
      beast::error_code ignored;
      if (!ec) self->stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
      if (!ec) self->drain();
    });
  }

 private:
  void drain() {
    stream_.async_read_some(net::buffer(sink_), [self = shared_from_this()](beast::error_code ec, std::size_t n) {
      self->drained_ += n;
      if (!ec && self->drained_ < (1u << 20)) self->drain();
    });
  }

  beast::tcp_stream stream_;  // closed when the last handler lets go
  std::atomic<std::size_t>& in_flight_;
  http::response<http::string_body> response_;
  std::array<char, 4096> sink_{};
  std::size_t drained_ = 0;
};

}  // namespace

void Server::Impl::take_connection(tcp::socket socket) {
  if (metrics.connections.open >= opt.max_connections) return refuse_connection(std::move(socket));
  beast::error_code ec;
  socket.set_option(tcp::no_delay(true), ec);
  register_session(start_session(std::move(socket), *this));
}

void Server::Impl::refuse_connection(tcp::socket socket) {
  ++metrics.connections.refused;
  refusal_log.line("refused a connection: " + std::to_string(metrics.connections.open.load()) +
                   " are open, the limit of --max-connections");
  if (refusals_in_flight >= kMaxRefusalsInFlight) return;  // the socket closes here, unanswered
  std::make_shared<Refusal>(std::move(socket), opt.max_connections, refusals_in_flight)->start();
}

void Server::Impl::do_accept() {
  acceptor.async_accept(net::make_strand(ioc), [this](beast::error_code ec, tcp::socket socket) {
    if (!acceptor.is_open() || stopping) return;
    if (!ec) {
      take_connection(std::move(socket));
    } else if (ec == net::error::no_descriptors) {
      // out of file descriptors: back off briefly instead of spinning
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    do_accept();
  });
}

int Server::Impl::run(const std::function<void(unsigned short)>& on_listening) {
  beast::error_code ec;
  const auto address = net::ip::make_address(opt.host, ec);
  if (ec) throw Error("--host: '" + opt.host + "' is not an IP address");
  const tcp::endpoint endpoint(address, opt.port);
  acceptor.open(endpoint.protocol(), ec);
  if (!ec) acceptor.set_option(net::socket_base::reuse_address(true), ec);
  if (!ec) acceptor.bind(endpoint, ec);
  if (!ec) acceptor.listen(net::socket_base::max_listen_connections, ec);
  if (ec) throw Error("cannot listen on " + opt.host + ":" + std::to_string(opt.port) + ": " + ec.message());
  work.emplace(net::make_work_guard(ioc));
  if (opt.handle_signals) {
    signals.add(SIGINT);
    signals.add(SIGTERM);
    signals.async_wait([this](beast::error_code ec, int) {
      if (!ec) stop();
    });
  }
  do_accept();
  if (on_listening) on_listening(acceptor.local_endpoint().port());

  load_first_model();

  auto threads = start_network_threads();
  finish_after_stop(threads);
  return exit_code;
}

// The threads that run the network side (--io-threads). When the system refuses one, the
// started ones are stopped and joined, and the error says what to change.
std::vector<std::thread> Server::Impl::start_network_threads() {
  // A handler that throws must not take the server down: log it and go on.
  auto run_loop = [this] {
    for (;;) {
      try {
        ioc.run();
        return;
      } catch (const std::exception& e) {
        std::fprintf(stderr, "amanuensis serve: unexpected error: %s\n", e.what());
      }
    }
  };
  std::vector<std::thread> threads;
  const int n = std::max(1, opt.io_threads);
  try {
    for (int i = 0; i < n; ++i) threads.emplace_back(run_loop);
  } catch (const std::system_error& e) {
    ioc.stop();
    for (auto& t : threads) t.join();
    registry.shutdown();
    throw Error("cannot start " + std::to_string(n) + " network threads (" + e.what() +
                "): lower --io-threads or raise the process limit (ulimit -u)");
  }
  return threads;
}

// On run()'s thread: waits for stop(), finishes every accepted job (their answers are
// posted to the network threads), then lets the network threads end once the last answer
// is written.
void Server::Impl::finish_after_stop(std::vector<std::thread>& threads) {
  {
    std::unique_lock lock(stop_mutex);
    stop_wake.wait(lock, [this] { return doors_closed; });
  }
  registry.shutdown();
  net::post(ioc, [this] { work.reset(); });
  for (auto& t : threads) t.join();
}

// The first model loads at start, on the registry's loader thread; the server stops when
// it cannot be loaded.
void Server::Impl::load_first_model() {
  (void)registry.acquire(0, [this](std::optional<ModelLease>, std::exception_ptr error) {
    if (!error) return;  // ready: the lease just taken ends here, and the model stays loaded
    try {
      std::rethrow_exception(error);
    } catch (const pipeline::ShuttingDown&) {
      return;  // stopped before it was loaded
    } catch (...) {  // the registry has logged why
    }
    exit_code = 1;
    stop();
  });
}

ModelRegistry::Options Server::Impl::registry_options() {
  ModelRegistry::Options o;
  o.models = opt.models;
  o.loader = [this](const ModelSpec& spec) { return load_model(spec); };
  o.idle_unload_seconds = opt.model_idle_unload;
  o.max_loaded = opt.max_loaded_models;
  o.log = [](const std::string& message) { std::fprintf(stderr, "amanuensis serve: %s\n", message.c_str()); };
  return o;
}

// Runs on the registry's loader thread: reads the model and starts its own scheduler.
LoadedModel Server::Impl::load_model(const ModelSpec& spec) const {
  LoadedModel loaded;
  loaded.model = spec.model ? spec.model : pipeline::Model::load(spec.path, opt.load_options);
  loaded.scheduler = std::make_shared<pipeline::BatchingScheduler>(loaded.model, opt.workers, opt.max_queue_seconds,
                                                                   pipeline::BatchedComputeOptions{},
                                                                   opt.max_admitted_seconds, opt.max_kv_bytes);
  const auto& hp = loaded.model->hparams();
  const auto& backend = *loaded.model->encoder().backend();
  loaded.info = {hp.n_vocab, backend.name(), backend.kernels(), std::string(hp.size_name()), hp.is_multilingual()};
  return loaded;
}

void Server::Impl::stop() {
  if (stop_requested.exchange(true)) return;
  net::post(ioc, [this] {
    stopping = true;
    beast::error_code ec;
    acceptor.close(ec);
    signals.cancel(ec);
    {
      std::lock_guard lock(sessions_mutex);
      for (auto& w : sessions)
        if (auto s = w.lock()) stop_session_if_idle(s);
    }
    {
      std::lock_guard lock(stop_mutex);
      doors_closed = true;
    }
    stop_wake.notify_all();  // run()'s thread finishes the accepted work
  });
}

Server::Server(ServerOptions options) : impl_(std::make_unique<Impl>(std::move(options))) {}
Server::~Server() = default;
int Server::run(const std::function<void(unsigned short)>& on_listening) { return impl_->run(on_listening); }
void Server::stop() { impl_->stop(); }

}  // namespace amanuensis::server


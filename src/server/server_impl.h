// server: the server's shared state (Server::Impl), seen by server.cpp, which runs the
// acceptor, the network threads and the stop, and by session.cpp, which answers the
// requests of one connection. Internal to src/server.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <ctime>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include <boost/asio.hpp>

#include "server/metrics.h"
#include "server/model_registry.h"
#include "server/rate_limited_log.h"
#include "server/server.h"

namespace amanuensis::server {

namespace net = boost::asio;
using tcp = net::ip::tcp;
using Clock = std::chrono::steady_clock;

class Session;

class Server::Impl {
 public:
  explicit Impl(ServerOptions options)
      : opt(std::move(options)),
        acceptor(ioc),
        signals(ioc),
        started(Clock::now()),
        started_unix(std::time(nullptr)),
        registry(registry_options()) {}

  int run(const std::function<void(unsigned short)>& on_listening);
  void stop();
  void register_session(const std::shared_ptr<Session>& s);

  ServerOptions opt;
  net::io_context ioc;
  tcp::acceptor acceptor;
  net::signal_set signals;
  std::optional<net::executor_work_guard<net::io_context::executor_type>> work;
  const Clock::time_point started;
  const std::time_t started_unix;
  Metrics metrics;
  std::atomic<std::size_t> active_requests{0};
  std::atomic<bool> stopping{false};
  std::atomic<bool> stop_requested{false};
  std::atomic<int> exit_code{0};
  // After ioc: destroyed first, so that the jobs it finishes can still post their answers.
  ModelRegistry registry;
  // Set on a network thread once stop() has closed the doors; run()'s own thread waits for
  // it and then finishes the accepted work: stopping needs no thread of its own, which the
  // system may refuse (EAGAIN) just when a loaded server is asked to stop.
  std::mutex stop_mutex;
  std::condition_variable stop_wake;
  bool doors_closed = false;

  std::mutex sessions_mutex;
  std::vector<std::weak_ptr<Session>> sessions;
  // Connections refused over --max-connections: a flood of them must not flood the log.
  RateLimitedLog refusal_log{"amanuensis serve: ", /*lines_per_second=*/1.0, /*burst=*/5.0};
  std::atomic<std::size_t> refusals_in_flight{0};  // being answered 503 (refuse_connection)

 private:
  void do_accept();
  void take_connection(tcp::socket socket);
  void refuse_connection(tcp::socket socket);
  void load_first_model();
  std::vector<std::thread> start_network_threads();
  void finish_after_stop(std::vector<std::thread>& threads);
  ModelRegistry::Options registry_options();
  LoadedModel load_model(const ModelSpec& spec) const;
};

// One HTTP connection (session.cpp): reads requests one after another (keep-alive) and
// answers them. start_session() starts reading; the session keeps itself alive while it
// has work.
std::shared_ptr<Session> start_session(tcp::socket socket, Server::Impl& server);
// Posted by Server::stop(): closes the connection when it waits for a new request.
void stop_session_if_idle(const std::shared_ptr<Session>& session);

}  // namespace amanuensis::server

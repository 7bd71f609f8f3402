// server: the counters and histograms behind GET /metrics, in Prometheus' text format.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "pipeline/scheduler.h"

namespace amanuensis::server {

class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);
  void observe(double value);
  void observe_many(double value, std::uint64_t times);
  // Appends the _bucket, _sum and _count lines of metric `name`.
  void render(std::string& out, const std::string& name) const;

 private:
  std::vector<double> bounds_;
  std::vector<std::uint64_t> counts_;  // per bucket (not cumulative); last = +Inf
  double sum_ = 0.0;
  std::uint64_t count_ = 0;
};

// Connections, counted where they open, close and time out (server.cpp, session.cpp);
// atomics, as the acceptor reads the open count for every connection it takes.
struct ConnectionCounters {
  std::atomic<std::uint64_t> open{0};
  std::atomic<std::uint64_t> refused{0};          // over --max-connections
  std::atomic<std::uint64_t> header_timeouts{0};  // no complete header within --header-timeout
  std::atomic<std::uint64_t> idle_timeouts{0};    // kept alive past --keep-alive-timeout
};

class Metrics {
 public:
  Metrics();
  ConnectionCounters connections;
  // One finished HTTP request: endpoint label (e.g. "/v1/audio/transcriptions"), status.
  void record_request(const std::string& endpoint, int status, double latency_seconds);
  // One transcription done: its audio length and time spent transcribing.
  void record_transcription(double audio_seconds, double run_seconds);
  // Gauges and the schedulers' batch counts (summed over the models) are read at render
  // time, process_resident_memory_bytes from /proc/self/statm.
  std::string render(const pipeline::SchedulerStats& scheduler, std::size_t active_requests, double uptime_seconds,
                     std::size_t loaded_models) const;

 private:
  mutable std::mutex mutex_;
  std::map<std::pair<std::string, int>, std::uint64_t> requests_;
  double audio_seconds_ = 0.0;
  Histogram latency_;
  Histogram realtime_factor_;
};

}  // namespace amanuensis::server

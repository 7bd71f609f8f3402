#include "server/metrics.h"

#include <unistd.h>

#include <cstdio>
#include <fstream>

namespace amanuensis::server {

namespace {
std::string number(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.9g", v);
  return buf;
}
}  // namespace

Histogram::Histogram(std::vector<double> bounds) : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {}

void Histogram::observe(double value) { observe_many(value, 1); }

void Histogram::observe_many(double value, std::uint64_t times) {
  std::size_t i = 0;
  while (i < bounds_.size() && value > bounds_[i]) ++i;
  counts_[i] += times;
  sum_ += value * static_cast<double>(times);
  count_ += times;
}

void Histogram::render(std::string& out, const std::string& name) const {
  std::uint64_t cumulative = 0;
  for (std::size_t i = 0; i < bounds_.size(); ++i) {
    cumulative += counts_[i];
    out += name + "_bucket{le=\"" + number(bounds_[i]) + "\"} " + std::to_string(cumulative) + "\n";
  }
  out += name + "_bucket{le=\"+Inf\"} " + std::to_string(count_) + "\n";
  out += name + "_sum " + number(sum_) + "\n";
  out += name + "_count " + std::to_string(count_) + "\n";
}

Metrics::Metrics()
    : latency_({0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300}),
      realtime_factor_({0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 5, 10}) {}

namespace {

// The # HELP and # TYPE lines of one metric family.
void header(std::string& out, const std::string& name, const char* type, const char* help) {
  out += "# HELP " + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
}

// A family with a single unlabelled sample.
void sample(std::string& out, const std::string& name, const char* type, const char* help, const std::string& value) {
  header(out, name, type, help);
  out += name + " " + value + "\n";
}

// Resident set size of this process; 0 where /proc is not there. statm's second field
// counts pages, so a load test can watch for leaks without parsing /proc/self/status.
std::uint64_t resident_memory_bytes() {
  std::ifstream statm("/proc/self/statm");
  std::uint64_t size_pages = 0, resident_pages = 0;
  if (!(statm >> size_pages >> resident_pages)) return 0;
  return resident_pages * static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
}

// A histogram family of batch sizes from the scheduler's size -> count table.
void batch_histogram(std::string& out, const std::string& name, const char* help,
                     const std::map<int, std::uint64_t>& counts) {
  Histogram h({1, 2, 4, 8, 16, 32, 64, 128});
  for (const auto& [size, n] : counts) h.observe_many(size, n);
  header(out, name, "histogram", help);
  h.render(out, name);
}

}  // namespace

void Metrics::record_request(const std::string& endpoint, int status, double latency_seconds) {
  std::lock_guard lock(mutex_);
  ++requests_[{endpoint, status}];
  latency_.observe(latency_seconds);
}

void Metrics::record_transcription(double audio_seconds, double run_seconds) {
  std::lock_guard lock(mutex_);
  audio_seconds_ += audio_seconds;
  if (audio_seconds > 0) realtime_factor_.observe(run_seconds / audio_seconds);
}

std::string Metrics::render(const pipeline::SchedulerStats& scheduler, std::size_t active_requests,
                            double uptime_seconds, std::size_t loaded_models) const {
  std::lock_guard lock(mutex_);
  std::string out;
  header(out, "amanuensis_requests_total", "counter", "HTTP requests answered, by endpoint and status code.");
  for (const auto& [key, count] : requests_)
    out += "amanuensis_requests_total{endpoint=\"" + key.first + "\",status=\"" + std::to_string(key.second) + "\"} " +
           std::to_string(count) + "\n";
  sample(out, "amanuensis_audio_seconds_total", "counter", "Seconds of audio transcribed.", number(audio_seconds_));
  header(out, "amanuensis_request_duration_seconds", "histogram", "Time from a complete request to its response.");
  latency_.render(out, "amanuensis_request_duration_seconds");
  header(out, "amanuensis_realtime_factor", "histogram", "Transcription time per second of audio.");
  realtime_factor_.render(out, "amanuensis_realtime_factor");
  sample(out, "amanuensis_queue_depth", "gauge", "Transcription jobs waiting for a slot.",
         std::to_string(scheduler.queued_jobs));
  sample(out, "amanuensis_queue_audio_seconds", "gauge", "Seconds of audio waiting for a slot.",
         number(scheduler.queued_audio_seconds));
  sample(out, "amanuensis_active_transcriptions", "gauge", "Transcriptions running (batched together).",
         std::to_string(scheduler.active_jobs));
  sample(out, "amanuensis_running_audio_seconds", "gauge",
         "Seconds of audio of the transcriptions running (with the queue's, bounded by --max-admitted-seconds).",
         number(scheduler.running_audio_seconds));
  batch_histogram(out, "amanuensis_encoder_batch_windows", "Encoder windows stacked into one encoder pass.",
                  scheduler.batches.encoder_windows);
  batch_histogram(out, "amanuensis_decoder_batch_sequences", "Sequences advanced by one batched decoder step.",
                  scheduler.batches.decoder_sequences);
  sample(out, "amanuensis_active_requests", "gauge", "Transcription requests accepted and not yet answered.",
         std::to_string(active_requests));
  sample(out, "amanuensis_loaded_models", "gauge", "Models loaded or loading.", std::to_string(loaded_models));
  header(out, "amanuensis_kv_pool_bytes", "gauge",
         "Decoder memory of the loaded models: KV blocks reserved (chunks held) and used (held by sequences), "
         "windows' cross-attention entries (audio), what the running transcriptions may hold at most (admitted) "
         "and its bound (limit, --max-kv-mb; 0: none).");
  const std::pair<const char*, std::int64_t> kv_states[] = {
      {"reserved", scheduler.kv_reserved_bytes}, {"used", scheduler.kv_used_bytes},
      {"audio", scheduler.kv_audio_bytes},       {"admitted", scheduler.kv_admitted_bytes},
      {"limit", scheduler.kv_limit_bytes}};
  for (const auto& [state, bytes] : kv_states)
    out += std::string("amanuensis_kv_pool_bytes{state=\"") + state + "\"} " + std::to_string(bytes) + "\n";
  sample(out, "amanuensis_jobs_waiting_for_memory", "gauge",
         "Transcriptions whose turn has come but wait for running ones to free decoder memory (--max-kv-mb).",
         std::to_string(scheduler.jobs_waiting_for_memory));
  sample(out, "amanuensis_open_connections", "gauge", "HTTP connections open (at most --max-connections).",
         std::to_string(connections.open.load()));
  sample(out, "amanuensis_connections_refused_total", "counter",
         "Connections answered 503 and closed because --max-connections were open.",
         std::to_string(connections.refused.load()));
  header(out, "amanuensis_connection_timeouts_total", "counter",
         "Connections closed for sending no complete request header within --header-timeout (header), or no "
         "next request within --keep-alive-timeout (keep_alive).");
  out += "amanuensis_connection_timeouts_total{phase=\"header\"} " + std::to_string(connections.header_timeouts.load()) +
         "\n";
  out += "amanuensis_connection_timeouts_total{phase=\"keep_alive\"} " +
         std::to_string(connections.idle_timeouts.load()) + "\n";
  sample(out, "amanuensis_uptime_seconds", "gauge", "Seconds since the server started.", number(uptime_seconds));
  sample(out, "process_resident_memory_bytes", "gauge", "Resident memory size in bytes.",
         std::to_string(resident_memory_bytes()));
  return out;
}

}  // namespace amanuensis::server

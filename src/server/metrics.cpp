#include "server/metrics.h"

#include <cstdio>

namespace amanuensis::server {

namespace {
std::string number(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.9g", v);
  return buf;
}
}  // namespace

Histogram::Histogram(std::vector<double> bounds) : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {}

void Histogram::observe(double value) {
  std::size_t i = 0;
  while (i < bounds_.size() && value > bounds_[i]) ++i;
  ++counts_[i];
  sum_ += value;
  ++count_;
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

std::string Metrics::render(std::size_t queue_depth, double queued_audio_seconds, std::size_t active_requests,
                            double uptime_seconds) const {
  std::lock_guard lock(mutex_);
  std::string out;
  out += "# HELP amanuensis_requests_total HTTP requests answered, by endpoint and status code.\n";
  out += "# TYPE amanuensis_requests_total counter\n";
  for (const auto& [key, count] : requests_)
    out += "amanuensis_requests_total{endpoint=\"" + key.first + "\",status=\"" + std::to_string(key.second) + "\"} " +
           std::to_string(count) + "\n";
  out += "# HELP amanuensis_audio_seconds_total Seconds of audio transcribed.\n";
  out += "# TYPE amanuensis_audio_seconds_total counter\n";
  out += "amanuensis_audio_seconds_total " + number(audio_seconds_) + "\n";
  out += "# HELP amanuensis_request_duration_seconds Time from a complete request to its response.\n";
  out += "# TYPE amanuensis_request_duration_seconds histogram\n";
  latency_.render(out, "amanuensis_request_duration_seconds");
  out += "# HELP amanuensis_realtime_factor Transcription time per second of audio.\n";
  out += "# TYPE amanuensis_realtime_factor histogram\n";
  realtime_factor_.render(out, "amanuensis_realtime_factor");
  out += "# HELP amanuensis_queue_depth Transcription jobs waiting for a worker.\n";
  out += "# TYPE amanuensis_queue_depth gauge\n";
  out += "amanuensis_queue_depth " + std::to_string(queue_depth) + "\n";
  out += "# HELP amanuensis_queue_audio_seconds Seconds of audio waiting for a worker.\n";
  out += "# TYPE amanuensis_queue_audio_seconds gauge\n";
  out += "amanuensis_queue_audio_seconds " + number(queued_audio_seconds) + "\n";
  out += "# HELP amanuensis_active_requests Transcription requests accepted and not yet answered.\n";
  out += "# TYPE amanuensis_active_requests gauge\n";
  out += "amanuensis_active_requests " + std::to_string(active_requests) + "\n";
  out += "# HELP amanuensis_uptime_seconds Seconds since the server started.\n";
  out += "# TYPE amanuensis_uptime_seconds gauge\n";
  out += "amanuensis_uptime_seconds " + number(uptime_seconds) + "\n";
  return out;
}

}  // namespace amanuensis::server

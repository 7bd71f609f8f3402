// server: a log whose volume a client cannot drive. Lines that outside input causes
// (FFmpeg's complaints about a damaged upload, say) go through a token bucket: a burst of
// lines passes, then about `lines_per_second`; the lines dropped are counted and the count
// is written with the next line let through, so nothing is lost silently.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <string_view>

namespace amanuensis::server {

class RateLimitedLog {
 public:
  using Clock = std::chrono::steady_clock;
  using Writer = std::function<void(std::string_view line)>;

  // Each line is written as `prefix` + line; `write` defaults to one fprintf on stderr.
  RateLimitedLog(std::string prefix, double lines_per_second, double burst, Writer write = {});

  // Thread-safe. `now` is for tests.
  void line(std::string_view text, Clock::time_point now = Clock::now());
  std::uint64_t dropped() const;

 private:
  const std::string prefix_;
  const double rate_;
  const double burst_;
  Writer write_;
  mutable std::mutex mutex_;
  double tokens_;
  Clock::time_point last_{};
  bool started_ = false;
  std::uint64_t dropped_since_written_ = 0;
  std::uint64_t dropped_total_ = 0;
};

}  // namespace amanuensis::server

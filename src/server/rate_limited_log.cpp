#include "server/rate_limited_log.h"

#include <algorithm>
#include <cstdio>
#include <utility>

namespace amanuensis::server {

RateLimitedLog::RateLimitedLog(std::string prefix, double lines_per_second, double burst, Writer write)
    : prefix_(std::move(prefix)), rate_(lines_per_second), burst_(std::max(1.0, burst)), write_(std::move(write)),
      tokens_(burst_) {
  if (!write_) {
    write_ = [](std::string_view line) {
      std::fprintf(stderr, "%.*s\n", static_cast<int>(line.size()), line.data());
    };
  }
}

void RateLimitedLog::line(std::string_view text, Clock::time_point now) {
  {
    std::lock_guard lock(mutex_);
    if (started_) tokens_ = std::min(burst_, tokens_ + rate_ * std::chrono::duration<double>(now - last_).count());
    started_ = true;
    last_ = now;
    if (tokens_ < 1.0) {
      ++dropped_since_written_;
      ++dropped_total_;
      return;
    }
    tokens_ -= 1.0;
    std::string out = prefix_;
    out += text;
    if (dropped_since_written_ > 0) {
      out += " (" + std::to_string(dropped_since_written_) + " similar lines not logged before this one)";
      dropped_since_written_ = 0;
    }
    // written under the lock, so that the counts stay in the order of the lines
    write_(out);
  }
}

std::uint64_t RateLimitedLog::dropped() const {
  std::lock_guard lock(mutex_);
  return dropped_total_;
}

}  // namespace amanuensis::server

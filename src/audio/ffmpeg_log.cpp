#include "audio/ffmpeg_log.h"

#include <cstdarg>
#include <mutex>
#include <optional>
#include <string>
#include <utility>

extern "C" {
#include <libavutil/log.h>
}

#include "common/error.h"

namespace amanuensis::audio {
namespace {

// The sink of the one live route (FFmpeg's callback takes no user pointer).
std::mutex sink_mutex;
std::optional<FfmpegLogSink> active_sink;

// FFmpeg logs a line in several calls; each thread assembles its own lines.
void forward(void* context, int level, const char* format, va_list args) {
  thread_local std::string partial;
  thread_local int print_prefix = 1;
  if (level > AV_LOG_WARNING) return;
  char buf[1024];
  av_log_format_line2(context, level, format, args, buf, sizeof buf, &print_prefix);
  partial += buf;
  if (partial.empty() || partial.back() != '\n') return;
  partial.pop_back();
  {
    std::lock_guard lock(sink_mutex);
    if (active_sink && !partial.empty()) {
      try {
        (*active_sink)(partial);
      } catch (...) {  // a log line must never break a decode
      }
    }
  }
  partial.clear();
}

}  // namespace

FfmpegLogRoute::FfmpegLogRoute(FfmpegLogSink sink) {
  std::lock_guard lock(sink_mutex);
  if (active_sink) throw InternalError("FfmpegLogRoute: FFmpeg's log is already routed");
  active_sink = std::move(sink);
  av_log_set_callback(forward);
}

FfmpegLogRoute::~FfmpegLogRoute() {
  av_log_set_callback(av_log_default_callback);
  std::lock_guard lock(sink_mutex);
  active_sink.reset();
}

}  // namespace amanuensis::audio

// audio: where FFmpeg's own log goes. FFmpeg writes a line to stderr for every damaged
// packet it meets; in a server the uploads, hence the volume, are the clients' choice. Its
// log is one process-wide callback (av_log_set_callback), so this library never sets it
// by itself: the program does, once, through FfmpegLogRoute.
#pragma once

#include <functional>
#include <string_view>

namespace amanuensis::audio {

// One whole line of FFmpeg's log at warning level or above, without its newline, with
// FFmpeg's "[codec @ 0x...] " context prefix.
using FfmpegLogSink = std::function<void(std::string_view line)>;

// While alive, FFmpeg's log lines go to `sink` (lines below warning level are dropped);
// FFmpeg's default (stderr) is restored on destruction. Process-wide: create one, in
// main-line code before any decoding starts, and destroy it after the last decode ended.
// The sink is called from whichever thread FFmpeg logs on, so it must be thread-safe.
class FfmpegLogRoute {
 public:
  explicit FfmpegLogRoute(FfmpegLogSink sink);
  ~FfmpegLogRoute();
  FfmpegLogRoute(const FfmpegLogRoute&) = delete;
  FfmpegLogRoute& operator=(const FfmpegLogRoute&) = delete;
};

}  // namespace amanuensis::audio

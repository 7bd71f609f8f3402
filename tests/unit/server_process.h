// Test helpers for talking to the real `amanuensis serve` (shared by the server tests): the server as a child process on
// a free loopback port (--port 0; it prints the port), a raw HTTP GET, and running the CLI.
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <string>
#include <thread>
#include <vector>

#include "test_paths.h"

namespace amanuensis::testing {

// A folder of this test process for the files it makes, removed when the process exits.
inline const std::filesystem::path& scratch_dir() {
  static const std::filesystem::path dir = [] {
    auto d = std::filesystem::temp_directory_path() / ("amanuensis_server_tests_" + std::to_string(::getpid()));
    std::filesystem::create_directories(d);
    std::atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(
          std::filesystem::temp_directory_path() / ("amanuensis_server_tests_" + std::to_string(::getpid())), ec);
    });
    return d;
  }();
  return dir;
}

inline std::string read_file(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

inline std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

struct CommandResult {
  int status = -1;  // exit status; -1 when killed by a signal (a crash)
  std::string out;  // standard output
};

inline CommandResult run_command(const std::string& command) {
  CommandResult r;
  FILE* p = ::popen(command.c_str(), "r");
  if (!p) return r;
  char buf[4096];
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
  const int st = ::pclose(p);
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return r;
}

struct HttpAnswer {
  int status = 0;  // 0: no answer
  std::string body;
};

// GET on loopback with "Connection: close": reads until the server closes (bounded).
inline HttpAnswer http_get(int port, const std::string& path) {
  HttpAnswer answer;
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return answer;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<unsigned short>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string reply;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) {
    const std::string request = "GET " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    if (::send(fd, request.data(), request.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(request.size())) {
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
      while (std::chrono::steady_clock::now() < deadline) {
        pollfd p{fd, POLLIN, 0};
        if (::poll(&p, 1, 100) <= 0) continue;
        char buf[4096];
        const auto n = ::recv(fd, buf, sizeof buf, 0);
        if (n <= 0) break;
        reply.append(buf, static_cast<std::size_t>(n));
      }
    }
  }
  ::close(fd);
  if (reply.rfind("HTTP/1.1 ", 0) == 0) answer.status = std::atoi(reply.c_str() + 9);
  if (const auto end = reply.find("\r\n\r\n"); end != std::string::npos) answer.body = reply.substr(end + 4);
  return answer;
}

// The value of one series in the server's /metrics (Prometheus text), or -1 when the
// series is missing or /metrics does not answer. `series` includes its labels, if any.
inline double metric(int port, const std::string& series) {
  const auto answer = http_get(port, "/metrics");
  const auto at = answer.body.find("\n" + series + " ");
  return answer.status != 200 || at == std::string::npos ? -1.0
                                                          : std::atof(answer.body.c_str() + at + series.size() + 2);
}

inline std::string requests_with_status(int status) {
  return "amanuensis_requests_total{endpoint=\"/v1/audio/transcriptions\",status=\"" + std::to_string(status) + "\"}";
}

// Polls `condition` every 10 ms until it holds or `seconds` have passed; returns whether it
// held. The bound is for a server that never gets there, not a guess at its speed.
inline bool eventually(const std::function<bool()>& condition, int seconds = 60) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
  while (!condition()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return true;
}

// `source` (a kit WAV: 16 kHz mono 16-bit, its data chunk last) repeated to `seconds`, as a
// WAV file `name` in the scratch folder: a request that keeps a worker busy for long.
inline std::filesystem::path repeated_recording(const std::filesystem::path& source, int seconds,
                                                const std::string& name) {
  const std::string wav = read_file(source);
  const std::string pcm = wav.substr(wav.find("data") + 8);
  const auto n = static_cast<std::uint32_t>(seconds) * 32000u;
  const auto p = scratch_dir() / name;
  std::ofstream out(p, std::ios::binary);
  auto u32 = [&](std::uint32_t v) { out.write(reinterpret_cast<const char*>(&v), 4); };
  auto u16 = [&](std::uint16_t v) { out.write(reinterpret_cast<const char*>(&v), 2); };
  out.write("RIFF", 4);
  u32(36 + n);
  out.write("WAVEfmt ", 8);
  u32(16);
  u16(1);      // PCM
  u16(1);      // mono
  u32(16000);  // rate
  u32(32000);  // bytes per second
  u16(2);
  u16(16);
  out.write("data", 4);
  u32(n);
  for (std::uint32_t written = 0; written < n;) {
    const auto take = std::min<std::uint32_t>(n - written, static_cast<std::uint32_t>(pcm.size()));
    out.write(pcm.data(), take);
    written += take;
  }
  return p;
}

// A curl upload of `file` to `url` (multipart, model=whisper-1) running as a child process,
// so that a test can kill the client while the server works on its request.
class BackgroundUpload {
 public:
  BackgroundUpload(const std::string& url, const std::filesystem::path& file) {
    static int counter = 0;
    out_ = scratch_dir() / ("upload_" + std::to_string(++counter) + ".status");
    std::vector<std::string> args = {"curl", "-s", "--max-time", "600", "-o", "/dev/null", "-w", "%{http_code}",
                                     "-F", "file=@" + file.string(), "-F", "model=whisper-1", url};
    std::vector<char*> argv;  // built before fork(): the child only execs
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    const std::string out_path = out_.string();
    pid_ = ::fork();
    if (pid_ == 0) {
      const int out = ::open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (out >= 0) ::dup2(out, STDOUT_FILENO);
      ::execvp("curl", argv.data());
      ::_exit(127);
    }
  }
  ~BackgroundUpload() { kill(); }
  BackgroundUpload(const BackgroundUpload&) = delete;
  BackgroundUpload& operator=(const BackgroundUpload&) = delete;

  // SIGKILL: the client vanishes mid-request, its socket closed by the kernel.
  void kill() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }
  // Waits (bounded) for curl to finish; the HTTP status it got, 0 for none.
  int status(int seconds = 120) {
    for (int i = 0; pid_ > 0 && i < seconds * 100; ++i) {
      if (::waitpid(pid_, nullptr, WNOHANG) == pid_) {
        pid_ = -1;
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    if (pid_ > 0) return 0;
    return std::atoi(read_file(out_).c_str());
  }

 private:
  pid_t pid_ = -1;
  std::filesystem::path out_;
};

// `amanuensis serve` with the micro model (or the given models) and the given extra flags
// (later flags win), killed on destruction. --threads 1 --sample-len 8 --beam-size 1 --no-fallback: the micro
// model has random weights, and what is tested is the HTTP side. Its standard error goes
// to a log file, for failure messages.
class ServerProcess {
 public:
  explicit ServerProcess(std::vector<std::string> extra = {})
      : ServerProcess(std::vector<std::filesystem::path>{model_path("micro.en-f16")}, std::move(extra)) {}
  // Serving each of `models` (one --model each, in this order).
  ServerProcess(const std::vector<std::filesystem::path>& models, std::vector<std::string> extra) {
    std::vector<std::string> args = {cli_path().string(), "serve"};
    for (const auto& m : models) args.insert(args.end(), {"--model", m.string()});
    args.insert(args.end(), {"--port", "0", "--threads", "1", "--sample-len", "8", "--beam-size", "1", "--no-fallback"});
    args.insert(args.end(), extra.begin(), extra.end());
    int out[2];
    if (::pipe(out) != 0) return;
    static int counter = 0;
    log_ = std::filesystem::temp_directory_path() /
           ("amanuensis_server_" + std::to_string(::getpid()) + "_" + std::to_string(++counter) + ".log");
    pid_ = ::fork();
    if (pid_ == 0) {
      ::dup2(out[1], STDOUT_FILENO);
      const int err = ::open(log_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (err >= 0) ::dup2(err, STDERR_FILENO);
      ::close(out[0]);
      ::close(out[1]);
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    ::close(out[1]);
    // The first line says "... listening on http://127.0.0.1:PORT ..."
    std::string line;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (line.find('\n') == std::string::npos && std::chrono::steady_clock::now() < deadline) {
      pollfd p{out[0], POLLIN, 0};
      if (::poll(&p, 1, 200) <= 0) continue;
      char c[256];
      const auto n = ::read(out[0], c, sizeof c);
      if (n <= 0) break;
      line.append(c, static_cast<std::size_t>(n));
    }
    ::close(out[0]);
    const auto at = line.find("127.0.0.1:");
    if (at != std::string::npos) port_ = std::atoi(line.c_str() + at + 10);
    // /health says 503 until the model is loaded.
    for (int i = 0; i < 300 && port_ > 0 && !ready_; ++i) {
      ready_ = http_get(port_, "/health").status == 200;
      if (!ready_) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  }
  ~ServerProcess() {
    if (pid_ > 0 && !reaped_) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    std::error_code ec;
    std::filesystem::remove(log_, ec);
  }
  ServerProcess(const ServerProcess&) = delete;
  ServerProcess& operator=(const ServerProcess&) = delete;

  bool ready() const { return ready_; }
  int port() const { return port_; }
  pid_t pid() const { return pid_; }
  std::string url(const std::string& path = "") const { return "http://127.0.0.1:" + std::to_string(port_) + path; }
  std::string log() const { return read_file(log_); }

  // Waits (bounded) for the process to exit; returns its exit status, or -1.
  int wait_exit(int seconds) {
    for (int i = 0; i < seconds * 20; ++i) {
      int st = 0;
      if (::waitpid(pid_, &st, WNOHANG) == pid_) {
        reaped_ = true;
        return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return -1;
  }

 private:
  pid_t pid_ = -1;
  int port_ = 0;
  bool ready_ = false;
  bool reaped_ = false;
  std::filesystem::path log_;
};

// Sends raw bytes on one connection, half-closes it and returns what comes back until
// the server closes (at most `seconds`).
inline std::string raw_exchange(int port, const std::string& bytes, int seconds = 20) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<std::uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string out;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) {
    (void)!::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
    ::shutdown(fd, SHUT_WR);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
    while (std::chrono::steady_clock::now() < deadline) {
      pollfd p{fd, POLLIN, 0};
      if (::poll(&p, 1, 200) <= 0) continue;
      char buf[4096];
      const auto n = ::recv(fd, buf, sizeof buf, 0);
      if (n <= 0) break;
      out.append(buf, static_cast<std::size_t>(n));
    }
  }
  ::close(fd);
  return out;
}

}  // namespace amanuensis::testing

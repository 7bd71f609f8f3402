// `amanuensis serve` against hostile input and faults (issue 12), end to end on a loopback
// port: an over-limit Content-Length counted under its own path in /metrics, an overlong
// multipart boundary named as such, FFmpeg's log prefixed and rate-limited, a small upload
// that decodes to hours stopped at --max-audio-seconds while it decodes, admission that
// counts the audio of running requests, NaN samples of an upload logged, and a stop that
// needs no new thread.
//
// Servers run with the micro model (random weights): what is tested is the server.
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "server_process.h"
#include "test_paths.h"

namespace amanuensis {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using testing::BackgroundUpload;
using testing::eventually;
using testing::metric;
using testing::raw_exchange;
using testing::read_file;
using testing::run_command;
using testing::ServerProcess;
using testing::shell_quote;

fs::path audio(const std::string& name) { return testing::conformance_dir() / "audio" / name; }

struct Answer {
  int status = 0;
  json body;
  std::string text;
  std::string error(const char* key) const {
    if (!body.is_object() || !body.contains("error") || !body["error"][key].is_string()) return "<none>";
    return body["error"][key].get<std::string>();
  }
};

// curl with `args` (quoted as needed); the status and the body.
Answer curl(const std::string& args) {
  static std::atomic<int> counter{0};
  const auto body = testing::scratch_dir() / ("limits_body_" + std::to_string(++counter));
  const auto out = run_command("curl -s --max-time 120 -o " + shell_quote(body.string()) + " -w '%{http_code}' " + args);
  Answer a;
  a.status = std::atoi(out.out.c_str());
  a.text = read_file(body);
  a.body = json::parse(a.text, nullptr, false);
  return a;
}

Answer upload(const ServerProcess& s, const fs::path& file, const std::vector<std::string>& fields = {}) {
  std::string extra;
  for (const auto& f : fields) extra += "-F " + shell_quote(f) + " ";
  return curl("-F " + shell_quote("file=@" + file.string()) + " -F model=whisper-1 " + extra +
              shell_quote(s.url("/v1/audio/transcriptions")));
}


std::string series(const std::string& endpoint, int status) {
  return "amanuensis_requests_total{endpoint=\"" + endpoint + "\",status=\"" + std::to_string(status) + "\"}";
}

// The upload of issue 12: Opus at 6 kbit/s of silence, a minute encoded then repeated
// without re-encoding: two hours are 2.7 MB, 460 MB as 16 kHz floats. Empty without ffmpeg.
fs::path minutes_of_opus_silence(int minutes) {
  const auto minute = testing::scratch_dir() / "minute.opus";
  const auto hours = testing::scratch_dir() / ("silence-" + std::to_string(minutes) + "min.opus");
  const auto r = run_command("ffmpeg -nostdin -loglevel error -y -f lavfi -i anullsrc=r=8000:cl=mono -t 60 -c:a libopus "
                             "-b:a 6k " + shell_quote(minute.string()) + " && ffmpeg -nostdin -loglevel error -y -stream_loop " +
                             std::to_string(minutes - 1) + " -i " + shell_quote(minute.string()) + " -c copy " +
                             shell_quote(hours.string()) + " && echo made");
  return r.out.find("made") != std::string::npos ? hours : fs::path();
}

// Three seconds of MP3 with bytes overwritten all through it: FFmpeg's decoder logs a line
// for each damaged frame. Empty without ffmpeg.
fs::path damaged_mp3() {
  const auto path = testing::scratch_dir() / "damaged.mp3";
  const auto r = run_command("ffmpeg -nostdin -loglevel error -y -f lavfi -i sine=f=440:d=3 -c:a libmp3lame -b:a 32k " +
                             shell_quote(path.string()) + " && echo made");
  if (r.out.find("made") == std::string::npos) return {};
  std::string bytes = read_file(path);
  std::uint32_t x = 12345;
  for (std::size_t i = 2000; i < bytes.size(); i += 97) {
    x = x * 1103515245u + 12345u;
    bytes[i] = static_cast<char>(x >> 24);
  }
  std::ofstream(path, std::ios::binary) << bytes;
  return path;
}

// The server process's peak resident memory (VmHWM), in bytes; 0 when unknown.
double peak_rss_bytes(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(in, line);)
    if (line.rfind("VmHWM:", 0) == 0) return std::atof(line.c_str() + 6) * 1024.0;
  return 0.0;
}

// Defect 8: the 413 for a Content-Length over the limit is decided while the header is
// read; it was counted under "other" on a new connection and under the previous request's
// path on a keep-alive one.
TEST(ServerLimits, EarlyOversizeIsCountedUnderItsOwnPath) {
  ServerProcess s({"--max-upload-mb", "1"});
  ASSERT_TRUE(s.ready()) << s.log();
  const std::string oversized =
      "POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
      "Content-Length: 999999999\r\n\r\n";
  const auto alone = raw_exchange(s.port(), oversized);
  EXPECT_EQ(alone.rfind("HTTP/1.1 413", 0), 0u) << alone.substr(0, 300);
  const auto after_health = raw_exchange(s.port(), "GET /health HTTP/1.1\r\nHost: x\r\n\r\n" + oversized);
  EXPECT_EQ(after_health.rfind("HTTP/1.1 200", 0), 0u) << after_health.substr(0, 300);
  EXPECT_NE(after_health.find("HTTP/1.1 413"), std::string::npos) << after_health.substr(0, 600);
  EXPECT_EQ(metric(s.port(), series("/v1/audio/transcriptions", 413)), 2.0);
  EXPECT_EQ(metric(s.port(), series("other", 413)), -1.0);
  EXPECT_EQ(metric(s.port(), series("/health", 413)), -1.0);
  EXPECT_GE(metric(s.port(), series("/health", 200)), 1.0);
}

// Defect 9: a boundary over 200 characters was "must be multipart/form-data".
TEST(ServerLimits, OverlongBoundaryIs400NamingTheLimit) {
  ServerProcess s;
  ASSERT_TRUE(s.ready()) << s.log();
  const std::string boundary(201, 'b');
  const auto a = curl("-H " + shell_quote("Content-Type: multipart/form-data; boundary=" + boundary) + " --data-binary " +
                      shell_quote("--" + boundary + "--\r\n") + " " + shell_quote(s.url("/v1/audio/transcriptions")));
  EXPECT_EQ(a.status, 400) << a.text;
  EXPECT_NE(a.error("message").find("boundary is 201 characters long; at most 200"), std::string::npos) << a.text;
}

// Defect 9: FFmpeg's lines about a damaged upload reached the server's stderr unprefixed,
// as many as the clients cared to cause. Now every line of the server's stderr is its own,
// and FFmpeg's pass at most a burst of 20 plus 2 a second.
TEST(ServerLimits, FfmpegLinesArePrefixedAndRateLimited) {
  const auto file = damaged_mp3();
  if (file.empty()) GTEST_SKIP() << "no ffmpeg to make the file";
  ServerProcess s;
  ASSERT_TRUE(s.ready()) << s.log();
  const auto start = std::chrono::steady_clock::now();
  constexpr int kUploads = 15;
  for (int i = 0; i < kUploads; ++i) {
    const auto a = upload(s, file);
    EXPECT_TRUE(a.status == 200 || a.status == 400) << a.status << " " << a.text;
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const auto log = s.log();
  std::istringstream lines(log);
  int ffmpeg_lines = 0;
  for (std::string line; std::getline(lines, line);) {
    if (line.empty()) continue;
    EXPECT_EQ(line.rfind("amanuensis serve: ", 0), 0u) << "a line not from the server's log: " << line;
    if (line.rfind("amanuensis serve: ffmpeg: [mp3", 0) == 0) ++ffmpeg_lines;
  }
  EXPECT_GE(ffmpeg_lines, 1) << "FFmpeg's lines are not in the server's log at all:\n" << log;
  EXPECT_LE(ffmpeg_lines, 20 + 2 * static_cast<int>(seconds + 1)) << log;
  EXPECT_NE(log.find("similar lines not logged before this one"), std::string::npos) << log;
}

// Defect 1: 2.7 MB of Opus holding two hours. With --max-audio-seconds 60 it is a 413
// naming the limit, and the decode stops at the limit: the server never holds the hours.
TEST(ServerLimits, AudioOverMaxAudioSecondsIs413AndStopsTheDecode) {
  const auto file = minutes_of_opus_silence(120);
  if (file.empty()) GTEST_SKIP() << "no ffmpeg to make the file";
  ServerProcess s({"--max-audio-seconds", "60"});
  ASSERT_TRUE(s.ready()) << s.log();
  const auto a = upload(s, file);
  EXPECT_EQ(a.status, 413) << a.text;
  EXPECT_EQ(a.error("code"), "audio_too_long") << a.text;
  EXPECT_EQ(a.error("param"), "file") << a.text;
  EXPECT_NE(a.error("message").find("limit of 60 seconds"), std::string::npos) << a.text;
  EXPECT_NE(a.error("message").find("--max-audio-seconds"), std::string::npos) << a.text;
  EXPECT_LT(peak_rss_bytes(s.pid()), 300e6) << "the server decoded past the limit";
  EXPECT_EQ(upload(s, audio("jfk.wav")).status, 200);  // 11 s: within it
}

// Defect 1: within the limit, an hour of Opus (1.4 MB) was held as 230 MB of float while it
// waited and ran (the server's peak was about 400 MB); it is decoded as it is read now.
TEST(ServerLimits, AnHourOfAudioIsNotHeldWhileItIsTranscribed) {
  const auto file = minutes_of_opus_silence(60);
  if (file.empty()) GTEST_SKIP() << "no ffmpeg to make the file";
  ServerProcess s({"--sample-len", "1"});  // 120 windows of one token each
  ASSERT_TRUE(s.ready()) << s.log();
  const auto a = upload(s, file, {"response_format=verbose_json"});
  EXPECT_EQ(a.status, 200) << a.text;
  EXPECT_NEAR(a.body.value("duration", 0.0), 3600.0, 5.0) << a.text;
#if defined(__SANITIZE_ADDRESS__)
  // its quarantine of freed blocks and its shadow put the server near 900 MB whatever it holds
  GTEST_SKIP() << "peak memory under AddressSanitizer is not the program's; the normal build checks it";
#endif
  EXPECT_LT(peak_rss_bytes(s.pid()), 200e6) << "the server held the decoded hour";
}

TEST(ServerLimits, MaxAudioSecondsIsValidated) {
  for (const char* bad : {"-1", "nan", "1e300"}) {
    const auto r = run_command(shell_quote(testing::cli_path().string()) + " serve --model " +
                               shell_quote(testing::model_path("micro.en-f16").string()) +
                               " --port 0 --max-audio-seconds " + bad + " 2>&1");
    EXPECT_EQ(r.status, 1) << bad << ": " << r.out;
    EXPECT_NE(r.out.find("--max-audio-seconds"), std::string::npos) << bad << ": " << r.out;
  }
}

// Defect 1: the queue bound counted only waiting audio, so every worker could take a
// request of hours at once. With --max-admitted-seconds 100, a 600 s request running
// leaves no room for an 11 s one, though a worker is free and nothing waits.
TEST(ServerLimits, AdmissionCountsTheAudioOfRunningRequests) {
  // ten minutes, not five: five ran in under 2 s on a Zen 4 once decoding got faster
  const auto long_file = testing::repeated_recording(audio("speech-75s.wav"), 600, "admission-600s.wav");
  // full-length windows and five beams: the 600 s request runs for a while
  ServerProcess s({"--workers", "2", "--max-admitted-seconds", "100", "--sample-len", "224", "--beam-size", "5"});
  ASSERT_TRUE(s.ready()) << s.log();
  BackgroundUpload running(s.url("/v1/audio/transcriptions"), long_file);
  ASSERT_TRUE(eventually([&] { return metric(s.port(), "amanuensis_active_requests") == 1.0; })) << s.log();
  // taken by a free slot at once; polled, as submitting and starting are two steps
  EXPECT_TRUE(eventually([&] { return metric(s.port(), "amanuensis_running_audio_seconds") == 600.0; })) << s.log();
  const auto refused = upload(s, audio("jfk.wav"));
  const bool still_running = metric(s.port(), testing::requests_with_status(200)) == -1.0;
  ASSERT_TRUE(still_running) << "the 600 s request ended before the check: the test cannot tell";
  EXPECT_EQ(refused.status, 429) << refused.text;
  EXPECT_EQ(refused.error("code"), "queue_full") << refused.text;
  EXPECT_NE(refused.error("message").find("--max-admitted-seconds"), std::string::npos) << refused.text;
  running.kill();  // the client leaves: its request stops, and the room is free again
  EXPECT_TRUE(eventually([&] { return upload(s, audio("jfk.wav")).status == 200; })) << s.log();
}

// Issue 10: admission by decoder memory. With --max-kv-mb 2, a greedy request (the test
// server's --sample-len 8 --no-fallback on the micro model: one window's 0.77 MB and one
// sequence of 240 positions, 1.0 MB) is taken; one with beam_size 8 (2.7 MB) alone exceeds
// the bound and is refused naming beam_size; /health and /metrics report the bound.
TEST(ServerLimits, ARequestOverTheDecoderMemoryBoundIs400NamingItsField) {
  ServerProcess s({"--max-kv-mb", "2", "--max-beam-size", "8"});
  ASSERT_TRUE(s.ready()) << s.log();
  const auto taken = upload(s, audio("jfk.wav"));
  EXPECT_EQ(taken.status, 200) << taken.text;
  const auto refused = upload(s, audio("jfk.wav"), {"beam_size=8"});
  EXPECT_EQ(refused.status, 400) << refused.text << s.log();
  EXPECT_EQ(refused.error("param"), "beam_size") << refused.text;
  EXPECT_EQ(refused.error("code"), "decoder_memory") << refused.text;
  EXPECT_NE(refused.error("message").find("--max-kv-mb"), std::string::npos) << refused.text;
  const auto health = curl(shell_quote(s.url("/health")));
  EXPECT_EQ(health.body["kv_pool"]["limit_bytes"], 2 << 20) << health.text;
  EXPECT_EQ(health.body["kv_pool"]["admitted_bytes"], 0) << health.text;
  EXPECT_EQ(metric(s.port(), "amanuensis_kv_pool_bytes{state=\"limit\"}"), 2 << 20);
  EXPECT_EQ(metric(s.port(), "amanuensis_jobs_waiting_for_memory"), 0.0);
}

TEST(ServerLimits, MaxKvMbIsValidated) {
  const auto r = run_command(shell_quote(testing::cli_path().string()) + " serve --model " +
                             shell_quote(testing::model_path("micro.en-f16").string()) + " --port 0 --max-kv-mb -1 2>&1");
  EXPECT_EQ(r.status, 1) << r.out;
  EXPECT_NE(r.out.find("--max-kv-mb"), std::string::npos) << r.out;
}

// A 1 s 16 kHz float WAV (format 3) of a tone with `nans` NaN samples.
fs::path float_wav_with_nans(int nans) {
  std::vector<float> values(16000);
  for (std::size_t i = 0; i < values.size(); ++i) values[i] = 0.25f * std::sin(0.05f * static_cast<float>(i));
  for (int i = 0; i < nans; ++i) values[100 + 50 * i] = std::nanf("");
  const auto path = testing::scratch_dir() / "nans.wav";
  std::ofstream out(path, std::ios::binary);
  auto u32 = [&](std::uint32_t v) { out.write(reinterpret_cast<const char*>(&v), 4); };
  auto u16 = [&](std::uint16_t v) { out.write(reinterpret_cast<const char*>(&v), 2); };
  const auto bytes = static_cast<std::uint32_t>(values.size() * 4);
  out.write("RIFF", 4);
  u32(36 + bytes);
  out.write("WAVEfmt ", 8);
  u32(16);
  u16(3);  // IEEE float
  u16(1);
  u32(16000);
  u32(64000);
  u16(4);
  u16(32);
  out.write("data", 4);
  u32(bytes);
  out.write(reinterpret_cast<const char*>(values.data()), bytes);
  return path;
}

// The server replaced NaN samples silently; the CLI warned. Now the server logs it too.
TEST(ServerLimits, NonFiniteSamplesAreLogged) {
  ServerProcess s;
  ASSERT_TRUE(s.ready()) << s.log();
  EXPECT_EQ(upload(s, float_wav_with_nans(3)).status, 200);
  EXPECT_NE(s.log().find("amanuensis serve: warning: 3 NaN or infinite samples of an upload replaced by silence"),
            std::string::npos)
      << s.log();
}

// `amanuensis serve` with the micro model as user nobody, under `ulimit -u LIMIT` when
// LIMIT > 0; the pid (the server itself: setpriv and bash exec it) and its port once
// /health answers 200 (0 when it did not come up).
struct NobodyServer {
  pid_t pid = -1;
  int port = 0;
  fs::path err;
};

NobodyServer start_as_nobody(const fs::path& model, int limit, const std::string& name) {
  NobodyServer s;
  const auto out = testing::scratch_dir() / (name + "-out.txt");
  s.err = testing::scratch_dir() / (name + "-err.txt");
  const std::string serve = (limit > 0 ? "ulimit -u " + std::to_string(limit) + "; " : std::string()) + "exec " +
                            shell_quote(testing::cli_path().string()) + " serve --model " + shell_quote(model.string()) +
                            " --port 0 --threads 1 --workers 1";
  std::vector<std::string> args = {"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "bash", "-c", serve};
  std::vector<char*> argv;  // built before fork(): the child only execs
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  s.pid = ::fork();
  if (s.pid == 0) {
    (void)!std::freopen(out.c_str(), "w", stdout);
    (void)!std::freopen(s.err.c_str(), "w", stderr);
    ::execvp("setpriv", argv.data());
    ::_exit(127);
  }
  (void)eventually([&] {
    const auto line = read_file(out);
    const auto at = line.find("127.0.0.1:");
    if (at != std::string::npos) s.port = std::atoi(line.c_str() + at + 10);
    return s.port > 0 && testing::http_get(s.port, "/health").status == 200;
  }, 30);
  return s;
}

int thread_count(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(in, line);)
    if (line.rfind("Threads:", 0) == 0) return std::atoi(line.c_str() + 8);
  return 0;
}

// SIGTERM, then the exit status within 60 s (-1: still running, then killed).
int terminate(pid_t pid) {
  ::kill(pid, SIGTERM);
  int status = 0;
  if (eventually([&] { return ::waitpid(pid, &status, WNOHANG) == pid; }, 60))
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  ::kill(pid, SIGKILL);
  ::waitpid(pid, nullptr, 0);
  return -1;
}

// Defect 3: stop() created a thread to finish the work; when the system refused it
// (EAGAIN), the error was swallowed and the server ignored SIGTERM. The server runs as
// nobody under a process limit of exactly the threads it has once up (counted on a first
// run without the limit): no thread can be created after start-up, and SIGTERM must still
// stop it.
TEST(ServerShutdown, SigtermStopsTheServerWhenNoThreadCanBeCreated) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to run the server as nobody under ulimit -u";
  if (std::system("command -v setpriv >/dev/null 2>&1") != 0) GTEST_SKIP() << "setpriv (util-linux) is not installed";
#if defined(__SANITIZE_ADDRESS__)
  // the sanitizer runtime needs threads of its own (LeakSanitizer's at exit), which the
  // exact process limit refuses: it cannot start or stop there (tests/sanitize)
  GTEST_SKIP() << "under AddressSanitizer, whose runtime needs threads beyond the exact limit";
#endif
  const auto model = fs::temp_directory_path() / ("amanuensis-stop-model-" + std::to_string(::getpid()) + ".bin");
  fs::copy_file(testing::model_path("micro.en-f16"), model, fs::copy_options::overwrite_existing);
  fs::permissions(model, fs::perms::owner_read | fs::perms::group_read | fs::perms::others_read);
  const auto free = start_as_nobody(model, 0, "stop-free");
  ASSERT_GT(free.port, 0) << read_file(free.err);
  const int threads = thread_count(free.pid);
  ASSERT_EQ(terminate(free.pid), 0) << read_file(free.err);
  ASSERT_GT(threads, 1);
  const auto limited = start_as_nobody(model, threads, "stop-limited");
  if (limited.port == 0) (void)terminate(limited.pid);
  ASSERT_GT(limited.port, 0) << "did not start under ulimit -u " << threads << ":\n" << read_file(limited.err);
  const int status = terminate(limited.pid);
  fs::remove(model);
  EXPECT_EQ(status, 0) << "under ulimit -u " << threads << ", SIGTERM did not stop the server:\n"
                       << read_file(limited.err);
  EXPECT_NE(read_file(limited.err).find("stopped"), std::string::npos) << read_file(limited.err);
}

}  // namespace
}  // namespace amanuensis

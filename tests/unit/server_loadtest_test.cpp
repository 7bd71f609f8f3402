// Tests of `amanuensis loadtest` against the real server (a child process), against
// servers that misbehave (a fake one on a raw socket) and against none at all; and of the
// process_resident_memory_bytes gauge it samples from /metrics.
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "server/metrics.h"
#include "server_process.h"
#include "test_paths.h"

namespace amanuensis {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using testing::read_file;
using testing::CommandResult;
using testing::shell_quote;

fs::path audio(const std::string& name) { return testing::conformance_dir() / "audio" / name; }

const fs::path& scratch() { return testing::scratch_dir(); }

// Random bytes named .wav: neither the server nor the load tester's decoder takes them.
fs::path broken_file() {
  const auto path = scratch() / "broken.wav";
  std::mt19937 random(7);
  std::string bytes(4096, '\0');
  for (char& c : bytes) c = static_cast<char>(random());
  std::ofstream(path, std::ios::binary) << bytes;
  return path;
}

struct CliRun {
  int status = -1;
  std::string out;
  std::string err;
};

CliRun loadtest(const std::string& args) {
  static int n = 0;
  const auto err = scratch() / ("stderr_" + std::to_string(++n));
  const CommandResult r = testing::run_command(shell_quote(testing::cli_path().string()) + " loadtest " + args +
                                               " 2>" + shell_quote(err.string()));
  return {r.status, r.out, read_file(err)};
}

class LoadtestTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { server_ = std::make_unique<testing::ServerProcess>(); }
  static void TearDownTestSuite() { server_.reset(); }
  void SetUp() override { ASSERT_TRUE(server_->ready()) << "the server did not start"; }

  static inline std::unique_ptr<testing::ServerProcess> server_;
};

TEST_F(LoadtestTest, TwoLevelsReportThroughputLatencyAndStatuses) {
  const auto out = scratch() / "two_levels.json";
  const CliRun run = loadtest("--url " + server_->url() + " --concurrency 1,4 --requests 6 --metrics-every 2 --json " +
                           shell_quote(out.string()) + " --fail-on-unexpected " +
                           shell_quote(audio("speech-1s.wav").string()) + " " + shell_quote(broken_file().string()));
  ASSERT_EQ(run.status, 0) << run.err;
  const json report = json::parse(read_file(out));

  ASSERT_EQ(report["files"].size(), 2u);
  EXPECT_EQ(report["files"][0]["expected_status"], 200);
  EXPECT_NEAR(report["files"][0]["audio_seconds"].get<double>(), 1.0, 0.01);
  EXPECT_EQ(report["files"][1]["expected_status"], 400);

  ASSERT_EQ(report["levels"].size(), 2u);
  for (std::size_t n = 0; n < 2; ++n) {
    const json& level = report["levels"][n];
    SCOPED_TRACE("level " + std::to_string(n));
    EXPECT_EQ(level["concurrency"], n == 0 ? 1 : 4);
    EXPECT_EQ(level["requests"], 6);
    EXPECT_EQ(level["ok"], 3);
    EXPECT_EQ(level["errors"], 3);
    EXPECT_EQ(level["unexpected"], 0);
    EXPECT_EQ(level["statuses"], json({{"200", 3}, {"400", 3}}));
    EXPECT_EQ(level["per_file"][1]["statuses"], json({{"400", 3}}));
    EXPECT_NEAR(level["audio_seconds"].get<double>(), 3.0, 0.03);
    EXPECT_GT(level["audio_seconds_per_second"].get<double>(), 0.0);
    EXPECT_GT(level["requests_per_second"].get<double>(), 0.0);
    const json& latency = level["latency_seconds"];
    EXPECT_GT(latency["p50"].get<double>(), 0.0);
    EXPECT_LE(latency["p50"].get<double>(), latency["p95"].get<double>());
    EXPECT_LE(latency["p95"].get<double>(), latency["p99"].get<double>());
    EXPECT_LE(latency["p99"].get<double>(), latency["max"].get<double>());
    ASSERT_TRUE(level.contains("memory"));
    EXPECT_EQ(level["memory"]["series"].size(), 3u);  // after requests 2, 4 and 6
    EXPECT_GT(level["memory"]["series"][0]["rss_bytes"].get<double>(), 1e6);
  }
  EXPECT_DOUBLE_EQ(report["levels"][0]["throughput_vs_first_level"].get<double>(), 1.0);
  EXPECT_GT(report["levels"][1]["throughput_vs_first_level"].get<double>(), 0.0);

  // The table: a header and one row per level, on stdout.
  EXPECT_NE(run.out.find("concurrency"), std::string::npos) << run.out;
  EXPECT_EQ(std::count(run.out.begin(), run.out.end(), '\n'), 3) << run.out;
}

TEST_F(LoadtestTest, JsonDashPrintsJsonOnStdoutAndTheTableOnStderr) {
  const CliRun run = loadtest("--url " + server_->url() + "/ --concurrency 2 --requests 2 --json - " +
                           shell_quote(audio("silence-5s.wav").string()));
  ASSERT_EQ(run.status, 0) << run.err;
  const json report = json::parse(run.out, nullptr, false);
  ASSERT_FALSE(report.is_discarded()) << run.out;
  EXPECT_EQ(report["levels"][0]["ok"], 2);
  EXPECT_NE(run.err.find("audio s/s"), std::string::npos) << run.err;
}

TEST_F(LoadtestTest, MetricsReportResidentMemory) {
  const auto metrics = testing::http_get(server_->port(), "/metrics");
  ASSERT_EQ(metrics.status, 200);
  EXPECT_NE(metrics.body.find("# TYPE process_resident_memory_bytes gauge\n"), std::string::npos) << metrics.body;
  const auto at = metrics.body.find("\nprocess_resident_memory_bytes ");
  ASSERT_NE(at, std::string::npos) << metrics.body;
  EXPECT_GT(std::atof(metrics.body.c_str() + at + 31), 1e6);  // at least the model
}

TEST(ResidentMemoryGauge, IsRenderedWithTheOtherFamilies) {
  const std::string text = server::Metrics().render({}, 0, 1.0, 1);
  EXPECT_NE(text.find("# HELP process_resident_memory_bytes "), std::string::npos) << text;
  const auto at = text.find("\nprocess_resident_memory_bytes ");
  ASSERT_NE(at, std::string::npos) << text;
  EXPECT_GT(std::atof(text.c_str() + at + 31), 0.0);
}

// A stand-in for a misbehaving server on a loopback port: `handle` gets each accepted
// connection in turn and the connection is closed after it.
class FakeServer {
 public:
  explicit FakeServer(std::function<void(int fd)> handle) : handle_(std::move(handle)) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t size = sizeof addr;
    if (::bind(fd_, reinterpret_cast<sockaddr*>(&addr), size) != 0 || ::listen(fd_, 16) != 0 ||
        ::getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &size) != 0)
      return;
    port_ = ntohs(addr.sin_port);
    thread_ = std::jthread([this](std::stop_token stop) {
      while (!stop.stop_requested()) {
        pollfd p{fd_, POLLIN, 0};
        if (::poll(&p, 1, 50) <= 0) continue;
        const int client = ::accept(fd_, nullptr, nullptr);
        if (client < 0) continue;
        handle_(client);
        ::close(client);
      }
    });
  }
  ~FakeServer() {
    if (thread_.joinable()) {
      thread_.request_stop();
      thread_.join();
    }
    ::close(fd_);
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }

 private:
  std::function<void(int)> handle_;
  int fd_ = -1;
  int port_ = 0;
  std::jthread thread_;
};

// Reads what a client sent until the end of its headers, or gives up after 10 s (a bound
// for a client that never sends them, not a guess at how long a busy machine takes).
void read_headers(int fd) {
  std::string got;
  for (int i = 0; i < 500 && got.find("\r\n\r\n") == std::string::npos; ++i) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 20) <= 0) continue;
    char buf[4096];
    const auto n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) return;
    got.append(buf, static_cast<std::size_t>(n));
  }
}

// Stays silent until the client closes the connection (bounded by 60 s).
void wait_for_client_to_close(int fd) {
  for (int i = 0; i < 600; ++i) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 100) <= 0) continue;
    char buf[4096];
    if (::recv(fd, buf, sizeof buf, 0) <= 0) return;
  }
}

void reply(int fd, const std::string& bytes) {
  read_headers(fd);
  (void)::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
  ::shutdown(fd, SHUT_WR);
}

json run_against(const std::string& url, const std::string& extra = "") {
  const CliRun run = loadtest("--url " + url + " --concurrency 1,2 --requests 3 --timeout 5 --json - " + extra + " " +
                           shell_quote(audio("speech-1s.wav").string()));
  EXPECT_EQ(run.status, 0) << run.err;
  const json report = json::parse(run.out, nullptr, false);
  EXPECT_FALSE(report.is_discarded()) << run.out << run.err;
  return report;
}

TEST(LoadtestMisbehavingServer, NoServerGivesConnectErrors) {
  const int port = [] {  // a port nobody listens on: bound once, then let go
    FakeServer gone([](int) {});
    return std::atoi(gone.url().c_str() + gone.url().rfind(':') + 1);
  }();
  const json report = run_against("http://127.0.0.1:" + std::to_string(port));
  ASSERT_EQ(report["levels"].size(), 2u);
  for (const json& level : report["levels"]) {
    EXPECT_EQ(level["statuses"], json({{"transport:connect", 3}}));
    EXPECT_EQ(level["ok"], 0);
    EXPECT_EQ(level["unexpected"], 3);
    EXPECT_EQ(level["audio_seconds_per_second"], 0.0);
  }
  EXPECT_TRUE(report["levels"][1]["throughput_vs_first_level"].is_null());
}

TEST(LoadtestMisbehavingServer, GarbageIsABadResponse) {
  FakeServer server([](int fd) { reply(fd, "this is not HTTP\r\n\r\n"); });
  const json report = run_against(server.url());
  for (const json& level : report["levels"]) EXPECT_EQ(level["statuses"], json({{"transport:bad_response", 3}}));
}

TEST(LoadtestMisbehavingServer, ClosingWithoutAnswerIsClosed) {
  FakeServer server([](int fd) { read_headers(fd); });
  const json report = run_against(server.url());
  for (const json& level : report["levels"]) EXPECT_EQ(level["statuses"], json({{"transport:closed", 3}}));
}

TEST(LoadtestMisbehavingServer, SilenceIsATimeout) {
  FakeServer server([](int fd) {
    read_headers(fd);
    wait_for_client_to_close(fd);  // the client gives up after its --timeout 0.3
  });
  const CliRun run = loadtest("--url " + server.url() + " --concurrency 1 --requests 1 --timeout 0.3 --json - " +
                           shell_quote(audio("speech-1s.wav").string()));
  ASSERT_EQ(run.status, 0) << run.err;
  EXPECT_EQ(json::parse(run.out)["levels"][0]["statuses"], json({{"transport:timeout", 1}}));
}

TEST(LoadtestMisbehavingServer, ServerErrorsAreUnexpectedAndFailTheRunWhenAsked) {
  const std::string answer = "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 2\r\n\r\n{}";
  FakeServer server([&](int fd) { reply(fd, answer); });
  const json report = run_against(server.url());
  for (const json& level : report["levels"]) {
    EXPECT_EQ(level["statuses"], json({{"500", 3}}));
    EXPECT_EQ(level["unexpected"], 3);
    EXPECT_EQ(level["errors"], 3);
  }
  const CliRun strict = loadtest("--url " + server.url() + " --concurrency 1 --requests 1 --fail-on-unexpected " +
                              shell_quote(audio("speech-1s.wav").string()));
  EXPECT_EQ(strict.status, 1) << strict.err;
}

TEST(LoadtestUsage, BadCommandLinesExitWith2AndSayWhy) {
  const std::string wav = shell_quote(audio("speech-1s.wav").string());
  const std::vector<std::pair<std::string, std::string>> cases = {
      {wav, "--url"},
      {"--url https://127.0.0.1:1 " + wav, "https is not supported"},
      {"--url 127.0.0.1:1 " + wav, "http://"},
      {"--url http://127.0.0.1:99999 " + wav, "port"},
      {"--url http://127.0.0.1:1 --concurrency 1,x " + wav, "'x'"},
      {"--url http://127.0.0.1:1 --concurrency 0 " + wav, "'0'"},
      {"--url http://127.0.0.1:1 --requests 0 " + wav, "--requests"},
      {"--url http://127.0.0.1:1 --endpoint speech " + wav, "--endpoint"},
      {"--url http://127.0.0.1:1 --field nonsense " + wav, "NAME=VALUE"},
      {"--url http://127.0.0.1:1", "audio file"},
      {"--url http://127.0.0.1:1 /no/such/file.wav", "/no/such/file.wav"},
      {"--url http://127.0.0.1:1 --bogus 1 " + wav, "--bogus"},
  };
  for (const auto& [args, message] : cases) {
    const CliRun run = loadtest(args);
    EXPECT_EQ(run.status, 2) << args << "\n" << run.err;
    EXPECT_NE(run.err.find(message), std::string::npos) << args << "\n" << run.err;
  }
}

}  // namespace
}  // namespace amanuensis

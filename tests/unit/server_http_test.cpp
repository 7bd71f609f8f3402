// End-to-end tests of `amanuensis serve`: the server runs as a child process on a free
// loopback port (--port 0; it prints the port), and requests go through curl. Covers every
// endpoint, every response_format, each error status, reproducible output, graceful stop
// on SIGTERM with requests in flight, OpenAI's official Node.js client (tests/api), and
// that batching across concurrent requests changes no token.
//
// Servers run with --threads 1 --sample-len 8 --beam-size 1 --no-fallback: the micro
// model has random weights, and the tests are about the HTTP layer.
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "audio/decode.h"
#include "pipeline/transcriber.h"
#include "server_process.h"
#include "segment_rows.h"
#include "test_paths.h"

namespace amanuensis {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using testing::read_file;
using testing::raw_exchange;
using testing::ServerProcess;

constexpr const char* kKey = "test-secret";

fs::path audio(const std::string& name) { return testing::conformance_dir() / "audio" / name; }

const fs::path& scratch() { return testing::scratch_dir(); }

std::string quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

std::string run_command(const std::string& command, int* status = nullptr) {
  std::string out;
  FILE* p = ::popen(command.c_str(), "r");
  if (!p) return out;
  char buf[4096];
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  const int st = ::pclose(p);
  if (status) *status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return out;
}

struct HttpResult {
  int status = 0;
  std::string headers;
  std::string body;
  json as_json() const { return json::parse(body, nullptr, false); }
  std::string error_code() const {
    auto j = as_json();
    if (!j.is_object() || !j.contains("error")) return "<no error body>";
    return j["error"]["code"].is_string() ? j["error"]["code"].get<std::string>() : "<null>";
  }
};

// curl with the given arguments (already quoted as needed).
HttpResult curl(const std::string& args) {
  static std::atomic<int> counter{0};  // requests may be sent from several threads
  const int n = ++counter;
  const auto body = scratch() / ("body_" + std::to_string(n));
  const auto headers = scratch() / ("headers_" + std::to_string(n));
  const std::string code = run_command("curl -s --max-time 120 -o " + quote(body.string()) + " -D " +
                                       quote(headers.string()) + " -w '%{http_code}' " + args);
  HttpResult r;
  r.status = std::atoi(code.c_str());
  r.headers = read_file(headers);
  r.body = read_file(body);
  return r;
}

std::string auth() { return std::string("-H 'Authorization: Bearer ") + kKey + "' "; }

std::string form_file(const fs::path& file) { return "-F " + quote("file=@" + file.string()) + " "; }

HttpResult transcribe(const ServerProcess& s, const std::string& fields, const fs::path& file = audio("jfk.wav"),
                      const std::string& endpoint = "/v1/audio/transcriptions") {
  return curl(auth() + form_file(file) + "-F model=whisper-1 " + fields + " " + quote(s.url(endpoint)));
}

// `n` curl clients posting `file` at once, in the background; each prints its HTTP status
// on a line of the pipe.
FILE* post_in_background(const ServerProcess& s, const fs::path& file, int n) {
  std::string cmd;
  for (int i = 0; i < n; ++i) {
    cmd += "curl -s --max-time 120 -o /dev/null -w '%{http_code}\\n' -F " + quote("file=@" + file.string()) +
           " -F model=whisper-1 " + quote(s.url("/v1/audio/transcriptions")) + " & ";
  }
  return ::popen((cmd + "wait").c_str(), "r");
}

// What the background clients printed, once they are all done.
std::string collect(FILE* clients) {
  std::string out;
  char buf[256];
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, clients)) > 0) out.append(buf, n);
  ::pclose(clients);
  return out;
}


class ServerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    server_ = new ServerProcess({"--api-key", kKey, "--max-upload-mb", "1", "--workers", "2"});
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }
  void SetUp() override { ASSERT_TRUE(server_->ready()) << "the server did not start:\n" << server_->log(); }
  static inline ServerProcess* server_ = nullptr;
};

TEST_F(ServerTest, HealthReportsTheModel) {
  const auto r = curl(quote(server_->url("/health")));
  ASSERT_EQ(r.status, 200) << r.body;
  const auto j = r.as_json();
  EXPECT_EQ(j["status"], "ok");
  EXPECT_EQ(j["model"], "micro.en-f16");
  EXPECT_EQ(j["n_vocab"], 51864);
  EXPECT_TRUE(j["size"].is_string());
  EXPECT_EQ(j["threads"], 1);
  EXPECT_EQ(j["workers"], 2);
  EXPECT_TRUE(j["backend"].is_string() && !j["backend"].get<std::string>().empty()) << j;
  // the kernels chosen for this CPU, windows and steps (or the reference's name)
  ASSERT_TRUE(j["kernels"].is_string()) << j;
  const auto kernels = j["kernels"].get<std::string>();
  EXPECT_TRUE(kernels.find("steps: ") != std::string::npos || kernels.rfind("reference", 0) == 0) << kernels;
  EXPECT_TRUE(j["cpu_features"].is_array()) << j;
  EXPECT_EQ(j["isa_cap"], "native") << j;  // no --max-isa given
  EXPECT_TRUE(j["active_transcriptions"].is_number());
  EXPECT_TRUE(j["queue_depth"].is_number());
  EXPECT_TRUE(j["active_requests"].is_number());
  EXPECT_GE(j["uptime_seconds"].get<double>(), 0.0);
  // the decoder's KV pool: reserved at least what its sequences hold
  EXPECT_GE(j["kv_pool"]["reserved_bytes"].get<std::int64_t>(), j["kv_pool"]["used_bytes"].get<std::int64_t>()) << j;
  EXPECT_TRUE(j["models"][0]["kv_pool_used_bytes"].is_number()) << j;
}

TEST_F(ServerTest, ModelsListsTheLoadedModel) {
  const auto r = curl(auth() + quote(server_->url("/v1/models")));
  ASSERT_EQ(r.status, 200) << r.body;
  const auto j = r.as_json();
  EXPECT_EQ(j["object"], "list");
  ASSERT_EQ(j["data"].size(), 2u) << r.body;  // the model, and the alias OpenAI's clients send
  EXPECT_EQ(j["data"][0]["id"], "micro.en-f16");
  EXPECT_EQ(j["data"][0]["object"], "model");
  EXPECT_EQ(j["data"][1]["id"], "whisper-1");
  EXPECT_EQ(curl(auth() + quote(server_->url("/v1/models/micro.en-f16"))).status, 200);
  EXPECT_EQ(curl(auth() + quote(server_->url("/v1/models/whisper-1"))).status, 200);
  const auto unknown = curl(auth() + quote(server_->url("/v1/models/gpt-9")));
  EXPECT_EQ(unknown.status, 404);
  EXPECT_EQ(unknown.error_code(), "model_not_found");
}

TEST_F(ServerTest, JsonFormat) {
  const auto r = transcribe(*server_, "");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_NE(r.headers.find("application/json"), std::string::npos);
  const auto j = r.as_json();
  ASSERT_TRUE(j.is_object()) << r.body;
  ASSERT_TRUE(j["text"].is_string());
  EXPECT_FALSE(j["text"].get<std::string>().empty()) << "the micro model always says something about jfk";
  EXPECT_FALSE(j.contains("timing"));
}

TEST_F(ServerTest, TextFormatMatchesJson) {
  const auto t = transcribe(*server_, "-F response_format=text");
  const auto j = transcribe(*server_, "-F response_format=json");
  ASSERT_EQ(t.status, 200) << t.body;
  EXPECT_NE(t.headers.find("text/plain"), std::string::npos);
  EXPECT_EQ(t.body, j.as_json()["text"].get<std::string>() + "\n");
}

TEST_F(ServerTest, VerboseJsonFormat) {
  const auto r = transcribe(*server_, "-F response_format=verbose_json");
  ASSERT_EQ(r.status, 200) << r.body;
  const auto j = r.as_json();
  EXPECT_EQ(j["task"], "transcribe");
  EXPECT_EQ(j["language"], "english");  // OpenAI's name, not the code
  EXPECT_NEAR(j["duration"].get<double>(), 11.0, 0.1);
  ASSERT_TRUE(j["segments"].is_array());
  ASSERT_FALSE(j["segments"].empty()) << r.body;
  for (const auto& s : j["segments"]) {
    EXPECT_FALSE(s["tokens"].empty()) << s;
    EXPECT_LE(s["start"].get<double>(), s["end"].get<double>()) << s;
    EXPECT_TRUE(s["text"].is_string()) << s;
  }
  EXPECT_FALSE(j.contains("words"));
}

TEST_F(ServerTest, WordGranularityAddsWords) {
  const auto r = transcribe(*server_, "-F response_format=verbose_json -F 'timestamp_granularities[]=word' "
                                      "-F 'timestamp_granularities[]=segment'");
  ASSERT_EQ(r.status, 200) << r.body;
  const auto j = r.as_json();
  ASSERT_TRUE(j["words"].is_array()) << r.body;
  ASSERT_FALSE(j["words"].empty()) << r.body;
  const double duration = j["duration"];
  for (const auto& w : j["words"]) {
    EXPECT_FALSE(w["word"].get<std::string>().empty()) << w;
    EXPECT_LE(w["start"].get<double>(), w["end"].get<double>()) << w;
    EXPECT_GE(w["start"].get<double>(), 0.0) << w;
    EXPECT_LE(w["end"].get<double>(), duration) << w;
  }
}

TEST_F(ServerTest, SrtAndVttFormats) {
  const auto srt = transcribe(*server_, "-F response_format=srt");
  ASSERT_EQ(srt.status, 200) << srt.body;
  const auto vtt = transcribe(*server_, "-F response_format=vtt");
  ASSERT_EQ(vtt.status, 200) << vtt.body;
  EXPECT_EQ(vtt.body.rfind("WEBVTT", 0), 0u) << vtt.body;
  EXPECT_EQ(srt.body.find("WEBVTT"), std::string::npos);
  // Both show the same cues (jfk gives at least one); srt numbers them and uses a decimal comma.
  const auto cues = [](const std::string& body) {
    std::size_t n = 0;
    for (auto at = body.find(" --> "); at != std::string::npos; at = body.find(" --> ", at + 1)) ++n;
    return n;
  };
  EXPECT_GE(cues(srt.body), 1u) << srt.body;
  EXPECT_EQ(cues(srt.body), cues(vtt.body)) << srt.body << vtt.body;
  EXPECT_EQ(srt.body.rfind("1\n00:00:", 0), 0u) << srt.body;
  EXPECT_NE(srt.body.find(",", srt.body.find(" --> ") - 4), std::string::npos) << srt.body;
}

TEST_F(ServerTest, IncludeTimingBreaksDownTheRequest) {
  const auto r = transcribe(*server_, "-F include_timing=true");
  ASSERT_EQ(r.status, 200) << r.body;
  const auto t = r.as_json()["timing"];
  ASSERT_TRUE(t.is_object()) << r.body;
  for (const char* key : {"queue_seconds", "decode_audio_seconds", "transcription_seconds"}) {
    ASSERT_TRUE(t[key].is_number()) << key;
    EXPECT_GE(t[key].get<double>(), 0.0);
  }
  EXPECT_NE(r.headers.find("Server-Timing"), std::string::npos);
}

TEST_F(ServerTest, TheSameRequestGivesTheSameOutput) {
  for (const std::string fields : {"-F response_format=verbose_json", "-F response_format=verbose_json -F temperature=0.7"}) {
    const auto a = transcribe(*server_, fields, audio("speech-5s.wav"));
    const auto b = transcribe(*server_, fields, audio("speech-5s.wav"));
    ASSERT_EQ(a.status, 200) << a.body;
    EXPECT_EQ(a.body, b.body) << fields;
  }
}

// One segment as the server's verbose_json or the library's Transcript has it.
using testing::rows_of;
using testing::SegmentRow;

void expect_same_segments(const std::vector<SegmentRow>& served, const std::vector<SegmentRow>& library) {
  ASSERT_EQ(served.size(), library.size());
  for (std::size_t i = 0; i < served.size(); ++i) {
    EXPECT_EQ(served[i].seek, library[i].seek) << "segment " << i;
    EXPECT_NEAR(served[i].start, library[i].start, 1e-9) << "segment " << i;
    EXPECT_NEAR(served[i].end, library[i].end, 1e-9) << "segment " << i;
    EXPECT_EQ(served[i].text, library[i].text) << "segment " << i;
    EXPECT_EQ(served[i].tokens, library[i].tokens) << "segment " << i;
  }
}

// The server is the library behind HTTP: the same file with the same options gives the
// same segments (seek, times, text, tokens) and text through POST /v1/audio/transcriptions
// as through pipeline::transcribe(), with and without the request's `prompt` (which must
// reach the decoder: it changes the random model's output). speech-75s: three windows or
// more, each conditioned on the one before.
TEST(ServerLibraryParity, SameTokensTimesAndTextAsThePipeline) {
  ServerProcess s({"--sample-len", "24"});  // and --beam-size 1 --no-fallback (ServerProcess)
  ASSERT_TRUE(s.ready()) << s.log();
  const auto file = audio("speech-75s.wav");
  const auto model = pipeline::Model::load(testing::model_path("micro.en-f16"));
  const auto samples = audio::load_audio_file(file);
  pipeline::TranscribeOptions o;  // what those flags make of the defaults
  o.temperatures = {0.0f};
  o.decode.sample_len = 24;
  const std::string prompt = "President Kennedy spoke in Berlin.";
  std::vector<std::vector<SegmentRow>> library_rows;
  for (const std::string& p : {std::string(), prompt}) {
    SCOPED_TRACE(p.empty() ? "no prompt" : "prompt");
    o.initial_prompt = p;
    const auto library = pipeline::transcribe(*model, samples, o);
    const auto served = curl(form_file(file) + "-F model=whisper-1 -F response_format=verbose_json " +
                             (p.empty() ? "" : "-F " + quote("prompt=" + p) + " ") +
                             quote(s.url("/v1/audio/transcriptions")));
    ASSERT_EQ(served.status, 200) << served.body;
    const auto j = served.as_json();
    ASSERT_FALSE(library.segments.empty());
    expect_same_segments(rows_of(j), rows_of(library));
    // the API's text has no leading space (OpenAI strips it; its segments keep theirs)
    ASSERT_EQ(library.text.front(), ' ');
    EXPECT_EQ(j["text"], library.text.substr(1));
    EXPECT_DOUBLE_EQ(j["duration"].get<double>(), library.duration);
    EXPECT_EQ(j["language"], "english");
    library_rows.push_back(rows_of(library));
  }
  EXPECT_NE(library_rows[0], library_rows[1]) << "the prompt must change this model's output for the test to see it";
}

// The value of one series in Prometheus text, or -1 when it is missing.
double metric_value(const std::string& text, const std::string& series) {
  const auto at = text.find("\n" + series + " ");
  return at == std::string::npos ? -1.0 : std::atof(text.c_str() + at + series.size() + 2);
}

// Batching changes nothing: the tokens of a file sent alone equal its tokens when it is
// one of 16 concurrent requests whose decoder steps run together.
TEST(ServerBatching, SameTokensAloneAndAmongSixteenConcurrentRequests) {
  ServerProcess s({"--workers", "16", "--sample-len", "24"});
  ASSERT_TRUE(s.ready()) << s.log();
  const auto probe = audio("speech-30s.wav");
  auto segment_tokens = [](const HttpResult& r) {
    std::vector<std::vector<int>> tokens;
    const json body = r.as_json();
    for (const auto& seg : body["segments"]) tokens.push_back(seg["tokens"].get<std::vector<int>>());
    return tokens;
  };
  auto post = [&](const fs::path& file) {
    return curl(form_file(file) + "-F model=whisper-1 -F response_format=verbose_json " +
                quote(s.url("/v1/audio/transcriptions")));
  };
  const auto alone = post(probe);
  ASSERT_EQ(alone.status, 200) << alone.body;
  ASSERT_FALSE(segment_tokens(alone).empty()) << alone.body;

  const std::vector<fs::path> others = {audio("speech-1s.wav"), audio("speech-5s.wav"), audio("jfk.wav"),
                                        audio("speech-75s.wav"), audio("noise-5s.wav")};
  std::vector<std::future<HttpResult>> crowd;
  for (int i = 0; i < 15; ++i) {
    const fs::path file = i == 7 ? probe : others[static_cast<std::size_t>(i) % others.size()];
    crowd.push_back(std::async(std::launch::async, post, file));
    if (i == 7) crowd.push_back(std::async(std::launch::async, post, probe));
  }
  std::vector<HttpResult> results;
  for (auto& f : crowd) results.push_back(f.get());
  for (const auto& r : results) ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(segment_tokens(results[7]), segment_tokens(alone));
  EXPECT_EQ(segment_tokens(results[8]), segment_tokens(alone));
  EXPECT_EQ(results[8].as_json()["text"], alone.as_json()["text"]);
  // and the steps were shared: not every decoder step advanced a single sequence
  const auto metrics = curl(quote(s.url("/metrics"))).body;
  const double steps = metric_value(metrics, "amanuensis_decoder_batch_sequences_count");
  EXPECT_GT(steps, 0) << metrics;
  EXPECT_LT(metric_value(metrics, "amanuensis_decoder_batch_sequences_bucket{le=\"1\"}"), steps) << metrics;
}

TEST_F(ServerTest, OtherAudioFormatsAreDecoded) {
  if (run_command("command -v ffmpeg").empty()) GTEST_SKIP() << "no ffmpeg to make the file";
  const auto flac = scratch() / "jfk-44k1-stereo.flac";
  int status = -1;
  run_command("ffmpeg -nostdin -loglevel error -y -i " + quote(audio("jfk-44k1-stereo.wav").string()) + " " +
                  quote(flac.string()) + " 2>&1",
              &status);
  ASSERT_EQ(status, 0);
  const auto r = transcribe(*server_, "-F response_format=verbose_json", flac);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_NEAR(r.as_json()["duration"].get<double>(), 11.0, 0.1);
}

TEST_F(ServerTest, Translations) {
  const auto r = transcribe(*server_, "-F response_format=verbose_json", audio("speech-1s.wav"), "/v1/audio/translations");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.as_json()["task"], "translate");
}

TEST_F(ServerTest, BadRequestsAre400WithOpenAiErrorBodies) {
  const auto garbage = scratch() / "garbage.wav";
  std::ofstream(garbage) << "this is not audio at all, just some text pretending to be a file";
  const auto empty = scratch() / "empty.wav";
  std::ofstream(empty).flush();
  struct Case {
    std::string name;
    HttpResult result;
    std::string param;
  };
  const std::vector<Case> cases = {
      {"no file", curl(auth() + "-F model=whisper-1 " + quote(server_->url("/v1/audio/transcriptions"))), "file"},
      {"no model", curl(auth() + form_file(audio("jfk.wav")) + quote(server_->url("/v1/audio/transcriptions"))), "model"},
      {"bad response_format", transcribe(*server_, "-F response_format=docx"), "response_format"},
      {"bad temperature", transcribe(*server_, "-F temperature=hot"), "temperature"},
      {"temperature out of range", transcribe(*server_, "-F temperature=3"), "temperature"},
      {"bad granularity", transcribe(*server_, "-F 'timestamp_granularities[]=letter'"), "timestamp_granularities"},
      {"not audio", transcribe(*server_, "", garbage), "file"},
      {"empty audio", transcribe(*server_, "", empty), "file"},
      {"not multipart", curl(auth() + "-H 'Content-Type: application/json' --data '{\"file\": 1}' " +
                             quote(server_->url("/v1/audio/transcriptions"))), ""},
      {"truncated multipart", curl(auth() + "-H 'Content-Type: multipart/form-data; boundary=zz' --data-binary "
                                            "$'--zz\\r\\nContent-Disposition: form-data; name=\"file\"\\r\\n\\r\\nabc' " +
                                   quote(server_->url("/v1/audio/transcriptions"))), ""},
  };
  for (const auto& c : cases) {
    EXPECT_EQ(c.result.status, 400) << c.name << ": " << c.result.body;
    const auto j = c.result.as_json();
    ASSERT_TRUE(j.is_object() && j.contains("error")) << c.name << ": " << c.result.body;
    const auto& e = j["error"];
    EXPECT_TRUE(e["message"].is_string()) << c.name;
    EXPECT_EQ(e["type"], "invalid_request_error") << c.name;
    EXPECT_TRUE(e.contains("param") && e.contains("code")) << c.name;
    if (!c.param.empty()) {
      EXPECT_EQ(e["param"], c.param) << c.name;
    }
  }
}

TEST_F(ServerTest, UploadOverTheLimitIs413) {
  const auto big = scratch() / "big.wav";
  {
    std::ofstream out(big, std::ios::binary);
    out << std::string(3u << 20, 'x');
  }
  const auto r = transcribe(*server_, "", big);
  EXPECT_EQ(r.status, 413) << r.body;
  EXPECT_EQ(r.error_code(), "file_too_large");
}

TEST_F(ServerTest, MissingOrWrongKeyIs401) {
  const auto none = curl("-F " + quote("file=@" + audio("jfk.wav").string()) + " -F model=whisper-1 " +
                         quote(server_->url("/v1/audio/transcriptions")));
  EXPECT_EQ(none.status, 401) << none.body;
  EXPECT_EQ(none.error_code(), "invalid_api_key");
  const auto wrong = curl("-H 'Authorization: Bearer nope' " + quote(server_->url("/v1/models")));
  EXPECT_EQ(wrong.status, 401) << wrong.body;
  EXPECT_EQ(curl(quote(server_->url("/health"))).status, 200);  // health needs no key
}

TEST_F(ServerTest, UnknownPathIs404AndWrongMethodIs405) {
  const auto missing = curl(auth() + quote(server_->url("/v1/audio/speech")));
  EXPECT_EQ(missing.status, 404) << missing.body;
  EXPECT_EQ(missing.error_code(), "unknown_url");
  const auto get = curl(auth() + quote(server_->url("/v1/audio/transcriptions")));
  EXPECT_EQ(get.status, 405) << get.body;
  EXPECT_NE(get.headers.find("Allow: POST"), std::string::npos) << get.headers;
  const auto post = curl("-X POST -d x " + quote(server_->url("/health")));
  EXPECT_EQ(post.status, 405) << post.body;
}

TEST_F(ServerTest, MalformedHttpNeverCrashesTheServer) {
  const std::vector<std::string> inputs = {
      "GARBAGE\r\n\r\n",
      "GET / HTTP/9.9\r\n\r\n",
      "POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
      "POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
      std::string("\0\1\2\3\xff\xfe", 6),
      "GET /health HTTP/1.1\r\nHost: x\r\nX: " + std::string(100000, 'a') + "\r\n\r\n",
      "POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer test-secret\r\n"
      "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 20\r\n\r\n--b\r\n\r\n\r\n--b--\r\n",
      "POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nshort",
  };
  for (const auto& in : inputs) {
    const auto out = raw_exchange(server_->port(), in);
    if (!out.empty()) {
      EXPECT_EQ(out.rfind("HTTP/1.1 ", 0), 0u) << out.substr(0, 200);
      EXPECT_EQ(out.find("HTTP/1.1 5"), std::string::npos) << out.substr(0, 200);
    }
  }
  EXPECT_EQ(raw_exchange(server_->port(), "GARBAGE\r\n\r\n").rfind("HTTP/1.1 400", 0), 0u);
  EXPECT_EQ(curl(quote(server_->url("/health"))).status, 200);
}

TEST_F(ServerTest, MetricsInPrometheusFormat) {
  (void)transcribe(*server_, "");
  const auto r = curl(quote(server_->url("/metrics")));
  ASSERT_EQ(r.status, 200);
  EXPECT_NE(r.headers.find("text/plain"), std::string::npos);
  for (const char* s : {"# TYPE amanuensis_requests_total counter",
                        "amanuensis_requests_total{endpoint=\"/v1/audio/transcriptions\",status=\"200\"}",
                        "# TYPE amanuensis_audio_seconds_total counter", "# TYPE amanuensis_request_duration_seconds histogram",
                        "amanuensis_request_duration_seconds_bucket{le=\"+Inf\"}", "# TYPE amanuensis_realtime_factor histogram",
                        "# TYPE amanuensis_queue_depth gauge", "amanuensis_active_requests",
                        "amanuensis_kv_pool_bytes{state=\"reserved\"}", "amanuensis_kv_pool_bytes{state=\"used\"} 0\n"}) {
    EXPECT_NE(r.body.find(s), std::string::npos) << s;
  }
}

// True when the environment says this is a CI run (CI=true or CI=1, as CI services set it).
bool running_in_ci() {
  const char* ci = std::getenv("CI");
  return ci && (std::string(ci) == "true" || std::string(ci) == "1");
}

// The reason the OpenAI client test cannot run here, or "" when it can.
std::string missing_node_client(const fs::path& api_dir) {
  if (run_command("command -v node").empty()) return "node is not installed (scripts/setup.sh installs it)";
  if (!fs::exists(api_dir / "node_modules" / "openai")) return "run npm ci in tests/api (scripts/setup.sh does)";
  return "";
}

// Outside CI a machine without Node.js or the npm packages skips this test, saying why; in
// CI the same situation fails, so that a green run always includes the official client.
TEST_F(ServerTest, OpenAiNodeClient) {
  const fs::path api_dir = fs::path(__FILE__).parent_path().parent_path() / "api";
  if (const auto missing = missing_node_client(api_dir); !missing.empty()) {
    if (running_in_ci()) FAIL() << "CI is set, and the OpenAI client cannot run: " << missing;
    GTEST_SKIP() << missing;
  }
  int status = -1;
  const auto out = run_command("node " + quote((api_dir / "client.mjs").string()) + " " + quote(server_->url("/v1")) + " " +
                                   kKey + " " + quote(audio("speech-5s.wav").string()) + " 2>&1",
                               &status);
  EXPECT_EQ(status, 0) << out;
  EXPECT_NE(out.find(" passed, 0 failed"), std::string::npos) << out;
}

// A queue bounded to one second of audio with one worker: of several long requests sent
// at once, one runs, one waits, and the others are refused with 429 and Retry-After.
TEST(ServerQueue, FullQueueIs429WithRetryAfter) {
  ServerProcess s({"--workers", "1", "--max-queue-seconds", "1"});
  ASSERT_TRUE(s.ready()) << s.log();
  const auto file = audio("speech-75s.wav");
  std::string cmd;
  constexpr int kRequests = 6;
  for (int i = 0; i < kRequests; ++i) {
    cmd += "curl -s --max-time 120 -o /dev/null -D " + quote((scratch() / ("q" + std::to_string(i))).string()) +
           " -w '%{http_code}\\n' -F " + quote("file=@" + file.string()) + " -F model=whisper-1 " +
           quote(s.url("/v1/audio/transcriptions")) + " & ";
  }
  cmd += "wait";
  const auto out = run_command(cmd);
  int ok = 0, full = 0;
  std::istringstream lines(out);
  for (std::string line; std::getline(lines, line);) {
    if (line == "200") ++ok;
    if (line == "429") ++full;
  }
  EXPECT_EQ(ok + full, kRequests) << out;
  EXPECT_GE(ok, 1);
  EXPECT_GE(full, 1) << out;
  bool retry_after = false;
  for (int i = 0; i < kRequests; ++i) {
    const auto h = read_file(scratch() / ("q" + std::to_string(i)));
    if (h.find(" 429") != std::string::npos) retry_after = retry_after || h.find("Retry-After: ") != std::string::npos;
  }
  EXPECT_TRUE(retry_after);
}

// Clients that leave (queued or mid-decode) and the queue timeout: server_disconnect_test.cpp.

// SIGTERM with requests in flight (one running, two queued): all three complete with 200,
// then the server exits 0 and takes no new connection.
TEST(ServerShutdown, SigtermFinishesRequestsInFlight) {
  ServerProcess s({"--workers", "1"});
  ASSERT_TRUE(s.ready()) << s.log();
  const auto file = audio("speech-75s.wav");
  constexpr int kRequests = 3;
  FILE* clients = post_in_background(s, file, kRequests);
  ASSERT_NE(clients, nullptr);
  // Accepted: in flight, or already answered (a fast machine may finish one first).
  const auto accepted = [&] {
    return testing::metric(s.port(), "amanuensis_active_requests") +
           std::max(0.0, testing::metric(s.port(), testing::requests_with_status(200)));
  };
  const bool all_accepted = testing::eventually([&] { return accepted() == kRequests; });
  ::kill(s.pid(), SIGTERM);
  const std::string out = collect(clients);
  ASSERT_TRUE(all_accepted) << "the server took fewer than " << kRequests << " requests in 60 s\n" << s.log();
  EXPECT_EQ(s.wait_exit(60), 0) << s.log();
  EXPECT_EQ(out, "200\n200\n200\n") << s.log();
  EXPECT_NE(s.log().find("stopped"), std::string::npos) << s.log();
  EXPECT_EQ(curl(quote(s.url("/health"))).status, 0);  // nobody listens any more
}

}  // namespace
}  // namespace amanuensis

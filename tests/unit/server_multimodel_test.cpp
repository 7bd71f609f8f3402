// `amanuensis serve` with several models (--model a --model b), end to end: the server runs
// as a child process and requests go through curl. Two micro models of the same shape with
// different random weights (micro.en-f16, seed 1, from the kit; micro.en-seed2-f16,
// generated) give different tokens, so an answer shows which model made it: each is
// compared with the library's own transcription by that model. Covers routing by the
// `model` field (whisper-1 is the first model), 404/400 for unknown or missing models,
// /v1/models, loading on first use, idle unloading, --max-loaded-models (eviction and 503
// model_capacity), a model that fails to load, the flags' errors and ids from the catalog.
//
// Synchronisation is by polling the server's own /health and /metrics with a generous
// bound, never by sleeping a guessed time; no test asserts a duration.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "audio/decode.h"
#include "pipeline/transcriber.h"
#include "server_process.h"
#include "test_paths.h"

namespace amanuensis {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using testing::eventually;
using testing::ServerProcess;
using testing::shell_quote;

const std::string kFirst = "micro.en-f16";
const std::string kSecond = "micro.en-seed2-f16";

fs::path audio(const std::string& name) { return testing::conformance_dir() / "audio" / name; }
fs::path first_model() { return testing::model_path(kFirst); }
fs::path second_model() { return testing::model_path(kSecond); }

struct HttpResult {
  int status = 0;
  std::string headers;
  std::string body;
  json as_json() const { return json::parse(body, nullptr, false); }
  std::string error_field(const std::string& field) const {
    const auto j = as_json();
    if (!j.is_object() || !j.contains("error")) return "<no error body>";
    return j["error"][field].is_string() ? j["error"][field].get<std::string>() : "<null>";
  }
};

// curl with the given (quoted) arguments; safe from several threads.
HttpResult curl(const std::string& args) {
  static std::atomic<int> counter{0};
  const int n = ++counter;
  const auto body = testing::scratch_dir() / ("mm_body_" + std::to_string(n));
  const auto headers = testing::scratch_dir() / ("mm_headers_" + std::to_string(n));
  const auto code = testing::run_command("curl -s --max-time 120 -o " + shell_quote(body.string()) + " -D " +
                                         shell_quote(headers.string()) + " -w '%{http_code}' " + args);
  return {std::atoi(code.out.c_str()), testing::read_file(headers), testing::read_file(body)};
}

HttpResult get(const ServerProcess& s, const std::string& path) { return curl(shell_quote(s.url(path))); }

// A transcription of jfk.wav (verbose_json) naming `model`; no model field when it is empty.
HttpResult transcribe(const ServerProcess& s, const std::string& model) {
  return curl("-F " + shell_quote("file=@" + audio("jfk.wav").string()) + " " +
              (model.empty() ? "" : "-F " + shell_quote("model=" + model) + " ") +
              "-F response_format=verbose_json " + shell_quote(s.url("/v1/audio/transcriptions")));
}

// What identifies an answer: its text and every segment's tokens.
struct Tokens {
  std::string text;
  std::vector<std::vector<int>> segments;
  bool operator==(const Tokens&) const = default;
};

std::ostream& operator<<(std::ostream& os, const Tokens& t) { return os << "'" << t.text << "'"; }

Tokens tokens_of(const HttpResult& r) {
  Tokens t;
  const auto j = r.as_json();
  if (!j.is_object() || !j.contains("segments")) return t;
  t.text = j["text"];
  for (const auto& s : j["segments"]) t.segments.push_back(s["tokens"].get<std::vector<int>>());
  return t;
}

// The library's transcription of jfk.wav by `model`, with what ServerProcess's flags make
// of the defaults (--sample-len 8 --beam-size 1 --no-fallback).
Tokens library_tokens(const fs::path& model, int sample_len = 8) {
  pipeline::TranscribeOptions o;
  o.temperatures = {0.0f};
  o.decode.sample_len = sample_len;
  const auto t = pipeline::transcribe(*pipeline::Model::load(model), audio::load_audio_file(audio("jfk.wav")), o);
  // the API's text has no outer spaces (OpenAI strips Whisper's leading one)
  const auto first = t.text.find_first_not_of(' ');
  Tokens out{first == std::string::npos ? "" : t.text.substr(first, t.text.find_last_not_of(' ') - first + 1), {}};
  for (const auto& s : t.segments) out.segments.push_back(s.tokens);
  return out;
}

const Tokens& expected_first() {
  static const Tokens t = library_tokens(first_model());
  return t;
}
const Tokens& expected_second() {
  static const Tokens t = library_tokens(second_model());
  return t;
}

// The state /health gives model number `index`, "" when it does not answer.
std::string state_in_health(const ServerProcess& s, std::size_t index) {
  const auto j = json::parse(testing::http_get(s.port(), "/health").body, nullptr, false);
  if (!j.is_object() || !j.contains("models") || j["models"].size() <= index) return "";
  return j["models"][index]["state"];
}

bool reaches(const ServerProcess& s, std::size_t index, const std::string& state) {
  return eventually([&] { return state_in_health(s, index) == state; });
}

ServerProcess two_models(std::vector<std::string> extra = {}) { return {{first_model(), second_model()}, extra}; }

void expect_answers_from(const HttpResult& r, const Tokens& expected, const std::string& what) {
  EXPECT_EQ(r.status, 200) << what << ": " << r.body;
  EXPECT_EQ(tokens_of(r), expected) << what;
}

TEST(MultiModelServer, EachRequestIsAnsweredByTheModelItNames) {
  ASSERT_NE(expected_first(), expected_second()) << "the two models must differ for this test to see routing";
  ServerProcess s({first_model(), second_model()}, {});
  ASSERT_TRUE(s.ready()) << s.log();
  expect_answers_from(transcribe(s, kSecond), expected_second(), kSecond);
  expect_answers_from(transcribe(s, kFirst), expected_first(), kFirst);
  expect_answers_from(transcribe(s, "whisper-1"), expected_first(), "whisper-1 (the first model)");
}

TEST(MultiModelServer, WhisperOneIsTheFirstModelGiven) {
  ServerProcess s({second_model(), first_model()}, {});  // the other order
  ASSERT_TRUE(s.ready()) << s.log();
  expect_answers_from(transcribe(s, "whisper-1"), expected_second(), "whisper-1");
  expect_answers_from(transcribe(s, kFirst), expected_first(), kFirst);
}

// 8 requests to each model at once (16 in flight, 8 workers each): every answer comes from
// the model it named, batching within each model, both models computing at the same time.
TEST(MultiModelServer, EightConcurrentRequestsToEachModelAreAllAnsweredByTheirModel) {
  ServerProcess s({first_model(), second_model()}, {"--workers", "8"});
  ASSERT_TRUE(s.ready()) << s.log();
  std::vector<std::future<HttpResult>> first, second;
  for (int i = 0; i < 8; ++i) {
    first.push_back(std::async(std::launch::async, [&] { return transcribe(s, kFirst); }));
    second.push_back(std::async(std::launch::async, [&] { return transcribe(s, kSecond); }));
  }
  for (std::size_t i = 0; i < first.size(); ++i) {
    expect_answers_from(first[i].get(), expected_first(), kFirst + " #" + std::to_string(i));
    expect_answers_from(second[i].get(), expected_second(), kSecond + " #" + std::to_string(i));
  }
}

TEST(MultiModelServer, UnknownModelIs404AndMissingModelIs400) {
  auto s = two_models();
  ASSERT_TRUE(s.ready()) << s.log();
  const auto unknown = transcribe(s, "gpt-4o-transcribe");
  EXPECT_EQ(unknown.status, 404) << unknown.body;
  EXPECT_EQ(unknown.error_field("code"), "model_not_found");
  EXPECT_EQ(unknown.error_field("param"), "model");
  EXPECT_EQ(unknown.error_field("type"), "invalid_request_error");
  EXPECT_NE(unknown.error_field("message").find("gpt-4o-transcribe"), std::string::npos) << unknown.body;
  const auto missing = transcribe(s, "");
  EXPECT_EQ(missing.status, 400) << missing.body;
  EXPECT_EQ(missing.error_field("param"), "model");
  EXPECT_EQ(missing.error_field("type"), "invalid_request_error");
  EXPECT_NE(missing.error_field("message").find("model"), std::string::npos) << missing.body;
}

// What is listed is what a request may name and what GET /v1/models/{id} retrieves.
TEST(MultiModelServer, ModelsListsEveryIdAndTheAliasWithTheirSizes) {
  auto s = two_models();
  ASSERT_TRUE(s.ready()) << s.log();
  const auto list = get(s, "/v1/models");
  ASSERT_EQ(list.status, 200) << list.body;
  const auto data = list.as_json()["data"];
  std::vector<std::string> ids;
  for (const auto& m : data) ids.push_back(m["id"]);
  EXPECT_EQ(ids, (std::vector<std::string>{kFirst, kSecond, "whisper-1"})) << list.body;
  const std::vector<std::uintmax_t> sizes = {fs::file_size(first_model()), fs::file_size(second_model()),
                                             fs::file_size(first_model())};
  for (std::size_t i = 0; i < data.size() && i < sizes.size(); ++i) {
    const auto& m = data[i];
    EXPECT_EQ(m["object"], "model") << m;
    EXPECT_TRUE(m["created"].is_number_integer()) << m;
    EXPECT_EQ(m["owned_by"], "amanuensis") << m;
    EXPECT_EQ(m["size_bytes"], sizes[i]) << m;
    EXPECT_TRUE(m["state"].is_string()) << m;
    const auto one = get(s, "/v1/models/" + m["id"].get<std::string>());
    EXPECT_EQ(one.status, 200) << one.body;
    EXPECT_EQ(one.as_json()["id"], m["id"]);
  }
  const auto unknown = get(s, "/v1/models/tiny.en");
  EXPECT_EQ(unknown.status, 404) << unknown.body;
  EXPECT_EQ(unknown.error_field("code"), "model_not_found");
}

TEST(MultiModelServer, TheSecondModelLoadsOnFirstUse) {
  auto s = two_models();
  ASSERT_TRUE(s.ready()) << s.log();
  EXPECT_EQ(state_in_health(s, 0), "ready");
  EXPECT_EQ(state_in_health(s, 1), "unloaded");
  const auto health = json::parse(get(s, "/health").body, nullptr, false);
  EXPECT_EQ(health["status"], "ok");
  EXPECT_EQ(health["model"], kFirst);  // the single-model fields describe the first model
  EXPECT_EQ(health["n_vocab"], 51864);
  expect_answers_from(transcribe(s, kSecond), expected_second(), kSecond);
  EXPECT_EQ(state_in_health(s, 1), "ready");
  EXPECT_EQ(testing::metric(s.port(), "amanuensis_loaded_models"), 2);
}

TEST(MultiModelServer, IdleModelsUnloadAndLoadAgainOnTheNextRequest) {
  auto s = two_models({"--model-idle-unload", "1"});
  ASSERT_TRUE(s.ready()) << s.log();
  expect_answers_from(transcribe(s, kSecond), expected_second(), kSecond);
  EXPECT_TRUE(reaches(s, 1, "unloaded")) << s.log();
  EXPECT_TRUE(reaches(s, 0, "unloaded")) << s.log();  // the first one too, once idle
  EXPECT_EQ(get(s, "/health").status, 200) << "the server stays up with its models unloaded";
  expect_answers_from(transcribe(s, kSecond), expected_second(), kSecond + " again");
  expect_answers_from(transcribe(s, "whisper-1"), expected_first(), "whisper-1 again");
}

TEST(MultiModelServer, MaxLoadedModelsOneEvictsTheIdleModel) {
  auto s = two_models({"--max-loaded-models", "1"});
  ASSERT_TRUE(s.ready()) << s.log();
  EXPECT_EQ(state_in_health(s, 1), "unloaded");
  expect_answers_from(transcribe(s, kSecond), expected_second(), kSecond);
  EXPECT_EQ(state_in_health(s, 0), "unloaded");
  EXPECT_EQ(state_in_health(s, 1), "ready");
  expect_answers_from(transcribe(s, "whisper-1"), expected_first(), "whisper-1");
  EXPECT_EQ(state_in_health(s, 0), "ready");
  EXPECT_EQ(state_in_health(s, 1), "unloaded");
}

// With one model allowed and it busy (a ten-minute upload on its only worker), a request
// for the other is refused with 503 model_capacity and Retry-After, not queued behind it.
TEST(MultiModelServer, NoRoomForAnotherModelIs503WithRetryAfter) {
  auto s = two_models({"--max-loaded-models", "1", "--workers", "1", "--sample-len", "224"});
  ASSERT_TRUE(s.ready()) << s.log();
  const auto long_file = testing::repeated_recording(audio("speech-75s.wav"), 600, "mm-ten-minutes.wav");
  testing::BackgroundUpload busy(s.url("/v1/audio/transcriptions"), long_file);
  ASSERT_TRUE(eventually([&] { return testing::metric(s.port(), "amanuensis_active_transcriptions") == 1; }))
      << s.log();
  const auto refused = transcribe(s, kSecond);
  EXPECT_EQ(refused.status, 503) << refused.body;
  EXPECT_EQ(refused.error_field("code"), "model_capacity");
  EXPECT_EQ(refused.error_field("param"), "model");
  EXPECT_NE(refused.headers.find("Retry-After: "), std::string::npos) << refused.headers;
  EXPECT_EQ(state_in_health(s, 1), "unloaded");
  busy.kill();  // its transcription stops; the first model is idle again and makes room
  ASSERT_TRUE(eventually([&] { return testing::metric(s.port(), "amanuensis_active_requests") == 0; })) << s.log();
  expect_answers_from(transcribe(s, kSecond), library_tokens(second_model(), 224), kSecond + " once there is room");
}

TEST(MultiModelServer, AModelThatFailsToLoadIsAnErrorNamingItAndTheServerStaysUp) {
  const auto broken = testing::scratch_dir() / "broken-model.bin";
  std::ofstream(broken, std::ios::binary) << "lmgg this is not a whisper model";
  ServerProcess s({first_model(), broken}, {});
  ASSERT_TRUE(s.ready()) << s.log();
  const auto failed = transcribe(s, "broken-model");
  EXPECT_EQ(failed.status, 500) << failed.body;
  EXPECT_EQ(failed.error_field("code"), "model_load_failed");
  EXPECT_NE(failed.error_field("message").find("broken-model"), std::string::npos) << failed.body;
  EXPECT_EQ(get(s, "/health").status, 200);
  EXPECT_EQ(state_in_health(s, 1), "failed");
  expect_answers_from(transcribe(s, "whisper-1"), expected_first(), "the first model, after the failure");
}

// `serve` with flags it should refuse before it listens; a server that starts instead is
// stopped after a minute (status 124), not left running.
testing::CommandResult serve_with(const std::string& flags) {
  return testing::run_command("timeout 60 " + shell_quote(testing::cli_path().string()) + " serve --port 0 " + flags +
                              " 2>&1");
}

TEST(MultiModelServe, ModelIdWithSeveralModelsIsAnError) {
  const auto r = serve_with("--model " + shell_quote(first_model().string()) + " --model " +
                            shell_quote(second_model().string()) + " --model-id mine");
  EXPECT_EQ(r.status, 1) << r.out;
  EXPECT_NE(r.out.find("--model-id"), std::string::npos) << r.out;
}

TEST(MultiModelServe, DuplicateIdsAreAnErrorNamingThem) {
  const auto copy_dir = testing::scratch_dir() / "elsewhere";
  fs::create_directories(copy_dir);
  fs::copy_file(first_model(), copy_dir / (kFirst + ".bin"), fs::copy_options::overwrite_existing);
  const auto r = serve_with("--model " + shell_quote(first_model().string()) + " --model " +
                            shell_quote((copy_dir / (kFirst + ".bin")).string()));
  EXPECT_EQ(r.status, 1) << r.out;
  EXPECT_NE(r.out.find("'" + kFirst + "'"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find(copy_dir.string()), std::string::npos) << r.out;
}

// `--model NAME` (a model of the cache) serves under NAME; a path under its file name.
TEST(MultiModelServe, ModelsGivenByNameHaveTheirCatalogNameAsId) {
  const auto cache = testing::scratch_dir() / "cache";
  fs::create_directories(cache / "amanuensis");
  fs::copy_file(second_model(), cache / "amanuensis" / "ggml-second.en.bin", fs::copy_options::overwrite_existing);
  ::setenv("XDG_CACHE_HOME", cache.c_str(), 1);  // inherited by the server process
  ServerProcess s({first_model().string(), "second.en"}, {});
  ASSERT_TRUE(s.ready()) << s.log();
  const auto list = get(s, "/v1/models").as_json();
  std::vector<std::string> ids;
  for (const auto& m : list["data"]) ids.push_back(m["id"]);
  EXPECT_EQ(ids, (std::vector<std::string>{kFirst, "second.en", "whisper-1"}));
  expect_answers_from(transcribe(s, "second.en"), expected_second(), "second.en");
}

}  // namespace
}  // namespace amanuensis

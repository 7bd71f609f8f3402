// End-to-end tests of the `amanuensis` command: transcripts in text and JSON, timestamped
// segments, teacher-forced logits against the kit's whisper.cpp references, and every
// kind of bad input ending with exit status 1 and a message on stderr (never a signal).
//
// The CLI runs as a child process (std::system, stdout and stderr captured to files).
// Every run passes --threads 1: the tests run beside each other under CTest, and the
// outputs must not depend on the thread count anyway. Transcriptions pass --no-fallback
// where the fallback is not under test: with random weights every window would be
// retried at five temperatures.
#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "audio/decode.h"
#include "model/ggml_file.h"
#include "pipeline/transcriber.h"
#include "segment_rows.h"
#include "test_paths.h"

namespace amanuensis {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr int kEnglishVocab = 51864;
constexpr int kEnglishTimestampBegin = 50363;  // <|0.00|>

fs::path audio(const std::string& name) { return testing::conformance_dir() / "audio" / name; }
fs::path ref(const std::string& name) { return testing::conformance_dir() / "ref" / name; }
std::string model(const std::string& name) { return testing::model_path(name).string(); }

std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

std::vector<float> read_floats(const fs::path& path) {
  const std::string bytes = read_text(path);
  std::vector<float> out(bytes.size() / sizeof(float));
  std::copy_n(bytes.data(), out.size() * sizeof(float), reinterpret_cast<char*>(out.data()));
  return out;
}

// A scratch folder for one test process (CTest runs each test in its own process).
const fs::path& scratch() {
  static const fs::path dir = [] {
    auto d = fs::temp_directory_path() / ("amanuensis_cli_test_" + std::to_string(::getpid()));
    fs::create_directories(d);
    std::atexit([] {
      std::error_code ec;
      fs::remove_all(fs::temp_directory_path() / ("amanuensis_cli_test_" + std::to_string(::getpid())), ec);
    });
    return d;
  }();
  return dir;
}

std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

struct CliRun {
  int exit_code = -1;  // when the process exited
  int signal = 0;      // when a signal ended it
  std::string out;
  std::string err;
  std::string command;
};

std::ostream& operator<<(std::ostream& os, const CliRun& r) {
  return os << "command: " << r.command << "\nexit " << r.exit_code << " signal " << r.signal << "\nstderr: " << r.err
            << "\nstdout (first 500 bytes): " << r.out.substr(0, 500);
}

CliRun run_cli(const std::vector<std::string>& args) {
  static int counter = 0;
  const auto out_path = scratch() / ("out" + std::to_string(counter) + ".txt");
  const auto err_path = scratch() / ("err" + std::to_string(counter) + ".txt");
  ++counter;
  CliRun run;
  run.command = shell_quote(testing::cli_path().string());
  for (const auto& a : args) run.command += " " + shell_quote(a);
  // exec: the shell is replaced by the CLI, so a crash shows as a signal, not as 128+n
  const std::string line =
      "exec " + run.command + " </dev/null >" + shell_quote(out_path.string()) + " 2>" + shell_quote(err_path.string());
  const int status = std::system(line.c_str());
  if (status != -1 && WIFEXITED(status)) run.exit_code = WEXITSTATUS(status);
  if (status != -1 && WIFSIGNALED(status)) run.signal = WTERMSIG(status);
  run.out = read_text(out_path);
  run.err = read_text(err_path);
  return run;
}

std::vector<std::string> transcribe_args(const std::string& model_name, const fs::path& file,
                                         std::vector<std::string> extra = {}) {
  std::vector<std::string> args = {"transcribe", "--threads", "1", "--model", model(model_name), file.string()};
  args.insert(args.end(), extra.begin(), extra.end());
  return args;
}

std::string trim(const std::string& s) {
  const auto a = s.find_first_not_of(" \t\r\n");
  if (a == std::string::npos) return "";
  return s.substr(a, s.find_last_not_of(" \t\r\n") - a + 1);
}

// An error run: exit status exactly 1, a message on stderr, no crash.
void expect_clean_failure(const CliRun& r, const std::string& message_part) {
  EXPECT_EQ(r.signal, 0) << r;
  EXPECT_EQ(r.exit_code, 1) << r;
  EXPECT_NE(r.err.find("amanuensis: "), std::string::npos) << r;
  EXPECT_NE(r.err.find(message_part), std::string::npos) << "'" << message_part << "' not on stderr\n" << r;
}

const std::vector<std::string> kJfkTokens = {"--tokens", "50257,50358,50362,843,523,616,5891,3399,11,1265,407"};

// ---------------------------------------------------------------------------------------
// Transcription

TEST(CliTranscribe, NoTimestampsPrintsText) {
  // default options otherwise (temperature fallback included)
  const auto r = run_cli(transcribe_args("micro.en-f16", audio("jfk.wav"), {"--no-timestamps"}));
  ASSERT_EQ(r.signal, 0) << r;
  ASSERT_EQ(r.exit_code, 0) << r;
  EXPECT_FALSE(trim(r.out).empty()) << r;
  EXPECT_EQ(r.out.find("-->"), std::string::npos) << "no timestamps in plain text output\n" << r;
}

// --hotwords reaches the prompt: the same file transcribes differently with them.
TEST(CliTranscribe, HotwordsChangeTheTranscript) {
  const auto plain = run_cli(transcribe_args("micro.en-f16", audio("jfk.wav"), {"--temperature", "0", "--beam-size", "1"}));
  const auto hot =
      run_cli(transcribe_args("micro.en-f16", audio("jfk.wav"), {"--temperature", "0", "--beam-size", "1", "--hotwords", "Kennedy Ask not"}));
  ASSERT_EQ(plain.exit_code, 0) << plain;
  ASSERT_EQ(hot.exit_code, 0) << hot;
  EXPECT_NE(plain.out, hot.out);
}

// Checks the `json` format: {"text": ..., "segments": [{start, end, text, tokens}, ...]}.
json parse_transcript_json(const CliRun& r) {
  EXPECT_EQ(r.exit_code, 0) << r;
  json j;
  try {
    j = json::parse(r.out);  // exactly one JSON value (trailing whitespace allowed)
  } catch (const json::exception& e) {
    ADD_FAILURE() << "stdout is not one JSON value: " << e.what() << "\n" << r;
    return json::object();
  }
  EXPECT_TRUE(j.is_object()) << r;
  EXPECT_TRUE(j.contains("text") && j["text"].is_string()) << r;
  EXPECT_TRUE(j.contains("segments") && j["segments"].is_array()) << r;
  std::string joined;
  for (const auto& s : j.value("segments", json::array())) {
    EXPECT_TRUE(s.contains("start") && s["start"].is_number()) << s;
    EXPECT_TRUE(s.contains("end") && s["end"].is_number()) << s;
    EXPECT_TRUE(s.contains("text") && s["text"].is_string()) << s;
    EXPECT_TRUE(s.contains("tokens") && s["tokens"].is_array()) << s;
    for (const auto& t : s.value("tokens", json::array())) {
      EXPECT_TRUE(t.is_number_integer()) << s;
      EXPECT_GE(t.get<int>(), 0);
      EXPECT_LT(t.get<int>(), kEnglishVocab);
    }
    joined += s.value("text", "");
  }
  EXPECT_EQ(j.value("text", ""), joined) << "text is the segments' texts joined";
  return j;
}

TEST(CliTranscribe, JsonSegmentsStartWithATimestampToken) {
  const auto r =
      run_cli(transcribe_args("micro.en-f16", audio("jfk.wav"), {"--no-fallback", "--output-format", "json"}));
  ASSERT_EQ(r.signal, 0) << r;
  const json j = parse_transcript_json(r);
  ASSERT_FALSE(j["segments"].empty()) << r;
  for (const auto& s : j["segments"]) {
    const auto tokens = s["tokens"].get<std::vector<int>>();
    ASSERT_FALSE(tokens.empty()) << s;
    // OpenAI semantics: every window, and so every segment, starts with a timestamp
    EXPECT_GE(tokens.front(), kEnglishTimestampBegin) << s;
    const double start = s["start"], end = s["end"];
    EXPECT_GE(start, 0.0) << s;
    EXPECT_LE(start, end) << s;
    EXPECT_LE(end, 30.0) << "one 30 s window of 11 s of audio\n" << s;
    // the segment's start is its first timestamp (one window, offset 0), clamped to the
    // audio's 11 s: the random model may point past the end of the recording
    const double first_timestamp = (tokens.front() - kEnglishTimestampBegin) * 0.02;
    EXPECT_NEAR(start, std::min(first_timestamp, 11.0), 1e-9) << s;
  }
  // max_initial_timestamp 1.0: the first timestamp is at most <|1.00|>
  EXPECT_LE(j["segments"][0]["start"].get<double>(), 1.0);
}

// In --no-timestamps mode under OpenAI semantics timestamp tokens are not masked (as in
// OpenAI's package) and the random model emits some; they must not be read as segment
// boundaries: a window is one segment from its offset to offset + its length.
TEST(CliTranscribe, NoTimestampsJsonTimesStayInsideTheAudio) {
  const auto r = run_cli(
      transcribe_args("micro.en-f16", audio("jfk.wav"), {"--no-fallback", "--no-timestamps", "--output-format", "json"}));
  ASSERT_EQ(r.signal, 0) << r;
  const json j = parse_transcript_json(r);
  ASSERT_FALSE(j["segments"].empty()) << r;
  const double duration = 11.0;  // jfk.wav: 176000 samples
  for (const auto& s : j["segments"]) {
    const double start = s["start"], end = s["end"];
    EXPECT_GE(start, 0.0) << s["tokens"];
    EXPECT_LE(start, end);
    EXPECT_LE(end, duration + 0.02);
  }
}

TEST(CliTranscribe, LongAudioSegmentsAcrossWindows) {
  const auto r = run_cli(
      transcribe_args("micro.en-f16", audio("speech-75s.wav"),
                      {"--no-fallback", "--sample-len", "64", "--output-format", "verbose_json"}));  // 64: fast
  ASSERT_EQ(r.signal, 0) << r;
  ASSERT_EQ(r.exit_code, 0) << r;
  const json j = json::parse(r.out);
  EXPECT_NEAR(j["duration"].get<double>(), 75.0, 1e-9);
  EXPECT_EQ(j["language"], "en");
  ASSERT_FALSE(j["segments"].empty());
  double previous_start = 0.0;
  int previous_seek = 0;
  std::set<int> seeks;
  for (const auto& s : j["segments"]) {
    const auto tokens = s["tokens"].get<std::vector<int>>();
    ASSERT_FALSE(tokens.empty()) << s;
    EXPECT_GE(tokens.front(), kEnglishTimestampBegin) << s;
    const double start = s["start"], end = s["end"];
    const int seek = s["seek"];
    EXPECT_GE(seek, previous_seek) << s;
    EXPECT_LT(seek, 7500) << "windows start inside the audio";
    EXPECT_LE(start, end) << s;
    EXPECT_GE(start, previous_start) << s;
    EXPECT_GE(start, seek / 100.0 - 1e-9) << s;
    EXPECT_LE(end, seek / 100.0 + 30.0 + 1e-9) << s;
    previous_start = start;
    previous_seek = seek;
    seeks.insert(seek);
  }
  EXPECT_GE(seeks.size(), 3u) << "75 s of audio takes at least three windows";
}

// The segments of a verbose_json transcript, and of a library transcript, as comparable rows.
using testing::rows_of;
using testing::SegmentRow;

// --prompt reaches the decoder: the CLI's segments equal those of the library given the
// same initial prompt, and the prompt changes them (the random model's output depends on
// every token it is conditioned on), over three windows of speech-75s.
TEST(CliTranscribe, PromptReachesTheDecoder) {
  const std::string prompt = "President Kennedy spoke in Berlin.";
  const auto r = run_cli(transcribe_args("micro.en-f16", audio("speech-75s.wav"),
                                         {"--no-fallback", "--beam-size", "1", "--sample-len", "24", "--prompt", prompt,
                                          "--output-format", "verbose_json"}));
  ASSERT_EQ(r.exit_code, 0) << r;
  const auto cli = rows_of(json::parse(r.out));

  const auto model = pipeline::Model::load(testing::model_path("micro.en-f16"));
  const auto samples = audio::load_audio_file(audio("speech-75s.wav"));
  pipeline::TranscribeOptions o;
  o.temperatures = {0.0f};
  o.decode.sample_len = 24;
  const auto without_prompt = rows_of(pipeline::transcribe(*model, samples, o));
  o.initial_prompt = prompt;
  const auto with_prompt = rows_of(pipeline::transcribe(*model, samples, o));
  ASSERT_NE(with_prompt, without_prompt) << "the prompt must change this model's output for the test to see it";
  ASSERT_FALSE(cli.empty());
  ASSERT_EQ(cli.size(), with_prompt.size());
  for (std::size_t i = 0; i < cli.size(); ++i) {
    EXPECT_EQ(cli[i].seek, with_prompt[i].seek) << i;
    EXPECT_NEAR(cli[i].start, with_prompt[i].start, 1e-9) << i;
    EXPECT_NEAR(cli[i].end, with_prompt[i].end, 1e-9) << i;
    EXPECT_EQ(cli[i].text, with_prompt[i].text) << i;
    EXPECT_EQ(cli[i].tokens, with_prompt[i].tokens) << i;
  }
}

TEST(CliTranscribe, WhisperCppCompatJson) {
  const auto r =
      run_cli(transcribe_args("micro.en-f16", audio("jfk.wav"), {"--compat", "whisper.cpp", "--output-format", "json"}));
  ASSERT_EQ(r.signal, 0) << r;
  const json j = parse_transcript_json(r);
  ASSERT_FALSE(j["segments"].empty()) << r;
  for (const auto& s : j["segments"]) EXPECT_LE(s["start"].get<double>(), s["end"].get<double>()) << s;
}

TEST(CliTranscribe, Stereo44k1IsDecodedAndResampled) {
  // jfk-44k1-stereo.wav used to be refused (WAV reader: 16 kHz mono only); since the
  // FFmpeg decoder it is down-mixed and resampled like any other input
  const auto r = run_cli(transcribe_args("micro.en-f16", audio("jfk-44k1-stereo.wav"), {"--no-fallback", "--no-timestamps"}));
  ASSERT_EQ(r.signal, 0) << r;
  EXPECT_EQ(r.exit_code, 0) << r;
  EXPECT_FALSE(trim(r.out).empty()) << r;
}

TEST(CliTranscribe, OneBadFileAmongGoodOnesFailsTheRunButPrintsTheRest) {
  const auto readme = (testing::shared_dir() / "conformance" / "README.md").string();
  const auto r =
      run_cli(transcribe_args("micro.en-f16", audio("jfk.wav"), {"--no-fallback", "--no-timestamps", readme}));
  expect_clean_failure(r, "README.md");
  EXPECT_FALSE(trim(r.out).empty()) << "jfk.wav is still transcribed\n" << r;
}

// ---------------------------------------------------------------------------------------
// Teacher-forced logits

void expect_logits_match(const fs::path& mine, const fs::path& reference, double max_tolerance,
                         double mean_tolerance = 0.02) {
  const auto a = read_floats(mine);
  const auto b = read_floats(reference);
  ASSERT_EQ(a.size(), 11u * kEnglishVocab);
  ASSERT_EQ(b.size(), a.size());
  double max_diff = 0.0, sum_diff = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    ASSERT_TRUE(std::isfinite(a[i])) << "logit " << i;
    const double d = std::abs(static_cast<double>(a[i]) - b[i]);
    max_diff = std::max(max_diff, d);
    sum_diff += d;
  }
  EXPECT_LE(max_diff, max_tolerance);
  EXPECT_LE(sum_diff / a.size(), mean_tolerance) << "mean abs difference";
}

// dump-logits of the f32 model from the kit's mel, computed in `precision`.
fs::path dump_f32_model_logits(const std::string& precision) {
  const auto out = scratch() / ("f32-" + precision + ".logits");
  std::vector<std::string> args = {"dump-logits", "--threads", "1", "--precision", precision,
                                   "--model", model("micro.en-f32"), "--mel", ref("jfk.mel.f32").string(),
                                   "--out", out.string()};
  args.insert(args.end(), kJfkTokens.begin(), kJfkTokens.end());
  const auto r = run_cli(args);
  EXPECT_EQ(r.exit_code, 0) << r;
  EXPECT_EQ(fs::file_size(out), 11u * kEnglishVocab * sizeof(float));
  return out;
}

TEST(CliDumpLogits, MelInputMatchesTheF32Reference) {
  expect_logits_match(dump_f32_model_logits("fp32"), ref("micro.en-f32__jfk.logits.f32"), 0.15);
}

// bf16 (the default on CPUs with native bf16; emulated elsewhere): the bf16 tolerance of
// the conformance suite, and clearly not the same bits as fp32.
TEST(CliDumpLogits, Bf16IsWithinTheBf16Tolerance) {
  const auto bf16 = dump_f32_model_logits("bf16");
  expect_logits_match(bf16, ref("micro.en-f32__jfk.logits.f32"), 1.0, 0.1);
  EXPECT_NE(read_floats(bf16), read_floats(dump_f32_model_logits("fp32")));
}

TEST(CliDumpLogits, AudioInputMatchesTheF16Reference) {
  const auto out = scratch() / "f16.logits";
  std::vector<std::string> args = {"dump-logits", "--threads", "1", "--precision", "fp32",
                                   "--model", model("micro.en-f16"), "--audio", audio("jfk.wav").string(),
                                   "--out", out.string()};
  args.insert(args.end(), kJfkTokens.begin(), kJfkTokens.end());
  const auto r = run_cli(args);
  ASSERT_EQ(r.exit_code, 0) << r;
  ASSERT_EQ(fs::file_size(out), 11u * kEnglishVocab * sizeof(float));
  // the reference used the kit's mel; ours comes from the samples (<= 2.3e-5 apart)
  expect_logits_match(out, ref("micro.en-f16__jfk.logits.f32"), 0.15);
}

// ---------------------------------------------------------------------------------------
// Usage and errors

// --threads beyond a sane multiple of the cores is refused up front.
TEST(CliThreads, FarTooManyThreadsIsRefusedByName) {
  const auto r = run_cli(transcribe_args("micro.en-f16", audio("speech-1s.wav"), {"--threads", "100000"}));
  expect_clean_failure(r, "--threads must be between 1 and");
}

struct LimitedRun {
  int exit_code = -1;
  std::string err;
};

// The CLI with `args` (which may name MODEL and AUDIO, replaced by readable copies of the
// micro model and a 1 s file) as an unprivileged user under `ulimit -u LIMIT`, 60 s at
// most. The limit counts every process of the user, so each run takes a user id of its
// own (from its process id, no account needed): tests running at the same time, or the
// same test in another checkout, cannot use up each other's processes.
// Needs root (for setpriv); returns nothing (and the caller skips) without it.
std::optional<LimitedRun> run_unprivileged_limited(int limit, const std::string& args, std::string& skip_reason) {
  if (::geteuid() != 0) {
    skip_reason = "needs root to run the CLI as another user under ulimit -u";
    return std::nullopt;
  }
  if (std::system("command -v setpriv >/dev/null 2>&1") != 0) {
    skip_reason = "setpriv (util-linux) is not installed";
    return std::nullopt;
  }
  // the model and audio copied where that user can read them
  const int uid = 40000 + static_cast<int>(::getpid() % 20000);
  const std::string tag = std::to_string(::getpid());
  const auto model_copy = fs::temp_directory_path() / ("amanuensis-threads-model-" + tag + ".bin");
  const auto audio_copy = fs::temp_directory_path() / ("amanuensis-threads-audio-" + tag + ".wav");
  fs::copy_file(model("micro.en-f16"), model_copy, fs::copy_options::overwrite_existing);
  fs::copy_file(audio("speech-1s.wav"), audio_copy, fs::copy_options::overwrite_existing);
  fs::permissions(model_copy, fs::perms::owner_read | fs::perms::group_read | fs::perms::others_read);
  fs::permissions(audio_copy, fs::perms::owner_read | fs::perms::group_read | fs::perms::others_read);
  std::string expanded = args;
  for (const auto& [name, path] : {std::pair{std::string("MODEL"), model_copy}, std::pair{std::string("AUDIO"), audio_copy}})
    if (const auto at = expanded.find(name); at != std::string::npos) expanded.replace(at, name.size(), shell_quote(path.string()));
  const auto err_path = scratch() / "threads-err.txt";
  const std::string command = "timeout 60 setpriv --reuid=" + std::to_string(uid) + " --regid=" + std::to_string(uid) +
                              " --clear-groups bash -c " +
                              shell_quote("ulimit -u " + std::to_string(limit) + "; exec " +
                                          shell_quote(testing::cli_path().string()) + " " + expanded) +
                              " </dev/null >/dev/null 2>" + shell_quote(err_path.string());
  const int status = std::system(command.c_str());
  LimitedRun run;
  run.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  std::ifstream in(err_path);
  run.err.assign(std::istreambuf_iterator<char>(in), {});
  fs::remove(model_copy);
  fs::remove(audio_copy);
  return run;
}

// When the system cannot create the threads asked for (a process limit), the CLI says so
// and exits; it used to hang in the thread pool's unwinding.
TEST(CliThreads, ThreadsTheSystemRefusesAreAClearErrorNotAHang) {
  std::string skip;
  const auto run = run_unprivileged_limited(3, "transcribe --threads 8 --beam-size 1 --model MODEL AUDIO", skip);
  if (!run) GTEST_SKIP() << skip;
  EXPECT_NE(run->exit_code, 124) << "timed out: the CLI hung\n" << run->err;
  EXPECT_EQ(run->exit_code, 1) << run->err;
  EXPECT_NE(run->err.find("cannot start 8 compute threads"), std::string::npos) << run->err;
}

// serve with more transcription slots than the process limit allows: a clear error and
// exit 1 (it aborted with "terminate called without an active exception", exit 134,
// when the scheduler's constructor unwound with running threads in its vector).
TEST(CliThreads, ServeSlotsTheSystemRefusesAreAClearErrorNotAnAbort) {
  std::string skip;
  const auto run = run_unprivileged_limited(40, "serve --port 0 --threads 1 --workers 200 --model MODEL", skip);
  if (!run) GTEST_SKIP() << skip;
  EXPECT_NE(run->exit_code, 124) << "timed out: serve hung\n" << run->err;
  EXPECT_EQ(run->exit_code, 1) << run->err;
  EXPECT_NE(run->err.find("cannot start 200 transcription slots"), std::string::npos) << run->err;
}

// `bench --json` reports the KV memory of a sequence (issue 10): per token, float32 keys
// and values of every decoder layer; the cross-attention keys and values of a window in
// halves.
TEST(CliBench, JsonReportsKvBytes) {
  const auto r = run_cli({"bench", "--model", model("micro.en-f16"), "--json", "--runs", "1", "--seconds", "5",
                          "--batch-sizes", "1"});
  ASSERT_EQ(r.exit_code, 0) << r;
  const auto j = nlohmann::json::parse(r.out);
  const auto hp = amanuensis::model::ModelFile::open(model("micro.en-f16")).hparams();
  const auto& kv = j.at("kv_cache");
  EXPECT_EQ(kv.at("bytes_per_token").template get<double>(), 2.0 * hp.n_text_layer * hp.n_text_state * 4);
  EXPECT_EQ(kv.at("bytes_per_sequence_full_context").template get<double>(), 2.0 * hp.n_text_layer * hp.n_text_state * 4 * hp.n_text_ctx);
  EXPECT_EQ(kv.at("cross_bytes_per_window").template get<double>(), 2.0 * hp.n_text_layer * hp.n_audio_ctx * hp.n_text_state * 2);
  const double at_audio = kv.at("bytes_per_sequence_at_this_audio").template get<double>();
  EXPECT_GT(at_audio, 0.0);
  EXPECT_LE(at_audio, kv.at("bytes_per_sequence_full_context").template get<double>());
  // and it names the kernels it timed
  EXPECT_TRUE(j.at("kernels").is_string() && !j.at("kernels").template get<std::string>().empty()) << j;
}

// --max-isa caps the kernels: under avx2 the decoder steps take 8-lane panels whatever the
// CPU, and bench says which cap it ran under; an unknown cap is refused by name.
TEST(CliBench, MaxIsaCapsTheKernels) {
  const auto r = run_cli({"bench", "--model", model("micro.en-f16"), "--json", "--runs", "1", "--seconds", "5",
                          "--batch-sizes", "1", "--precision", "fp32", "--max-isa", "avx2"});
  ASSERT_EQ(r.exit_code, 0) << r;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j.at("isa_cap"), "avx2") << j;
  const auto kernels = j.at("kernels").template get<std::string>();
  if (kernels.rfind("reference", 0) != 0) {
    EXPECT_NE(kernels.find("8 lanes"), std::string::npos) << kernels;
    EXPECT_EQ(kernels.find("avx512"), std::string::npos) << kernels;
  }
  const auto bad = run_cli({"bench", "--model", model("micro.en-f16"), "--max-isa", "avx3"});
  EXPECT_NE(bad.exit_code, 0) << bad;
  EXPECT_NE(bad.err.find("--max-isa"), std::string::npos) << bad;
}

TEST(CliUsage, HelpVersionAndNoArguments) {
  const auto help = run_cli({"--help"});
  EXPECT_EQ(help.exit_code, 0) << help;
  EXPECT_NE(help.out.find("usage"), std::string::npos) << help;
  EXPECT_NE(help.out.find("transcribe"), std::string::npos) << help;
  const auto version = run_cli({"--version"});
  EXPECT_EQ(version.exit_code, 0) << version;
  EXPECT_NE(version.out.find("amanuensis"), std::string::npos) << version;
  const auto none = run_cli({});
  EXPECT_EQ(none.signal, 0) << none;
  EXPECT_EQ(none.exit_code, 2) << "usage error\n" << none;
}

// Candidate counts are bounded (each is a sequence decoded every step: 100000 beams took
// the machine's memory), negative ones are refused rather than silently greedy, and serve's
// durations must fit the deadline arithmetic (1e10 s overflowed it).
TEST(CliErrors, OutOfRangeSearchSizesAndDurationsAreRefusedByName) {
  for (const auto& [flag, value] : std::vector<std::pair<std::string, std::string>>{
           {"--beam-size", "100000"}, {"--beam-size", "-5"}, {"--best-of", "1000"}, {"--best-of", "0"}}) {
    SCOPED_TRACE(flag + " " + value);
    expect_clean_failure(run_cli(transcribe_args("micro.en-f16", audio("speech-1s.wav"), {flag, value})), flag);
  }
  for (const std::string value : {"1e10", "inf", "nan", "-1"}) {
    SCOPED_TRACE(value);
    expect_clean_failure(run_cli({"serve", "--model", model("micro.en-f16"), "--port", "0", "--request-timeout", value}),
                         value == "nan" ? "--request-timeout needs a number" : "--request-timeout must be between");
  }
  const auto ok = run_cli(transcribe_args("micro.en-f16", audio("speech-1s.wav"), {"--beam-size", "32", "--sample-len", "4"}));
  EXPECT_EQ(ok.exit_code, 0) << ok;
}

// serve's connection limits are checked as its other durations and counts: NaN, inf,
// negative, zero and overflowing values are refused by name before the server starts.
TEST(CliErrors, ConnectionLimitFlagsAreRefusedByName) {
  for (const std::string flag : {"--header-timeout", "--keep-alive-timeout"}) {
    for (const std::string value : {"nan", "inf", "-1", "0", "1e10"}) {
      SCOPED_TRACE(flag + " " + value);
      expect_clean_failure(run_cli({"serve", "--model", model("micro.en-f16"), "--port", "0", flag, value}),
                           value == "nan" ? flag + " needs a number" : flag + " must be between 0 and 86400 seconds");
    }
  }
  for (const std::string value : {"0", "-5", "nan", "inf", "1.5"}) {
    SCOPED_TRACE(value);
    expect_clean_failure(run_cli({"serve", "--model", model("micro.en-f16"), "--port", "0", "--max-connections", value}),
                         "--max-connections");
  }
}

// NaN slipped past every range check (it compares false with each bound): --temperature
// nan was "at least one decoding temperature is needed", --vad-threshold nan was taken.
// An --output-dir that is a file failed with "internal error: filesystem error" after all
// the work; it is checked first now.
TEST(CliErrors, NanValuesAndUnusableOutputDirAreRefusedByName) {
  for (const std::string flag : {"--temperature", "--vad-threshold", "--no-speech-threshold", "--patience"}) {
    SCOPED_TRACE(flag);
    std::vector<std::string> extra{flag, "nan"};
    if (flag == "--vad-threshold") extra.push_back("--vad");
    expect_clean_failure(run_cli(transcribe_args("micro.en-f16", audio("speech-1s.wav"), extra)), flag);
  }
  // a detector setting without the detector would be silently ignored
  expect_clean_failure(run_cli(transcribe_args("micro.en-f16", audio("speech-1s.wav"), {"--vad-threshold", "0.3"})),
                       "--vad-threshold needs --vad");
  const auto file = scratch() / "not-a-directory";
  std::ofstream(file) << "x";
  const auto r = run_cli(transcribe_args("micro.en-f16", audio("speech-1s.wav"), {"--output-dir", file.string()}));
  expect_clean_failure(r, "--output-dir");
  EXPECT_EQ(r.err.find("internal"), std::string::npos) << r;
}

// Issue 12 defect 1 (CLI side): --max-audio-seconds refuses a longer file by name, with
// the limit, and goes on with the others; a bad value is refused before any work.
TEST(CliErrors, MaxAudioSecondsRefusesALongerFileAndGoesOn) {
  const auto r = run_cli({"transcribe", "--threads", "1", "--model", model("micro.en-f16"), "--sample-len", "4",
                          "--max-audio-seconds", "10", audio("speech-30s.wav").string(), audio("speech-5s.wav").string()});
  expect_clean_failure(r, "speech-30s.wav: the audio is longer than the limit of 10 seconds (--max-audio-seconds)");
  EXPECT_EQ(r.err.find("speech-5s.wav"), std::string::npos) << r;
  EXPECT_FALSE(trim(r.out).empty()) << "the 5 s file is transcribed\n" << r;
  for (const std::string bad : {"-1", "nan", "1e300"}) {
    SCOPED_TRACE(bad);
    expect_clean_failure(run_cli(transcribe_args("micro.en-f16", audio("speech-1s.wav"), {"--max-audio-seconds", bad})),
                         "--max-audio-seconds");
  }
}

TEST(CliUsage, EachCommandAnswersHelp) {
  for (const std::string command : {"transcribe", "serve", "dump-logits", "quantize", "bench", "download"}) {
    SCOPED_TRACE(command);
    const auto r = run_cli({command, "--help"});
    EXPECT_EQ(r.exit_code, 0) << r;
    EXPECT_NE(r.out.find("--"), std::string::npos) << "its options are listed\n" << r;
    EXPECT_EQ(r.err.find("unknown option"), std::string::npos) << r;
  }
  EXPECT_NE(run_cli({"serve", "--help"}).out.find("--port"), std::string::npos);
  EXPECT_NE(run_cli({"transcribe", "--help"}).out.find("--beam-size"), std::string::npos);
}

TEST(CliErrors, MissingModelFile) {
  const auto missing = (scratch() / "no-such-model.bin").string();
  const auto r = run_cli({"transcribe", "--threads", "1", "--model", missing, audio("jfk.wav").string()});
  expect_clean_failure(r, missing);
}

TEST(CliErrors, ModelPathIsADirectory) {
  const auto r = run_cli({"transcribe", "--threads", "1", "--model", scratch().string(), audio("jfk.wav").string()});
  expect_clean_failure(r, "not a regular file");
}

TEST(CliErrors, TruncatedModelFile) {
  const std::string bytes = read_text(testing::model_path("micro.en-f16"));
  const auto truncated = scratch() / "truncated.bin";
  std::ofstream(truncated, std::ios::binary).write(bytes.data(), 1000);
  const auto r = run_cli({"transcribe", "--threads", "1", "--model", truncated.string(), audio("jfk.wav").string()});
  expect_clean_failure(r, "file ends at byte 1000");
}

TEST(CliErrors, NonAudioInputFile) {
  const auto readme = (testing::shared_dir() / "conformance" / "README.md").string();
  const auto r = run_cli(transcribe_args("micro.en-f16", readme, {"--no-fallback"}));
  expect_clean_failure(r, "README.md");
  EXPECT_TRUE(trim(r.out).empty()) << r;
}

TEST(CliErrors, WavWithAnUnsupportedCodec) {
  // a RIFF/WAVE file whose fmt chunk names codec 0x9999 (no such format)
  std::string wav;
  auto u16 = [&](unsigned v) { wav += static_cast<char>(v & 0xFF), wav += static_cast<char>((v >> 8) & 0xFF); };
  auto u32 = [&](std::uint32_t v) { u16(v & 0xFFFF), u16(v >> 16); };
  const std::uint32_t data_bytes = 3200;
  wav += "RIFF";
  u32(4 + 8 + 16 + 8 + data_bytes);
  wav += "WAVEfmt ";
  u32(16);
  u16(0x9999);  // format tag
  u16(1);       // channels
  u32(16000);   // rate
  u32(32000);   // bytes per second
  u16(2);       // block align
  u16(16);      // bits
  wav += "data";
  u32(data_bytes);
  wav += std::string(data_bytes, '\0');
  const auto path = scratch() / "codec9999.wav";
  std::ofstream(path, std::ios::binary) << wav;
  const auto r = run_cli(transcribe_args("micro.en-f16", path, {"--no-fallback"}));
  expect_clean_failure(r, "codec9999.wav");
}

TEST(CliErrors, MissingAndEmptyAudioFiles) {
  const auto missing = (scratch() / "missing.wav").string();
  expect_clean_failure(run_cli(transcribe_args("micro.en-f16", missing)), "missing.wav");
  const auto empty = scratch() / "empty.wav";
  std::ofstream(empty, std::ios::binary).flush();
  expect_clean_failure(run_cli(transcribe_args("micro.en-f16", empty)), "empty.wav");
}

TEST(CliErrors, UnknownCommandAndOptions) {
  expect_clean_failure(run_cli({"frobnicate"}), "unknown command");
  expect_clean_failure(run_cli(transcribe_args("micro.en-f16", audio("jfk.wav"), {"--frobnicate"})),
                       "unknown option --frobnicate");
  expect_clean_failure(run_cli({"dump-logits", "--no-timestamps"}), "unknown option --no-timestamps");
  expect_clean_failure(run_cli({"transcribe", "--model"}), "needs a value");
  expect_clean_failure(run_cli(transcribe_args("micro.en-f16", audio("jfk.wav"), {"--no-timestamps=yes"})),
                       "takes no value");
  expect_clean_failure(run_cli({"transcribe", "--threads", "1", "--model", model("micro.en-f16")}),
                       "at least one audio file");
  expect_clean_failure(run_cli({"transcribe", audio("jfk.wav").string()}), "--model");
}

TEST(CliErrors, BadOptionValues) {
  struct Case {
    std::vector<std::string> extra;
    const char* message;
  };
  for (const Case& c : std::vector<Case>{
           {{"--output-format", "bogus"}, "bogus"},
           {{"--compat", "bogus"}, "bogus"},
           {{"--task", "bogus"}, "bogus"},
           {{"--threads", "0"}, "--threads"},
           {{"--threads", "two"}, "--threads"},
           {{"--sample-len", "many"}, "--sample-len"},
           {{"--suppress-tokens", "abc"}, "abc"},
           {{"--suppress-tokens", "99999999"}, "99999999"},
           {{"--max-initial-timestamp", "soon"}, "--max-initial-timestamp"},
       }) {
    SCOPED_TRACE(c.extra[0] + " " + c.extra[1]);
    expect_clean_failure(run_cli(transcribe_args("micro.en-f16", audio("jfk.wav"), c.extra)), c.message);
  }
}

TEST(CliErrors, DumpLogitsBadTokensAndInputs) {
  const auto out = (scratch() / "never.logits").string();
  const std::vector<std::string> base = {"dump-logits", "--threads", "1", "--model", model("micro.en-f16"),
                                         "--mel",       ref("jfk.mel.f32").string(), "--out", out};
  auto with = [&](std::vector<std::string> extra) {
    auto args = base;
    args.insert(args.end(), extra.begin(), extra.end());
    return run_cli(args);
  };
  expect_clean_failure(with({"--tokens", "50257,abc"}), "'abc' is not a token id");
  expect_clean_failure(with({"--tokens", "50257,12x"}), "12x");
  expect_clean_failure(with({"--tokens", ""}), "not a token id");
  expect_clean_failure(with({"--tokens", "50257,99999"}), "99999");
  expect_clean_failure(with({"--tokens", "50257,-5"}), "-5");
  expect_clean_failure(with({}), "--tokens");
  std::string too_many = "50257";
  for (int i = 0; i < 448; ++i) too_many += ",220";
  expect_clean_failure(with({"--tokens", too_many}), "448");

  const auto readme = (testing::shared_dir() / "conformance" / "README.md").string();
  expect_clean_failure(run_cli({"dump-logits", "--threads", "1", "--model", model("micro.en-f16"), "--mel", readme,
                                "--tokens", "50257", "--out", out}),
                       "mel file");
  expect_clean_failure(
      run_cli({"dump-logits", "--threads", "1", "--model", model("micro.en-f16"), "--tokens", "50257", "--out", out}),
      "--audio");
  EXPECT_FALSE(fs::exists(out)) << "no output file after a failed run";
}

// ---------------------------------------------------------------------------------------
// quantize (the bytes themselves: model_quantize_test and the quantize_kit_models test)

TEST(CliQuantize, WritesTheKitFileAndASummary) {
  const auto out = scratch() / "q8_0.bin";
  const auto r = run_cli({"quantize", model("micro.en-f16"), out.string(), "q8_0"});
  ASSERT_EQ(r.signal, 0) << r;
  ASSERT_EQ(r.exit_code, 0) << r;
  EXPECT_TRUE(r.out.empty()) << r;
  EXPECT_NE(r.err.find("quantized 33 of 89 tensors from f16 to q8_0"), std::string::npos) << r;
  EXPECT_EQ(read_text(out), read_text(testing::model_path("micro.en-q8_0")));
}

// q5_0 and q4_1 have no kit file: a model quantized to them must transcribe like any other.
TEST(CliQuantize, TypesWithoutAKitFileTranscribe) {
  for (const char* type : {"q5_0", "q4_1"}) {
    SCOPED_TRACE(type);
    const auto out = scratch() / (std::string("micro.en-") + type + ".bin");
    const auto q = run_cli({"quantize", model("micro.en-f16"), out.string(), type});
    ASSERT_EQ(q.exit_code, 0) << q;
    const auto r = run_cli({"transcribe", "--threads", "1", "--no-fallback", "--output-format", "json", "--model",
                            out.string(), audio("jfk.wav").string()});
    ASSERT_EQ(r.exit_code, 0) << r;
    EXPECT_FALSE(json::parse(r.out).at("text").get<std::string>().empty()) << r;
  }
}

TEST(CliQuantize, Errors) {
  const auto out = scratch() / "never.bin";
  const auto f16 = model("micro.en-f16");
  expect_clean_failure(run_cli({"quantize", f16, out.string(), "q3_k"}),
                       "unknown quantization type 'q3_k' (supported: q8_0, q5_0, q5_1, q4_0, q4_1)");
  expect_clean_failure(run_cli({"quantize", f16, out.string(), "f16"}), "unknown quantization type 'f16'");
  expect_clean_failure(run_cli({"quantize", model("micro.en-q5_1"), out.string(), "q4_0"}),
                       "is already quantized (q5_1); quantize from the f32 or f16 model");
  const auto missing = (scratch() / "no-such-model.bin").string();
  expect_clean_failure(run_cli({"quantize", missing, out.string(), "q8_0"}),
                       "cannot open model file " + missing + ": No such file or directory");
  const auto no_dir = (scratch() / "no-such-dir" / "out.bin").string();
  expect_clean_failure(run_cli({"quantize", f16, no_dir, "q8_0"}),
                       "cannot write " + no_dir + ": No such file or directory");
  expect_clean_failure(run_cli({"quantize", f16, scratch().string(), "q8_0"}), "it is a directory");
  expect_clean_failure(run_cli({"quantize", f16, out.string()}), "usage: amanuensis quantize IN.bin OUT.bin TYPE");
  expect_clean_failure(run_cli({"quantize", f16, out.string(), "q8_0", "extra"}), "usage: amanuensis quantize");
  expect_clean_failure(run_cli({"quantize", "--threads", "1", f16, out.string(), "q8_0"}), "unknown option --threads");
  EXPECT_FALSE(fs::exists(out)) << "no output file after a failed run";
}

}  // namespace
}  // namespace amanuensis

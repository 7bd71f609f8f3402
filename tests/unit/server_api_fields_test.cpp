// End-to-end tests of the request fields of `amanuensis serve` (issue 13): OpenAI's
// output conventions (no leading space, language names, usage, x-request-id), the 400s
// for what is not supported, and that each of this server's per-request options changes
// what it should, compared with pipeline::transcribe() on the same audio.
//
// Servers run with --threads 1 --sample-len 8 --beam-size 1 --no-fallback (ServerProcess):
// the micro models have random weights; what is tested is which options reach the decoder.
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <filesystem>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "audio/decode.h"
#include "pipeline/output_formats.h"
#include "pipeline/transcriber.h"
#include "segment_rows.h"
#include "server_process.h"
#include "test_paths.h"

namespace amanuensis {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using testing::ServerProcess;
using testing::shell_quote;

fs::path audio(const std::string& name) { return testing::conformance_dir() / "audio" / name; }

struct HttpResult {
  int status = 0;
  std::string headers;
  std::string body;
  json as_json() const { return json::parse(body, nullptr, false); }
  std::string error_param() const {
    const auto j = as_json();
    if (!j.is_object() || !j.contains("error")) return "<no error body>";
    return j["error"]["param"].is_string() ? j["error"]["param"].get<std::string>() : "<null>";
  }
  // The value of a response header (case-insensitive name), or "".
  std::string header(std::string name) const {
    std::string lower = headers;
    for (auto& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    for (auto& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    const auto at = lower.find("\n" + name + ": ");
    if (at == std::string::npos) return "";
    const auto from = at + name.size() + 3;
    return headers.substr(from, headers.find('\r', from) - from);
  }
};

HttpResult curl(const std::string& args) {
  static std::atomic<int> counter{0};
  const int n = ++counter;
  const auto body = testing::scratch_dir() / ("fields_body_" + std::to_string(n));
  const auto headers = testing::scratch_dir() / ("fields_headers_" + std::to_string(n));
  const auto code = testing::run_command("curl -s --max-time 120 -o " + shell_quote(body.string()) + " -D " +
                                         shell_quote(headers.string()) + " -w '%{http_code}' " + args);
  return {std::atoi(code.out.c_str()), testing::read_file(headers), testing::read_file(body)};
}

// A POST of `file` with model=whisper-1 and `fields` (each NAME=VALUE, sent as -F).
HttpResult post(const ServerProcess& s, const std::vector<std::string>& fields, const fs::path& file = audio("jfk.wav"),
                const std::string& endpoint = "/v1/audio/transcriptions") {
  std::string args = "-F " + shell_quote("file=@" + file.string()) + " -F model=whisper-1 ";
  for (const auto& f : fields) args += "-F " + shell_quote(f) + " ";
  return curl(args + shell_quote(s.url(endpoint)));
}

bool has_outer_space(const std::string& s) {
  return !s.empty() && (std::isspace(static_cast<unsigned char>(s.front())) || std::isspace(static_cast<unsigned char>(s.back())));
}

class ApiFields : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { server_ = new ServerProcess({"--workers", "2"}); }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }
  void SetUp() override { ASSERT_TRUE(server_->ready()) << server_->log(); }
  static inline ServerProcess* server_ = nullptr;
};

// OpenAI strips the space Whisper's tokens start with from `text` and every word; the
// verbose_json segments keep it (as OpenAI's API and transcribe() do).
TEST_F(ApiFields, TextAndWordsHaveNoLeadingSpace) {
  const auto model = pipeline::Model::load(testing::model_path("micro.en-f16"));
  pipeline::TranscribeOptions o;
  o.temperatures = {0.0f};
  o.decode.sample_len = 8;
  const auto library = pipeline::transcribe(*model, audio::load_audio_file(audio("jfk.wav")), o);
  ASSERT_TRUE(has_outer_space(library.text)) << "the test needs Whisper's leading space: '" << library.text << "'";

  const auto j = post(*server_, {}).as_json();
  ASSERT_TRUE(j["text"].is_string()) << j;
  EXPECT_FALSE(has_outer_space(j["text"])) << j;
  EXPECT_EQ(post(*server_, {"response_format=text"}).body, j["text"].get<std::string>() + "\n");
  const auto v = post(*server_, {"response_format=verbose_json"}).as_json();
  EXPECT_EQ(v["text"], j["text"]);
  ASSERT_EQ(v["segments"].size(), library.segments.size()) << v;
  EXPECT_EQ(v["segments"][0]["text"], library.segments[0].text);
  const auto words = post(*server_, {"response_format=verbose_json", "timestamp_granularities[]=word"});
  ASSERT_EQ(words.status, 200) << words.body;
  // held here: a range-for over words.as_json()["words"] read the parsed body after it was
  // destroyed (the range's temporary only lives on; found by ASan, tests/sanitize)
  const auto words_json = words.as_json();
  ASSERT_FALSE(words_json["words"].empty()) << words.body;
  for (const auto& w : words_json["words"]) EXPECT_FALSE(has_outer_space(w["word"])) << w;
}

TEST_F(ApiFields, WordTimestampsOptionAddsWordsToVerboseJson) {
  EXPECT_FALSE(post(*server_, {"response_format=verbose_json"}).as_json().contains("words"));
  const auto r = post(*server_, {"response_format=verbose_json", "word_timestamps=true"});
  ASSERT_EQ(r.status, 200) << r.body;
  ASSERT_TRUE(r.as_json()["words"].is_array()) << r.body;
  EXPECT_FALSE(r.as_json()["words"].empty()) << r.body;
  EXPECT_EQ(post(*server_, {"word_timestamps=true"}).status, 200) << "json: computed, not shown";
}

// chunking_strategy (OpenAI's) and vad (ours) turn the built-in VAD on for one request:
// noise then gives no segments, where the micro model otherwise says something.
TEST_F(ApiFields, ChunkingStrategyAndVadDriveTheVad) {
  const auto noise = audio("noise-5s.wav");
  EXPECT_FALSE(post(*server_, {"response_format=verbose_json"}, noise).as_json()["segments"].empty());
  for (const auto& fields : std::vector<std::vector<std::string>>{
           {"chunking_strategy=auto"}, {"chunking_strategy[type]=server_vad"}, {"vad=true"}, {"vad_threshold=0.5"}}) {
    const auto r = post(*server_, [&] { auto f = fields; f.push_back("response_format=verbose_json"); return f; }(), noise);
    ASSERT_EQ(r.status, 200) << fields[0] << ": " << r.body;
    EXPECT_TRUE(r.as_json()["segments"].empty()) << fields[0] << ": " << r.body;
  }
}

TEST_F(ApiFields, VerboseJsonNamesTheLanguage) {
  EXPECT_EQ(post(*server_, {"response_format=verbose_json"}).as_json()["language"], "english");
  EXPECT_EQ(post(*server_, {"response_format=verbose_json"}, audio("speech-1s.wav"), "/v1/audio/translations")
                .as_json()["language"],
            "english");
}

TEST_F(ApiFields, UsageCountsWholeSecondsOfAudio) {
  for (const std::string format : {"json", "verbose_json"}) {
    const auto j = post(*server_, {"response_format=" + format}).as_json();  // jfk: 11.0 s
    EXPECT_EQ(j["usage"], json({{"type", "duration"}, {"seconds", 11}})) << format << ": " << j;
  }
  // speech-5s cut to 1.5 s: what is transcribed is billed, rounded up
  EXPECT_EQ(post(*server_, {"duration=1.5"}, audio("speech-5s.wav")).as_json()["usage"]["seconds"], 2);
}

TEST_F(ApiFields, EveryResponseHasAUniqueRequestId) {
  const auto ok = post(*server_, {});
  const auto bad = post(*server_, {"stream=true"});
  const auto health = curl(shell_quote(server_->url("/health")));
  const auto missing = curl(shell_quote(server_->url("/nowhere")));
  std::set<std::string> ids;
  for (const auto* r : {&ok, &bad, &health, &missing}) {
    const auto id = r->header("x-request-id");
    EXPECT_EQ(id.rfind("req_", 0), 0u) << r->headers;
    ids.insert(id);
  }
  EXPECT_EQ(ids.size(), 4u);
}

// Every field that is not taken is a 400 naming it, never a silent 200.
TEST_F(ApiFields, UnsupportedFieldsAndValuesAre400NamingTheField) {
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"stream=true"}, "stream"},
      {{"stream=sometimes"}, "stream"},
      {{"include[]=logprobs", "response_format=text"}, "include"},  // OpenAI: json only
      {{"include[]=tokens"}, "include"},
      {{"chunking_strategy=manual"}, "chunking_strategy"},
      {{"timestamp_granularities[]=word"}, "timestamp_granularities"},  // json format: no words
      {{"language=xx"}, "language"},
      {{"language=de"}, "language"},  // the model is English-only
      {{"no_such_field=1"}, "no_such_field"},
      {{"beam_size=9"}, "beam_size"},  // above --max-beam-size 8
      {{"best_of=0"}, "best_of"},
      {{"offset=60"}, "offset"},  // past the end of jfk's 11 s
      {{"no_timestamps=maybe"}, "no_timestamps"},
  };
  for (const auto& [fields, param] : cases) {
    const auto r = post(*server_, fields);
    EXPECT_EQ(r.status, 400) << fields[0] << ": " << r.body;
    EXPECT_EQ(r.error_param(), param) << fields[0] << ": " << r.body;
  }
  EXPECT_EQ(post(*server_, {"stream=false"}).status, 200);
  EXPECT_EQ(post(*server_, {"language=en"}).status, 200);
  EXPECT_EQ(post(*server_, {"chunking_strategy=auto"}).status, 200);
  EXPECT_EQ(post(*server_, {"chunking_strategy[type]=server_vad", "chunking_strategy[threshold]=0.4"}).status, 200);
}

TEST(ApiFieldsMultilingual, LanguageIsCheckedAndNamed) {
  ServerProcess s(std::vector<fs::path>{testing::model_path("micro-f16")}, {});
  ASSERT_TRUE(s.ready()) << s.log();
  const auto bad = post(s, {"language=xx"});
  EXPECT_EQ(bad.status, 400) << bad.body;
  EXPECT_EQ(bad.error_param(), "language");
  const auto german = post(s, {"language=de", "response_format=verbose_json"}, audio("speech-1s.wav"));
  ASSERT_EQ(german.status, 200) << german.body;
  EXPECT_EQ(german.as_json()["language"], "german");
  const auto translated = post(s, {"language=de", "response_format=verbose_json"}, audio("speech-1s.wav"),
                               "/v1/audio/translations");
  ASSERT_EQ(translated.status, 200) << translated.body;
  EXPECT_EQ(translated.as_json()["language"], "english");
}

// Issue 13: detect_language=true and POST /v1/audio/language answer the language and every
// language's probability without transcribing: the library's detection, summing to 1, the
// language a transcription of the file then uses.
TEST(ApiFieldsMultilingual, DetectLanguageReturnsProbabilities) {
  ServerProcess s(std::vector<fs::path>{testing::model_path("micro-f16")}, {});
  ASSERT_TRUE(s.ready()) << s.log();
  const auto model = pipeline::Model::load(testing::model_path("micro-f16"));
  const auto samples = audio::load_audio_file(audio("jfk.wav"));
  const auto library = pipeline::detect_language(*model, samples);
  for (const auto& r : {post(s, {}, audio("jfk.wav"), "/v1/audio/language"), post(s, {"detect_language=true"})}) {
    ASSERT_EQ(r.status, 200) << r.body;
    const auto j = r.as_json();
    EXPECT_EQ(j["language"], library.code) << r.body;
    EXPECT_FALSE(j.contains("text")) << "detection only: " << r.body;
    ASSERT_TRUE(j["language_probabilities"].is_object()) << r.body;
    EXPECT_EQ(j["language_probabilities"].size(), library.probabilities.size());
    double sum = 0.0;
    for (const auto& [code, p] : j["language_probabilities"].items()) sum += p.get<double>();
    EXPECT_NEAR(sum, 1.0, 1e-4) << r.body;
    EXPECT_NEAR(j["probability"].get<double>(), library.probability, 1e-6);
    EXPECT_NEAR(j["language_probabilities"][library.code].get<double>(), library.probability, 1e-6);
  }
  const auto transcribed = post(s, {"response_format=verbose_json"});
  ASSERT_EQ(transcribed.status, 200) << transcribed.body;
  EXPECT_EQ(transcribed.as_json()["language"], post(s, {"detect_language=true"}).as_json()["language_name"]);
  EXPECT_EQ(post(s, {"detect_language=maybe"}).error_param(), "detect_language");
  // an English-only model has no language to detect
  ServerProcess english(std::vector<std::string>{});
  ASSERT_TRUE(english.ready()) << english.log();
  const auto refused = post(english, {}, audio("jfk.wav"), "/v1/audio/language");
  EXPECT_EQ(refused.status, 400) << refused.body;
  EXPECT_EQ(refused.error_param(), "model") << refused.body;
}

// The library's transcript of `samples` with the ServerProcess flags and `change` applied.
pipeline::Transcript library_transcript(const std::vector<float>& samples,
                                        const std::function<void(pipeline::TranscribeOptions&)>& change = {}) {
  static const auto model = pipeline::Model::load(testing::model_path("micro.en-f16"));
  pipeline::TranscribeOptions o;
  o.temperatures = {0.0f};
  o.decode.sample_len = 8;
  if (change) change(o);
  return pipeline::transcribe(*model, samples, o);
}

TEST_F(ApiFields, NoTimestampsDropsTheTimestampTokens) {
  const auto timed = post(*server_, {"response_format=verbose_json"}).as_json();
  const auto untimed = post(*server_, {"response_format=verbose_json", "no_timestamps=true"}).as_json();
  ASSERT_FALSE(untimed["segments"].empty()) << untimed;
  const int timestamp_begin = 50363;  // English-only vocabulary
  const auto timestamps = [&](const json& j) {
    int n = 0;
    for (const auto& s : j["segments"])
      for (int t : s["tokens"]) n += t >= timestamp_begin;
    return n;
  };
  EXPECT_GT(timestamps(timed), 0) << timed;
  EXPECT_EQ(timestamps(untimed), 0) << untimed;
  const auto samples = audio::load_audio_file(audio("jfk.wav"));
  const auto library = library_transcript(samples, [](auto& o) { o.decode.timestamps = false; });
  EXPECT_EQ(testing::rows_of(untimed), testing::rows_of(library));
}

// Issue 13: hallucination_silence_threshold per request gives what the library gives with
// that threshold (and the word timings it needs); on jfk it changes the micro model's
// segments.
TEST_F(ApiFields, HallucinationSilenceThresholdIsApplied) {
  const auto samples = audio::load_audio_file(audio("jfk.wav"));
  const auto with = testing::rows_of(library_transcript(samples, [](auto& o) {
    o.word_timestamps = true;
    o.hallucination_silence_threshold = 0.5;
  }));
  const auto without = testing::rows_of(library_transcript(samples, [](auto& o) { o.word_timestamps = true; }));
  ASSERT_NE(with, without) << "the test needs a file where the threshold changes the output";
  const auto r = post(*server_, {"response_format=verbose_json", "hallucination_silence_threshold=0.5"});
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(testing::rows_of(r.as_json()), with);
  EXPECT_FALSE(r.as_json().contains("words")) << "words are shown only when asked for";
  EXPECT_EQ(post(*server_, {"hallucination_silence_threshold=-1"}).error_param(), "hallucination_silence_threshold");
}

// include[]=logprobs: OpenAI's `logprobs`, one {token, logprob, bytes} per text token, the
// log-probability each had when the decoder chose it (the library's, token for token);
// the tokens spell the text. Without the field there is none.
TEST_F(ApiFields, IncludeLogprobsGivesEachTextTokensLogprob) {
  const auto samples = audio::load_audio_file(audio("jfk.wav"));
  const auto library = library_transcript(samples);
  static const auto model = pipeline::Model::load(testing::model_path("micro.en-f16"));
  const auto expected = pipeline::text_token_logprobs(library, model->tokenizer());
  ASSERT_FALSE(expected.empty());
  EXPECT_FALSE(post(*server_, {}).as_json().contains("logprobs"));
  for (const char* format : {"json", "verbose_json"}) {
    SCOPED_TRACE(format);
    const auto r = post(*server_, {"include[]=logprobs", std::string("response_format=") + format});
    ASSERT_EQ(r.status, 200) << r.body;
    const auto j = r.as_json();
    ASSERT_TRUE(j["logprobs"].is_array()) << r.body;
    ASSERT_EQ(j["logprobs"].size(), expected.size()) << r.body;
    std::string spelled;
    for (std::size_t i = 0; i < expected.size(); ++i) {
      const auto& entry = j["logprobs"][i];
      EXPECT_NEAR(entry["logprob"].get<double>(), expected[i].logprob, 1e-6) << entry;
      EXPECT_LE(entry["logprob"].get<double>(), 0.0) << entry;
      std::string bytes;
      for (int b : entry["bytes"]) bytes += static_cast<char>(b);
      EXPECT_EQ(bytes, expected[i].bytes) << entry;
      spelled += bytes;
    }
    const auto first = spelled.find_first_not_of(' ');
    ASSERT_NE(first, std::string::npos) << spelled;
    EXPECT_EQ(spelled.substr(first, spelled.find_last_not_of(' ') + 1 - first), j["text"].get<std::string>());
  }
}

// hotwords lead every window's prompt (faster-whisper's field): the server's transcript is
// the library's with the same hotwords, and differs from the one without.
TEST_F(ApiFields, HotwordsLeadThePrompt) {
  const auto samples = audio::load_audio_file(audio("jfk.wav"));
  const auto with = testing::rows_of(library_transcript(samples, [](auto& o) { o.hotwords = "Kennedy Ask not"; }));
  const auto without = testing::rows_of(library_transcript(samples, [](auto&) {}));
  ASSERT_NE(with, without) << "the test needs a file where hotwords change the output";
  const auto r = post(*server_, {"response_format=verbose_json", "hotwords=Kennedy Ask not"});
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(testing::rows_of(r.as_json()), with);
}

// offset/duration transcribe that part of the file; the times are the file's.
TEST_F(ApiFields, OffsetAndDurationCutTheAudioAndShiftTheTimes) {
  const auto file = audio("speech-5s.wav");
  const auto r = post(*server_, {"response_format=verbose_json", "offset=2", "duration=2.5"}, file);
  ASSERT_EQ(r.status, 200) << r.body;
  const auto j = r.as_json();
  EXPECT_NEAR(j["duration"].get<double>(), 5.0, 0.05) << "the file's duration";
  const auto samples = audio::load_audio_file(file);
  const std::vector<float> part(samples.begin() + 32000, samples.begin() + 32000 + 40000);
  auto expected = testing::rows_of(library_transcript(part));
  ASSERT_FALSE(expected.empty());
  for (auto& row : expected) {
    row.start += 2.0;
    row.end += 2.0;
  }
  EXPECT_EQ(testing::rows_of(j), expected);
  EXPECT_NE(testing::rows_of(post(*server_, {"response_format=verbose_json"}, file).as_json()), expected);
}

// beam_size=1 is greedy whatever the server's default (a beam of 3 here); beam_size=2 is a
// beam of 2, not the default's 3. The file is the first of the kit's where the three
// differ (which one depends on the precision this CPU computes in).
TEST(ApiFieldsBeam, BeamSizeOneIsGreedyAndOthersAreBeams) {
  ServerProcess s({"--beam-size", "3"});
  ASSERT_TRUE(s.ready()) << s.log();
  std::vector<testing::SegmentRow> greedy, beam2, beam3;
  fs::path file;
  for (const char* name : {"speech-75s.wav", "speech-30s.wav", "jfk.wav", "speech-5s.wav"}) {
    file = audio(name);
    const auto samples = audio::load_audio_file(file);
    const auto beam_of = [&](int n) {
      return testing::rows_of(library_transcript(samples, [n](auto& o) {
        if (n > 1) o.beam = decoding::BeamOptions{};
        if (n > 1) o.beam->beam_size = n;
      }));
    };
    greedy = beam_of(1), beam2 = beam_of(2), beam3 = beam_of(3);
    if (greedy != beam2 && beam2 != beam3) break;
  }
  ASSERT_NE(greedy, beam2) << "the test needs a file where beam sizes change this model's output";
  ASSERT_NE(beam2, beam3) << "the test needs a file where beam sizes change this model's output";
  SCOPED_TRACE(file.filename().string());
  EXPECT_EQ(testing::rows_of(post(s, {"response_format=verbose_json"}, file).as_json()), beam3);
  EXPECT_EQ(testing::rows_of(post(s, {"response_format=verbose_json", "beam_size=1"}, file).as_json()), greedy);
  EXPECT_EQ(testing::rows_of(post(s, {"response_format=verbose_json", "beam_size=2"}, file).as_json()), beam2);
}

TEST(ApiFieldsServeFlags, VadIsTheDefaultAndARequestMayTurnItOff) {
  ServerProcess s({"--vad", "--max-beam-size", "2"});
  ASSERT_TRUE(s.ready()) << s.log();
  const auto noise = audio("noise-5s.wav");
  const auto quiet = post(s, {"response_format=verbose_json"}, noise);
  ASSERT_EQ(quiet.status, 200) << quiet.body;
  EXPECT_TRUE(quiet.as_json()["segments"].empty()) << "the VAD finds no speech in noise: " << quiet.body;
  const auto all = post(s, {"response_format=verbose_json", "vad=false"}, noise);
  ASSERT_EQ(all.status, 200) << all.body;
  EXPECT_FALSE(all.as_json()["segments"].empty()) << "without VAD the micro model says something: " << all.body;
  EXPECT_EQ(post(s, {"beam_size=3"}).error_param(), "beam_size") << "--max-beam-size 2";
}

}  // namespace
}  // namespace amanuensis

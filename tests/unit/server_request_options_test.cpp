// Unit tests of server/request_options: which form fields a transcription request takes,
// which values each refuses (with the field named, for OpenAI's error `param`), and what
// each option changes in the pipeline's TranscribeOptions.
#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

#include "server/request_options.h"

namespace amanuensis::server {
namespace {

constexpr std::string_view kAudio = "RIFF....WAVE";  // never decoded here

std::vector<FormPart> form(const std::vector<std::pair<std::string, std::string>>& fields) {
  static std::vector<std::string> storage;  // the parts view their values
  storage.reserve(1000);
  std::vector<FormPart> parts = {{"file", std::string("a.wav"), "audio/wav", kAudio}};
  for (const auto& [name, value] : fields) {
    storage.push_back(value);
    parts.push_back({name, std::nullopt, "", storage.back()});
  }
  return parts;
}

TranscriptionRequest parse(const std::vector<std::pair<std::string, std::string>>& fields, RequestLimits limits = {}) {
  return parse_transcription_request(form(fields), limits);
}

// The field a FieldError names, or "<accepted>".
std::string refused_field(const std::vector<std::pair<std::string, std::string>>& fields, RequestLimits limits = {}) {
  try {
    (void)parse(fields, limits);
  } catch (const FieldError& e) {
    return e.field;
  }
  return "<accepted>";
}

pipeline::TranscribeOptions options_of(const std::vector<std::pair<std::string, std::string>>& fields,
                                       const pipeline::TranscribeOptions& defaults = {}, TemperaturePolicy policy = {}) {
  return transcribe_options(parse(fields), false, defaults, policy);
}

TEST(RequestOptions, EveryOpenAiFieldIsTaken) {
  const auto r = parse({{"model", "whisper-1"}, {"language", "en"}, {"prompt", "Hi."}, {"response_format", "verbose_json"},
                        {"temperature", "0.3"}, {"timestamp_granularities[]", "word"},
                        {"timestamp_granularities[]", "segment"}, {"chunking_strategy", "auto"}, {"stream", "false"}});
  EXPECT_EQ(r.model, "whisper-1");
  EXPECT_EQ(r.language, "en");
  EXPECT_EQ(r.prompt, "Hi.");
  EXPECT_EQ(r.temperature, 0.3);
  EXPECT_TRUE(r.word_granularity);
  EXPECT_TRUE(r.vad_options.has_value());
}

TEST(RequestOptions, HotwordsReachTheTranscription) {
  EXPECT_EQ(options_of({{"hotwords", "Kennedy"}}).hotwords, "Kennedy");
  EXPECT_EQ(options_of({}).hotwords, "");
}

TEST(RequestOptions, UnknownFieldsAreRefusedByName) {
  EXPECT_EQ(refused_field({{"temprature", "0"}}), "temprature");
  EXPECT_EQ(refused_field({{"known_speaker_names[]", "a"}}), "known_speaker_names[]");
}

TEST(RequestOptions, UnsupportedOpenAiValuesAreRefusedByName) {
  EXPECT_EQ(refused_field({{"stream", "true"}}), "stream");
  EXPECT_EQ(refused_field({{"stream", "maybe"}}), "stream");
  EXPECT_EQ(refused_field({{"stream", "false"}}), "<accepted>");
  EXPECT_EQ(refused_field({{"include[]", "logprobs"}}), "<accepted>");
  EXPECT_EQ(refused_field({{"include[]", "logprobs"}, {"response_format", "srt"}}), "include");
  EXPECT_EQ(refused_field({{"include[]", "other"}}), "include");
  EXPECT_EQ(refused_field({{"chunking_strategy", "manual"}}), "chunking_strategy");
  EXPECT_EQ(refused_field({{"chunking_strategy", R"({"type":"client_vad"})"}}), "chunking_strategy");
  EXPECT_EQ(refused_field({{"chunking_strategy", R"({"type":"server_vad","threshold":7})"}}), "chunking_strategy");
  EXPECT_EQ(refused_field({{"chunking_strategy", R"({"type":"server_vad","frobs":1})"}}), "chunking_strategy");
  // bytes that are not UTF-8 in the form's object fields (found by tests/fuzz/request_options_fuzz)
  EXPECT_EQ(refused_field({{"chunking_strategy[type]", "server_va\xe2\x65"}}), "chunking_strategy");
  // words come only with verbose_json, as OpenAI says
  EXPECT_EQ(refused_field({{"timestamp_granularities[]", "word"}}), "timestamp_granularities");
  EXPECT_EQ(refused_field({{"language", "xx"}}), "language");
  EXPECT_EQ(refused_field({{"language", "de"}}), "<accepted>");  // the model decides (server)
}

TEST(RequestOptions, ServerVadChunkingSetsTheDetector) {
  const auto r = parse({{"chunking_strategy",
                         R"({"type":"server_vad","threshold":0.3,"prefix_padding_ms":100,"silence_duration_ms":700})"}});
  ASSERT_TRUE(r.vad_options);
  EXPECT_DOUBLE_EQ(r.vad_options->threshold, 0.3);
  EXPECT_EQ(r.vad_options->speech_pad_ms, 100);
  EXPECT_EQ(r.vad_options->min_silence_duration_ms, 700);
  EXPECT_TRUE(options_of({{"chunking_strategy", "auto"}}).vad.has_value());
  // as OpenAI's clients send an object in a form
  const auto fields = parse({{"chunking_strategy[type]", "server_vad"}, {"chunking_strategy[threshold]", "0.7"}});
  ASSERT_TRUE(fields.vad_options);
  EXPECT_DOUBLE_EQ(fields.vad_options->threshold, 0.7);
  EXPECT_EQ(refused_field({{"chunking_strategy[type]", "server_vad"}, {"chunking_strategy[x]", "1"}}), "chunking_strategy");
  EXPECT_EQ(refused_field({{"chunking_strategy[threshold]", "0.5"}}), "chunking_strategy") << "no type";
  // vad_threshold refines a chunking_strategy, whichever comes first
  const auto both = parse({{"vad_threshold", "0.2"}, {"chunking_strategy[type]", "server_vad"},
                           {"chunking_strategy[silence_duration_ms]", "300"}});
  ASSERT_TRUE(both.vad_options);
  EXPECT_DOUBLE_EQ(both.vad_options->threshold, 0.2);
  EXPECT_EQ(both.vad_options->min_silence_duration_ms, 300);
}

TEST(RequestOptions, BadOptionValuesAreRefusedByName) {
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"beam_size", "9"},          {"beam_size", "-1"},         {"beam_size", "2.5"},
      {"best_of", "0"},            {"best_of", "9"},            {"temperature_inc", "2"},
      {"no_speech_threshold", "x"}, {"compression_ratio_threshold", "-1"}, {"logprob_threshold", "1"},
      {"condition_on_previous_text", "yes"}, {"no_timestamps", "2"}, {"vad", "on"},
      {"vad_threshold", "1.5"},    {"word_timestamps", ""},    {"offset", "-1"},
      {"duration", "0"},           {"temperature", "nan"},     {"include_timing", "x"},
      // a step so small the fallback schedule never reaches 1 (tests/fuzz/request_options_fuzz)
      {"temperature_inc", "1e-300"}, {"temperature_inc", "0.001"}};
  for (const auto& field : bad) EXPECT_EQ(refused_field({field}), field.first) << field.first << "=" << field.second;
}

TEST(RequestOptions, TheServerLimitsCapBeamAndBestOf) {
  RequestLimits limits;
  limits.max_beam_size = 3;
  limits.max_best_of = 2;
  EXPECT_EQ(refused_field({{"beam_size", "4"}}, limits), "beam_size");
  EXPECT_EQ(refused_field({{"beam_size", "3"}}, limits), "<accepted>");
  EXPECT_EQ(refused_field({{"best_of", "3"}}, limits), "best_of");
  EXPECT_EQ(refused_field({{"best_of", "2"}}, limits), "<accepted>");
}

TEST(RequestOptions, ContradictionsAreRefused) {
  EXPECT_EQ(refused_field({{"word_timestamps", "true"}, {"no_timestamps", "true"}}), "no_timestamps");
  EXPECT_EQ(refused_field({{"vad", "false"}, {"vad_threshold", "0.4"}}), "vad");
  RequestLimits whisper_cpp;
  whisper_cpp.word_timestamps = false;
  EXPECT_EQ(refused_field({{"word_timestamps", "true"}}, whisper_cpp), "word_timestamps");
}

TEST(RequestOptions, OptionsReachTheTranscribeOptions) {
  pipeline::TranscribeOptions defaults;
  defaults.beam = decoding::BeamOptions{};
  defaults.beam->beam_size = 5;
  const auto o = options_of({{"beam_size", "3"}, {"best_of", "2"}, {"no_speech_threshold", "0.3"},
                             {"compression_ratio_threshold", "1.8"}, {"logprob_threshold", "-0.5"},
                             {"condition_on_previous_text", "false"}, {"no_timestamps", "true"},
                             {"vad", "true"}, {"vad_threshold", "0.25"}},
                            defaults);
  ASSERT_TRUE(o.beam);
  EXPECT_EQ(o.beam->beam_size, 3);
  EXPECT_EQ(o.best_of, 2);
  EXPECT_DOUBLE_EQ(o.thresholds.no_speech.value_or(-9), 0.3);
  EXPECT_DOUBLE_EQ(o.thresholds.compression_ratio.value_or(-9), 1.8);
  EXPECT_DOUBLE_EQ(o.thresholds.logprob.value_or(-9), -0.5);
  EXPECT_FALSE(o.condition_on_previous_text);
  EXPECT_FALSE(o.decode.timestamps);
  ASSERT_TRUE(o.vad);
  EXPECT_DOUBLE_EQ(o.vad->threshold, 0.25);
  EXPECT_FALSE(options_of({{"beam_size", "1"}}, defaults).beam.has_value()) << "beam_size 1 is greedy";
  EXPECT_FALSE(options_of({{"beam_size", "0"}}, defaults).beam.has_value());
  EXPECT_TRUE(options_of({{"word_timestamps", "true"}}).word_timestamps);
  pipeline::TranscribeOptions with_vad;
  with_vad.vad = vad::VadOptions{};
  EXPECT_FALSE(options_of({{"vad", "false"}}, with_vad).vad.has_value()) << "a request may turn the server's VAD off";
  EXPECT_TRUE(options_of({}, with_vad).vad.has_value());
}

// Issue 13: hallucination_silence_threshold per request. It works on word timings, so
// it computes them (shown only when asked for); 0 turns a server default off.
TEST(RequestOptions, HallucinationSilenceThresholdTurnsOnWordTimings) {
  const auto o = options_of({{"hallucination_silence_threshold", "2"}});
  EXPECT_DOUBLE_EQ(o.hallucination_silence_threshold.value_or(-1), 2.0);
  EXPECT_TRUE(o.word_timestamps);
  EXPECT_FALSE(parse({{"hallucination_silence_threshold", "2"}}).wants_words()) << "timed, not shown";
  pipeline::TranscribeOptions defaults;
  defaults.hallucination_silence_threshold = 1.0;
  EXPECT_FALSE(options_of({{"hallucination_silence_threshold", "0"}}, defaults).hallucination_silence_threshold);
  EXPECT_TRUE(options_of({}, defaults).hallucination_silence_threshold);
  for (const char* bad : {"-1", "x", "nan", "3601"})
    EXPECT_EQ(refused_field({{"hallucination_silence_threshold", bad}}), "hallucination_silence_threshold") << bad;
  EXPECT_EQ(refused_field({{"hallucination_silence_threshold", "2"}, {"no_timestamps", "true"}}), "no_timestamps");
  RequestLimits whisper_cpp;
  whisper_cpp.word_timestamps = false;
  EXPECT_EQ(refused_field({{"hallucination_silence_threshold", "2"}}, whisper_cpp), "hallucination_silence_threshold");
}

TEST(RequestOptions, TemperatureIncrementMakesTheFallbackSchedule) {
  pipeline::TranscribeOptions defaults;
  defaults.temperatures = {0.0f};
  EXPECT_EQ(options_of({}, defaults).temperatures, std::vector<float>{0.0f});
  const auto stepped = options_of({{"temperature_inc", "0.5"}}, defaults).temperatures;
  EXPECT_EQ(stepped, (std::vector<float>{0.0f, 0.5f, 1.0f}));
  const auto from = options_of({{"temperature", "0.2"}, {"temperature_inc", "0.4"}}, defaults).temperatures;
  ASSERT_EQ(from.size(), 3u);
  EXPECT_FLOAT_EQ(from[2], 1.0f);
  EXPECT_EQ(options_of({{"temperature", "0.2"}, {"temperature_inc", "0"}}, defaults).temperatures,
            std::vector<float>{0.2f});
  // without temperature_inc the server's policy decides
  EXPECT_EQ(options_of({{"temperature", "0.5"}}, defaults, {false, 0.2}).temperatures, std::vector<float>{0.5f});
  EXPECT_EQ(options_of({{"temperature", "0.5"}}, defaults, {true, 0.5}).temperatures, (std::vector<float>{0.5f, 1.0f}));
}

TEST(RequestOptions, OffsetAndDurationAreKept) {
  const auto r = parse({{"offset", "2.5"}, {"duration", "4"}});
  EXPECT_DOUBLE_EQ(r.offset, 2.5);
  EXPECT_EQ(r.duration, 4.0);
}

TEST(RequestOptions, TheSeedFollowsTheAudioAndTheOptions) {
  const auto a = options_of({});
  EXPECT_EQ(a.seed, options_of({}).seed);
  EXPECT_NE(a.seed, options_of({{"prompt", "x"}}).seed);
  EXPECT_NE(a.seed, options_of({{"offset", "1"}}).seed);
}

TEST(RequestOptions, KnownFieldsListsOpenAisFields) {
  const auto& names = known_fields();
  for (const char* f : {"file", "model", "language", "prompt", "response_format", "temperature",
                        "timestamp_granularities[]", "include[]", "chunking_strategy", "stream"})
    EXPECT_NE(std::find(names.begin(), names.end(), f), names.end()) << f;
}

}  // namespace
}  // namespace amanuensis::server

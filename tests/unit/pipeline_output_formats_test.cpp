// The writers for txt, json, verbose_json, srt, vtt and tsv on a hand-made transcript.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "pipeline/output_formats.h"

namespace amanuensis::pipeline {
namespace {

Transcript sample_transcript() {
  Transcript t;
  t.text = " Hello there. General --> Kenobi!";
  t.language = "en";
  t.duration = 3725.5;
  Segment a;
  a.id = 0;
  a.start = 0.0;
  a.end = 2.5;
  a.text = " Hello there.";
  a.tokens = {50364, 2425, 456, 13, 50489};
  a.avg_logprob = -0.25;
  a.compression_ratio = 0.9;
  a.no_speech_prob = 0.01f;
  Segment b;
  b.id = 1;
  b.seek = 372000;
  b.start = 3723.456;
  b.end = 3725.5;
  b.text = " General --> Kenobi!";
  b.tokens = {50364, 6996, 50400};
  Segment empty;  // OpenAI keeps instantaneous/blank segments in json but writers skip them
  empty.id = 2;
  empty.start = empty.end = 3725.5;
  t.segments = {a, b, empty};
  return t;
}

TEST(OutputFormats, TimestampsAreFormattedExactly) {
  EXPECT_EQ(format_timestamp(0.0, ','), "00:00:00,000");
  EXPECT_EQ(format_timestamp(3723.456, ','), "01:02:03,456");
  EXPECT_EQ(format_timestamp(3723.456, '.'), "01:02:03.456");
  EXPECT_EQ(format_timestamp(59.9996, '.'), "00:01:00.000");  // rounds to the millisecond
  EXPECT_EQ(format_timestamp(-1.0, ','), "00:00:00,000");
  EXPECT_EQ(format_timestamp(36000.0, ','), "10:00:00,000");
}

TEST(OutputFormats, Srt) {
  EXPECT_EQ(render(sample_transcript(), OutputFormat::Srt),
            "1\n00:00:00,000 --> 00:00:02,500\nHello there.\n\n"
            "2\n01:02:03,456 --> 01:02:05,500\nGeneral -> Kenobi!\n\n");
}

TEST(OutputFormats, Vtt) {
  EXPECT_EQ(render(sample_transcript(), OutputFormat::Vtt),
            "WEBVTT\n\n"
            "00:00:00.000 --> 00:00:02.500\nHello there.\n\n"
            "01:02:03.456 --> 01:02:05.500\nGeneral -> Kenobi!\n\n");
}

TEST(OutputFormats, TsvAndText) {
  EXPECT_EQ(render(sample_transcript(), OutputFormat::Tsv),
            "start\tend\ttext\n0\t2500\tHello there.\n3723456\t3725500\tGeneral -> Kenobi!\n");
  EXPECT_EQ(render(sample_transcript(), OutputFormat::Text), "Hello there.\nGeneral -> Kenobi!\n");
}

TEST(OutputFormats, JsonIsValidAndComplete) {
  const auto j = nlohmann::json::parse(render(sample_transcript(), OutputFormat::Json));
  EXPECT_EQ(j["text"], " Hello there. General --> Kenobi!");
  ASSERT_EQ(j["segments"].size(), 3u);
  EXPECT_EQ(j["segments"][0]["tokens"], nlohmann::json({50364, 2425, 456, 13, 50489}));
  EXPECT_DOUBLE_EQ(j["segments"][1]["start"].get<double>(), 3723.456);
}

TEST(OutputFormats, VerboseJsonHasOpenAIFields) {
  const auto j = nlohmann::json::parse(render(sample_transcript(), OutputFormat::VerboseJson));
  for (const char* key : {"task", "language", "duration", "text", "segments"}) EXPECT_TRUE(j.contains(key)) << key;
  for (const char* key : {"id", "seek", "start", "end", "text", "tokens", "temperature", "avg_logprob",
                          "compression_ratio", "no_speech_prob"}) {
    EXPECT_TRUE(j["segments"][0].contains(key)) << key;
  }
  EXPECT_EQ(j["segments"][1]["seek"], 372000);
  EXPECT_DOUBLE_EQ(j["duration"].get<double>(), 3725.5);
}

TEST(OutputFormats, InvalidUtf8IsReplacedNotThrown) {
  auto t = sample_transcript();
  t.text = std::string("broken \xe2\x99 text");
  t.segments[0].text = t.text;
  const auto j = nlohmann::json::parse(render(t, OutputFormat::Json));
  EXPECT_NE(j["text"].get<std::string>().find("\xef\xbf\xbd"), std::string::npos);  // U+FFFD
}

TEST(OutputFormats, ParseNames) {
  EXPECT_EQ(parse_output_format("srt"), OutputFormat::Srt);
  EXPECT_EQ(parse_output_format("text"), OutputFormat::Text);
  EXPECT_EQ(parse_output_format("verbose_json"), OutputFormat::VerboseJson);
  EXPECT_THROW(parse_output_format("docx"), Error);
}

}  // namespace
}  // namespace amanuensis::pipeline

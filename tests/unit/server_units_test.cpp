// Unit tests of the server's parts that need no network: multipart/form-data parsing and
// the Prometheus rendering of the metrics. (The scheduler's are in pipeline_scheduler_test.)
#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <fstream>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>

#include "audio/decode.h"
#include "common/error.h"
#include "server/metrics.h"
#include "server/multipart.h"
#include "server/rate_limited_log.h"
#include "test_paths.h"

namespace amanuensis::server {
namespace {

TEST(Multipart, BoundaryFromContentType) {
  EXPECT_EQ(multipart_boundary("multipart/form-data; boundary=abc").value(), "abc");
  EXPECT_EQ(multipart_boundary("Multipart/Form-Data; charset=utf-8; boundary=\"a b;c\"").value(), "a b;c");
  EXPECT_FALSE(multipart_boundary("application/json").has_value());
  EXPECT_FALSE(multipart_boundary("multipart/form-data").has_value());
  EXPECT_FALSE(multipart_boundary("multipart/form-data; boundary=").has_value());
  EXPECT_FALSE(multipart_boundary("").has_value());
}

// Issue 12 defect 9: a boundary over the limit was "must be multipart/form-data".
TEST(Multipart, OverlongBoundaryNamesTheLengthLimit) {
  EXPECT_EQ(multipart_boundary("multipart/form-data; boundary=" + std::string(200, 'b')).value(), std::string(200, 'b'));
  try {
    (void)multipart_boundary("multipart/form-data; boundary=" + std::string(201, 'b'));
    FAIL() << "a 201-character boundary was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("201 characters"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("at most 200"), std::string::npos) << e.what();
  }
}

// Issue 12 defect 9: lines a client can cause (FFmpeg's, per damaged upload) pass at a
// bounded rate, and what was dropped is counted in the next line written.
TEST(RateLimitedLog, BurstThenRateThenCountsWhatWasDropped) {
  std::vector<std::string> written;
  RateLimitedLog log("p: ", /*lines_per_second=*/1.0, /*burst=*/3.0,
                     [&](std::string_view l) { written.emplace_back(l); });
  const auto t0 = RateLimitedLog::Clock::time_point{} + std::chrono::hours(1);
  for (int i = 0; i < 10; ++i) log.line("x" + std::to_string(i), t0);
  ASSERT_EQ(written.size(), 3u);
  EXPECT_EQ(written[0], "p: x0");
  EXPECT_EQ(log.dropped(), 7u);
  log.line("later", t0 + std::chrono::milliseconds(1500));  // one token back
  ASSERT_EQ(written.size(), 4u);
  EXPECT_EQ(written[3], "p: later (7 similar lines not logged before this one)");
  log.line("again", t0 + std::chrono::milliseconds(1600));  // no token yet
  EXPECT_EQ(written.size(), 4u);
  log.line("much later", t0 + std::chrono::hours(1));       // refilled to the burst, not beyond
  for (int i = 0; i < 5; ++i) log.line("y", t0 + std::chrono::hours(1));
  EXPECT_EQ(written.size(), 7u);
  EXPECT_EQ(written[4], "p: much later (1 similar lines not logged before this one)");
}

TEST(Multipart, ParsesFieldsAndFiles) {
  const std::string body =
      std::string("preamble\r\n") +
      "--XyZ\r\n"
      "Content-Disposition: form-data; name=\"model\"\r\n\r\n"
      "whisper-1\r\n"
      "--XyZ\r\n"
      "content-disposition: form-data; name=\"file\"; filename=\"a \\\"b\\\".wav\"\r\n"
      "Content-Type: audio/wav\r\n\r\n" +
      std::string("RIFF\r\n--Xy\0data", 15) +
      "\r\n--XyZ\r\n"
      "Content-Disposition: form-data; name=\"empty\"\r\n\r\n"
      "\r\n"
      "--XyZ--\r\n";
  const std::string with_nul = std::string(body.data(), body.size());
  const auto parts = parse_multipart(with_nul, "XyZ");
  ASSERT_EQ(parts.size(), 3u);
  EXPECT_EQ(parts[0].name, "model");
  EXPECT_FALSE(parts[0].filename.has_value());
  EXPECT_EQ(parts[0].data, "whisper-1");
  EXPECT_EQ(parts[1].name, "file");
  EXPECT_EQ(parts[1].filename.value(), "a \"b\".wav");
  EXPECT_EQ(parts[1].content_type, "audio/wav");
  EXPECT_EQ(parts[1].data, std::string_view("RIFF\r\n--Xy\0data", 15));
  EXPECT_EQ(parts[2].name, "empty");
  EXPECT_TRUE(parts[2].data.empty());
}

TEST(Multipart, BinaryBodyKeepsNulBytes) {
  std::string payload("a\0b\r\nc", 6);
  const std::string body = "--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x\"\r\n\r\n" + payload +
                           "\r\n--b--";
  const auto parts = parse_multipart(body, "b");
  ASSERT_EQ(parts.size(), 1u);
  EXPECT_EQ(parts[0].data, payload);
}

TEST(Multipart, MalformedBodiesThrowErrors) {
  for (const std::string& body : {
           std::string(""),
           std::string("no boundary here"),
           std::string("--b\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nvalue without end"),
           std::string("--b\r\nContent-Disposition: form-data; name=\"a\"\r\nno blank line"),
           std::string("--b\r\nX-Other: 1\r\n\r\nv\r\n--b--"),
           std::string("--bjunk"),
           std::string("--b"),
           std::string("--b\r\n"),
       }) {
    EXPECT_THROW(parse_multipart(body, "b"), Error) << body;
  }
}

TEST(Multipart, RandomGarbageNeverCrashes) {
  std::uint32_t state = 12345;
  const std::string alphabet = "-b\r\n\":;=ACDfilmnoprst ";
  for (int i = 0; i < 3000; ++i) {
    std::string body;
    const int len = static_cast<int>(state % 120);
    for (int k = 0; k < len; ++k) {
      state = state * 1664525u + 1013904223u;
      body += alphabet[(state >> 16) % alphabet.size()];
    }
    state = state * 1664525u + 1013904223u;
    try {
      (void)parse_multipart(body, "b");
    } catch (const Error&) {
    }
  }
}

TEST(Metrics, RendersPrometheusText) {
  Metrics m;
  m.record_request("/health", 200, 0.002);
  m.record_request("/v1/audio/transcriptions", 400, 0.2);
  m.record_request("/v1/audio/transcriptions", 200, 3.0);
  m.record_transcription(10.0, 2.0);
  pipeline::SchedulerStats stats;
  stats.queued_jobs = 3;
  stats.queued_audio_seconds = 12.5;
  stats.batches.decoder_sequences = {{1, 4}, {16, 2}};
  stats.kv_reserved_bytes = 4194304;
  stats.kv_used_bytes = 16384;
  stats.kv_audio_bytes = 768000;
  stats.kv_admitted_bytes = 3061760;
  stats.kv_limit_bytes = 8388608;
  stats.jobs_waiting_for_memory = 1;
  const auto text = m.render(stats, 2, 60.0, 1);
  EXPECT_NE(text.find("# TYPE amanuensis_kv_pool_bytes gauge\n"), std::string::npos);
  EXPECT_NE(text.find("amanuensis_kv_pool_bytes{state=\"reserved\"} 4194304\n"), std::string::npos);
  EXPECT_NE(text.find("amanuensis_kv_pool_bytes{state=\"used\"} 16384\n"), std::string::npos);
  EXPECT_NE(text.find("amanuensis_kv_pool_bytes{state=\"audio\"} 768000\n"), std::string::npos);
  EXPECT_NE(text.find("amanuensis_kv_pool_bytes{state=\"admitted\"} 3061760\n"), std::string::npos);
  EXPECT_NE(text.find("amanuensis_kv_pool_bytes{state=\"limit\"} 8388608\n"), std::string::npos);
  EXPECT_NE(text.find("amanuensis_jobs_waiting_for_memory 1\n"), std::string::npos);
  EXPECT_NE(text.find("amanuensis_requests_total{endpoint=\"/v1/audio/transcriptions\",status=\"400\"} 1"), std::string::npos);
  EXPECT_NE(text.find("amanuensis_audio_seconds_total 10"), std::string::npos);
  EXPECT_NE(text.find("amanuensis_request_duration_seconds_bucket{le=\"0.005\"} 1"), std::string::npos);
  EXPECT_NE(text.find("amanuensis_request_duration_seconds_bucket{le=\"+Inf\"} 3"), std::string::npos);
  EXPECT_NE(text.find("amanuensis_request_duration_seconds_count 3"), std::string::npos);
  EXPECT_NE(text.find("amanuensis_realtime_factor_bucket{le=\"0.2\"} 1"), std::string::npos);
  EXPECT_NE(text.find("amanuensis_queue_depth 3"), std::string::npos);
  EXPECT_NE(text.find("amanuensis_active_requests 2"), std::string::npos);
  EXPECT_NE(text.find("amanuensis_loaded_models 1\n"), std::string::npos);
  EXPECT_NE(text.find("amanuensis_decoder_batch_sequences_bucket{le=\"1\"} 4\n"), std::string::npos);
  EXPECT_NE(text.find("amanuensis_decoder_batch_sequences_bucket{le=\"8\"} 4\n"), std::string::npos);
  EXPECT_NE(text.find("amanuensis_decoder_batch_sequences_bucket{le=\"16\"} 6\n"), std::string::npos);
  EXPECT_NE(text.find("amanuensis_decoder_batch_sequences_sum 36\n"), std::string::npos);
  EXPECT_NE(text.find("amanuensis_encoder_batch_windows_count 0\n"), std::string::npos);
}

}  // namespace
}  // namespace amanuensis::server

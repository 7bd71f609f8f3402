// Unit tests of the server's parts that need no network: multipart/form-data parsing,
// the worker-pool scheduler (bounded queue, dropping cancelled jobs, graceful shutdown,
// deterministic seeded sampling) and the Prometheus rendering of the metrics.
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
#include "server/scheduler.h"
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
  const auto text = m.render(3, 12.5, 2, 60.0);
  EXPECT_NE(text.find("amanuensis_requests_total{endpoint=\"/v1/audio/transcriptions\",status=\"400\"} 1"), std::string::npos);
  EXPECT_NE(text.find("amanuensis_audio_seconds_total 10"), std::string::npos);
  EXPECT_NE(text.find("amanuensis_request_duration_seconds_bucket{le=\"0.005\"} 1"), std::string::npos);
  EXPECT_NE(text.find("amanuensis_request_duration_seconds_bucket{le=\"+Inf\"} 3"), std::string::npos);
  EXPECT_NE(text.find("amanuensis_request_duration_seconds_count 3"), std::string::npos);
  EXPECT_NE(text.find("amanuensis_realtime_factor_bucket{le=\"0.2\"} 1"), std::string::npos);
  EXPECT_NE(text.find("amanuensis_queue_depth 3"), std::string::npos);
  EXPECT_NE(text.find("amanuensis_active_requests 2"), std::string::npos);
}

// A gate that holds a worker inside a job's cancelled() check until opened.
struct Gate {
  std::mutex m;
  std::condition_variable cv;
  bool open = false;
  bool entered = false;
  void wait() {
    std::unique_lock lock(m);
    entered = true;
    cv.notify_all();
    cv.wait(lock, [&] { return open; });
  }
  void wait_entered() {
    std::unique_lock lock(m);
    ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(30), [&] { return entered; }));
  }
  void release() {
    std::lock_guard lock(m);
    open = true;
    cv.notify_all();
  }
};

class SchedulerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    model_ = pipeline::Model::load(testing::model_path("micro.en-f16"));
    samples_ = std::make_shared<std::vector<float>>(
        audio::load_audio_file(testing::conformance_dir() / "audio" / "speech-5s.wav"));
  }
  static Job job(std::function<bool()> cancelled = {}) {
    Job j;
    j.samples = samples_;
    j.options.decode.sample_len = 8;
    j.options.temperatures = {0.0f};
    j.cancelled = std::move(cancelled);
    return j;
  }
  static inline std::shared_ptr<const pipeline::Model> model_;
  static inline std::shared_ptr<std::vector<float>> samples_;
};

TEST_F(SchedulerTest, RunsJobsAndReportsTimes) {
  WorkerPoolScheduler s(model_, 2, 100.0);
  auto a = s.submit(job());
  auto b = s.submit(job());
  const auto ra = a.get();
  const auto rb = b.get();
  EXPECT_FALSE(ra.dropped);
  EXPECT_EQ(ra.transcript.text, rb.transcript.text);
  EXPECT_GE(ra.run_seconds, 0.0);
  EXPECT_NEAR(ra.transcript.duration, 5.0, 0.01);
}

TEST_F(SchedulerTest, BoundedQueueRejectsWithRetryAfter) {
  WorkerPoolScheduler s(model_, 1, 6.0);  // room for one 5 s job waiting
  Gate gate;
  auto running = s.submit(job([&] { gate.wait(); return false; }));
  gate.wait_entered();  // the only worker is now busy
  auto queued = s.submit(job());
  EXPECT_EQ(s.stats().queued_jobs, 1u);
  EXPECT_NEAR(s.stats().queued_audio_seconds, 5.0, 0.01);
  EXPECT_EQ(s.stats().active_jobs, 1u);
  try {
    (void)s.submit(job());
    ADD_FAILURE() << "the queue took a job over its bound";
  } catch (const QueueFull& e) {
    EXPECT_GE(e.retry_after_seconds, 1.0);
  }
  gate.release();
  EXPECT_FALSE(running.get().dropped);
  EXPECT_FALSE(queued.get().dropped);
  EXPECT_EQ(s.stats().queued_jobs, 0u);
}

TEST_F(SchedulerTest, OneJobLongerThanTheBoundIsAcceptedWhenTheQueueIsEmpty) {
  WorkerPoolScheduler s(model_, 1, 1.0);
  EXPECT_FALSE(s.submit(job()).get().dropped);
}

TEST_F(SchedulerTest, CancelledJobsAreDroppedBeforeTheyStart) {
  WorkerPoolScheduler s(model_, 1, 100.0);
  bool completed = false;
  Job j = job([] { return true; });
  j.on_complete = [&] { completed = true; };
  auto r = s.submit(std::move(j)).get();
  EXPECT_TRUE(r.dropped);
  s.shutdown();
  EXPECT_TRUE(completed);
}

TEST_F(SchedulerTest, ShutdownFinishesAcceptedJobsThenRefusesNewOnes) {
  WorkerPoolScheduler s(model_, 1, 100.0);
  Gate gate;
  auto first = s.submit(job([&] { gate.wait(); return false; }));
  gate.wait_entered();
  auto second = s.submit(job());
  std::thread stopper([&] { s.shutdown(); });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  gate.release();
  stopper.join();
  EXPECT_FALSE(first.get().dropped);
  EXPECT_FALSE(second.get().dropped);
  EXPECT_THROW((void)s.submit(job()), ShuttingDown);
}

TEST_F(SchedulerTest, ErrorsOfTheTranscriptionComeOutOfTheFuture) {
  WorkerPoolScheduler s(model_, 1, 100.0);
  Job j = job();
  j.options.decode.task = "summarize";
  auto f = s.submit(std::move(j));
  EXPECT_THROW(f.get(), Error);
}

TEST_F(SchedulerTest, SeededSamplingIsReproducible) {
  WorkerPoolScheduler s(model_, 2, 100.0);
  auto sampled = [&](std::uint64_t seed) {
    Job j = job();
    j.options.temperatures = {0.8f};
    j.options.best_of = 2;
    j.options.seed = seed;
    return s.submit(std::move(j));
  };
  auto a = sampled(42), b = sampled(42);
  EXPECT_EQ(a.get().transcript.text, b.get().transcript.text);
}

}  // namespace
}  // namespace amanuensis::server

// The batching scheduler and its shared compute thread: bounded queue, dropping cancelled
// jobs (before they start and halfway), graceful shutdown, seeded sampling, and that
// batching decoder steps across transcriptions changes no token: a file gives the same
// tokens alone and among 16 concurrent ones.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <future>
#include <latch>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "audio/decode.h"
#include "common/error.h"
#include "decoding/window_decoder.h"
#include "pipeline/batched_compute.h"
#include "pipeline/scheduler.h"
#include "test_paths.h"

namespace amanuensis::pipeline {
namespace {

std::shared_ptr<std::vector<float>> load_audio(const std::string& name) {
  return std::make_shared<std::vector<float>>(audio::load_audio_file(testing::conformance_dir() / "audio" / name));
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

// Waits (bounded) until the scheduler has no job running or waiting: a job's future is
// ready a moment before its slot counts it done.
bool eventually_idle(const BatchingScheduler& s) {
  for (int i = 0; i < 30000; ++i) {
    const auto st = s.stats();
    if (st.active_jobs == 0 && st.queued_jobs == 0) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return false;
}

class SchedulerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    model_ = Model::load(testing::model_path("micro.en-f16"));
    samples_ = load_audio("speech-5s.wav");
  }
  static Job job(std::function<bool()> cancelled = {}) {
    Job j;
    j.set_samples(samples_);
    j.options.decode.sample_len = 8;
    j.options.temperatures = {0.0f};
    j.cancelled = std::move(cancelled);
    return j;
  }
  static inline std::shared_ptr<const Model> model_;
  static inline std::shared_ptr<std::vector<float>> samples_;
};

TEST_F(SchedulerTest, RunsJobsAndReportsTimes) {
  BatchingScheduler s(model_, 2, 100.0);
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
  BatchingScheduler s(model_, 1, 6.0);  // room for one 5 s job waiting
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

// Issue 12 defect 1: the queue bound counted waiting audio only, so every slot could take
// a job of hours at once. The admitted bound counts the running jobs' audio too.
TEST_F(SchedulerTest, AdmissionCountsTheAudioOfRunningJobs) {
  BatchingScheduler s(model_, 2, 100.0, {}, /*max_admitted_seconds=*/8.0);  // room for one 5 s job
  Gate gate;
  auto running = s.submit(job([&] { gate.wait(); return false; }));
  gate.wait_entered();  // running, the queue is empty and a slot is free
  EXPECT_EQ(s.stats().queued_jobs, 0u);
  EXPECT_NEAR(s.stats().running_audio_seconds, 5.0, 0.01);
  try {
    (void)s.submit(job());
    ADD_FAILURE() << "a second 5 s job was admitted beside a running one, over the 8 s bound";
  } catch (const QueueFull& e) {
    EXPECT_NE(std::string(e.what()).find("--max-admitted-seconds"), std::string::npos) << e.what();
    EXPECT_GE(e.retry_after_seconds, 1.0);
  }
  gate.release();
  EXPECT_FALSE(running.get().dropped);
  // done: the bound is free again, and a job longer than the bound is taken alone
  EXPECT_TRUE(eventually_idle(s));
  BatchingScheduler tight(model_, 1, 100.0, {}, 1.0);
  EXPECT_FALSE(tight.submit(job()).get().dropped);
  EXPECT_FALSE(s.submit(job()).get().dropped);
}

TEST_F(SchedulerTest, OneJobLongerThanTheBoundIsAcceptedWhenTheQueueIsEmpty) {
  BatchingScheduler s(model_, 1, 1.0);
  EXPECT_FALSE(s.submit(job()).get().dropped);
}

// Issue 10: admission by decoder memory. With room for two jobs' shares, a third waits in
// the queue (a slot free) until one of the two ends, then runs.
TEST_F(SchedulerTest, ADecoderMemoryBoundHoldsTheNextJobUntilOneEnds) {
  const std::int64_t share = decoder_memory_bytes(*model_, job().options);
  ASSERT_GT(share, 0);
  BatchingScheduler s(model_, 3, 100.0, {}, 0.0, 2 * share + share / 2);
  Gate first, second;
  auto a = s.submit(job([&] { first.wait(); return false; }));
  auto b = s.submit(job([&] { second.wait(); return false; }));
  first.wait_entered();
  second.wait_entered();
  auto c = s.submit(job());
  auto st = s.stats();
  EXPECT_EQ(st.active_jobs, 2u);
  EXPECT_EQ(st.queued_jobs, 1u) << "the third job's share does not fit beside the two running";
  EXPECT_EQ(st.jobs_waiting_for_memory, 1u);
  EXPECT_EQ(st.kv_admitted_bytes, 2 * share);
  EXPECT_EQ(st.kv_limit_bytes, 2 * share + share / 2);
  first.release();
  EXPECT_FALSE(a.get().dropped);
  EXPECT_FALSE(c.get().dropped) << "the third job ran once the first ended";
  second.release();
  EXPECT_FALSE(b.get().dropped);
  EXPECT_TRUE(eventually_idle(s));
  st = s.stats();
  EXPECT_EQ(st.kv_admitted_bytes, 0);
  EXPECT_EQ(st.jobs_waiting_for_memory, 0u);
}

// A job that alone needs more than the bound is refused, naming the field that asks for it.
TEST_F(SchedulerTest, AJobOverTheDecoderMemoryBoundIsRefusedNamingItsField) {
  auto greedy = job();
  const std::int64_t one = decoder_memory_bytes(*model_, greedy.options);
  BatchingScheduler s(model_, 1, 100.0, {}, 0.0, one);
  auto beams = job();
  beams.options.beam = decoding::BeamOptions{};
  auto sampled = job();
  sampled.options.temperatures = {0.0f, 0.4f};
  sampled.options.best_of = 3;
  const std::pair<Job*, std::string> cases[] = {{&beams, "beam_size"}, {&sampled, "best_of"}};
  for (const auto& [j, field] : cases) {
    try {
      (void)s.submit(std::move(*j));
      ADD_FAILURE() << field << ": taken over the bound";
    } catch (const JobTooLarge& e) {
      EXPECT_EQ(e.field, field);
      EXPECT_NE(std::string(e.what()).find("--max-kv-mb"), std::string::npos) << e.what();
    }
  }
  EXPECT_FALSE(s.submit(std::move(greedy)).get().dropped) << "one greedy sequence fits exactly";
  BatchingScheduler tiny(model_, 1, 100.0, {}, 0.0, 1);
  try {
    (void)tiny.submit(job());
    ADD_FAILURE() << "a greedy job taken over a 1-byte bound";
  } catch (const JobTooLarge& e) {
    EXPECT_TRUE(e.field.empty()) << "the server's bound, not the request, is too small";
  }
}

// The share admission counts is an upper bound of what a transcription holds: beams, and
// sampled candidates, each decoded as long as the window lets them (a model of its own, so
// the pool's peak is this test's).
TEST(SchedulerMemory, ATranscriptionHoldsNoMoreDecoderMemoryThanItsShare) {
  const auto samples = load_audio("speech-5s.wav");
  for (const bool beams : {true, false}) {
    SCOPED_TRACE(beams ? "beam_size 5" : "best_of 5 at temperature 0.7");
    const auto model = Model::load(testing::model_path("micro.en-f16"));
    Job j;
    j.set_samples(samples);
    if (beams) {
      j.options.beam = decoding::BeamOptions{};
      j.options.temperatures = {0.0f};
    } else {
      j.options.temperatures = {0.7f};
      j.options.best_of = 5;
    }
    const std::int64_t share = decoder_memory_bytes(*model, j.options);
    BatchingScheduler s(model, 1, 100.0, {}, 0.0, share);
    EXPECT_FALSE(s.submit(std::move(j)).get().dropped);
    const auto pool = model->decoder().kv_pool().stats();
    EXPECT_GT(pool.peak_used_bytes, model->decoder().sequence_bytes(1)) << "several sequences held blocks";
    EXPECT_GT(pool.peak_audio_bytes, 0);
    EXPECT_LE(pool.peak_total_bytes, share);
    EXPECT_EQ(pool.used_bytes + pool.audio_bytes, 0) << "everything is back once the job is done";
  }
}

TEST_F(SchedulerTest, CancelledJobsAreDroppedBeforeTheyStart) {
  BatchingScheduler s(model_, 1, 100.0);
  bool completed = false;
  Job j = job([] { return true; });
  j.on_complete = [&] { completed = true; };
  auto r = s.submit(std::move(j)).get();
  EXPECT_TRUE(r.dropped);
  s.shutdown();
  EXPECT_TRUE(completed);
}

TEST_F(SchedulerTest, ShutdownFinishesAcceptedJobsThenRefusesNewOnes) {
  BatchingScheduler s(model_, 1, 100.0);
  Gate gate;
  auto first = s.submit(job([&] { gate.wait(); return false; }));
  gate.wait_entered();
  auto second = s.submit(job());
  std::thread stopper([&] { s.shutdown(); });
  // the jobs are released only once shutdown() has begun: both are in flight when it does
  for (int i = 0; i < 30000 && !s.stats().shutting_down; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  EXPECT_TRUE(s.stats().shutting_down) << "shutdown() did not begin within 30 s";
  gate.release();
  stopper.join();
  EXPECT_FALSE(first.get().dropped);
  EXPECT_FALSE(second.get().dropped);
  EXPECT_THROW((void)s.submit(job()), ShuttingDown);
}

TEST_F(SchedulerTest, ErrorsOfTheTranscriptionComeOutOfTheFuture) {
  BatchingScheduler s(model_, 1, 100.0);
  Job j = job();
  j.options.decode.task = "summarize";
  auto f = s.submit(std::move(j));
  EXPECT_THROW(f.get(), Error);
}

TEST_F(SchedulerTest, SeededSamplingIsReproducible) {
  BatchingScheduler s(model_, 2, 100.0);
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


TEST_F(SchedulerTest, AbandonedJobsStopHalfwayAndTheOthersFinish) {
  BatchingScheduler s(model_, 4, 100.0);
  std::atomic<int> calls{0};
  Job leaving = job();
  leaving.abandoned = [&] { return ++calls > 3; };
  auto left = s.submit(std::move(leaving));
  std::vector<std::future<JobResult>> others;
  for (int i = 0; i < 3; ++i) others.push_back(s.submit(job()));
  EXPECT_TRUE(left.get().dropped);
  EXPECT_GT(calls.load(), 3);
  for (auto& f : others) EXPECT_FALSE(f.get().dropped);
}

// Segments' tokens of a transcript, for comparing runs exactly.
std::vector<std::vector<TokenId>> tokens_of(const Transcript& t) {
  std::vector<std::vector<TokenId>> out;
  for (const auto& s : t.segments) out.push_back(s.tokens);
  return out;
}

// Their average log-probabilities: equal to the last bit when every logit was.
std::vector<double> logprobs_of(const Transcript& t) {
  std::vector<double> out;
  for (const auto& s : t.segments) out.push_back(s.avg_logprob);
  return out;
}

// The same file alone, then among 16 concurrent requests of several files, with greedy
// decoding and with beam search and sampling (best_of): the tokens must not change.
TEST_F(SchedulerTest, SameTokensAloneAndAmongSixteenConcurrent) {
  const auto long_file = load_audio("speech-30s.wav");
  const std::vector<std::shared_ptr<std::vector<float>>> crowd = {samples_, load_audio("speech-1s.wav"), long_file,
                                                                  load_audio("jfk.wav")};
  auto with = [&](Job j, int variant) {
    j.options.decode.sample_len = 24;
    if (variant == 1) {
      j.options.beam = decoding::BeamOptions{};
      j.options.beam->beam_size = 3;
    }
    if (variant == 2) {
      j.options.temperatures = {0.6f};
      j.options.best_of = 3;
      j.options.seed = 7;
    }
    return j;
  };
  for (int variant = 0; variant < 3; ++variant) {
    SCOPED_TRACE("variant " + std::to_string(variant));
    Job probe = with(job(), variant);
    probe.set_samples(long_file);
    BatchingScheduler alone_scheduler(model_, 1, 1000.0);
    const auto alone = alone_scheduler.submit(probe).get();

    BatchingScheduler s(model_, 16, 1000.0);
    std::vector<std::future<JobResult>> crowd_results;
    for (int i = 0; i < 8; ++i) {
      Job other = with(job(), i % 3);
      other.set_samples(crowd[static_cast<std::size_t>(i) % crowd.size()]);
      crowd_results.push_back(s.submit(std::move(other)));
    }
    auto among = s.submit(probe);
    for (int i = 8; i < 15; ++i) {
      Job other = with(job(), i % 3);
      other.set_samples(crowd[static_cast<std::size_t>(i) % crowd.size()]);
      crowd_results.push_back(s.submit(std::move(other)));
    }
    const auto batched = among.get();
    for (auto& f : crowd_results) f.get();
    EXPECT_EQ(tokens_of(batched.transcript), tokens_of(alone.transcript));
    EXPECT_EQ(batched.transcript.text, alone.transcript.text);
    EXPECT_EQ(logprobs_of(batched.transcript), logprobs_of(alone.transcript));
    EXPECT_FALSE(alone.transcript.segments.empty());
    // the decoder steps were shared: some step advanced sequences of several requests
    const auto counts = s.stats().batches.decoder_sequences;
    ASSERT_FALSE(counts.empty());
    EXPECT_GT(counts.rbegin()->first, 3);
  }
}

// A client whose step cannot run gets the error; the step of the others still runs.
TEST(BatchedCompute, OneClientsBadStepDoesNotFailTheOthers) {
  const auto model = Model::load(testing::model_path("micro.en-f16"));
  const auto& decoder = model->decoder();
  const std::vector<float> mel(static_cast<std::size_t>(model->hparams().n_mels) * 3000, -1.0f);
  const auto cross = decoder.cross_attention(model->encoder().encode(mel));
  BatchedCompute compute;
  auto advance = [&](TokenId token) {
    BatchedCompute::Client client(compute);
    auto cache = decoder.new_sequence();
    std::vector<float> logits(static_cast<std::size_t>(decoder.n_vocab()));
    const nn::SequenceStep step[] = {{token, &cache, &cross, logits}};
    client.step(decoder, step);
    return cache.length();
  };
  auto good = std::async(std::launch::async, advance, model->tokenizer().special().sot);
  auto bad = std::async(std::launch::async, advance, TokenId{-5});
  EXPECT_EQ(good.get(), 1);
  EXPECT_THROW(bad.get(), Error);
}

// No timer decides who is in a step: a client that takes its time between steps (here
// 20 ms, as a slow machine's logit rules might) is waited for, so every one of its steps
// after the first has the quick client's sequence too. With the old 3 ms gathering
// timeout the quick client ran its steps alone while the slow one slept. The slow client
// takes its first step before the quick one starts (a latch), so neither thread's start-up
// time decides who is decoding when.
TEST(BatchedCompute, StepsWaitForEveryDecodingClientNotForATimer) {
  const auto model = Model::load(testing::model_path("micro.en-f16"));
  const auto& decoder = model->decoder();
  const std::vector<float> mel(static_cast<std::size_t>(model->hparams().n_mels) * 3000, -1.0f);
  const auto cross = decoder.cross_attention(model->encoder().encode(mel));
  BatchedCompute compute;
  constexpr int kSteps = 6;
  std::latch slow_is_decoding(1);
  auto decode = [&](std::chrono::milliseconds pause, bool slow) {
    BatchedCompute::Client client(compute);
    if (!slow) slow_is_decoding.wait();
    auto cache = decoder.new_sequence();
    std::vector<float> logits(static_cast<std::size_t>(decoder.n_vocab()));
    for (int i = 0; i < kSteps; ++i) {
      if (i > 0) std::this_thread::sleep_for(pause);
      const nn::SequenceStep step[] = {{model->tokenizer().special().sot, &cache, &cross, logits}};
      client.step(decoder, step);
      if (slow && i == 0) slow_is_decoding.count_down();
    }
    client.idle();
  };
  auto slow = std::async(std::launch::async, decode, std::chrono::milliseconds(20), true);
  auto quick = std::async(std::launch::async, decode, std::chrono::milliseconds(0), false);
  quick.get();
  slow.get();
  const auto counts = compute.counts().decoder_sequences;
  const auto pairs = counts.count(2) ? counts.at(2) : 0;
  EXPECT_EQ(pairs, static_cast<std::uint64_t>(kSteps - 1)) << "steps of two sequences: " << pairs;
}

// Encoder windows of several transcriptions that wait together are encoded as one stack
// (one pass over all their rows), and each gets the keys and values it gets alone. Three
// clients queue a window while a fourth holds the compute thread.
TEST(BatchedCompute, WindowsThatWaitTogetherAreEncodedAsOneStack) {
  const auto model = Model::load(testing::model_path("micro.en-f16"));
  const auto size = static_cast<std::size_t>(model->hparams().n_mels) * 3000;
  std::vector<std::vector<float>> mels;
  for (int w = 0; w < 3; ++w) mels.emplace_back(size, -1.0f + 0.25f * static_cast<float>(w));
  BatchedCompute compute;
  std::promise<void> holding;
  auto holder = std::async(std::launch::async, [&] {
    BatchedCompute::Client client(compute);
    client.run(nn::Work::Forward, [&] {
      holding.set_value();
      std::this_thread::sleep_for(std::chrono::milliseconds(300));  // the others queue meanwhile
    });
  });
  holding.get_future().wait();
  std::vector<std::future<std::shared_ptr<const nn::CrossAttentionCache>>> encoded;
  for (const auto& mel : mels)
    encoded.push_back(std::async(std::launch::async, [&] {
      BatchedCompute::Client client(compute);
      return client.encode(model->encoder(), model->decoder(), mel);
    }));
  holder.get();
  for (std::size_t w = 0; w < mels.size(); ++w) {
    const auto entry = encoded[w].get();
    const auto& stacked = *entry;
    const auto alone = model->decoder().cross_attention(model->encoder().encode(mels[w]));
    EXPECT_EQ(stacked.keys, alone.keys) << "window " << w;
    EXPECT_EQ(stacked.values, alone.values) << "window " << w;
  }
  const auto counts = compute.counts().encoder_windows;
  EXPECT_EQ(counts.count(3) ? counts.at(3) : 0, 1u) << "one pass of three windows";
}

}  // namespace
}  // namespace amanuensis::pipeline

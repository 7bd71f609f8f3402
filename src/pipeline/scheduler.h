// pipeline: scheduling many transcriptions onto the shared, immutable model. The server
// talks to the TranscriptionScheduler interface only. BatchingScheduler runs up to `slots`
// transcriptions at once, each on its own thread for the light per-sequence work, with
// all their network calls going through one BatchedCompute: their decoder steps advance
// together as one batch, and their encoder windows queue together.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <exception>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "pipeline/batched_compute.h"
#include "pipeline/transcriber.h"

namespace amanuensis::pipeline {

struct Job {
  // The recording (16 kHz mono), read by the job's slot alone: a decoder that decodes as it
  // is read (audio::AudioReader), so that a long upload is not held whole as float.
  std::shared_ptr<SampleSource> audio;
  std::size_t n_samples = 0;  // its length, which admission counts

  // A job over samples in memory.
  void set_samples(std::shared_ptr<const std::vector<float>> samples) {
    n_samples = samples->size();
    audio = std::make_shared<SharedSamples>(std::move(samples));
  }
  pipeline::TranscribeOptions options;
  // Polled just before the job starts: true drops it (client gone, deadline passed).
  std::function<bool()> cancelled;
  // Polled before each network call while it runs: true stops it there (client gone).
  std::function<bool()> abandoned;
  // Called on the worker thread once the future is ready (also when dropped or failed).
  std::function<void()> on_complete;
  // Only detect the language (JobResult::language), without transcribing.
  bool detect_language_only = false;
};

struct JobResult {
  pipeline::Transcript transcript;
  bool dropped = false;        // cancelled (before it started, or while it ran)
  double queue_seconds = 0.0;  // from submit to start
  double run_seconds = 0.0;    // transcription itself, of which:
  double encoder_seconds = 0.0;  // encoder windows, waiting for their turn included
  double decoder_seconds = 0.0;  // decoder steps and prompt passes, waiting included
  std::optional<decoding::LanguageGuess> language;  // of a detect_language_only job
};

// Thrown by submit() when the queue cannot take the job; the server answers 429.
class QueueFull : public std::runtime_error {
 public:
  QueueFull(const std::string& message, double retry_after_seconds)
      : std::runtime_error(message), retry_after_seconds(retry_after_seconds) {}
  double retry_after_seconds;
};

// Thrown by submit() for a job that alone needs more decoder memory than the scheduler's
// bound: `field` names the request field that asks for it (beam_size, best_of), empty
// when even one greedy sequence does not fit (the server's bound is too small for the
// model). The server answers 400 naming the field, or 503.
class JobTooLarge : public Error {
 public:
  JobTooLarge(const std::string& message, std::string field) : Error(message), field(std::move(field)) {}
  std::string field;
};

// Thrown by submit() after shutdown() began; the server answers 503.
class ShuttingDown : public std::runtime_error {
 public:
  ShuttingDown() : std::runtime_error("the server is shutting down") {}
};

struct SchedulerStats {
  std::size_t queued_jobs = 0;
  double queued_audio_seconds = 0.0;
  std::size_t active_jobs = 0;
  double running_audio_seconds = 0.0;
  int slots = 0;
  bool shutting_down = false;  // shutdown() began: no new job is taken
  BatchCounts batches;
  // the decoder's KV pool: bytes reserved (chunks allocated), bytes held by sequences,
  // bytes of the windows' cross-attention entries
  std::int64_t kv_reserved_bytes = 0;
  std::int64_t kv_used_bytes = 0;
  std::int64_t kv_audio_bytes = 0;
  // admission by decoder memory: the bound (0: none) and what the running jobs may hold
  std::int64_t kv_limit_bytes = 0;
  std::int64_t kv_admitted_bytes = 0;
  std::size_t jobs_waiting_for_memory = 0;  // the queue's first job waits for running ones to end
};

class TranscriptionScheduler {
 public:
  virtual ~TranscriptionScheduler() = default;
  // Accepts a job or throws QueueFull / ShuttingDown. Errors of the transcription itself
  // (amanuensis::Error and others) come out of the future.
  virtual std::future<JobResult> submit(Job job) = 0;
  virtual SchedulerStats stats() const = 0;
  // Takes no more jobs, finishes every accepted one, then joins its threads. Idempotent.
  virtual void shutdown() = 0;
};

// A bounded FIFO queue, measured in seconds of audio, feeding `slots` transcriptions that
// run at once and batch their network work in one BatchedCompute.
class BatchingScheduler final : public TranscriptionScheduler {
 public:
  // max_queue_seconds: audio waiting (not yet started) may not exceed this; a single job
  // longer than the whole bound is still accepted when the queue is empty.
  // max_admitted_seconds (0: no bound): audio of the jobs waiting and running together, as
  // a running job holds its upload until it is done: the queue bound
  // alone lets `slots` jobs of hours each run at once. A job is always accepted when no
  // other is waiting or running.
  // max_decoder_bytes (0: no bound): decoder memory (decoder_memory_bytes() of each job:
  // KV blocks and a window's cross-attention entry at their most) of the jobs running at
  // once. A job starts when its share fits beside the running ones' (in queue order, so
  // a large one is not passed over for ever); one that alone exceeds the bound is refused
  // (JobTooLarge).
  BatchingScheduler(std::shared_ptr<const Model> model, int slots, double max_queue_seconds,
                    BatchedComputeOptions compute = {}, double max_admitted_seconds = 0.0,
                    std::int64_t max_decoder_bytes = 0);
  ~BatchingScheduler() override;

  std::future<JobResult> submit(Job job) override;
  SchedulerStats stats() const override;
  void shutdown() override;

 private:
  struct Entry {
    Job job;
    double seconds = 0.0;
    std::int64_t decoder_bytes = 0;  // decoder memory it may hold while it runs
    std::chrono::steady_clock::time_point submitted;
    std::promise<JobResult> promise;
  };
  void slot_loop();
  JobResult run(Entry& entry);

  void check_admission(double seconds) const;  // under mutex_; throws QueueFull
  std::int64_t decoder_bytes_of(const Job& job) const;  // throws JobTooLarge past the bound
  bool front_fits() const;  // under mutex_: the queue's first job may start now

  std::shared_ptr<const Model> model_;
  const double max_queue_seconds_;
  const double max_admitted_seconds_;
  const std::int64_t max_decoder_bytes_;
  const int n_slots_;
  BatchedCompute compute_;
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<Entry> queue_;
  double queued_seconds_ = 0.0;
  std::size_t active_ = 0;
  double running_seconds_ = 0.0;  // audio of the jobs running
  std::int64_t running_decoder_bytes_ = 0;  // their decoder memory at most
  double recent_rtf_ = 0.0;  // run seconds per audio second, smoothed (for Retry-After)
  bool stopping_ = false;
  std::vector<std::thread> slots_;
  std::mutex join_mutex_;
};

}  // namespace amanuensis::pipeline

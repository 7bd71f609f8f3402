// server: scheduling transcription jobs onto the shared, immutable model. The server talks
// to the TranscriptionScheduler interface only, so that a later scheduler (for example one
// that batches encoder windows and decoder steps across requests) can replace the simple
// worker pool below without touching the HTTP layer.
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
#include <thread>
#include <vector>

#include "pipeline/transcriber.h"

namespace amanuensis::server {

struct Job {
  std::shared_ptr<const std::vector<float>> samples;  // 16 kHz mono
  pipeline::TranscribeOptions options;
  // Polled just before the job starts: true drops it (client gone, deadline passed).
  std::function<bool()> cancelled;
  // Called on the worker thread once the future is ready (also when dropped or failed).
  std::function<void()> on_complete;
};

struct JobResult {
  pipeline::Transcript transcript;
  bool dropped = false;        // cancelled before it started
  double queue_seconds = 0.0;  // from submit to start
  double run_seconds = 0.0;    // transcription itself
};

// Thrown by submit() when the queue cannot take the job; the server answers 429.
class QueueFull : public std::runtime_error {
 public:
  QueueFull(const std::string& message, double retry_after_seconds)
      : std::runtime_error(message), retry_after_seconds(retry_after_seconds) {}
  double retry_after_seconds;
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
  int workers = 0;
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

// A bounded FIFO queue, measured in seconds of audio, feeding a fixed pool of worker
// threads; each worker runs pipeline::transcribe on the shared model for one job at a time.
class WorkerPoolScheduler final : public TranscriptionScheduler {
 public:
  // max_queue_seconds: audio waiting (not yet started) may not exceed this; a single job
  // longer than the whole bound is still accepted when the queue is empty.
  WorkerPoolScheduler(std::shared_ptr<const pipeline::Model> model, int workers, double max_queue_seconds);
  ~WorkerPoolScheduler() override;

  std::future<JobResult> submit(Job job) override;
  SchedulerStats stats() const override;
  void shutdown() override;

 private:
  struct Entry {
    Job job;
    double seconds = 0.0;
    std::chrono::steady_clock::time_point submitted;
    std::promise<JobResult> promise;
  };
  void worker_loop();

  std::shared_ptr<const pipeline::Model> model_;
  const double max_queue_seconds_;
  const int n_workers_;
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<Entry> queue_;
  double queued_seconds_ = 0.0;
  std::size_t active_ = 0;
  double recent_rtf_ = 0.0;  // run seconds per audio second, smoothed (for Retry-After)
  bool stopping_ = false;
  std::vector<std::thread> workers_;
  std::mutex join_mutex_;
};

}  // namespace amanuensis::server

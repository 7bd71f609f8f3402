#include "server/scheduler.h"

#include <algorithm>
#include <cmath>

namespace amanuensis::server {

namespace {
double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}
}  // namespace

WorkerPoolScheduler::WorkerPoolScheduler(std::shared_ptr<const pipeline::Model> model, int workers,
                                         double max_queue_seconds)
    : model_(std::move(model)), max_queue_seconds_(max_queue_seconds), n_workers_(std::max(1, workers)) {
  workers_.reserve(static_cast<std::size_t>(n_workers_));
  for (int i = 0; i < n_workers_; ++i) workers_.emplace_back([this] { worker_loop(); });
}

WorkerPoolScheduler::~WorkerPoolScheduler() { shutdown(); }

std::future<JobResult> WorkerPoolScheduler::submit(Job job) {
  const double seconds = job.samples ? static_cast<double>(job.samples->size()) / 16000.0 : 0.0;
  std::future<JobResult> future;
  {
    std::lock_guard lock(mutex_);
    if (stopping_) throw ShuttingDown();
    if (!queue_.empty() && queued_seconds_ + seconds > max_queue_seconds_) {
      // Rough time until enough of the queue has drained: queued audio times the recent
      // real-time factor, spread over the workers.
      const double rtf = recent_rtf_ > 0 ? recent_rtf_ : 1.0;
      const double wait = queued_seconds_ * rtf / n_workers_;
      throw QueueFull("the transcription queue is full (" + std::to_string(static_cast<int>(std::ceil(queued_seconds_))) +
                          " s of audio waiting); retry later",
                      std::clamp(wait, 1.0, 3600.0));
    }
    Entry entry;
    entry.job = std::move(job);
    entry.seconds = seconds;
    entry.submitted = std::chrono::steady_clock::now();
    future = entry.promise.get_future();
    queue_.push_back(std::move(entry));
    queued_seconds_ += seconds;
  }
  wake_.notify_one();
  return future;
}

SchedulerStats WorkerPoolScheduler::stats() const {
  std::lock_guard lock(mutex_);
  return {queue_.size(), queued_seconds_, active_, n_workers_};
}

void WorkerPoolScheduler::shutdown() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  std::lock_guard join(join_mutex_);
  for (auto& t : workers_)
    if (t.joinable()) t.join();
}

void WorkerPoolScheduler::worker_loop() {
  for (;;) {
    Entry entry;
    {
      std::unique_lock lock(mutex_);
      wake_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping, and every accepted job is done or running
      entry = std::move(queue_.front());
      queue_.pop_front();
      queued_seconds_ = queue_.empty() ? 0.0 : std::max(0.0, queued_seconds_ - entry.seconds);
      ++active_;
    }
    JobResult result;
    result.queue_seconds = seconds_since(entry.submitted);
    bool cancelled = false;
    try {
      cancelled = entry.job.cancelled && entry.job.cancelled();
    } catch (...) {
      cancelled = true;
    }
    if (cancelled) {
      result.dropped = true;
      entry.promise.set_value(std::move(result));
    } else {
      const auto start = std::chrono::steady_clock::now();
      try {
        result.transcript = pipeline::transcribe(*model_, *entry.job.samples, entry.job.options);
        result.run_seconds = seconds_since(start);
        entry.promise.set_value(std::move(result));
      } catch (...) {
        entry.promise.set_exception(std::current_exception());
      }
      const double run = seconds_since(start);
      if (entry.seconds > 0) {
        std::lock_guard lock(mutex_);
        const double rtf = run / entry.seconds;
        recent_rtf_ = recent_rtf_ > 0 ? 0.8 * recent_rtf_ + 0.2 * rtf : rtf;
      }
    }
    {
      std::lock_guard lock(mutex_);
      --active_;
    }
    if (entry.job.on_complete) {
      try {
        entry.job.on_complete();
      } catch (...) {
      }
    }
  }
}

}  // namespace amanuensis::server

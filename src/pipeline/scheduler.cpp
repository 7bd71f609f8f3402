#include "pipeline/scheduler.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <system_error>

#include "common/error.h"

namespace amanuensis::pipeline {

namespace {
double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

bool poll(const std::function<bool()>& check) {
  try {
    return check && check();
  } catch (...) {
    return true;
  }
}
}  // namespace

BatchingScheduler::BatchingScheduler(std::shared_ptr<const Model> model, int slots, double max_queue_seconds,
                                     BatchedComputeOptions compute, double max_admitted_seconds,
                                     std::int64_t max_decoder_bytes)
    : model_(std::move(model)),
      max_queue_seconds_(max_queue_seconds),
      max_admitted_seconds_(max_admitted_seconds),
      max_decoder_bytes_(std::max<std::int64_t>(0, max_decoder_bytes)),
      n_slots_(std::max(1, slots)),
      compute_(compute) {
  slots_.reserve(static_cast<std::size_t>(n_slots_));
  try {
    for (int i = 0; i < n_slots_; ++i) slots_.emplace_back([this] { slot_loop(); });
  } catch (const std::system_error& e) {
    // the slots already running must stop and be joined before the vector goes away
    shutdown();
    throw Error("cannot start " + std::to_string(n_slots_) + " transcription slots (" + e.what() +
                "): lower --workers or raise the process limit (ulimit -u)");
  }
}

BatchingScheduler::~BatchingScheduler() { shutdown(); }

std::future<JobResult> BatchingScheduler::submit(Job job) {
  const double seconds = job.audio ? static_cast<double>(job.n_samples) / 16000.0 : 0.0;
  const std::int64_t decoder_bytes = decoder_bytes_of(job);
  std::future<JobResult> future;
  {
    std::lock_guard lock(mutex_);
    if (stopping_) throw ShuttingDown();
    check_admission(seconds);
    Entry entry;
    entry.job = std::move(job);
    entry.seconds = seconds;
    entry.decoder_bytes = decoder_bytes;
    entry.submitted = std::chrono::steady_clock::now();
    future = entry.promise.get_future();
    queue_.push_back(std::move(entry));
    queued_seconds_ += seconds;
  }
  wake_.notify_one();
  return future;
}

void BatchingScheduler::check_admission(double seconds) const {
  // Rough time until enough has drained: the audio ahead times the recent real-time factor
  // of one transcription, spread over the slots.
  const double rtf = recent_rtf_ > 0 ? recent_rtf_ : 1.0;
  auto wait_for = [&](double ahead) { return std::clamp(ahead * rtf / n_slots_, 1.0, 3600.0); };
  auto whole = [](double s) { return std::to_string(static_cast<long long>(std::ceil(s))); };
  if (!queue_.empty() && queued_seconds_ + seconds > max_queue_seconds_) {
    throw QueueFull("the transcription queue is full (" + whole(queued_seconds_) + " s of audio waiting); retry later",
                    wait_for(queued_seconds_));
  }
  const double admitted = queued_seconds_ + running_seconds_;
  const bool alone = queue_.empty() && active_ == 0;
  if (max_admitted_seconds_ > 0 && !alone && admitted + seconds > max_admitted_seconds_) {
    throw QueueFull("the server is busy with " + whole(admitted) + " s of audio running or waiting, and " +
                        whole(seconds) + " s more would pass its bound of " + whole(max_admitted_seconds_) +
                        " s (--max-admitted-seconds); retry later",
                    wait_for(admitted));
  }
}

std::int64_t BatchingScheduler::decoder_bytes_of(const Job& job) const {
  const auto& decoder = model_->decoder();
  // language detection: the first window and one sequence of a few tokens
  const std::int64_t bytes = job.detect_language_only ? decoder.cross_attention_bytes() + decoder.sequence_bytes(1)
                                                      : decoder_memory_bytes(*model_, job.options);
  if (max_decoder_bytes_ == 0 || bytes <= max_decoder_bytes_) return bytes;
  auto mb = [](std::int64_t b) { return std::to_string((b + (1 << 20) - 1) >> 20) + " MB"; };
  const auto& o = job.options;
  const bool sampling = may_sample(o);
  std::string field;
  std::string asks = "one sequence";
  if (o.beam && o.beam->beam_size > 1 && (!sampling || o.beam->beam_size >= o.best_of)) {
    field = "beam_size";
    asks = "beam_size " + std::to_string(o.beam->beam_size);
  } else if (sampling && o.best_of > 1) {
    field = "best_of";
    asks = "best_of " + std::to_string(o.best_of);
  }
  throw JobTooLarge("this transcription needs up to " + mb(bytes) + " of decoder memory (" + asks +
                        ", each sequence's keys and values at its longest, and a window's audio states), more than "
                        "the server's bound of " + mb(max_decoder_bytes_) + " (--max-kv-mb)" +
                        (field.empty() ? std::string() : ": ask for a smaller " + field),
                    field);
}

bool BatchingScheduler::front_fits() const {
  return !queue_.empty() &&
         (max_decoder_bytes_ == 0 || running_decoder_bytes_ + queue_.front().decoder_bytes <= max_decoder_bytes_);
}

SchedulerStats BatchingScheduler::stats() const {
  SchedulerStats s;
  {
    std::lock_guard lock(mutex_);
    s.queued_jobs = queue_.size();
    s.queued_audio_seconds = queued_seconds_;
    s.active_jobs = active_;
    s.running_audio_seconds = running_seconds_;
    s.slots = n_slots_;
    s.shutting_down = stopping_;
    s.kv_limit_bytes = max_decoder_bytes_;
    s.kv_admitted_bytes = running_decoder_bytes_;
    s.jobs_waiting_for_memory = !queue_.empty() && !front_fits() && active_ < static_cast<std::size_t>(n_slots_);
  }
  s.batches = compute_.counts();
  const auto kv = model_->decoder().kv_pool().stats();
  s.kv_reserved_bytes = kv.capacity_bytes;
  s.kv_used_bytes = kv.used_bytes;
  s.kv_audio_bytes = kv.audio_bytes;
  return s;
}

void BatchingScheduler::shutdown() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  std::lock_guard join(join_mutex_);
  for (auto& t : slots_)
    if (t.joinable()) t.join();
}

JobResult BatchingScheduler::run(Entry& entry) {
  JobResult result;
  result.queue_seconds = seconds_since(entry.submitted);
  if (poll(entry.job.cancelled)) {
    result.dropped = true;
    return result;
  }
  const auto start = std::chrono::steady_clock::now();
  BatchedCompute::Client client(compute_, [&job = entry.job] { return poll(job.abandoned); });
  auto options = entry.job.options;
  options.runner = &client;
  try {
    if (entry.job.detect_language_only) {
      result.language = detect_language(*model_, *entry.job.audio, &client);
    } else {
      result.transcript = transcribe(*model_, *entry.job.audio, options);
    }
  } catch (const Cancelled&) {
    result.dropped = true;
  }
  result.run_seconds = seconds_since(start);
  result.encoder_seconds = client.encoder_seconds();
  result.decoder_seconds = client.decoder_seconds();
  if (!result.dropped && entry.seconds > 0) {
    std::lock_guard lock(mutex_);
    const double rtf = result.run_seconds / entry.seconds;
    recent_rtf_ = recent_rtf_ > 0 ? 0.8 * recent_rtf_ + 0.2 * rtf : rtf;
  }
  return result;
}

void BatchingScheduler::slot_loop() {
  for (;;) {
    Entry entry;
    {
      std::unique_lock lock(mutex_);
      // the first job waits for decoder memory when it does not fit beside the running ones
      wake_.wait(lock, [&] { return (stopping_ && queue_.empty()) || front_fits(); });
      if (queue_.empty()) return;  // stopping, and every accepted job is done or running
      entry = std::move(queue_.front());
      queue_.pop_front();
      queued_seconds_ = queue_.empty() ? 0.0 : std::max(0.0, queued_seconds_ - entry.seconds);
      ++active_;
      running_seconds_ += entry.seconds;
      running_decoder_bytes_ += entry.decoder_bytes;
    }
    try {
      entry.promise.set_value(run(entry));
    } catch (...) {
      entry.promise.set_exception(std::current_exception());
    }
    {
      std::lock_guard lock(mutex_);
      --active_;
      running_seconds_ = active_ == 0 ? 0.0 : std::max(0.0, running_seconds_ - entry.seconds);
      running_decoder_bytes_ -= entry.decoder_bytes;
    }
    wake_.notify_all();  // its memory may let the queue's first job start
    if (entry.job.on_complete) {
      try {
        entry.job.on_complete();
      } catch (...) {
      }
    }
  }
}

}  // namespace amanuensis::pipeline

#include "pipeline/batched_compute.h"

#include <string>
#include <system_error>

#include "common/error.h"
#include "kernels/cpu/fast_math.h"

#include <algorithm>

namespace amanuensis::pipeline {

using Clock = std::chrono::steady_clock;

// A call of one client, waiting for the compute thread.
struct BatchedCompute::Pending {
  bool is_step = false;
  nn::Work work = nn::Work::Forward;
  const std::function<void()>* exclusive = nullptr;
  // an encoder window (Client::encode): mel in, cross-attention keys and values out
  const nn::Encoder* encoder = nullptr;
  std::span<const float> mel;
  nn::CrossAttentionCache* cross = nullptr;
  const nn::Decoder* decoder = nullptr;
  std::span<const nn::SequenceStep> steps;
  std::exception_ptr error;
  bool done = false;
};

BatchedCompute::BatchedCompute(BatchedComputeOptions options) : options_(options) {
  try {
    thread_ = std::thread([this] { compute_loop(); });
  } catch (const std::system_error& e) {
    throw Error(std::string("cannot start the compute thread (") + e.what() + "): raise the process limit (ulimit -u)");
  }
}

BatchedCompute::~BatchedCompute() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  compute_wake_.notify_all();
  thread_.join();
}

BatchCounts BatchedCompute::counts() const {
  std::lock_guard lock(mutex_);
  return counts_;
}

void BatchedCompute::submit(Pending& pending, bool& client_stepping) {
  std::unique_lock lock(mutex_);
  if (client_stepping != pending.is_step) {
    steppers_ += pending.is_step ? 1 : -1;
    client_stepping = pending.is_step;
  }
  if (pending.is_step) {
    steps_.push_back(&pending);
  } else {
    exclusive_.push_back(&pending);
  }
  ++waiting_;  // the compute thread takes it back when it marks the call done
  compute_wake_.notify_one();
  done_.wait(lock, [&] { return pending.done; });
  // the decoding rules that follow are scalar code (see clear_upper_vector_state)
  kernels::cpu::clear_upper_vector_state();
  if (pending.error) std::rethrow_exception(pending.error);
}

namespace {
// Seconds that `work` took.
template <class Work>
double timed(Work work) {
  const auto start = Clock::now();
  work();
  return std::chrono::duration<double>(Clock::now() - start).count();
}
}  // namespace

// Steps run once every client that is decoding has one waiting. A client between two
// steps only applies its logit rules to the last step's logits (bounded host work, no
// I/O: it calls idle() when a window is decoded and before it emits anything, and run()
// for exclusive work), so waiting for it costs at most that work, and a client between
// windows, computing its next mel, is not waited for: it joins a later step.
bool BatchedCompute::steps_ready() const {
  return !steps_.empty() && (static_cast<int>(steps_.size()) >= steppers_ || waiting_ >= clients_);
}

void BatchedCompute::compute_loop() {
  std::unique_lock lock(mutex_);
  for (;;) {
    const bool steps = steps_ready();
    if (exclusive_.empty() || steps_.empty()) exclusive_seconds_ = step_seconds_ = 0.0;
    if (steps && (exclusive_.empty() || step_seconds_ <= exclusive_seconds_)) {
      step_seconds_ += timed([&] { run_steps(lock); });
    } else if (!exclusive_.empty()) {
      exclusive_seconds_ += timed([&] { run_exclusive_turn(lock); });
    } else if (stopping_ && clients_ == 0 && steps_.empty()) {
      return;
    } else {
      compute_wake_.wait(lock);
    }
  }
}

// Under the lock. A client counts as waiting until its call is marked done here, not until
// its thread wakes: a client woken late would otherwise still count as waiting while the
// others submit their next steps, and those would run without it.
void BatchedCompute::finish(std::span<Pending* const> calls) {
  for (Pending* p : calls) p->done = true;
  waiting_ -= static_cast<int>(calls.size());
  done_.notify_all();
}

void BatchedCompute::run_exclusive_turn(std::unique_lock<std::mutex>& lock) {
  std::vector<Pending*> turn;
  while (!exclusive_.empty() && static_cast<int>(turn.size()) < std::max(1, options_.max_exclusive_per_turn)) {
    turn.push_back(exclusive_.front());
    exclusive_.pop_front();
  }
  lock.unlock();
  std::map<const nn::Encoder*, std::vector<Pending*>> stacks;
  for (Pending* p : turn) {
    if (p->encoder) {
      stacks[p->encoder].push_back(p);
      continue;
    }
    try {
      (*p->exclusive)();
    } catch (...) {
      p->error = std::current_exception();
    }
  }
  std::vector<int> sizes;
  for (const auto& [encoder, stack] : stacks) encode_stack(stack, sizes);
  lock.lock();
  for (int size : sizes) ++counts_.encoder_windows[size];
  finish(turn);
}

void BatchedCompute::encode_stack(std::span<Pending* const> stack, std::vector<int>& sizes) {
  try {
    std::vector<std::span<const float>> mels;
    for (const Pending* p : stack) mels.push_back(p->mel);
    const auto states = stack.front()->encoder->encode_stacked(mels);
    for (std::size_t i = 0; i < stack.size(); ++i) *stack[i]->cross = stack[i]->decoder->cross_attention(states[i]);
    sizes.push_back(static_cast<int>(stack.size()));
    return;
  } catch (...) {
    if (stack.size() == 1) {
      stack.front()->error = std::current_exception();
      return;
    }
  }
  // one window that cannot be encoded fails alone: the others go one by one
  for (Pending* p : stack) {
    try {
      *p->cross = p->decoder->cross_attention(p->encoder->encode(p->mel));
      sizes.push_back(1);
    } catch (...) {
      p->error = std::current_exception();
    }
  }
}

void BatchedCompute::run_steps(std::unique_lock<std::mutex>& lock) {
  std::vector<Pending*> batch;
  batch.swap(steps_);
  lock.unlock();
  // one merged step per decoder (every client of a server shares one model); a client
  // whose sequences cannot advance gets its error without holding back the others
  std::map<const nn::Decoder*, std::pair<std::vector<nn::SequenceStep>, std::vector<Pending*>>> merged;
  for (Pending* p : batch) {
    try {
      p->decoder->check_step(p->steps);
      auto& [steps, owners] = merged[p->decoder];
      steps.insert(steps.end(), p->steps.begin(), p->steps.end());
      owners.push_back(p);
    } catch (...) {
      p->error = std::current_exception();
    }
  }
  std::vector<int> sizes;
  for (auto& [decoder, work] : merged) {
    auto& [steps, owners] = work;
    try {
      decoder->step(steps);
    } catch (...) {
      for (Pending* p : owners) p->error = std::current_exception();
    }
    sizes.push_back(static_cast<int>(steps.size()));
  }
  lock.lock();
  for (int size : sizes) ++counts_.decoder_sequences[size];
  finish(batch);
}

BatchedCompute::Client::Client(BatchedCompute& compute, std::function<bool()> cancelled)
    : compute_(compute), cancelled_(std::move(cancelled)) {
  std::lock_guard lock(compute_.mutex_);
  ++compute_.clients_;
}

BatchedCompute::Client::~Client() {
  {
    std::lock_guard lock(compute_.mutex_);
    --compute_.clients_;
    if (stepping_) --compute_.steppers_;
  }
  // one client fewer may be what the waiting steps were waiting for
  compute_.compute_wake_.notify_all();
}

void BatchedCompute::Client::idle() {
  {
    std::lock_guard lock(compute_.mutex_);
    if (!stepping_) return;
    stepping_ = false;
    --compute_.steppers_;
  }
  compute_.compute_wake_.notify_all();
}

void BatchedCompute::Client::check_cancelled() const {
  if (cancelled_ && cancelled_()) throw Cancelled();
}

void BatchedCompute::Client::run(nn::Work kind, const std::function<void()>& work) {
  check_cancelled();
  const auto start = Clock::now();
  Pending p;
  p.work = kind;
  p.exclusive = &work;
  compute_.submit(p, stepping_);
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  (kind == nn::Work::Encode ? encoder_seconds_ : decoder_seconds_) += seconds;
}

std::shared_ptr<const nn::CrossAttentionCache> BatchedCompute::Client::encode(const nn::Encoder& encoder,
                                                                             const nn::Decoder& decoder,
                                                                             std::span<const float> mel) {
  check_cancelled();
  const auto start = Clock::now();
  auto cross = std::make_shared<nn::CrossAttentionCache>();
  Pending p;
  p.work = nn::Work::Encode;
  p.encoder = &encoder;
  p.decoder = &decoder;
  p.mel = mel;
  p.cross = cross.get();
  compute_.submit(p, stepping_);
  encoder_seconds_ += std::chrono::duration<double>(Clock::now() - start).count();
  return cross;
}

void BatchedCompute::Client::step(const nn::Decoder& decoder, std::span<const nn::SequenceStep> steps) {
  check_cancelled();
  const auto start = Clock::now();
  Pending p;
  p.is_step = true;
  p.decoder = &decoder;
  p.steps = steps;
  compute_.submit(p, stepping_);
  decoder_seconds_ += std::chrono::duration<double>(Clock::now() - start).count();
}

}  // namespace amanuensis::pipeline

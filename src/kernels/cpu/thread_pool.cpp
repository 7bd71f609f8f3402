#include "kernels/cpu/thread_pool.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <atomic>
#include <memory>
#include <string>
#include <system_error>
#include <utility>

#include "common/error.h"

namespace amanuensis::kernels::cpu {
namespace {

std::int64_t chunk_begin(std::int64_t n, int parts, int index) { return n * index / parts; }

std::atomic<int> requested_threads{0};

// Polls `ready` for a few tens of microseconds; true as soon as it holds.
template <class Ready>
bool spin_until(Ready ready) {
  for (int i = 0; i < 4096; ++i) {
    if (ready()) return true;
#if defined(__x86_64__)
    _mm_pause();
#endif
  }
  return ready();
}

}  // namespace

ThreadPool::ThreadPool(int n_threads) {
  try {
    for (int i = 1; i < std::max(1, n_threads); ++i) workers_.emplace_back([this, i] { worker_loop(i); });
  } catch (const std::system_error& e) {
    // the workers already started wait on members that are about to go: stop them first
    stop_workers();
    throw Error("cannot start " + std::to_string(n_threads) + " compute threads (" + e.what() +
                "): use fewer threads");
  }
}

ThreadPool::~ThreadPool() { stop_workers(); }

void ThreadPool::stop_workers() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  for (auto& worker : workers_) worker.join();
  workers_.clear();
}

void ThreadPool::parallel_for(std::int64_t n, const std::function<void(std::int64_t, std::int64_t)>& fn) {
  if (n <= 0) return;
  const int parts = size();
  if (parts == 1 || n == 1) {
    fn(0, n);
    return;
  }
  std::lock_guard call_lock(call_mutex_);
  {
    std::lock_guard lock(mutex_);
    job_ = &fn;
    job_size_ = n;
    pending_.store(parts - 1, std::memory_order_relaxed);
    generation_.fetch_add(1, std::memory_order_release);
  }
  wake_.notify_all();
  try {
    fn(0, chunk_begin(n, parts, 1));
  } catch (...) {
    keep_first_error(std::current_exception());
  }
  // the workers still use fn until they are done, error or not
  const auto all_done = [&] { return pending_.load(std::memory_order_acquire) == 0; };
  if (!spin_until(all_done)) {
    std::unique_lock lock(mutex_);
    done_.wait(lock, all_done);
  }
  std::exception_ptr error;
  {
    std::lock_guard lock(mutex_);
    error = std::exchange(error_, nullptr);
  }
  if (error) std::rethrow_exception(error);
}

void ThreadPool::keep_first_error(std::exception_ptr error) {
  std::lock_guard lock(mutex_);
  if (!error_) error_ = std::move(error);
}

void ThreadPool::worker_loop(int index) {
  std::uint64_t seen = 0;
  for (;;) {
    const auto new_job = [&] { return stopping_.load() || generation_.load(std::memory_order_acquire) != seen; };
    const bool spun = spin_until(new_job);
    const std::function<void(std::int64_t, std::int64_t)>* job;
    std::int64_t n;
    {
      std::unique_lock lock(mutex_);
      if (!spun) wake_.wait(lock, new_job);
      if (stopping_) return;
      seen = generation_.load();
      job = job_;
      n = job_size_;
    }
    const int parts = size();
    const auto begin = chunk_begin(n, parts, index);
    const auto end = chunk_begin(n, parts, index + 1);
    if (begin < end) {
      try {
        (*job)(begin, end);
      } catch (...) {
        keep_first_error(std::current_exception());  // rethrown by the caller
      }
    }
    if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      std::lock_guard lock(mutex_);  // the caller may be about to sleep on done_
      done_.notify_one();
    }
  }
}

void set_thread_count(int n_threads) { requested_threads = std::max(1, n_threads); }

int thread_count() { return thread_pool().size(); }

ThreadPool& thread_pool() {
  static ThreadPool pool([] {
    int n = requested_threads.load();
    if (n <= 0) n = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    return n;
  }());
  return pool;
}

void parallel_for(std::int64_t n, std::int64_t min_parallel, const std::function<void(std::int64_t, std::int64_t)>& fn) {
  if (n < min_parallel) {
    fn(0, n);
    return;
  }
  thread_pool().parallel_for(n, fn);
}

void parallel_for_each(std::int64_t n, const std::function<void(std::int64_t)>& fn) {
  ThreadPool& pool = thread_pool();
  if (n <= 1 || pool.size() == 1) {
    for (std::int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  std::atomic<std::int64_t> next{0};
  pool.parallel_for(std::min<std::int64_t>(n, pool.size()), [&](std::int64_t, std::int64_t) {
    for (std::int64_t i = next.fetch_add(1, std::memory_order_relaxed); i < n;
         i = next.fetch_add(1, std::memory_order_relaxed))
      fn(i);
  });
}

}  // namespace amanuensis::kernels::cpu

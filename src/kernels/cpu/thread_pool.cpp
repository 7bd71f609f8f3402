#include "kernels/cpu/thread_pool.h"

#include <algorithm>
#include <atomic>
#include <memory>

namespace amanuensis::kernels::cpu {
namespace {

std::int64_t chunk_begin(std::int64_t n, int parts, int index) { return n * index / parts; }

std::atomic<int> requested_threads{0};

}  // namespace

ThreadPool::ThreadPool(int n_threads) {
  for (int i = 1; i < std::max(1, n_threads); ++i) workers_.emplace_back([this, i] { worker_loop(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  for (auto& worker : workers_) worker.join();
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
    pending_ = parts - 1;
    ++generation_;
  }
  wake_.notify_all();
  fn(0, chunk_begin(n, parts, 1));
  std::unique_lock lock(mutex_);
  done_.wait(lock, [&] { return pending_ == 0; });
  job_ = nullptr;
}

void ThreadPool::worker_loop(int index) {
  std::uint64_t seen = 0;
  for (;;) {
    const std::function<void(std::int64_t, std::int64_t)>* job;
    std::int64_t n;
    {
      std::unique_lock lock(mutex_);
      wake_.wait(lock, [&] { return stopping_ || generation_ != seen; });
      if (stopping_) return;
      seen = generation_;
      job = job_;
      n = job_size_;
    }
    const int parts = size();
    const auto begin = chunk_begin(n, parts, index);
    const auto end = chunk_begin(n, parts, index + 1);
    if (begin < end) (*job)(begin, end);
    {
      std::lock_guard lock(mutex_);
      --pending_;
    }
    done_.notify_one();
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

}  // namespace amanuensis::kernels::cpu

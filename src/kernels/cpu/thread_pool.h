// kernels/cpu: a small persistent thread pool for data-parallel loops. One pool per
// process, sized to the cores, so kernels never oversubscribe the machine.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace amanuensis::kernels::cpu {

class ThreadPool {
 public:
  explicit ThreadPool(int n_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  // Splits [0, n) into at most size() contiguous chunks and runs fn(begin, end) on them,
  // the calling thread taking the first. Returns when all are done, then rethrows the first
  // exception a chunk threw. Calls from several threads at once are serialised.
  void parallel_for(std::int64_t n, const std::function<void(std::int64_t, std::int64_t)>& fn);

 private:
  void worker_loop(int index);
  void stop_workers();  // wakes every worker to leave, and joins them
  void keep_first_error(std::exception_ptr error);

  std::vector<std::thread> workers_;
  std::mutex call_mutex_;  // one parallel_for at a time
  // Decoder steps call the pool ~50 times each, a few hundred microseconds apart: waking
  // a sleeping thread costs ~90 us on these machines, so workers and caller spin a little
  // on these atomics before they sleep on the condition variables.
  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
  const std::function<void(std::int64_t, std::int64_t)>* job_ = nullptr;
  std::int64_t job_size_ = 0;
  std::atomic<std::uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<bool> stopping_{false};
  std::exception_ptr error_;  // the first exception of the current job
};

// The process-wide pool; its size is set by set_thread_count before first use
// (default: the number of cores).
ThreadPool& thread_pool();
void set_thread_count(int n_threads);
int thread_count();

// Runs fn over [0, n) on the shared pool, serially when n is below `min_parallel`.
void parallel_for(std::int64_t n, std::int64_t min_parallel, const std::function<void(std::int64_t, std::int64_t)>& fn);

// fn(i) for every i in [0, n), each thread of the shared pool taking the next i as it
// finishes one: for items whose result does not depend on which thread runs them, where
// the cores may run at different speeds (a virtual machine's core shared with another
// guest ran the matrix engine at a third of its sibling's rate).
void parallel_for_each(std::int64_t n, const std::function<void(std::int64_t)>& fn);

}  // namespace amanuensis::kernels::cpu

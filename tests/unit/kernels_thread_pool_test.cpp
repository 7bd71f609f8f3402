// The compute thread pool with several callers at once: a server with several models runs
// one compute thread per model (each model's own scheduler), and all of them call the one
// process-wide pool. Each call must see only its own chunks, complete, and its own errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <future>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "kernels/cpu/thread_pool.h"

namespace amanuensis::kernels::cpu {
namespace {

constexpr int kCallers = 4;
constexpr int kCallsEach = 300;
constexpr std::int64_t kItems = 777;  // not a multiple of the pool size: uneven chunks

// Runs `body` and waits for it; a pool that deadlocks its callers fails the test (abort,
// since hung threads cannot be joined) instead of hanging the run. The bound is for a
// deadlock, not a guess at the machine's speed.
void without_deadlock(const std::function<void()>& body) {
  std::packaged_task<void()> task(body);
  auto done = task.get_future();
  std::thread runner(std::move(task));
  if (done.wait_for(std::chrono::seconds(120)) != std::future_status::ready) {
    std::fprintf(stderr, "the thread pool's callers did not finish in 120 s: deadlock\n");
    std::abort();
  }
  runner.join();
  done.get();
}

// What caller `caller` writes at `i` in its call number `call`.
std::int64_t stamp(int caller, int call, std::int64_t i) { return (caller * 1000 + call) * 10000 + i; }

TEST(ThreadPool, CallersAtOnceEachGetTheirOwnCompleteLoop) {
  ThreadPool pool(4);
  std::atomic<int> wrong{0};
  without_deadlock([&] {
    std::vector<std::thread> callers;
    for (int caller = 0; caller < kCallers; ++caller) {
      callers.emplace_back([&, caller] {
        std::vector<std::int64_t> out(kItems);
        for (int call = 0; call < kCallsEach; ++call) {
          std::fill(out.begin(), out.end(), -1);
          pool.parallel_for(kItems, [&](std::int64_t begin, std::int64_t end) {
            for (auto i = begin; i < end; ++i) out[static_cast<std::size_t>(i)] = stamp(caller, call, i);
          });
          // parallel_for has returned: every item is written, by this call, for this caller
          for (std::int64_t i = 0; i < kItems; ++i)
            if (out[static_cast<std::size_t>(i)] != stamp(caller, call, i)) ++wrong;
        }
      });
    }
    for (auto& t : callers) t.join();
  });
  EXPECT_EQ(wrong.load(), 0);
}

TEST(ThreadPool, AChunkErrorGoesToItsOwnCallerOnly) {
  ThreadPool pool(4);
  std::atomic<int> thrown_to_quiet{0}, missed_errors{0};
  without_deadlock([&] {
    std::thread noisy([&] {
      for (int call = 0; call < kCallsEach; ++call) {
        try {
          pool.parallel_for(kItems, [&](std::int64_t begin, std::int64_t) {
            if (begin > 0) throw std::runtime_error("noisy");  // a chunk on a pool thread fails
          });
          ++missed_errors;
        } catch (const std::runtime_error&) {
        }
      }
    });
    std::thread quiet([&] {
      for (int call = 0; call < kCallsEach; ++call) {
        try {
          pool.parallel_for(kItems, [](std::int64_t, std::int64_t) {});
        } catch (...) {
          ++thrown_to_quiet;
        }
      }
    });
    noisy.join();
    quiet.join();
  });
  EXPECT_EQ(missed_errors.load(), 0);
  EXPECT_EQ(thrown_to_quiet.load(), 0);
}

}  // namespace
}  // namespace amanuensis::kernels::cpu

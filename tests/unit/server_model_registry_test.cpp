// The server's model registry in process, with a stand-in loader and scheduler (no model
// files, no HTTP): which name means which model, lazy loading, requests waiting for a load,
// idle unloading, least-recently-used eviction, the capacity limit, failed loads, shutdown.
// Waits poll with a generous bound; nothing asserts how long anything took.
#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "common/error.h"
#include "server/model_registry.h"
#include "server_process.h"

namespace amanuensis::server {

void PrintTo(ModelState state, std::ostream* os) { *os << state_name(state); }

namespace {

using testing::eventually;

// Takes no jobs (the registry never submits any); remembers being shut down.
class StandInScheduler final : public pipeline::TranscriptionScheduler {
 public:
  std::future<pipeline::JobResult> submit(pipeline::Job) override { throw InternalError("not used"); }
  pipeline::SchedulerStats stats() const override { return {}; }
  void shutdown() override { shut_down = true; }
  std::atomic<bool> shut_down{false};
};

// The loader: counts loads per id, fails the ids in `failing`, and holds loads back while
// `hold` is set.
class StandInLoader {
 public:
  ModelLoader loader() {
    return [this](const ModelSpec& spec) {
      std::unique_lock lock(mutex_);
      released_.wait(lock, [&] { return !hold_; });
      ++loads_[spec.id];
      if (failing_.count(spec.id)) throw Error("bad file for " + spec.id);
      auto scheduler = std::make_shared<StandInScheduler>();
      schedulers_[spec.id] = scheduler;
      return LoadedModel{nullptr, scheduler, {}};
    };
  }
  void hold(bool on) {
    {
      std::lock_guard lock(mutex_);
      hold_ = on;
    }
    released_.notify_all();
  }
  void fail(const std::string& id, bool on) {
    std::lock_guard lock(mutex_);
    if (on) {
      failing_.insert(id);
    } else {
      failing_.erase(id);
    }
  }
  int loads(const std::string& id) {
    std::lock_guard lock(mutex_);
    return loads_[id];
  }
  bool shut_down(const std::string& id) {
    std::lock_guard lock(mutex_);
    return schedulers_.count(id) && schedulers_[id]->shut_down;
  }

 private:
  std::mutex mutex_;
  std::condition_variable released_;
  bool hold_ = false;
  std::set<std::string> failing_;
  std::map<std::string, int> loads_;
  std::map<std::string, std::shared_ptr<StandInScheduler>> schedulers_;
};

ModelRegistry::Options options(StandInLoader& loader, const std::vector<std::string>& ids, double idle = 0.0,
                               std::size_t max_loaded = 0) {
  ModelRegistry::Options o;
  for (const auto& id : ids) o.models.push_back({id, "/models/" + id + ".bin", nullptr});
  o.loader = loader.loader();
  o.idle_unload_seconds = idle;
  o.max_loaded = max_loaded;
  return o;
}

struct Answer {
  std::optional<ModelLease> lease;
  std::exception_ptr error;
};

// A request for model `index`, as the server makes it: at once, or once loaded.
struct Request {
  Request(ModelRegistry& registry, std::size_t index) {
    auto promise = std::make_shared<std::promise<Answer>>();
    answer = promise->get_future();
    auto lease = registry.acquire(index, [promise](std::optional<ModelLease> l, std::exception_ptr e) {
      promise->set_value({std::move(l), e});
    });
    if (lease) {
      immediate = true;
      promise->set_value({std::move(lease), nullptr});
    }
  }
  // The answer, waiting (bounded) for a load.
  Answer get() {
    if (answer.wait_for(std::chrono::seconds(60)) != std::future_status::ready) {
      ADD_FAILURE() << "no answer in 60 s";
      return {};
    }
    return answer.get();
  }
  bool immediate = false;
  std::future<Answer> answer;
};

ModelLease lease_of(ModelRegistry& registry, std::size_t index) {
  auto a = Request(registry, index).get();
  if (a.error) std::rethrow_exception(a.error);
  if (!a.lease) throw InternalError("neither a lease nor an error");
  return std::move(*a.lease);
}

ModelState state(const ModelRegistry& registry, std::size_t index) { return registry.status()[index].state; }

TEST(ModelRegistry, IdsNameTheirModelAndTheAliasTheFirst) {
  StandInLoader loader;
  ModelRegistry registry(options(loader, {"a", "b", "c"}));
  EXPECT_EQ(registry.find("whisper-1"), 0u);
  EXPECT_EQ(registry.find("a"), 0u);
  EXPECT_EQ(registry.find("b"), 1u);
  EXPECT_EQ(registry.find("c"), 2u);
  EXPECT_FALSE(registry.find("d").has_value());
  EXPECT_FALSE(registry.find("").has_value());
  EXPECT_EQ(lease_of(registry, *registry.find("whisper-1")).id(), "a");
}

TEST(ModelRegistry, DuplicateIdsAreAnErrorNamingThem) {
  StandInLoader loader;
  auto o = options(loader, {"a", "b", "a"});
  try {
    ModelRegistry registry(std::move(o));
    FAIL() << "duplicate ids accepted";
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("'a'"), std::string::npos) << message;
    EXPECT_NE(message.find("/models/a.bin"), std::string::npos) << message;
    EXPECT_EQ(message.find("'b'"), std::string::npos) << message;
  }
  EXPECT_THROW(ModelRegistry{options(loader, {"a", "whisper-1"})}, Error);  // the alias means the first
  EXPECT_NO_THROW(ModelRegistry{options(loader, {"whisper-1", "b"})});
  EXPECT_THROW(ModelRegistry{options(loader, {})}, Error);
}

TEST(ModelRegistry, ModelsLoadOnFirstUseOnly) {
  StandInLoader loader;
  ModelRegistry registry(options(loader, {"a", "b"}));
  EXPECT_EQ(state(registry, 0), ModelState::Unloaded);
  EXPECT_EQ(state(registry, 1), ModelState::Unloaded);
  EXPECT_FALSE(registry.first_loaded());
  Request first(registry, 1);
  EXPECT_FALSE(first.immediate);
  ASSERT_TRUE(first.get().lease.has_value());
  EXPECT_EQ(state(registry, 1), ModelState::Ready);
  EXPECT_EQ(state(registry, 0), ModelState::Unloaded);
  EXPECT_EQ(loader.loads("a"), 0);
  EXPECT_FALSE(registry.first_loaded()) << "only the first model ends the server's start-up";
  Request again(registry, 1);
  EXPECT_TRUE(again.immediate) << "a ready model is leased at once";
  EXPECT_EQ(loader.loads("b"), 1);
  (void)lease_of(registry, 0);
  EXPECT_TRUE(registry.first_loaded());
}

TEST(ModelRegistry, RequestsWaitingForALoadShareIt) {
  StandInLoader loader;
  ModelRegistry registry(options(loader, {"a"}));
  loader.hold(true);
  std::vector<std::unique_ptr<Request>> waiting;
  for (int i = 0; i < 3; ++i) waiting.push_back(std::make_unique<Request>(registry, 0));
  EXPECT_EQ(state(registry, 0), ModelState::Loading);
  loader.hold(false);
  std::vector<Answer> answers;
  for (auto& r : waiting) answers.push_back(r->get());
  for (const auto& a : answers) EXPECT_TRUE(a.lease.has_value());
  EXPECT_EQ(loader.loads("a"), 1);
  EXPECT_EQ(registry.status()[0].requests, 3u);
  answers.clear();
  EXPECT_EQ(registry.status()[0].requests, 0u);
}

TEST(ModelRegistry, IdleModelsUnloadButLeasedOnesStay) {
  StandInLoader loader;
  ModelRegistry registry(options(loader, {"a", "b"}, /*idle=*/0.05));
  auto held = lease_of(registry, 0);  // a's request runs on...
  (void)lease_of(registry, 1);        // ...while b's ends: b's idle time starts after a's was leased
  ASSERT_TRUE(eventually([&] { return state(registry, 1) == ModelState::Unloaded; }));
  EXPECT_TRUE(loader.shut_down("b"));
  // Had the lease not counted, a (idle for longer than b) would have gone first.
  EXPECT_EQ(state(registry, 0), ModelState::Ready);
  EXPECT_FALSE(loader.shut_down("a"));
  held = lease_of(registry, 1);  // the lease on a ends; b loads again
  EXPECT_EQ(loader.loads("b"), 2);
  ASSERT_TRUE(eventually([&] { return state(registry, 0) == ModelState::Unloaded; }));
  EXPECT_EQ(lease_of(registry, 0).id(), "a");  // and a loads again when asked for
  EXPECT_EQ(loader.loads("a"), 2);
}

TEST(ModelRegistry, EvictsTheLeastRecentlyUsedIdleModel) {
  StandInLoader loader;
  ModelRegistry registry(options(loader, {"a", "b", "c"}, 0.0, /*max_loaded=*/2));
  (void)lease_of(registry, 0);
  (void)lease_of(registry, 1);
  (void)lease_of(registry, 0);  // a used again: b is now the least recently used
  EXPECT_EQ(registry.loaded_count(), 2u);
  (void)lease_of(registry, 2);
  EXPECT_EQ(state(registry, 0), ModelState::Ready);
  EXPECT_EQ(state(registry, 1), ModelState::Unloaded);
  EXPECT_EQ(state(registry, 2), ModelState::Ready);
  EXPECT_EQ(registry.loaded_count(), 2u);
  EXPECT_TRUE(eventually([&] { return loader.shut_down("b"); }));
}

TEST(ModelRegistry, NoRoomWhenEveryLoadedModelHasRequests) {
  StandInLoader loader;
  ModelRegistry registry(options(loader, {"a", "b"}, 0.0, /*max_loaded=*/1));
  std::optional<ModelLease> busy = lease_of(registry, 0);
  try {
    Request refused(registry, 1);
    FAIL() << "b was loaded while a, the only model allowed, had a request";
  } catch (const ModelCapacity& e) {
    EXPECT_NE(std::string(e.what()).find("'b'"), std::string::npos) << e.what();
    EXPECT_GE(e.retry_after_seconds, 1.0);
  }
  EXPECT_EQ(state(registry, 0), ModelState::Ready);
  EXPECT_EQ(state(registry, 1), ModelState::Unloaded);
  busy.reset();
  EXPECT_EQ(lease_of(registry, 1).id(), "b");  // a is idle now: it makes room
  EXPECT_EQ(state(registry, 0), ModelState::Unloaded);
  EXPECT_TRUE(eventually([&] { return loader.shut_down("a"); }));
}

TEST(ModelRegistry, AFailedLoadAnswersItsRequestsAndIsRetried) {
  StandInLoader loader;
  ModelRegistry registry(options(loader, {"a", "b"}));
  loader.fail("b", true);
  const auto failed = Request(registry, 1).get();
  EXPECT_FALSE(failed.lease.has_value());
  ASSERT_TRUE(failed.error);
  try {
    std::rethrow_exception(failed.error);
  } catch (const ModelLoadFailed& e) {
    EXPECT_NE(std::string(e.what()).find("'b'"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("bad file for b"), std::string::npos) << e.what();
  }
  EXPECT_EQ(state(registry, 1), ModelState::Failed);
  EXPECT_EQ(registry.status()[1].error, "bad file for b");
  EXPECT_EQ(lease_of(registry, 0).id(), "a");  // the other model is unaffected
  loader.fail("b", false);
  EXPECT_EQ(lease_of(registry, 1).id(), "b");  // the next request tries again
  EXPECT_EQ(loader.loads("b"), 2);
  EXPECT_EQ(state(registry, 1), ModelState::Ready);
}

TEST(ModelRegistry, ShutdownAnswersWaitingRequestsAndRefusesNewOnes) {
  StandInLoader loader;
  ModelRegistry registry(options(loader, {"a", "b"}));
  auto ready = lease_of(registry, 0);
  loader.hold(true);
  Request waiting(registry, 1);
  std::thread stopper([&] { registry.shutdown(); });
  const auto answer = waiting.get();  // before the load in progress ends
  EXPECT_FALSE(answer.lease.has_value());
  EXPECT_THROW(std::rethrow_exception(answer.error), pipeline::ShuttingDown);
  loader.hold(false);
  stopper.join();
  EXPECT_TRUE(loader.shut_down("a"));
  EXPECT_THROW((Request{registry, 0}), pipeline::ShuttingDown);
}

}  // namespace
}  // namespace amanuensis::server

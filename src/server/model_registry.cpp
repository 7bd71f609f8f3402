#include "server/model_registry.h"

#include <algorithm>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <map>
#include <utility>

#include "common/error.h"

namespace amanuensis::server {

using Clock = std::chrono::steady_clock;

const char* state_name(ModelState state) {
  switch (state) {
    case ModelState::Unloaded: return "unloaded";
    case ModelState::Loading: return "loading";
    case ModelState::Ready: return "ready";
    case ModelState::Failed: return "failed";
  }
  return "unknown";
}

namespace {

struct Entry {
  ModelSpec spec;
  std::uintmax_t size_bytes = 0;
  ModelState state = ModelState::Unloaded;
  std::optional<LoadedModel> loaded;  // while Ready
  std::optional<ModelInfo> info;
  std::string error;
  std::size_t leases = 0;
  std::vector<ModelRegistry::OnLoaded> waiters;  // while Loading
  Clock::time_point last_used{};
};

std::string message_of(const std::exception_ptr& error) {
  try {
    std::rethrow_exception(error);
  } catch (const std::exception& e) {
    return e.what();
  } catch (...) {
    return "unknown error";
  }
}

std::vector<std::string> checked_ids(const std::vector<ModelSpec>& models) {
  if (models.empty()) throw Error("the server needs at least one model");
  std::map<std::string, std::vector<std::string>> files_by_id;
  std::vector<std::string> ids;
  for (std::size_t i = 0; i < models.size(); ++i) {
    const auto& m = models[i];
    if (m.id.empty()) throw Error("the model " + m.path.string() + " has an empty id");
    if (m.id == ModelRegistry::kAlias && i != 0)
      throw Error("only the first model may have the id '" + m.id + "' (it means the first model)");
    files_by_id[m.id].push_back(m.path.string());
    ids.push_back(m.id);
  }
  std::string duplicates;
  for (const auto& [id, files] : files_by_id) {
    if (files.size() < 2) continue;
    duplicates += (duplicates.empty() ? "" : "; ") + std::string("'") + id + "' (";
    for (std::size_t i = 0; i < files.size(); ++i) duplicates += (i ? ", " : "") + files[i];
    duplicates += ")";
  }
  if (!duplicates.empty())
    throw Error("several models have the same id: " + duplicates +
                "; a model's id is its catalog name or file name, so rename or move one of the files");
  return ids;
}

}  // namespace

// The bookkeeping shared by the registry, its loader thread and the leases.
struct ModelLease::Core {
  std::mutex mutex;
  std::condition_variable wake;  // the loader thread: work queued, a lease released, stopping
  std::vector<Entry> entries;    // fixed size: one per model
  std::deque<std::size_t> to_load;
  std::vector<LoadedModel> to_unload;  // evicted or idle: shut down on the loader thread
  bool stopping = false;
  bool first_loaded = false;
};

ModelLease::ModelLease(std::shared_ptr<Core> core, std::size_t index, const LoadedModel& loaded)
    : core_(std::move(core)), index_(index), model_(loaded.model), scheduler_(loaded.scheduler) {}

ModelLease::ModelLease(ModelLease&& other) noexcept
    : core_(std::move(other.core_)),
      index_(other.index_),
      model_(std::move(other.model_)),
      scheduler_(std::move(other.scheduler_)) {}

ModelLease& ModelLease::operator=(ModelLease&& other) noexcept {
  if (this != &other) {
    release();
    core_ = std::move(other.core_);
    index_ = other.index_;
    model_ = std::move(other.model_);
    scheduler_ = std::move(other.scheduler_);
  }
  return *this;
}

ModelLease::~ModelLease() { release(); }

const std::string& ModelLease::id() const { return core_->entries[index_].spec.id; }

void ModelLease::release() {
  if (!core_) return;
  {
    std::lock_guard lock(core_->mutex);
    auto& entry = core_->entries[index_];
    if (entry.leases > 0 && --entry.leases == 0) entry.last_used = Clock::now();
  }
  core_->wake.notify_all();  // its idle time starts: the loader thread recomputes its deadline
  core_.reset();
}

pipeline::SchedulerStats total_stats(const std::vector<ModelStatus>& models) {
  pipeline::SchedulerStats total;
  for (const auto& m : models) {
    total.queued_jobs += m.stats.queued_jobs;
    total.queued_audio_seconds += m.stats.queued_audio_seconds;
    total.active_jobs += m.stats.active_jobs;
    total.running_audio_seconds += m.stats.running_audio_seconds;
    total.slots += m.stats.slots;
    total.shutting_down = total.shutting_down || m.stats.shutting_down;
    total.kv_reserved_bytes += m.stats.kv_reserved_bytes;
    total.kv_used_bytes += m.stats.kv_used_bytes;
    total.kv_audio_bytes += m.stats.kv_audio_bytes;
    total.kv_limit_bytes += m.stats.kv_limit_bytes;
    total.kv_admitted_bytes += m.stats.kv_admitted_bytes;
    total.jobs_waiting_for_memory += m.stats.jobs_waiting_for_memory;
    for (const auto& [size, n] : m.stats.batches.encoder_windows) total.batches.encoder_windows[size] += n;
    for (const auto& [size, n] : m.stats.batches.decoder_sequences) total.batches.decoder_sequences[size] += n;
  }
  return total;
}

ModelRegistry::ModelRegistry(Options options)
    : core_(std::make_shared<ModelLease::Core>()),
      ids_(checked_ids(options.models)),
      loader_(std::move(options.loader)),
      idle_unload_seconds_(options.idle_unload_seconds),
      max_loaded_(options.max_loaded == 0 ? options.models.size() : std::min(options.max_loaded, options.models.size())),
      log_(std::move(options.log)) {
  if (!loader_) throw InternalError("ModelRegistry without a loader");
  if (!(idle_unload_seconds_ >= 0.0)) throw Error("the idle time before a model unloads must be 0 or more seconds");
  for (auto& spec : options.models) {
    Entry entry;
    std::error_code ec;
    if (!spec.path.empty()) entry.size_bytes = std::filesystem::file_size(spec.path, ec);
    if (ec) entry.size_bytes = 0;  // a missing file is reported when it is loaded
    entry.spec = std::move(spec);
    core_->entries.push_back(std::move(entry));
  }
  loader_thread_ = std::thread([this] { loader_loop(); });
}

ModelRegistry::~ModelRegistry() { shutdown(); }

std::optional<std::size_t> ModelRegistry::find(std::string_view name) const {
  if (name == kAlias) return 0;
  for (std::size_t i = 0; i < ids_.size(); ++i)
    if (ids_[i] == name) return i;
  return std::nullopt;
}

std::optional<ModelLease> ModelRegistry::acquire(std::size_t index, OnLoaded on_loaded) {
  if (index >= ids_.size()) throw InternalError("no model number " + std::to_string(index));
  Lock lock(core_->mutex);
  if (core_->stopping) throw pipeline::ShuttingDown();
  auto& entry = core_->entries[index];
  entry.last_used = Clock::now();
  if (entry.state == ModelState::Ready) {
    ++entry.leases;
    return ModelLease(core_, index, *entry.loaded);
  }
  if (entry.state != ModelState::Loading) {  // unloaded, or its last load failed: (re)load it
    make_room(index, lock);
    entry.state = ModelState::Loading;
    core_->to_load.push_back(index);
  }
  entry.waiters.push_back(std::move(on_loaded));
  lock.unlock();
  core_->wake.notify_all();
  return std::nullopt;
}

// Called before `index` starts loading: evicts the least recently used idle ready model
// when max_loaded models are loaded or loading already.
void ModelRegistry::make_room(std::size_t index, Lock& lock) {
  auto& entries = core_->entries;
  const auto loaded = static_cast<std::size_t>(std::count_if(entries.begin(), entries.end(), [](const Entry& e) {
    return e.state == ModelState::Ready || e.state == ModelState::Loading;
  }));
  if (loaded < max_loaded_) return;
  std::optional<std::size_t> victim;
  for (std::size_t i = 0; i < entries.size(); ++i) {
    const auto& e = entries[i];
    if (e.state != ModelState::Ready || e.leases != 0) continue;
    if (!victim || e.last_used < entries[*victim].last_used) victim = i;
  }
  if (!victim) {
    throw ModelCapacity("cannot load the model '" + ids_[index] + "' now: " + std::to_string(max_loaded_) +
                            " model(s) are loaded (--max-loaded-models) and all have requests in progress; retry later",
                        1.0);
  }
  unload(*victim, "to make room for '" + ids_[index] + "'", lock);
}

// Moves a ready model's scheduler and weights to the loader thread, which shuts them down.
void ModelRegistry::unload(std::size_t index, const std::string& why, Lock&) {
  auto& entry = core_->entries[index];
  core_->to_unload.push_back(std::move(*entry.loaded));
  entry.loaded.reset();
  entry.state = ModelState::Unloaded;
  log("unloading the model '" + entry.spec.id + "' " + why);
}

bool ModelRegistry::first_loaded() const {
  std::lock_guard lock(core_->mutex);
  return core_->first_loaded;
}

std::size_t ModelRegistry::loaded_count() const {
  std::lock_guard lock(core_->mutex);
  return static_cast<std::size_t>(std::count_if(core_->entries.begin(), core_->entries.end(), [](const Entry& e) {
    return e.state == ModelState::Ready || e.state == ModelState::Loading;
  }));
}

std::vector<ModelStatus> ModelRegistry::status() const {
  std::vector<ModelStatus> out;
  std::vector<std::shared_ptr<pipeline::TranscriptionScheduler>> schedulers;
  {
    std::lock_guard lock(core_->mutex);
    for (const auto& e : core_->entries) {
      out.push_back({e.spec.id, e.state, e.size_bytes, e.leases, e.info, e.error, {}});
      schedulers.push_back(e.loaded ? e.loaded->scheduler : nullptr);
    }
  }
  // outside the registry's lock: a scheduler takes its own
  for (std::size_t i = 0; i < out.size(); ++i)
    if (schedulers[i]) out[i].stats = schedulers[i]->stats();
  return out;
}

void ModelRegistry::loader_loop() {
  Lock lock(core_->mutex);
  for (;;) {
    if (!core_->to_unload.empty()) {  // before any load: the memory goes first
      auto models = std::exchange(core_->to_unload, {});
      lock.unlock();
      dispose(std::move(models));
      lock.lock();
      continue;
    }
    if (core_->stopping) return;
    if (!core_->to_load.empty()) {
      const auto index = core_->to_load.front();
      core_->to_load.pop_front();
      lock.unlock();
      load(index);
      lock.lock();
      continue;
    }
    const auto next_idle_check = unload_idle(lock);
    if (!core_->to_unload.empty()) continue;
    if (next_idle_check) {
      core_->wake.wait_until(lock, *next_idle_check);
    } else {
      core_->wake.wait(lock);
    }
  }
}

// Unloads the ready models without requests for idle_unload_seconds; returns when the next
// one may become due, if any.
std::optional<Clock::time_point> ModelRegistry::unload_idle(Lock& lock) {
  if (idle_unload_seconds_ <= 0.0) return std::nullopt;
  const auto idle = std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(idle_unload_seconds_));
  const auto now = Clock::now();
  std::optional<Clock::time_point> next;
  for (std::size_t i = 0; i < core_->entries.size(); ++i) {
    const auto& e = core_->entries[i];
    if (e.state != ModelState::Ready || e.leases != 0) continue;
    const auto due = e.last_used + idle;
    if (due <= now) {
      char seconds[32];
      std::snprintf(seconds, sizeof seconds, "%g", idle_unload_seconds_);
      unload(i, std::string("(no request for ") + seconds + " s)", lock);
    } else if (!next || due < *next) {
      next = due;
    }
  }
  return next;
}

// Loads one model on the loader thread, then answers the requests that waited for it.
void ModelRegistry::load(std::size_t index) {
  const auto& spec = core_->entries[index].spec;  // immutable after construction
  const auto start = Clock::now();
  LoadedModel loaded;
  std::exception_ptr error;
  try {
    loaded = loader_(spec);
    if (!loaded.scheduler) throw InternalError("the model loader returned no scheduler");
  } catch (...) {
    error = std::current_exception();
  }
  std::vector<OnLoaded> waiters;
  std::vector<ModelLease> leases;
  {
    Lock lock(core_->mutex);
    auto& entry = core_->entries[index];
    waiters = std::exchange(entry.waiters, {});
    if (error) {
      entry.state = ModelState::Failed;
      entry.error = message_of(error);
      error = std::make_exception_ptr(ModelLoadFailed("cannot load the model '" + spec.id + "': " + entry.error));
    } else if (core_->stopping) {
      core_->to_unload.push_back(std::move(loaded));
      entry.state = ModelState::Unloaded;
      error = std::make_exception_ptr(pipeline::ShuttingDown());
    } else {
      entry.state = ModelState::Ready;
      entry.error.clear();
      entry.info = loaded.info;
      entry.loaded = std::move(loaded);
      entry.last_used = Clock::now();
      if (index == 0) core_->first_loaded = true;
      entry.leases += waiters.size();  // each waiter's lease, counted before anyone can evict it
      for (std::size_t i = 0; i < waiters.size(); ++i) leases.push_back(ModelLease(core_, index, *entry.loaded));
    }
  }
  if (error) {
    log(message_of(error));
  } else {
    char seconds[32];
    std::snprintf(seconds, sizeof seconds, "%.2f", std::chrono::duration<double>(Clock::now() - start).count());
    log("loaded the model '" + spec.id + "' (" + spec.path.string() + ") in " + seconds + " s");
  }
  for (std::size_t i = 0; i < waiters.size(); ++i) {
    try {
      if (error) {
        waiters[i](std::nullopt, error);
      } else {
        waiters[i](std::move(leases[i]), nullptr);
      }
    } catch (...) {  // a waiter's failure is its own: the others still get their answer
    }
  }
}

void ModelRegistry::dispose(std::vector<LoadedModel> models) {
  for (auto& m : models) {
    if (m.scheduler) m.scheduler->shutdown();  // no jobs: it had no lease
    m = {};
  }
}

void ModelRegistry::shutdown() {
  std::lock_guard once(shutdown_mutex_);
  std::vector<OnLoaded> waiters;
  {
    std::lock_guard lock(core_->mutex);
    core_->stopping = true;
    core_->to_load.clear();
    for (auto& e : core_->entries) {
      for (auto& w : e.waiters) waiters.push_back(std::move(w));
      e.waiters.clear();
      if (e.state == ModelState::Loading && !e.loaded) e.state = ModelState::Unloaded;
    }
  }
  core_->wake.notify_all();
  const auto stopping = std::make_exception_ptr(pipeline::ShuttingDown());
  for (auto& w : waiters) {
    try {
      w(std::nullopt, stopping);
    } catch (...) {
    }
  }
  if (loader_thread_.joinable()) loader_thread_.join();  // after a load in progress
  // Every accepted job finishes (leased models included), then everything unloads.
  std::vector<LoadedModel> models;
  {
    std::lock_guard lock(core_->mutex);
    for (auto& e : core_->entries) {
      if (e.loaded) models.push_back(*e.loaded);  // a copy: leases may still read the entry
    }
    for (auto& m : core_->to_unload) models.push_back(std::move(m));
    core_->to_unload.clear();
  }
  for (auto& m : models)
    if (m.scheduler) m.scheduler->shutdown();
}

void ModelRegistry::log(const std::string& message) const {
  if (log_) log_(message);
}

}  // namespace amanuensis::server

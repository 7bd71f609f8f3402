// server: the models one server serves (`serve --model a --model b`). The registry owns,
// for each model, its id, file and state (unloaded, loading, ready, failed) and, while it is
// loaded, its pipeline::Model with its own TranscriptionScheduler (each model batches its
// own requests). It decides when models load (on the first request that names them, on the
// registry's own loader thread, never a network thread), unload (after idle_unload_seconds
// with no request) and make room (the least recently used idle model goes when max_loaded
// are loaded). A request holds a ModelLease from the moment it picks a model until its job
// is done: a leased model is never unloaded. It does not know HTTP: the server maps its
// exceptions to status codes.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "pipeline/scheduler.h"
#include "pipeline/transcriber.h"

namespace amanuensis::server {

enum class ModelState { Unloaded, Loading, Ready, Failed };
const char* state_name(ModelState state);  // "unloaded", "loading", "ready", "failed"

// One model to serve.
struct ModelSpec {
  std::string id;                                // what a request's `model` field names
  std::filesystem::path path;                    // the file it is loaded from...
  std::shared_ptr<const pipeline::Model> model;  // ...unless it is already loaded
};

// What a loaded model says about itself; kept after it unloads, for /health.
struct ModelInfo {
  int n_vocab = 0;
  std::string backend;
  std::string kernels;  // Backend::kernels()
  std::string size;
  bool multilingual = false;
};

struct LoadedModel {
  std::shared_ptr<const pipeline::Model> model;
  std::shared_ptr<pipeline::TranscriptionScheduler> scheduler;
  ModelInfo info;
};

// Makes a model ready to serve (reads it, starts its scheduler); runs on the loader thread
// and throws when the model cannot be loaded.
using ModelLoader = std::function<LoadedModel(const ModelSpec&)>;

// Thrown by acquire() when the model is not loaded, max_loaded models are, and every one
// of them has requests: no room can be made now (the server answers 503).
class ModelCapacity : public std::runtime_error {
 public:
  ModelCapacity(const std::string& message, double retry_after_seconds)
      : std::runtime_error(message), retry_after_seconds(retry_after_seconds) {}
  double retry_after_seconds;
};

// Given to the requests that waited for a model whose load failed; names the model.
class ModelLoadFailed : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A snapshot of one model, for /health, /v1/models and /metrics.
struct ModelStatus {
  std::string id;
  ModelState state = ModelState::Unloaded;
  std::uintmax_t size_bytes = 0;     // of the file (0 for a model given already loaded)
  std::size_t requests = 0;          // leases held: requests queued or running on it
  std::optional<ModelInfo> info;     // once it has been loaded
  std::string error;                 // why its last load failed (state Failed)
  pipeline::SchedulerStats stats;    // zero unless loaded
};

// The sum of the models' scheduler statistics (slots, queues, batch counts).
pipeline::SchedulerStats total_stats(const std::vector<ModelStatus>& models);

class ModelRegistry;

// A request's hold on a ready model: while one exists, the model stays loaded. Move-only;
// releasing the last one starts the model's idle time.
class ModelLease {
 public:
  ModelLease(ModelLease&& other) noexcept;
  ModelLease& operator=(ModelLease&& other) noexcept;
  ModelLease(const ModelLease&) = delete;
  ModelLease& operator=(const ModelLease&) = delete;
  ~ModelLease();

  const std::string& id() const;
  pipeline::TranscriptionScheduler& scheduler() const { return *scheduler_; }
  const std::shared_ptr<const pipeline::Model>& model() const { return model_; }

 private:
  friend class ModelRegistry;
  struct Core;
  // Takes over a lease already counted under the registry's lock.
  ModelLease(std::shared_ptr<Core> core, std::size_t index, const LoadedModel& loaded);
  void release();

  std::shared_ptr<Core> core_;  // keeps the bookkeeping alive beyond the registry
  std::size_t index_ = 0;
  std::shared_ptr<const pipeline::Model> model_;
  std::shared_ptr<pipeline::TranscriptionScheduler> scheduler_;
};

class ModelRegistry {
 public:
  struct Options {
    std::vector<ModelSpec> models;     // at least one, ids distinct; the first is the alias's
    ModelLoader loader;
    double idle_unload_seconds = 0.0;  // unload a model this long without requests; 0: never
    std::size_t max_loaded = 0;        // models loaded (or loading) at once; 0: all of them
    std::function<void(const std::string&)> log;  // loads, unloads, failures (optional)
  };

  // The name that means the first model, as OpenAI's clients send it.
  static constexpr std::string_view kAlias = "whisper-1";

  // Checks the models (an Error names duplicate ids) and starts the loader thread; loads
  // nothing yet.
  explicit ModelRegistry(Options options);
  ~ModelRegistry();
  ModelRegistry(const ModelRegistry&) = delete;
  ModelRegistry& operator=(const ModelRegistry&) = delete;

  // The index of the model that `name` means: its id, or the alias for the first one.
  std::optional<std::size_t> find(std::string_view name) const;
  const std::vector<std::string>& ids() const { return ids_; }

  // Called once with a lease, or with the reason there is none (ModelLoadFailed,
  // pipeline::ShuttingDown), from the loader thread: it must not block.
  using OnLoaded = std::function<void(std::optional<ModelLease>, std::exception_ptr)>;

  // The model at `index` for one request. Ready: a lease, at once. Otherwise nullopt, and
  // on_loaded gets the lease once the model is loaded: its load is started when it was not
  // loading yet, after evicting the least recently used idle model if max_loaded are
  // loaded. Throws ModelCapacity when no model can be evicted, pipeline::ShuttingDown after
  // shutdown().
  std::optional<ModelLease> acquire(std::size_t index, OnLoaded on_loaded);

  // True once the first model has been ready (the server's start-up is over).
  bool first_loaded() const;
  std::vector<ModelStatus> status() const;
  std::size_t loaded_count() const;  // ready or loading

  // Takes no new request, answers the waiting ones with ShuttingDown, waits for a load in
  // progress, finishes every accepted job and unloads every model. Idempotent.
  void shutdown();

 private:
  using Clock = std::chrono::steady_clock;
  using Lock = std::unique_lock<std::mutex>;

  void loader_loop();
  void load(std::size_t index);
  void make_room(std::size_t index, Lock& lock);
  std::optional<Clock::time_point> unload_idle(Lock& lock);
  void unload(std::size_t index, const std::string& why, Lock& lock);
  void dispose(std::vector<LoadedModel> models);
  void log(const std::string& message) const;

  const std::shared_ptr<ModelLease::Core> core_;
  const std::vector<std::string> ids_;
  const ModelLoader loader_;
  const double idle_unload_seconds_;
  const std::size_t max_loaded_;
  const std::function<void(const std::string&)> log_;
  std::mutex shutdown_mutex_;
  std::thread loader_thread_;
};

}  // namespace amanuensis::server

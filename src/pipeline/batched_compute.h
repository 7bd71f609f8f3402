// pipeline: the compute thread shared by every running transcription (the server's
// continuous batching). Each transcription holds a Client, an nn::Runner whose calls are
// queued here: the single-token decoder steps of all clients are merged into one
// Decoder::step (a sequence joins or leaves between steps; a step runs once every client
// that stepped last time has its next one queued or has stopped stepping: no timer
// decides who is in it), and exclusive work (encoder
// windows, prompt passes) runs in turns between steps, so a short request's windows
// interleave with a long one's. Doing all network work on one thread also keeps the
// kernels' thread pool to one caller per BatchedCompute (a server with several models has
// one each; the pool serialises its callers).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <map>
#include <mutex>
#include <span>
#include <stdexcept>
#include <thread>
#include <vector>

#include "common/error.h"
#include "nn/runner.h"

namespace amanuensis::pipeline {

// Thrown into a transcription whose client asked to stop (gone, or past its deadline).
class Cancelled : public Error {
 public:
  Cancelled() : Error("the transcription was cancelled") {}
};

struct BatchedComputeOptions {
  // Exclusive work items (encoder windows, prompt passes) run per turn, at most: the
  // waiting windows of several requests are encoded as one stack (Encoder::
  // encode_stacked: one product over all their rows, which an accelerator needs; on a
  // CPU a window's 1500 rows fill the units already). While both kinds wait, turns go to
  // whichever kind has had less
  // compute time, so decoding keeps half the machine while new windows are encoded, and
  // the sequences of a batch stay together instead of finishing one by one behind them.
  int max_exclusive_per_turn = 4;
};

// Counts of batch sizes: size -> how many batches had that size.
struct BatchCounts {
  std::map<int, std::uint64_t> encoder_windows;   // windows per stacked encoder pass
  std::map<int, std::uint64_t> decoder_sequences;  // sequences per decoder step
};

class BatchedCompute {
 public:
  explicit BatchedCompute(BatchedComputeOptions options = {});
  // Waits for the clients to go, then stops the compute thread.
  ~BatchedCompute();
  BatchedCompute(const BatchedCompute&) = delete;
  BatchedCompute& operator=(const BatchedCompute&) = delete;

  class Client;
  BatchCounts counts() const;

 private:
  struct Pending;
  void compute_loop();
  bool steps_ready() const;
  void run_exclusive_turn(std::unique_lock<std::mutex>& lock);
  // Encodes the windows of a turn that share an encoder as one stack, adding the size of
  // each encoder pass that ran to `sizes`.
  static void encode_stack(std::span<Pending* const> stack, std::vector<int>& sizes);
  void run_steps(std::unique_lock<std::mutex>& lock);
  void submit(Pending& pending, bool& client_stepping);
  void finish(std::span<Pending* const> calls);

  const BatchedComputeOptions options_;
  mutable std::mutex mutex_;
  std::condition_variable compute_wake_;
  std::condition_variable done_;
  std::deque<Pending*> exclusive_;
  std::vector<Pending*> steps_;
  int clients_ = 0;
  int steppers_ = 0;  // clients whose last call was a step: the next step expects them
  int waiting_ = 0;
  // compute seconds of each kind since both last had work waiting
  double exclusive_seconds_ = 0.0;
  double step_seconds_ = 0.0;
  bool stopping_ = false;
  BatchCounts counts_;
  std::thread thread_;
};

// One transcription's runner. Time spent in its calls (waiting included) is reported so
// that a request can say where its time went.
class BatchedCompute::Client final : public nn::Runner {
 public:
  // `cancelled` is polled before every call; true makes the call throw Cancelled.
  explicit Client(BatchedCompute& compute, std::function<bool()> cancelled = {});
  ~Client() override;
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  void run(nn::Work kind, const std::function<void()>& work) override;
  void step(const nn::Decoder& decoder, std::span<const nn::SequenceStep> steps) override;
  void idle() override;
  std::shared_ptr<const nn::CrossAttentionCache> encode(const nn::Encoder& encoder, const nn::Decoder& decoder,
                                                        std::span<const float> mel) override;

  double encoder_seconds() const { return encoder_seconds_; }
  double decoder_seconds() const { return decoder_seconds_; }

 private:
  void check_cancelled() const;

  BatchedCompute& compute_;
  std::function<bool()> cancelled_;
  bool stepping_ = false;  // guarded by compute_.mutex_
  double encoder_seconds_ = 0.0;
  double decoder_seconds_ = 0.0;
};

}  // namespace amanuensis::pipeline

// nn: how the network calls of one transcription are executed. The CLI runs them directly
// on the calling thread; the server's scheduler runs the calls of many transcriptions on
// one compute thread, merging their decoder steps into one batched step (continuous
// batching) and queueing their encoder windows together.
#pragma once

#include <functional>
#include <memory>
#include <span>

#include "nn/whisper.h"

namespace amanuensis::nn {

// What a piece of exclusive work is, for scheduling and metrics.
enum class Work {
  Encode,   // an encoder window and its cross-attention keys/values
  Forward,  // a multi-token decoder pass: a prompt, language detection, word alignment
};

class Runner {
 public:
  virtual ~Runner() = default;
  // Runs `work` with the compute to itself; returns when it is done (its exceptions pass through).
  virtual void run(Work kind, const std::function<void()>& work) = 0;
  // Advances every sequence by one token (Decoder::step); the step may be shared with
  // other transcriptions' sequences. Each sequence's logits are the same either way.
  virtual void step(const Decoder& decoder, std::span<const SequenceStep> steps) = 0;
  // The caller's sequences are done for now (a window is decoded): the next steps need not
  // wait for it.
  virtual void idle() {}
  // Encodes one window (`mel`: [n_mels][3000]) and computes its cross-attention keys and
  // values, as exclusive Work::Encode. The server stacks the windows of transcriptions
  // that wait together into one encoder pass (Encoder::encode_stacked); the states of a
  // window are the same either way. The entry is shared: every sequence that decodes the
  // window reads it, and its bytes count in the decoder's pool while any holder keeps it.
  virtual std::shared_ptr<const CrossAttentionCache> encode(const Encoder& encoder, const Decoder& decoder,
                                                            std::span<const float> mel);
};

// Calls runner.idle() when a decode loop's scope ends, however it ends: a transcription
// whose loop throws (a cancelled request, non-finite logits) must not leave the batched
// steps of the others waiting for a next step that will not come.
class IdleOnExit {
 public:
  explicit IdleOnExit(Runner& runner) : runner_(runner) {}
  ~IdleOnExit() { runner_.idle(); }
  IdleOnExit(const IdleOnExit&) = delete;
  IdleOnExit& operator=(const IdleOnExit&) = delete;

 private:
  Runner& runner_;
};

// Runs everything at once on the calling thread.
Runner& direct_runner();

}  // namespace amanuensis::nn

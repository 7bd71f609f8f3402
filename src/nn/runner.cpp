#include "nn/runner.h"

namespace amanuensis::nn {
namespace {

class DirectRunner final : public Runner {
 public:
  void run(Work, const std::function<void()>& work) override { work(); }
  void step(const Decoder& decoder, std::span<const SequenceStep> steps) override { decoder.step(steps); }
};

}  // namespace

std::shared_ptr<const CrossAttentionCache> Runner::encode(const Encoder& encoder, const Decoder& decoder,
                                                          std::span<const float> mel) {
  auto cross = std::make_shared<CrossAttentionCache>();
  run(Work::Encode, [&] { *cross = decoder.cross_attention(encoder.encode(mel)); });
  return cross;
}

Runner& direct_runner() {
  static DirectRunner runner;
  return runner;
}

}  // namespace amanuensis::nn

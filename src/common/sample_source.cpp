#include "common/sample_source.h"

#include <algorithm>
#include <cstdint>

namespace amanuensis {
namespace {
constexpr std::size_t kReadBlock = 1 << 16;
}

std::size_t SpanSource::read(std::span<float> out) {
  const std::size_t n = std::min(out.size(), samples_.size() - position_);
  std::copy_n(samples_.begin() + static_cast<std::ptrdiff_t>(position_), n, out.begin());
  position_ += n;
  return n;
}

RangeSource::RangeSource(SampleSource& inner, std::size_t first, std::size_t count)
    : inner_(inner), first_(first), count_(count) {}

void RangeSource::skip_to_first() {
  std::vector<float> scratch(std::min<std::size_t>(kReadBlock, std::max<std::size_t>(first_, 1)));
  std::size_t left = first_;
  while (left > 0) {
    const std::size_t n = inner_.read(std::span(scratch).first(std::min(left, scratch.size())));
    if (n == 0) break;
    left -= n;
  }
  skipped_ = true;
}

std::size_t RangeSource::read(std::span<float> out) {
  if (!skipped_) skip_to_first();
  const std::size_t wanted = std::min<std::size_t>(out.size(), count_ - position_);
  std::size_t got = 0;
  while (got < wanted) {
    const std::size_t n = inner_.read(out.subspan(got, wanted - got));
    if (n == 0) break;
    got += n;
  }
  position_ += got;
  return got;
}

void RangeSource::rewind() {
  inner_.rewind();
  position_ = 0;
  skipped_ = false;
}

std::vector<float> read_remaining(SampleSource& source) {
  std::vector<float> all;
  for (;;) {
    const std::size_t before = all.size();
    all.resize(before + kReadBlock);
    const std::size_t n = source.read(std::span(all).subspan(before));
    all.resize(before + n);
    if (n < kReadBlock) return all;
  }
}

std::size_t count_remaining(SampleSource& source) {
  std::vector<float> scratch(kReadBlock);
  std::size_t total = 0;
  for (;;) {
    const std::size_t n = source.read(scratch);
    total += n;
    if (n < scratch.size()) return total;
  }
}

}  // namespace amanuensis

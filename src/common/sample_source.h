// common: a recording read forward from its start, as many times as a reader rewinds it.
// Decoders implement it so that a long recording is decoded window by window rather than
// held whole as float (six hours of 16 kHz audio are 1.4 GB of float); the mel frontend
// and the pipeline read through it.
#pragma once

#include <cstddef>
#include <memory>
#include <span>
#include <utility>
#include <vector>

namespace amanuensis {

class SampleSource {
 public:
  virtual ~SampleSource() = default;
  // Writes the next samples into `out` and returns how many; fewer than out.size() only at
  // the end of the recording. Throws amanuensis::Error when the input turns out broken.
  virtual std::size_t read(std::span<float> out) = 0;
  // Starts again from the first sample; the samples read next are the same as before.
  virtual void rewind() = 0;
};

// Samples already in memory; `samples` must outlive the source.
class SpanSource final : public SampleSource {
 public:
  explicit SpanSource(std::span<const float> samples) : samples_(samples) {}
  std::size_t read(std::span<float> out) override;
  void rewind() override { position_ = 0; }

 private:
  std::span<const float> samples_;
  std::size_t position_ = 0;
};

// Samples in memory that the source shares ownership of.
class SharedSamples final : public SampleSource {
 public:
  explicit SharedSamples(std::shared_ptr<const std::vector<float>> samples)
      : samples_(std::move(samples)), view_(*samples_) {}
  std::size_t read(std::span<float> out) override { return view_.read(out); }
  void rewind() override { view_.rewind(); }

 private:
  std::shared_ptr<const std::vector<float>> samples_;
  SpanSource view_;
};

// Samples [first, first + count) of another source (the request fields offset and
// duration); count SIZE_MAX: to its end.
class RangeSource final : public SampleSource {
 public:
  RangeSource(SampleSource& inner, std::size_t first, std::size_t count);
  std::size_t read(std::span<float> out) override;
  void rewind() override;

 private:
  void skip_to_first();
  SampleSource& inner_;
  std::size_t first_;
  std::size_t count_;
  std::size_t position_ = 0;  // samples of the range already read
  bool skipped_ = false;
};

// Every sample from the current position to the end (for what needs the whole recording
// at once, such as voice activity detection).
std::vector<float> read_remaining(SampleSource& source);

// Reads to the end without keeping the samples and returns how many there were.
std::size_t count_remaining(SampleSource& source);

}  // namespace amanuensis

#include "audio/decode.h"

#include <algorithm>
#include <cmath>
#include <new>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iostream>
#include <iterator>
#include <memory>
#include <optional>
#include <string>

extern "C" {
#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/channel_layout.h>
#include <libavutil/opt.h>
#include <libswresample/swresample.h>
}

#include "audio/wav.h"
#include "common/error.h"

namespace amanuensis::audio {
namespace {

std::string av_error(int code) {
  char buf[AV_ERROR_MAX_STRING_SIZE] = {};
  av_strerror(code, buf, sizeof buf);
  return buf;
}

// FFmpeg reads the in-memory file through this cursor.
struct MemoryInput {
  std::span<const std::byte> bytes;
  std::size_t position = 0;

  static int read(void* opaque, std::uint8_t* buf, int size) {
    auto* in = static_cast<MemoryInput*>(opaque);
    const std::size_t left = in->bytes.size() - in->position;
    if (left == 0) return AVERROR_EOF;
    const std::size_t n = std::min<std::size_t>(left, static_cast<std::size_t>(size));
    std::memcpy(buf, in->bytes.data() + in->position, n);
    in->position += n;
    return static_cast<int>(n);
  }
  static std::int64_t seek(void* opaque, std::int64_t offset, int whence) {
    auto* in = static_cast<MemoryInput*>(opaque);
    const auto size = static_cast<std::int64_t>(in->bytes.size());
    if (whence == AVSEEK_SIZE) return size;
    std::int64_t target = offset;
    if ((whence & 3) == SEEK_CUR) target += static_cast<std::int64_t>(in->position);
    if ((whence & 3) == SEEK_END) target += size;
    if (target < 0 || target > size) return AVERROR(EINVAL);
    in->position = static_cast<std::size_t>(target);
    return target;
  }
};

struct FormatContextDeleter {
  void operator()(AVFormatContext* c) const { avformat_close_input(&c); }
};
struct IoContextDeleter {
  void operator()(AVIOContext* c) const {
    av_freep(&c->buffer);
    avio_context_free(&c);
  }
};
struct CodecContextDeleter {
  void operator()(AVCodecContext* c) const { avcodec_free_context(&c); }
};
struct FrameDeleter {
  void operator()(AVFrame* f) const { av_frame_free(&f); }
};
struct PacketDeleter {
  void operator()(AVPacket* p) const { av_packet_free(&p); }
};
struct ResamplerDeleter {
  void operator()(SwrContext* s) const { swr_free(&s); }
};

// Appends everything the resampler produces for `frame` (or its buffered tail when null).
void resample_into(SwrContext* swr, const AVFrame* frame, std::vector<float>& out) {
  const int in_samples = frame ? frame->nb_samples : 0;
  const int capacity = swr_get_out_samples(swr, in_samples) + 32;
  const std::size_t before = out.size();
  out.resize(before + static_cast<std::size_t>(capacity));
  auto* dst = reinterpret_cast<std::uint8_t*>(out.data() + before);
  const int produced = swr_convert(swr, &dst, capacity, frame ? const_cast<const std::uint8_t**>(frame->extended_data) : nullptr,
                                   in_samples);
  if (produced < 0) throw Error("audio resampling failed: " + av_error(produced));
  out.resize(before + static_cast<std::size_t>(produced));
}

std::unique_ptr<SwrContext, ResamplerDeleter> make_resampler(const AVCodecContext* codec) {
  SwrContext* raw = nullptr;
  AVChannelLayout mono = AV_CHANNEL_LAYOUT_MONO;
  AVChannelLayout in_layout;
  if (codec->ch_layout.order == AV_CHANNEL_ORDER_UNSPEC || codec->ch_layout.nb_channels == 0) {
    av_channel_layout_default(&in_layout, std::max(1, codec->ch_layout.nb_channels));
  } else {
    av_channel_layout_copy(&in_layout, &codec->ch_layout);
  }
  const int rc = swr_alloc_set_opts2(&raw, &mono, AV_SAMPLE_FMT_FLT, kSampleRate, &in_layout, codec->sample_fmt,
                                     codec->sample_rate, 0, nullptr);
  av_channel_layout_uninit(&in_layout);
  std::unique_ptr<SwrContext, ResamplerDeleter> swr(raw);
  if (rc < 0 || !swr || swr_init(swr.get()) < 0) throw Error("cannot set up audio resampling for this stream");
  return swr;
}

// The most samples `limits` allow; SIZE_MAX for none.
std::size_t max_samples(const DecodeLimits& limits) {
  if (!(limits.max_seconds > 0)) return SIZE_MAX;
  return static_cast<std::size_t>(std::ceil(limits.max_seconds * kSampleRate));
}

void check_length(std::size_t samples, std::size_t max, const DecodeLimits& limits) {
  if (samples > max) throw AudioTooLong(limits.max_seconds);
}

// 16 kHz mono 16-bit PCM WAV: the samples are the data chunk's, read in place.
class Pcm16Reader final : public AudioReader {
 public:
  Pcm16Reader(std::span<const std::byte> data, std::shared_ptr<const void> owner)
      : data_(data), owner_(std::move(owner)) {}
  std::size_t read(std::span<float> out) override {
    const std::size_t n = std::min(out.size(), data_.size() / 2 - position_);
    for (std::size_t i = 0; i < n; ++i) out[i] = pcm16_sample(data_, position_ + i);
    position_ += n;
    return n;
  }
  void rewind() override { position_ = 0; }
  std::size_t non_finite_samples() const override { return 0; }  // int16: always finite

 private:
  std::span<const std::byte> data_;
  std::shared_ptr<const void> owner_;
  std::size_t position_ = 0;
};

// Everything else, through FFmpeg: the first audio stream, down-mixed and resampled. A
// rewind opens the file again; decoding is deterministic, so every pass gives the same samples.
class FfmpegReader final : public AudioReader {
 public:
  FfmpegReader(std::span<const std::byte> encoded, const DecodeLimits& limits, std::shared_ptr<const void> owner)
      : input_{encoded}, limits_(limits), max_(max_samples(limits)), owner_(std::move(owner)) {
    open();
  }
  FfmpegReader(const FfmpegReader&) = delete;  // FFmpeg holds the address of input_
  FfmpegReader& operator=(const FfmpegReader&) = delete;
  std::size_t read(std::span<float> out) override;
  void rewind() override;
  std::size_t non_finite_samples() const override { return std::max(most_non_finite_, non_finite_); }

 private:
  enum class Stage { Reading, Flushing, Done };
  void open();
  void refill();
  void drain_frames();

  MemoryInput input_;
  DecodeLimits limits_;
  std::size_t max_;
  std::shared_ptr<const void> owner_;
  // declared so that they are destroyed in this order's reverse: the format context reads through io_
  std::unique_ptr<AVIOContext, IoContextDeleter> io_;
  std::unique_ptr<AVFormatContext, FormatContextDeleter> format_;
  std::unique_ptr<AVCodecContext, CodecContextDeleter> decoder_;
  std::unique_ptr<SwrContext, ResamplerDeleter> resampler_;
  std::unique_ptr<AVPacket, PacketDeleter> packet_;
  std::unique_ptr<AVFrame, FrameDeleter> frame_;
  int stream_index_ = -1;
  Stage stage_ = Stage::Reading;
  int decode_errors_ = 0;
  std::vector<float> pending_;  // decoded, not yet read
  std::size_t pending_read_ = 0;
  std::size_t produced_ = 0;  // samples decoded in this pass
  std::size_t non_finite_ = 0;       // in this pass
  std::size_t most_non_finite_ = 0;  // in any earlier pass
};

void FfmpegReader::open() {
  constexpr int kBufferSize = 1 << 16;
  auto* buffer = static_cast<unsigned char*>(av_malloc(kBufferSize));
  if (!buffer) throw Error("out of memory while decoding audio");
  io_.reset(avio_alloc_context(buffer, kBufferSize, 0, &input_, &MemoryInput::read, nullptr, &MemoryInput::seek));
  if (!io_) {
    av_free(buffer);
    throw Error("out of memory while decoding audio");
  }
  AVFormatContext* format_raw = avformat_alloc_context();
  if (!format_raw) throw Error("out of memory while decoding audio");
  format_raw->pb = io_.get();
  format_raw->flags |= AVFMT_FLAG_CUSTOM_IO;
  if (int rc = avformat_open_input(&format_raw, nullptr, nullptr, nullptr); rc < 0) {
    throw Error("not a readable audio file (" + av_error(rc) + ")");  // format_raw is freed on failure
  }
  format_.reset(format_raw);
  if (int rc = avformat_find_stream_info(format_.get(), nullptr); rc < 0) {
    throw Error("cannot read the audio streams (" + av_error(rc) + ")");
  }
  const AVCodec* codec = nullptr;
  stream_index_ = av_find_best_stream(format_.get(), AVMEDIA_TYPE_AUDIO, -1, -1, &codec, 0);
  if (stream_index_ < 0 || !codec) throw Error("the file has no audio stream this build can decode");
  decoder_.reset(avcodec_alloc_context3(codec));
  if (!decoder_) throw Error("out of memory while decoding audio");
  avcodec_parameters_to_context(decoder_.get(), format_->streams[stream_index_]->codecpar);
  if (int rc = avcodec_open2(decoder_.get(), codec, nullptr); rc < 0) {
    throw Error(std::string("cannot open the ") + codec->name + " decoder (" + av_error(rc) + ")");
  }
  if (decoder_->sample_rate <= 0) throw Error("the audio stream has no sample rate");
  // The resampler's filter grows with the rate ratio: a 400-byte WAV claiming 35 MHz had
  // it take 300 MB. The raw PCM path's bounds, which hold every real recording.
  if (decoder_->sample_rate < 1000 || decoder_->sample_rate > 384000)
    throw Error("the audio stream's sample rate, " + std::to_string(decoder_->sample_rate) +
                " Hz, is outside 1000-384000 Hz");
  resampler_ = make_resampler(decoder_.get());
  packet_.reset(av_packet_alloc());
  frame_.reset(av_frame_alloc());
  if (!packet_ || !frame_) throw Error("out of memory while decoding audio");
}

void FfmpegReader::rewind() {
  // torn down in the order of their dependencies, then opened again from the first byte
  frame_.reset();
  packet_.reset();
  resampler_.reset();
  decoder_.reset();
  format_.reset();
  io_.reset();
  input_.position = 0;
  stage_ = Stage::Reading;
  decode_errors_ = 0;
  pending_.clear();
  pending_read_ = 0;
  produced_ = 0;
  most_non_finite_ = std::max(most_non_finite_, non_finite_);
  non_finite_ = 0;
  open();
}

// Appends to pending_ every frame the decoder has ready.
void FfmpegReader::drain_frames() {
  for (;;) {
    const int rc = avcodec_receive_frame(decoder_.get(), frame_.get());
    if (rc == AVERROR(EAGAIN) || rc == AVERROR_EOF) return;
    if (rc < 0) throw Error("audio decoding failed (" + av_error(rc) + ")");
    resample_into(resampler_.get(), frame_.get(), pending_);
    av_frame_unref(frame_.get());
    check_length(produced_ + pending_.size(), max_, limits_);  // at each frame: never hours past the limit
  }
}

// Decodes packets until some samples are pending or the stream has ended.
void FfmpegReader::refill() {
  pending_.clear();
  pending_read_ = 0;
  while (pending_.empty() && stage_ != Stage::Done) {
    if (stage_ == Stage::Flushing) {
      resample_into(resampler_.get(), nullptr, pending_);  // the resampler's buffered tail
      check_length(produced_ + pending_.size(), max_, limits_);
      stage_ = Stage::Done;
      if (produced_ + pending_.size() == 0) throw Error("the audio file holds no samples");
      break;
    }
    if (av_read_frame(format_.get(), packet_.get()) < 0) {
      avcodec_send_packet(decoder_.get(), nullptr);
      stage_ = Stage::Flushing;
    } else {
      // a damaged packet is skipped, as players do; only a stream of errors is fatal
      if (packet_->stream_index == stream_index_ && avcodec_send_packet(decoder_.get(), packet_.get()) < 0 &&
          ++decode_errors_ > 100) {
        throw Error("the audio stream is corrupt (too many undecodable packets)");
      }
      av_packet_unref(packet_.get());
    }
    drain_frames();
  }
  non_finite_ += replace_non_finite(pending_);
  produced_ += pending_.size();
}

std::size_t FfmpegReader::read(std::span<float> out) {
  std::size_t written = 0;
  while (written < out.size()) {
    if (pending_read_ == pending_.size()) {
      if (stage_ == Stage::Done) break;
      refill();
      continue;
    }
    const std::size_t n = std::min(out.size() - written, pending_.size() - pending_read_);
    std::copy_n(pending_.begin() + static_cast<std::ptrdiff_t>(pending_read_), n, out.begin() + written);
    pending_read_ += n;
    written += n;
  }
  return written;
}

}  // namespace

AudioTooLong::AudioTooLong(double limit_seconds)
    : Error("the audio is longer than the limit of " + std::to_string(static_cast<long long>(std::ceil(limit_seconds))) +
            " seconds"),
      limit_seconds(limit_seconds) {}

std::size_t replace_non_finite(std::span<float> samples) {
  std::size_t replaced = 0;
  for (float& v : samples)
    if (!std::isfinite(v)) {
      v = 0.0f;
      ++replaced;
    }
  return replaced;
}

// Holds the samples of its first whole pass when they are few enough, and reads every later
// pass from them: the mel frontend reads a file twice and the server once more, so a short
// recording is decoded once, as before readers, and only a long one again at each pass.
class HoldingReader final : public AudioReader {
 public:
  HoldingReader(std::unique_ptr<AudioReader> inner, std::size_t hold_samples)
      : inner_(std::move(inner)), hold_samples_(hold_samples) {}
  std::size_t read(std::span<float> out) override {
    if (state_ == State::Held) {
      const std::size_t n = std::min(out.size(), held_.size() - position_);
      std::copy_n(held_.begin() + static_cast<std::ptrdiff_t>(position_), n, out.begin());
      position_ += n;
      return n;
    }
    const std::size_t n = inner_->read(out);
    if (state_ == State::FirstPass) keep(out.first(n), n < out.size());
    return n;
  }
  void rewind() override {
    position_ = 0;
    if (state_ == State::Held) return;
    inner_->rewind();
    if (state_ == State::FirstPass) held_.clear();  // a pass cut short: the next one holds from the start
  }
  std::size_t non_finite_samples() const override {
    return state_ == State::Held ? held_non_finite_ : inner_->non_finite_samples();
  }

 private:
  enum class State { FirstPass, Held, TooLong };
  void keep(std::span<const float> samples, bool at_end) {
    if (held_.size() + samples.size() > hold_samples_) {
      state_ = State::TooLong;
      std::vector<float>().swap(held_);
      return;
    }
    held_.insert(held_.end(), samples.begin(), samples.end());
    if (!at_end) return;
    state_ = State::Held;
    held_non_finite_ = inner_->non_finite_samples();
    position_ = held_.size();
    inner_.reset();  // the decoder's buffers go too
  }

  std::unique_ptr<AudioReader> inner_;
  std::size_t hold_samples_;
  State state_ = State::FirstPass;
  std::vector<float> held_;
  std::size_t position_ = 0;  // in held_, once held
  std::size_t held_non_finite_ = 0;
};

std::unique_ptr<AudioReader> open_audio(std::span<const std::byte> encoded, const DecodeLimits& limits,
                                        std::shared_ptr<const void> owner) {
  if (encoded.empty()) throw Error("the audio file is empty");
  std::optional<std::span<const std::byte>> pcm16;
  try {
    pcm16 = wav_pcm16_data(encoded);
  } catch (const Error&) {
    // not plain 16 kHz mono 16-bit WAV: FFmpeg reads it
  }
  if (pcm16) {
    if (pcm16->empty()) throw Error("the audio file holds no samples");
    check_length(pcm16->size() / 2, max_samples(limits), limits);  // known from the size
    return std::make_unique<Pcm16Reader>(*pcm16, std::move(owner));
  }
  try {
    auto reader = std::make_unique<FfmpegReader>(encoded, limits, std::move(owner));
    const auto hold = static_cast<std::size_t>(std::max(0.0, limits.hold_seconds) * kSampleRate);
    if (hold == 0) return reader;
    return std::make_unique<HoldingReader>(std::move(reader), hold);
  } catch (const std::bad_alloc&) {
    throw Error("the audio file needs more memory to open than this machine has");
  }
}

std::size_t scan_audio(AudioReader& reader, DecodeReport* report) {
  std::size_t samples = 0;
  try {
    reader.rewind();
    samples = count_remaining(reader);
  } catch (const std::bad_alloc&) {
    throw Error("the audio file decodes to more samples than this machine can hold");
  }
  if (samples == 0) throw Error("the audio file holds no samples");
  if (report) report->non_finite_samples = reader.non_finite_samples();
  reader.rewind();
  return samples;
}

std::vector<float> decode_audio(std::span<const std::byte> encoded, DecodeReport* report, const DecodeLimits& limits) {
  DecodeLimits one_pass = limits;
  one_pass.hold_seconds = 0;  // read once, into the result
  const auto reader = open_audio(encoded, one_pass);
  std::vector<float> samples;
  try {
    samples = read_remaining(*reader);
  } catch (const std::bad_alloc&) {
    throw Error("the audio file decodes to more samples than this machine can hold");
  }
  if (samples.empty()) throw Error("the audio file holds no samples");
  if (report) report->non_finite_samples = reader->non_finite_samples();
  return samples;
}

std::vector<std::byte> read_encoded_file(const std::filesystem::path& path) {
  std::vector<char> bytes;
  if (path == "-") {
    bytes.assign(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
  } else {
    std::error_code ec;
    if (std::filesystem::is_directory(path, ec)) throw Error(path.string() + " is a directory, not an audio file");
    std::ifstream in(path, std::ios::binary);
    if (!in) throw Error("cannot open audio file " + path.string());
    bytes.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  const auto* first = reinterpret_cast<const std::byte*>(bytes.data());
  return {first, first + bytes.size()};
}

namespace {
// Runs `decode`, naming the file in its errors; AudioTooLong passes as it is (its type
// tells the caller which limit; the caller names the file).
template <typename Decode>
auto naming_the_file(const std::filesystem::path& path, Decode&& decode) {
  try {
    return decode();
  } catch (const AudioTooLong&) {
    throw;
  } catch (const Error& e) {
    throw Error(path.string() + ": " + e.what());
  }
}
}  // namespace

std::vector<float> load_audio_file(const std::filesystem::path& path, DecodeReport* report, const DecodeLimits& limits) {
  const auto bytes = read_encoded_file(path);
  return naming_the_file(path, [&] { return decode_audio(bytes, report, limits); });
}

std::unique_ptr<AudioReader> open_audio_file(const std::filesystem::path& path, const DecodeLimits& limits) {
  auto bytes = std::make_shared<const std::vector<std::byte>>(read_encoded_file(path));
  return naming_the_file(path, [&] { return open_audio(*bytes, limits, bytes); });
}

namespace {
class MemoryReader final : public AudioReader {
 public:
  MemoryReader(std::vector<float> samples, std::size_t non_finite)
      : samples_(std::move(samples)), view_(samples_), non_finite_(non_finite) {}
  std::size_t read(std::span<float> out) override { return view_.read(out); }
  void rewind() override { view_.rewind(); }
  std::size_t non_finite_samples() const override { return non_finite_; }

 private:
  std::vector<float> samples_;
  SpanSource view_;
  std::size_t non_finite_;
};
}  // namespace

std::unique_ptr<AudioReader> reader_over(std::vector<float> samples, std::size_t non_finite_samples) {
  return std::make_unique<MemoryReader>(std::move(samples), non_finite_samples);
}

std::vector<float> decode_raw_pcm(std::span<const std::byte> bytes, PcmFormat format, int sample_rate, int channels,
                                  DecodeReport* report, const DecodeLimits& limits) {
  if (sample_rate < 1000 || sample_rate > 384000) throw Error("--pcm-rate must be between 1000 and 384000 Hz");
  if (channels < 1 || channels > 16) throw Error("--pcm-channels must be between 1 and 16");
  const std::size_t width = format == PcmFormat::S16 ? 2 : 4;
  const std::size_t frames = bytes.size() / (width * channels);
  if (frames == 0) throw Error("no PCM samples on input");
  if (limits.max_seconds > 0 && static_cast<double>(frames) / sample_rate > limits.max_seconds)
    throw AudioTooLong(limits.max_seconds);  // known from the size, before any work
  std::vector<float> mono(frames);
  for (std::size_t f = 0; f < frames; ++f) {
    float sum = 0.0f;
    for (int c = 0; c < channels; ++c) {
      const std::byte* p = bytes.data() + (f * channels + c) * width;
      if (format == PcmFormat::S16) {
        std::int16_t v;
        std::memcpy(&v, p, 2);
        sum += v / 32768.0f;
      } else {
        float v;
        std::memcpy(&v, p, 4);
        sum += v;
      }
    }
    mono[f] = sum / static_cast<float>(channels);
  }
  const std::size_t replaced = replace_non_finite(mono);  // before resampling spreads them
  if (report) report->non_finite_samples = replaced;
  if (sample_rate == kSampleRate) return mono;
  // resample through libswresample, the same path as decoded files
  SwrContext* raw = nullptr;
  AVChannelLayout layout = AV_CHANNEL_LAYOUT_MONO;
  swr_alloc_set_opts2(&raw, &layout, AV_SAMPLE_FMT_FLT, kSampleRate, &layout, AV_SAMPLE_FMT_FLT, sample_rate, 0, nullptr);
  std::unique_ptr<SwrContext, ResamplerDeleter> swr(raw);
  if (!swr || swr_init(swr.get()) < 0) throw Error("cannot set up PCM resampling");
  std::vector<float> out(static_cast<std::size_t>(swr_get_out_samples(swr.get(), static_cast<int>(frames)) + 64));
  auto* dst = reinterpret_cast<std::uint8_t*>(out.data());
  const auto* src = reinterpret_cast<const std::uint8_t*>(mono.data());
  int produced = swr_convert(swr.get(), &dst, static_cast<int>(out.size()), &src, static_cast<int>(frames));
  if (produced < 0) throw Error("PCM resampling failed");
  out.resize(static_cast<std::size_t>(produced));
  std::vector<float> tail;
  AVFrame* none = nullptr;
  resample_into(swr.get(), none, tail);
  out.insert(out.end(), tail.begin(), tail.end());
  return out;
}

}  // namespace amanuensis::audio

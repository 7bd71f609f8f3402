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

bool is_plain_16k_mono_wav(std::span<const std::byte> bytes) {
  try {
    (void)decode_wav(bytes.first(std::min<std::size_t>(bytes.size(), 4096)));
    return true;
  } catch (const Error&) {
    return false;
  }
}

// The most samples `limits` allow; SIZE_MAX for none.
std::size_t max_samples(const DecodeLimits& limits) {
  if (!(limits.max_seconds > 0)) return SIZE_MAX;
  return static_cast<std::size_t>(std::ceil(limits.max_seconds * kSampleRate));
}

void check_length(std::size_t samples, std::size_t max, const DecodeLimits& limits) {
  if (samples > max) throw AudioTooLong(limits.max_seconds);
}

std::vector<float> decode_with_ffmpeg(std::span<const std::byte> encoded, const DecodeLimits& limits) {
  const std::size_t max = max_samples(limits);
  MemoryInput input{encoded};
  constexpr int kBufferSize = 1 << 16;
  auto* buffer = static_cast<unsigned char*>(av_malloc(kBufferSize));
  if (!buffer) throw Error("out of memory while decoding audio");
  std::unique_ptr<AVIOContext, IoContextDeleter> io(
      avio_alloc_context(buffer, kBufferSize, 0, &input, &MemoryInput::read, nullptr, &MemoryInput::seek));
  if (!io) {
    av_free(buffer);
    throw Error("out of memory while decoding audio");
  }
  AVFormatContext* format_raw = avformat_alloc_context();
  format_raw->pb = io.get();
  format_raw->flags |= AVFMT_FLAG_CUSTOM_IO;
  if (int rc = avformat_open_input(&format_raw, nullptr, nullptr, nullptr); rc < 0) {
    throw Error("not a readable audio file (" + av_error(rc) + ")");
  }
  std::unique_ptr<AVFormatContext, FormatContextDeleter> format(format_raw);
  if (int rc = avformat_find_stream_info(format.get(), nullptr); rc < 0) {
    throw Error("cannot read the audio streams (" + av_error(rc) + ")");
  }
  const AVCodec* codec = nullptr;
  const int stream_index = av_find_best_stream(format.get(), AVMEDIA_TYPE_AUDIO, -1, -1, &codec, 0);
  if (stream_index < 0 || !codec) throw Error("the file has no audio stream this build can decode");
  std::unique_ptr<AVCodecContext, CodecContextDeleter> decoder(avcodec_alloc_context3(codec));
  avcodec_parameters_to_context(decoder.get(), format->streams[stream_index]->codecpar);
  if (int rc = avcodec_open2(decoder.get(), codec, nullptr); rc < 0) {
    throw Error(std::string("cannot open the ") + codec->name + " decoder (" + av_error(rc) + ")");
  }
  if (decoder->sample_rate <= 0) throw Error("the audio stream has no sample rate");
  // The resampler's filter grows with the rate ratio: a 400-byte WAV claiming 35 MHz had
  // it take 300 MB. The raw PCM path's bounds, which hold every real recording.
  if (decoder->sample_rate < 1000 || decoder->sample_rate > 384000)
    throw Error("the audio stream's sample rate, " + std::to_string(decoder->sample_rate) +
                " Hz, is outside 1000-384000 Hz");
  auto resampler = make_resampler(decoder.get());

  std::vector<float> samples;
  // Growing the vector by doubling would briefly need twice the memory of a long recording,
  // so room for the duration the container states is reserved, but at most what the file's
  // size can plausibly hold (32 samples a byte: 6 kbit/s Opus at 16 kHz is about 21), as
  // a header may claim any duration.
  if (format->duration > 0) {
    const double stated = static_cast<double>(format->duration) / AV_TIME_BASE * kSampleRate;
    const double plausible = 32.0 * static_cast<double>(encoded.size());
    const double allowed = static_cast<double>(max);
    samples.reserve(static_cast<std::size_t>(std::min({stated, plausible, allowed})) + 2 * kSampleRate);
  }
  std::unique_ptr<AVPacket, PacketDeleter> packet(av_packet_alloc());
  std::unique_ptr<AVFrame, FrameDeleter> frame(av_frame_alloc());
  auto drain = [&] {
    for (;;) {
      const int rc = avcodec_receive_frame(decoder.get(), frame.get());
      if (rc == AVERROR(EAGAIN) || rc == AVERROR_EOF) return;
      if (rc < 0) throw Error("audio decoding failed (" + av_error(rc) + ")");
      resample_into(resampler.get(), frame.get(), samples);
      av_frame_unref(frame.get());
      check_length(samples.size(), max, limits);  // at each frame: never hours past the limit
    }
  };
  int decode_errors = 0;
  while (av_read_frame(format.get(), packet.get()) >= 0) {
    if (packet->stream_index == stream_index) {
      // a damaged packet is skipped, as players do; only a stream of errors is fatal
      if (avcodec_send_packet(decoder.get(), packet.get()) < 0 && ++decode_errors > 100) {
        throw Error("the audio stream is corrupt (too many undecodable packets)");
      }
      drain();
    }
    av_packet_unref(packet.get());
  }
  avcodec_send_packet(decoder.get(), nullptr);
  drain();
  resample_into(resampler.get(), nullptr, samples);
  check_length(samples.size(), max, limits);
  return samples;
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

std::vector<float> decode_audio(std::span<const std::byte> encoded, DecodeReport* report, const DecodeLimits& limits) {
  if (encoded.empty()) throw Error("the audio file is empty");
  if (is_plain_16k_mono_wav(encoded)) {
    // two bytes a sample: the file's size bounds what this path can hold
    auto samples = decode_wav(encoded);  // int16: always finite
    check_length(samples.size(), max_samples(limits), limits);
    return samples;
  }
  std::vector<float> samples;
  try {
    samples = decode_with_ffmpeg(encoded, limits);
  } catch (const std::bad_alloc&) {
    throw Error("the audio file decodes to more samples than this machine can hold");
  }
  if (samples.empty()) throw Error("the audio file holds no samples");
  const std::size_t replaced = replace_non_finite(samples);
  if (report) report->non_finite_samples = replaced;
  return samples;
}

std::vector<float> load_audio_file(const std::filesystem::path& path, DecodeReport* report, const DecodeLimits& limits) {
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
  try {
    return decode_audio(std::as_bytes(std::span(bytes)), report, limits);
  } catch (const AudioTooLong&) {
    throw;  // its type tells the caller which limit; the caller names the file
  } catch (const Error& e) {
    throw Error(path.string() + ": " + e.what());
  }
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

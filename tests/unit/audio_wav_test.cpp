// Tests for the WAV reader: the conformance audio files, and malformed or unsupported
// files built in memory (every error must be an amanuensis::Error, never a crash).
#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "audio/wav.h"
#include "common/error.h"
#include "test_paths.h"

namespace amanuensis::audio {
namespace {

using Bytes = std::vector<std::byte>;

void put_tag(Bytes& out, const char (&tag)[5]) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<std::byte>(tag[i]));
}
void put_u16(Bytes& out, std::uint16_t v) {
  out.push_back(static_cast<std::byte>(v & 0xFF));
  out.push_back(static_cast<std::byte>(v >> 8));
}
void put_u32(Bytes& out, std::uint32_t v) {
  put_u16(out, static_cast<std::uint16_t>(v & 0xFFFF));
  put_u16(out, static_cast<std::uint16_t>(v >> 16));
}

struct WavSpec {
  std::uint16_t format = 1;
  std::uint16_t channels = 1;
  std::uint32_t sample_rate = 16000;
  std::uint16_t bits = 16;
  std::vector<std::int16_t> samples = {0, 1, -1, 32767, -32768};
  bool extensible = false;
  std::uint16_t subformat = 1;
  Bytes chunks_before_fmt;
  Bytes chunks_before_data;
};

Bytes fmt_chunk(const WavSpec& spec) {
  Bytes out;
  put_tag(out, "fmt ");
  put_u32(out, spec.extensible ? 40 : 16);
  put_u16(out, spec.extensible ? 0xFFFE : spec.format);
  put_u16(out, spec.channels);
  put_u32(out, spec.sample_rate);
  const std::uint16_t block_align = static_cast<std::uint16_t>(spec.channels * spec.bits / 8);
  put_u32(out, spec.sample_rate * block_align);
  put_u16(out, block_align);
  put_u16(out, spec.bits);
  if (spec.extensible) {
    put_u16(out, 22);         // cbSize
    put_u16(out, spec.bits);  // valid bits
    put_u32(out, 0x4);        // channel mask: front center
    put_u16(out, spec.subformat);
    for (std::uint8_t b : {0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x80, 0x00, 0x00, 0xAA, 0x00, 0x38, 0x9B, 0x71}) {
      out.push_back(static_cast<std::byte>(b));
    }
  }
  return out;
}

Bytes data_chunk(const std::vector<std::int16_t>& samples) {
  Bytes out;
  put_tag(out, "data");
  put_u32(out, static_cast<std::uint32_t>(samples.size() * 2));
  for (std::int16_t s : samples) put_u16(out, static_cast<std::uint16_t>(s));
  return out;
}

Bytes riff(const Bytes& body) {
  Bytes out;
  put_tag(out, "RIFF");
  put_u32(out, static_cast<std::uint32_t>(body.size() + 4));
  put_tag(out, "WAVE");
  out.insert(out.end(), body.begin(), body.end());
  return out;
}

Bytes make_wav(const WavSpec& spec) {
  Bytes body = spec.chunks_before_fmt;
  const Bytes fmt = fmt_chunk(spec);
  body.insert(body.end(), fmt.begin(), fmt.end());
  body.insert(body.end(), spec.chunks_before_data.begin(), spec.chunks_before_data.end());
  const Bytes data = data_chunk(spec.samples);
  body.insert(body.end(), data.begin(), data.end());
  return riff(body);
}

// A chunk with an odd-sized body followed by its pad byte.
Bytes odd_chunk() {
  Bytes out;
  put_tag(out, "junk");
  put_u32(out, 3);
  for (int i = 0; i < 3; ++i) out.push_back(std::byte{0x55});
  out.push_back(std::byte{0});
  return out;
}

// The message of the amanuensis::Error that decode_wav throws (fails the test if none).
std::string decode_error(const Bytes& bytes) {
  try {
    decode_wav(bytes);
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "decode_wav accepted the input";
  return {};
}

TEST(WavReader, ReadsJfkSkippingListChunk) {
  const auto samples = read_wav_file(amanuensis::testing::conformance_dir() / "audio" / "jfk.wav");
  ASSERT_EQ(samples.size(), 176000u);
  float peak = 0.0f;
  for (float s : samples) peak = std::max(peak, std::abs(s));
  EXPECT_GT(peak, 0.1f);
  EXPECT_LE(peak, 1.0f);
}

TEST(WavReader, ReadsSilence) {
  const auto samples = read_wav_file(amanuensis::testing::conformance_dir() / "audio" / "silence-5s.wav");
  ASSERT_EQ(samples.size(), 80000u);
  for (float s : samples) ASSERT_EQ(s, 0.0f);
}

TEST(WavReader, ScalesSamplesByOneOver32768) {
  const auto samples = decode_wav(make_wav({}));
  const std::vector<float> expected = {0.0f, 1.0f / 32768, -1.0f / 32768, 32767.0f / 32768, -1.0f};
  EXPECT_EQ(samples, expected);
}

TEST(WavReader, SkipsOddSizedChunksWithTheirPadByte) {
  WavSpec spec;
  spec.chunks_before_fmt = odd_chunk();
  spec.chunks_before_data = odd_chunk();
  EXPECT_EQ(decode_wav(make_wav(spec)).size(), spec.samples.size());
}

TEST(WavReader, AcceptsExtensiblePcm) {
  WavSpec spec;
  spec.extensible = true;
  EXPECT_EQ(decode_wav(make_wav(spec)), decode_wav(make_wav({})));
}

TEST(WavReader, DataChunkRunningPastEndOfFileUsesWhatIsThere) {
  Bytes wav = make_wav({});  // 5 samples
  wav.pop_back();            // half of the last sample: an odd trailing byte is dropped
  const auto samples = decode_wav(wav);
  EXPECT_EQ(samples.size(), 4u);

  // Streaming writers leave the data size at 0xFFFFFFFF.
  Bytes streamed = make_wav({});
  const std::size_t size_field = streamed.size() - 5 * 2 - 4;
  for (int i = 0; i < 4; ++i) streamed[size_field + i] = std::byte{0xFF};
  EXPECT_EQ(decode_wav(streamed).size(), 5u);
}

TEST(WavReader, RejectsEmptyInput) { EXPECT_NE(decode_error({}).find("empty"), std::string::npos); }

TEST(WavReader, RejectsWrongMagic) {
  Bytes wav = make_wav({});
  wav[0] = std::byte{'O'};
  wav[1] = std::byte{'g'};
  wav[2] = std::byte{'g'};
  wav[3] = std::byte{'S'};
  const std::string message = decode_error(wav);
  EXPECT_NE(message.find("not a RIFF/WAVE file"), std::string::npos) << message;
  EXPECT_NE(message.find("OggS"), std::string::npos) << message;

  Bytes avi = make_wav({});
  avi[8] = std::byte{'A'};
  avi[9] = std::byte{'V'};
  avi[10] = std::byte{'I'};
  avi[11] = std::byte{' '};
  EXPECT_NE(decode_error(avi).find("not a RIFF/WAVE file"), std::string::npos);
}

TEST(WavReader, RejectsTruncatedHeaderNamingTheByte) {
  const Bytes wav = make_wav({});
  const std::string riff_cut = decode_error(Bytes(wav.begin(), wav.begin() + 8));
  EXPECT_NE(riff_cut.find("truncated"), std::string::npos) << riff_cut;
  EXPECT_NE(riff_cut.find("byte 8"), std::string::npos) << riff_cut;

  const std::string fmt_cut = decode_error(Bytes(wav.begin(), wav.begin() + 20));
  EXPECT_NE(fmt_cut.find("truncated"), std::string::npos) << fmt_cut;
  EXPECT_NE(fmt_cut.find("fmt chunk at byte 12"), std::string::npos) << fmt_cut;

  const std::string chunk_cut = decode_error(Bytes(wav.begin(), wav.begin() + 15));
  EXPECT_NE(chunk_cut.find("chunk header at byte 12"), std::string::npos) << chunk_cut;
}

TEST(WavReader, RejectsMissingChunks) {
  WavSpec spec;
  const Bytes data_first = riff([&] {
    Bytes body = data_chunk(spec.samples);
    const Bytes fmt = fmt_chunk(spec);
    body.insert(body.end(), fmt.begin(), fmt.end());
    return body;
  }());
  EXPECT_NE(decode_error(data_first).find("before any fmt chunk"), std::string::npos);
  EXPECT_NE(decode_error(riff(fmt_chunk(spec))).find("no data chunk"), std::string::npos);
  EXPECT_NE(decode_error(riff(odd_chunk())).find("no fmt chunk"), std::string::npos);
  EXPECT_NE(decode_error(riff({})).find("no fmt chunk"), std::string::npos);
}

TEST(WavReader, RejectsUnsupportedFormatsSayingWhatWasFound) {
  auto expect_rejected = [](WavSpec spec, const std::string& found) {
    const std::string message = decode_error(make_wav(spec));
    EXPECT_NE(message.find(found), std::string::npos) << message;
    EXPECT_NE(message.find("16 kHz mono 16-bit PCM"), std::string::npos) << message;
  };
  WavSpec eight_bit;
  eight_bit.bits = 8;
  expect_rejected(eight_bit, "8-bit PCM");
  WavSpec stereo;
  stereo.channels = 2;
  expect_rejected(stereo, "2 channels");
  WavSpec cd_rate;
  cd_rate.sample_rate = 44100;
  expect_rejected(cd_rate, "44100 Hz");
  WavSpec float32;
  float32.format = 3;
  float32.bits = 32;
  expect_rejected(float32, "32-bit IEEE float");
  WavSpec extensible_float;
  extensible_float.extensible = true;
  extensible_float.subformat = 3;
  extensible_float.bits = 32;
  expect_rejected(extensible_float, "IEEE float");
}

TEST(WavReader, RejectsJfk44k1StereoNamingRateAndChannels) {
  const auto path = amanuensis::testing::conformance_dir() / "audio" / "jfk-44k1-stereo.wav";
  try {
    read_wav_file(path);
    FAIL() << "44.1 kHz stereo file was accepted";
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("44100 Hz"), std::string::npos) << message;
    EXPECT_NE(message.find("2 channels"), std::string::npos) << message;
    EXPECT_NE(message.find("jfk-44k1-stereo.wav"), std::string::npos) << message;
  }
}

TEST(WavReader, RejectsMissingFileAndDirectory) {
  const auto missing = amanuensis::testing::conformance_dir() / "audio" / "does-not-exist.wav";
  try {
    read_wav_file(missing);
    FAIL() << "missing file was accepted";
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("does-not-exist.wav"), std::string::npos) << message;
    EXPECT_NE(message.find("no such file"), std::string::npos) << message;
  }
  EXPECT_THROW(read_wav_file(amanuensis::testing::conformance_dir()), Error);
}

// Every prefix and many random corruptions of a valid file either decode or throw Error.
TEST(WavReader, NeverCrashesOnGarbage) {
  WavSpec spec;
  spec.chunks_before_data = odd_chunk();
  spec.extensible = true;
  const Bytes wav = make_wav(spec);
  for (std::size_t n = 0; n <= wav.size(); ++n) {
    try {
      decode_wav(Bytes(wav.begin(), wav.begin() + n));
    } catch (const Error&) {
    }
  }
  std::mt19937 rng(12345);
  for (int trial = 0; trial < 20000; ++trial) {
    Bytes corrupt = wav;
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int f = 0; f < flips; ++f) corrupt[rng() % corrupt.size()] = static_cast<std::byte>(rng());
    corrupt.resize(rng() % (corrupt.size() + 1));
    try {
      decode_wav(corrupt);
    } catch (const Error&) {
    }
  }
  for (int trial = 0; trial < 2000; ++trial) {
    Bytes noise(rng() % 64);
    for (auto& b : noise) b = static_cast<std::byte>(rng());
    if (noise.size() >= 12 && trial % 2 == 0) {  // valid magic, garbage chunks
      const Bytes header = riff({});
      std::copy(header.begin(), header.end(), noise.begin());
    }
    try {
      decode_wav(noise);
    } catch (const Error&) {
    }
  }
}

}  // namespace
}  // namespace amanuensis::audio

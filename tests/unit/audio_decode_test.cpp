// Hostile input to the FFmpeg decoding path (issue 12): a header that claims far more
// audio than the file holds must not size any allocation, NaN or infinite float samples
// come out as silence, counted, instead of turning every window into NaN, a small file of
// hours stops decoding at the duration limit, and FFmpeg's log goes where the program
// routes it.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include <unistd.h>

#include "audio/decode.h"
#include "audio/ffmpeg_log.h"
#include "common/error.h"

namespace amanuensis::audio {
namespace {

using Bytes = std::vector<std::byte>;

void put(Bytes& out, const void* p, std::size_t n) {
  const std::size_t at = out.size();
  out.resize(at + n);
  std::memcpy(out.data() + at, p, n);
}
void put_u16(Bytes& out, std::uint16_t v) { put(out, &v, 2); }
void put_u32(Bytes& out, std::uint32_t v) { put(out, &v, 4); }
void put_tag(Bytes& out, const char* tag) { put(out, tag, 4); }

// A WAV file: `format` 1 (PCM) or 3 (IEEE float), one channel; `data_size` is what the
// header states (the real payload is `payload`).
Bytes wav(std::uint16_t format, std::uint16_t bits, std::uint32_t rate, const Bytes& payload, std::uint32_t data_size) {
  Bytes out;
  put_tag(out, "RIFF");
  put_u32(out, data_size > 0xFFFFFFFFu - 36 ? 0xFFFFFFFFu : data_size + 36);
  put_tag(out, "WAVE");
  put_tag(out, "fmt ");
  put_u32(out, 16);
  put_u16(out, format);
  put_u16(out, 1);
  put_u32(out, rate);
  put_u32(out, rate * bits / 8);
  put_u16(out, bits / 8);
  put_u16(out, bits);
  put_tag(out, "data");
  put_u32(out, data_size);
  out.insert(out.end(), payload.begin(), payload.end());
  return out;
}

// One second of Matroska audio (made by the ffmpeg tool from a WAV) whose Info element
// says it lasts 1e9 s: as 16 kHz floats that would be 64 TB.
Bytes matroska_claiming_a_billion_seconds() {
  const auto dir = std::filesystem::temp_directory_path() / ("amanuensis-mka-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  Bytes tone;
  for (int i = 0; i < 16000; ++i) put_u16(tone, static_cast<std::uint16_t>(static_cast<std::int16_t>(3000 * std::sin(0.05 * i))));
  const Bytes source = wav(1, 16, 16000, tone, static_cast<std::uint32_t>(tone.size()));
  std::ofstream(dir / "in.wav", std::ios::binary).write(reinterpret_cast<const char*>(source.data()), static_cast<std::streamsize>(source.size()));
  const std::string cmd = "ffmpeg -nostdin -loglevel error -y -i '" + (dir / "in.wav").string() + "' -c:a pcm_s16le '" +
                          (dir / "out.mka").string() + "'";
  if (std::system(cmd.c_str()) != 0) return {};
  std::ifstream in(dir / "out.mka", std::ios::binary);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::filesystem::remove_all(dir);
  // Duration: element 0x4489 holding an 8-byte big-endian double (in TimecodeScale units, ms)
  const auto at = text.find("\x44\x89\x88");
  if (at == std::string::npos) return {};
  Bytes out(text.size());
  std::memcpy(out.data(), text.data(), text.size());
  const double claimed_ms = 1e12;
  std::uint64_t bits;
  std::memcpy(&bits, &claimed_ms, 8);
  for (int i = 0; i < 8; ++i) out[at + 3 + i] = static_cast<std::byte>((bits >> (56 - 8 * i)) & 0xff);
  return out;
}

TEST(AudioDecode, HeaderClaimingYearsOfAudioDoesNotSizeTheBuffer) {
  const Bytes file = matroska_claiming_a_billion_seconds();
  ASSERT_FALSE(file.empty()) << "the ffmpeg tool (installed by scripts/setup.sh) could not make the test file";
  std::vector<float> samples;
  ASSERT_NO_THROW(samples = decode_audio(file));
  EXPECT_NEAR(static_cast<double>(samples.size()), 16000.0, 400.0);
}

TEST(AudioDecode, NonFiniteFloatSamplesBecomeSilenceAndAreCounted) {
  std::vector<float> values(16000);
  for (std::size_t i = 0; i < values.size(); ++i) values[i] = 0.25f * std::sin(0.05f * static_cast<float>(i));
  values[100] = std::numeric_limits<float>::quiet_NaN();
  values[8000] = std::numeric_limits<float>::infinity();
  values[8001] = -std::numeric_limits<float>::infinity();
  Bytes payload;
  put(payload, values.data(), values.size() * 4);
  const Bytes file = wav(3, 32, 16000, payload, static_cast<std::uint32_t>(payload.size()));
  DecodeReport report;
  const auto samples = decode_audio(file, &report);
  ASSERT_EQ(samples.size(), values.size());
  EXPECT_EQ(report.non_finite_samples, 3u);
  for (float v : samples) ASSERT_TRUE(std::isfinite(v));
  EXPECT_EQ(samples[100], 0.0f);
  EXPECT_EQ(samples[8000], 0.0f);
  EXPECT_EQ(samples[50], values[50]);  // the rest as it was
}

// Found by tests/fuzz/decode_fuzz: a WAV header's rate sized FFmpeg's resampling filter
// (35 MHz: 300 MB for 200 samples).
TEST(AudioDecode, ImplausibleSampleRatesAreRefused) {
  const Bytes payload(160000, std::byte{0});  // 0.1 s at 384 kHz
  for (std::uint32_t rate : {35043849u, 400000u, 999u})
    EXPECT_THROW(decode_audio(wav(3, 32, rate, payload, static_cast<std::uint32_t>(payload.size()))), Error) << rate;
  EXPECT_NO_THROW(decode_audio(wav(3, 32, 384000, payload, static_cast<std::uint32_t>(payload.size()))));
  EXPECT_NO_THROW(decode_audio(wav(3, 32, 8000, payload, static_cast<std::uint32_t>(payload.size()))));
}

TEST(AudioDecode, NonFiniteRawPcmIsReplacedBeforeResampling) {
  std::vector<float> values(8000, 0.1f);
  values[4000] = std::numeric_limits<float>::quiet_NaN();
  Bytes raw;
  put(raw, values.data(), values.size() * 4);
  DecodeReport report;
  const auto samples = decode_raw_pcm(raw, PcmFormat::F32, 8000, 1, &report);
  EXPECT_EQ(report.non_finite_samples, 1u);
  for (float v : samples) ASSERT_TRUE(std::isfinite(v));
}

// A scratch folder of this process, removed with it.
std::filesystem::path scratch() {
  static const auto dir = [] {
    auto d = std::filesystem::temp_directory_path() / ("amanuensis-audio-" + std::to_string(::getpid()));
    std::filesystem::create_directories(d);
    std::atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(std::filesystem::temp_directory_path() / ("amanuensis-audio-" + std::to_string(::getpid())), ec);
    });
    return d;
  }();
  return dir;
}

Bytes read_bytes(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  Bytes out(text.size());
  std::memcpy(out.data(), text.data(), text.size());
  return out;
}

// Issue 12's upload: Opus at 6 kbit/s of silence, one minute encoded and then repeated
// (-stream_loop, no re-encoding) to two hours, 2.7 MB; 460 MB as 16 kHz floats.
Bytes two_hours_of_opus_silence() {
  const auto minute = scratch() / "minute.opus";
  const auto hours = scratch() / "hours.opus";
  const std::string cmd = "ffmpeg -nostdin -loglevel error -y -f lavfi -i anullsrc=r=8000:cl=mono -t 60 -c:a libopus -b:a 6k '" +
                          minute.string() + "' && ffmpeg -nostdin -loglevel error -y -stream_loop 119 -i '" +
                          minute.string() + "' -c copy '" + hours.string() + "'";
  if (std::system(cmd.c_str()) != 0) return {};
  return read_bytes(hours);
}

// The peak resident memory of this process so far (VmHWM), in bytes.
double peak_rss_bytes() {
  std::ifstream in("/proc/self/status");
  for (std::string line; std::getline(in, line);)
    if (line.rfind("VmHWM:", 0) == 0) return std::atof(line.c_str() + 6) * 1024.0;
  return 0.0;
}

// Issue 12 defect 1: the limit is checked as the samples come, so a decode stopped at one
// minute never holds the two hours (460 MB) it would have produced.
TEST(AudioDecode, LimitStopsDecodingHoursOfSilenceAtTheLimit) {
  const Bytes file = two_hours_of_opus_silence();
  ASSERT_FALSE(file.empty()) << "the ffmpeg tool (installed by scripts/setup.sh) could not make the test file";
  const double peak_before = peak_rss_bytes();
  try {
    (void)decode_audio(file, nullptr, DecodeLimits{60.0});
    FAIL() << "two hours of audio passed a 60 s limit";
  } catch (const AudioTooLong& e) {
    EXPECT_EQ(e.limit_seconds, 60.0);
    EXPECT_NE(std::string(e.what()).find("60 seconds"), std::string::npos) << e.what();
  }
  EXPECT_LT(peak_rss_bytes() - peak_before, 100e6) << "the decode went on past the limit";
}

TEST(AudioDecode, LimitAppliesToEveryPath) {
  Bytes pcm(2 * 16000 * 2);  // 2 s of 16 kHz mono int16: the direct WAV path
  const Bytes file = wav(1, 16, 16000, pcm, static_cast<std::uint32_t>(pcm.size()));
  EXPECT_THROW((void)decode_audio(file, nullptr, DecodeLimits{1.0}), AudioTooLong);
  EXPECT_EQ(decode_audio(file, nullptr, DecodeLimits{2.0}).size(), 32000u);
  EXPECT_EQ(decode_audio(file, nullptr, DecodeLimits{0.0}).size(), 32000u);  // 0: no limit
  EXPECT_THROW((void)decode_raw_pcm(pcm, PcmFormat::S16, 16000, 1, nullptr, DecodeLimits{1.5}), AudioTooLong);
  EXPECT_EQ(decode_raw_pcm(pcm, PcmFormat::S16, 16000, 1, nullptr, DecodeLimits{3.0}).size(), 32000u);
}

// Issue 12 defect 1: a reader decodes as it is read, so the two hours (460 MB as float) are
// read through and counted without being held.
TEST(AudioReader, ReadsHoursThroughWithoutHoldingThem) {
  const Bytes file = two_hours_of_opus_silence();
  ASSERT_FALSE(file.empty()) << "the ffmpeg tool (installed by scripts/setup.sh) could not make the test file";
  const double peak_before = peak_rss_bytes();
  const auto reader = open_audio(file);
  const std::size_t n = scan_audio(*reader);
  // each of the 120 copies of the minute brings its own Opus pre-roll
  EXPECT_NEAR(static_cast<double>(n) / 16000.0, 7200.0, 5.0);
#if defined(__SANITIZE_ADDRESS__)
  // its quarantine keeps every block FFmpeg freed over the two hours
  GTEST_SKIP() << "peak memory under AddressSanitizer is not the program's; the normal build checks it";
#endif
  EXPECT_LT(peak_rss_bytes() - peak_before, 100e6) << "the reader held the decoded hours";
}

// What a reader gives, read in pieces of any size and again after a rewind, is exactly what
// decode_audio gives: on the FFmpeg path (MP3, resampled) and the direct WAV path.
TEST(AudioReader, PassesEqualTheWholeDecode) {
  const auto mp3 = scratch() / "sweep.mp3";
  const std::string cmd = "ffmpeg -nostdin -loglevel error -y -f lavfi -i sine=f=300:d=7 -ar 44100 -c:a libmp3lame -b:a 64k '" +
                          mp3.string() + "'";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << "the ffmpeg tool (installed by scripts/setup.sh) could not make the test file";
  Bytes pcm;
  for (int i = 0; i < 40000; ++i) put_u16(pcm, static_cast<std::uint16_t>(static_cast<std::int16_t>(9000 * std::sin(0.02 * i))));
  const Bytes wav_file = wav(1, 16, 16000, pcm, static_cast<std::uint32_t>(pcm.size()));
  // the MP3 held after its first pass (7 s is under the default hold), and decoded at every pass
  for (const auto& [file, hold] : {std::pair{read_bytes(mp3), 600.0}, {read_bytes(mp3), 0.0}, {wav_file, 600.0}}) {
    const auto whole = decode_audio(file);
    const auto reader = open_audio(file, DecodeLimits{0.0, hold});
    for (const std::size_t piece : {std::size_t{1}, std::size_t{333}, std::size_t{70000}, std::size_t{1}}) {
      SCOPED_TRACE("pieces of " + std::to_string(piece) + ", hold " + std::to_string(hold));
      reader->rewind();
      std::vector<float> read;
      std::vector<float> buffer(piece);
      for (std::size_t n; (n = reader->read(buffer)) > 0;) read.insert(read.end(), buffer.begin(), buffer.begin() + n);
      EXPECT_EQ(read, whole);
    }
  }
}

// An MP3 with bytes overwritten all through it: FFmpeg's decoder logs a line for each
// damaged frame.
Bytes damaged_mp3() {
  const auto path = scratch() / "tone.mp3";
  const std::string cmd = "ffmpeg -nostdin -loglevel error -y -f lavfi -i sine=f=440:d=3 -c:a libmp3lame -b:a 32k '" +
                          path.string() + "'";
  if (std::system(cmd.c_str()) != 0) return {};
  Bytes bytes = read_bytes(path);
  std::uint32_t x = 12345;
  for (std::size_t i = 2000; i < bytes.size(); i += 97) {
    x = x * 1103515245u + 12345u;
    bytes[i] = static_cast<std::byte>(x >> 24);
  }
  return bytes;
}

// Issue 12 defect 9: FFmpeg's lines reached stderr unprefixed; routed, they reach the
// program's sink as whole lines, and only while the route lives.
TEST(FfmpegLog, RouteHandsWholeLinesToTheSink) {
  const Bytes file = damaged_mp3();
  ASSERT_FALSE(file.empty()) << "the ffmpeg tool (installed by scripts/setup.sh) could not make the test file";
  std::mutex m;
  std::vector<std::string> lines;
  {
    FfmpegLogRoute route([&](std::string_view line) {
      std::lock_guard lock(m);
      lines.emplace_back(line);
    });
    EXPECT_THROW(FfmpegLogRoute second([](std::string_view) {}), InternalError);  // one route at a time
    try {
      (void)decode_audio(file);
    } catch (const Error&) {  // damaged enough to fail is fine: the log is what is tested
    }
  }
  ASSERT_FALSE(lines.empty()) << "FFmpeg logged nothing through the route";
  for (const auto& l : lines) {
    EXPECT_EQ(l.find('\n'), std::string::npos) << l;
    EXPECT_EQ(l.rfind("[mp3", 0), 0u) << "not one whole line with FFmpeg's context: " << l;
  }
  const auto seen = lines.size();
  FfmpegLogRoute again([&](std::string_view line) { lines.emplace_back(line); });  // the first one is gone
  EXPECT_EQ(lines.size(), seen);
}

}  // namespace
}  // namespace amanuensis::audio

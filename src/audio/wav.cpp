// audio: the RIFF/WAVE reader (16 kHz mono 16-bit PCM only; other formats are rejected
// with a message that says how to convert them).
#include "audio/wav.h"

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <optional>
#include <string>
#include <system_error>

#include "common/error.h"

namespace amanuensis::audio {
namespace {

constexpr std::uint16_t kFormatPcm = 1;
constexpr std::uint16_t kFormatIeeeFloat = 3;
constexpr std::uint16_t kFormatALaw = 6;
constexpr std::uint16_t kFormatMuLaw = 7;
constexpr std::uint16_t kFormatExtensible = 0xFFFE;
constexpr std::size_t kRiffHeaderSize = 12;  // "RIFF", size, "WAVE"
constexpr std::size_t kChunkHeaderSize = 8;  // id, size
constexpr std::size_t kFmtMinSize = 16;
constexpr std::size_t kFmtExtensibleSize = 40;
constexpr std::size_t kSubformatOffset = 24;  // GUID inside an extensible fmt chunk
// KSDATAFORMAT_SUBTYPE_* GUIDs share these 14 bytes after the 2-byte format code.
constexpr std::uint8_t kGuidTail[14] = {0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x80,
                                        0x00, 0x00, 0xAA, 0x00, 0x38, 0x9B, 0x71};

const char* const kRequirement =
    "amanuensis currently reads only 16 kHz mono 16-bit PCM WAV files; convert with e.g. "
    "`ffmpeg -i input -ar 16000 -ac 1 -c:a pcm_s16le output.wav`";

std::uint16_t read_u16(std::span<const std::byte> bytes, std::size_t at) {
  return static_cast<std::uint16_t>(std::to_integer<unsigned>(bytes[at]) |
                                    (std::to_integer<unsigned>(bytes[at + 1]) << 8));
}

std::uint32_t read_u32(std::span<const std::byte> bytes, std::size_t at) {
  return static_cast<std::uint32_t>(read_u16(bytes, at)) | (static_cast<std::uint32_t>(read_u16(bytes, at + 2)) << 16);
}

bool has_tag(std::span<const std::byte> bytes, std::size_t at, const char (&tag)[5]) {
  for (std::size_t i = 0; i < 4; ++i) {
    if (std::to_integer<char>(bytes[at + i]) != tag[i]) return false;
  }
  return true;
}

// Chunk ids are four ASCII characters; anything else is shown as hex so that a garbage
// file still produces a readable message.
std::string printable_tag(std::span<const std::byte> bytes, std::size_t at) {
  std::string text;
  bool printable = true;
  for (std::size_t i = 0; i < 4; ++i) {
    const auto c = std::to_integer<unsigned char>(bytes[at + i]);
    printable = printable && c >= 0x20 && c < 0x7F;
    text += static_cast<char>(c);
  }
  if (printable) return "'" + text + "'";
  static const char* const kHex = "0123456789abcdef";
  std::string hex = "0x";
  for (unsigned char c : text) {
    hex += kHex[c >> 4];
    hex += kHex[c & 0xF];
  }
  return hex;
}

struct Chunk {
  std::size_t offset;     // of the chunk header
  std::uint32_t size;     // as declared
  std::size_t available;  // body bytes actually present (<= size when the file is cut short)
};

struct Format {
  std::uint16_t encoding;  // format tag, or the subformat of an extensible chunk
  std::uint16_t channels;
  std::uint32_t sample_rate;
  std::uint16_t bits_per_sample;
};

std::string encoding_name(std::uint16_t encoding) {
  switch (encoding) {
    case kFormatPcm: return "PCM";
    case kFormatIeeeFloat: return "IEEE float";
    case kFormatALaw: return "A-law";
    case kFormatMuLaw: return "mu-law";
    default: return "format code " + std::to_string(encoding);
  }
}

void check_riff_header(std::span<const std::byte> bytes) {
  if (bytes.empty()) throw Error("not a WAV file: the input is empty");
  if (bytes.size() >= 4 && !has_tag(bytes, 0, "RIFF")) {
    throw Error("not a RIFF/WAVE file (it starts with " + printable_tag(bytes, 0) + ", expected 'RIFF'); " +
                kRequirement);
  }
  if (bytes.size() < kRiffHeaderSize) {
    throw Error("truncated WAV file: the RIFF header needs 12 bytes but the file ends at byte " +
                std::to_string(bytes.size()));
  }
  if (!has_tag(bytes, 8, "WAVE")) {
    throw Error("not a RIFF/WAVE file (RIFF form type is " + printable_tag(bytes, 8) + ", expected 'WAVE')");
  }
}

// Reads the chunk header at `offset`; the body may be shorter than declared.
Chunk read_chunk_header(std::span<const std::byte> bytes, std::size_t offset) {
  if (bytes.size() - offset < kChunkHeaderSize) {
    throw Error("truncated WAV file: chunk header at byte " + std::to_string(offset) +
                " needs 8 bytes but the file ends at byte " + std::to_string(bytes.size()));
  }
  const std::uint32_t size = read_u32(bytes, offset + 4);
  const std::size_t body = offset + kChunkHeaderSize;
  const std::size_t available = std::min<std::size_t>(size, bytes.size() - body);
  return {offset, size, available};
}

Format parse_fmt(std::span<const std::byte> bytes, const Chunk& chunk) {
  const std::size_t body = chunk.offset + kChunkHeaderSize;
  if (chunk.available < chunk.size) {
    throw Error("truncated WAV file: the fmt chunk at byte " + std::to_string(chunk.offset) + " declares " +
                std::to_string(chunk.size) + " bytes but the file ends at byte " + std::to_string(bytes.size()));
  }
  if (chunk.size < kFmtMinSize) {
    throw Error("malformed WAV file: the fmt chunk at byte " + std::to_string(chunk.offset) + " is " +
                std::to_string(chunk.size) + " bytes, at least 16 are required");
  }
  Format format{read_u16(bytes, body), read_u16(bytes, body + 2), read_u32(bytes, body + 4),
                read_u16(bytes, body + 14)};
  if (format.encoding == kFormatExtensible) {
    if (chunk.size < kFmtExtensibleSize) {
      throw Error("malformed WAV file: the WAVE_FORMAT_EXTENSIBLE fmt chunk at byte " + std::to_string(chunk.offset) +
                  " is " + std::to_string(chunk.size) + " bytes, 40 are required");
    }
    const std::size_t guid = body + kSubformatOffset;
    format.encoding = read_u16(bytes, guid);
    for (std::size_t i = 0; i < sizeof kGuidTail; ++i) {
      // An unknown GUID is not any of the standard subformats: report it as unsupported.
      if (std::to_integer<std::uint8_t>(bytes[guid + 2 + i]) != kGuidTail[i]) format.encoding = kFormatExtensible;
    }
  }
  return format;
}

void check_supported(const Format& format) {
  if (format.encoding == kFormatPcm && format.bits_per_sample == 16 && format.channels == 1 &&
      format.sample_rate == static_cast<std::uint32_t>(kSampleRate)) {
    return;
  }
  const std::string encoding =
      format.encoding == kFormatExtensible ? "an unknown WAVE_FORMAT_EXTENSIBLE subformat" : encoding_name(format.encoding);
  throw Error("unsupported WAV audio: found " + std::to_string(format.sample_rate) + " Hz, " +
              std::to_string(format.channels) + (format.channels == 1 ? " channel, " : " channels, ") +
              std::to_string(format.bits_per_sample) + "-bit " + encoding + "; " + kRequirement);
}

// The data chunk may run past the end of the file (streamed WAVs often leave its size at
// 0 or 0xFFFFFFFF): take the whole samples that are present, dropping an odd last byte.
std::span<const std::byte> sample_bytes(std::span<const std::byte> bytes, const Chunk& chunk) {
  return bytes.subspan(chunk.offset + kChunkHeaderSize, chunk.available & ~std::size_t{1});
}

}  // namespace

float pcm16_sample(std::span<const std::byte> data, std::size_t index) {
  return static_cast<float>(static_cast<std::int16_t>(read_u16(data, 2 * index))) / 32768.0f;
}

std::vector<float> decode_wav(std::span<const std::byte> bytes) {
  const auto data = wav_pcm16_data(bytes);
  std::vector<float> samples(data.size() / 2);
  for (std::size_t i = 0; i < samples.size(); ++i) samples[i] = pcm16_sample(data, i);
  return samples;
}

std::span<const std::byte> wav_pcm16_data(std::span<const std::byte> bytes) {
  check_riff_header(bytes);
  // The RIFF size field is not trusted (streamed files leave it wrong): chunks are walked
  // to the end of the bytes we actually have.
  std::optional<Format> format;
  std::size_t offset = kRiffHeaderSize;
  while (offset < bytes.size()) {
    const Chunk chunk = read_chunk_header(bytes, offset);
    if (has_tag(bytes, offset, "fmt ")) {
      format = parse_fmt(bytes, chunk);
      check_supported(*format);
    } else if (has_tag(bytes, offset, "data")) {
      if (!format) {
        throw Error("malformed WAV file: the data chunk at byte " + std::to_string(offset) +
                    " comes before any fmt chunk, so its encoding is unknown");
      }
      return sample_bytes(bytes, chunk);
    }
    // Chunk bodies are padded to an even length; the pad byte is not counted in `size`.
    const std::uint64_t next = std::uint64_t{offset} + kChunkHeaderSize + chunk.size + (chunk.size & 1u);
    if (next >= bytes.size()) break;
    offset = static_cast<std::size_t>(next);
  }
  if (!format) throw Error("malformed WAV file: no fmt chunk (the audio format is not described)");
  throw Error("malformed WAV file: no data chunk (the file holds no audio samples)");
}

std::vector<float> read_wav_file(const std::filesystem::path& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) {
    throw Error("cannot read audio file '" + path.string() + "': it is a directory");
  }
  std::ifstream file(path, std::ios::binary);
  if (!file) {
    const bool exists = std::filesystem::exists(path, ec);
    throw Error("cannot open audio file '" + path.string() + "': " +
                (exists ? "permission denied or unreadable" : "no such file"));
  }
  std::vector<std::byte> bytes;
  char buffer[1 << 16];
  while (file.read(buffer, sizeof buffer) || file.gcount() > 0) {
    const auto* first = reinterpret_cast<const std::byte*>(buffer);
    bytes.insert(bytes.end(), first, first + file.gcount());
  }
  if (file.bad()) throw Error("cannot read audio file '" + path.string() + "': read error");
  try {
    return decode_wav(bytes);
  } catch (const Error& e) {
    throw Error("'" + path.string() + "': " + e.what());
  }
}

}  // namespace amanuensis::audio

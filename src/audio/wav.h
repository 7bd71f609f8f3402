// audio: reading audio files into the 16 kHz mono float samples the mel frontend takes.
#pragma once

#include <cstddef>
#include <filesystem>
#include <span>
#include <vector>

namespace amanuensis::audio {

inline constexpr int kSampleRate = 16000;

// Parses a RIFF/WAVE file held in memory. Accepts PCM 16-bit, mono, 16 kHz (skipping
// any chunks such as LIST before `data`); returns samples as int16 / 32768.
// Anything else (not RIFF/WAVE, another rate, channel count or encoding, a truncated
// header, no data chunk) throws amanuensis::Error naming the problem.
std::vector<float> decode_wav(std::span<const std::byte> bytes);

// The same checks as decode_wav, without converting: the bytes of the whole 16-bit samples
// of the data chunk (an even count), inside `bytes`.
std::span<const std::byte> wav_pcm16_data(std::span<const std::byte> bytes);

// One 16-bit little-endian sample of such data, as decode_wav gives it (int16 / 32768).
float pcm16_sample(std::span<const std::byte> data, std::size_t index);

// Reads a file and decodes it with decode_wav. Missing/unreadable files throw Error.
std::vector<float> read_wav_file(const std::filesystem::path& path);

}  // namespace amanuensis::audio

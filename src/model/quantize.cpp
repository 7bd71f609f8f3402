#include "model/quantize.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cfloat>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

#include "common/error.h"
#include "common/fp16.h"

namespace amanuensis::model {
namespace {

constexpr std::uint32_t kMagic = 0x67676d6c;
constexpr int kBlock = 32;
constexpr int kHalf = kBlock / 2;
// ggml's quantization format version; a quantized file's ftype is ftype + 1000 * version.
constexpr std::int32_t kQuantVersion = 2;
constexpr std::int32_t kQuantVersionFactor = 1000;

void store_half(std::byte* p, float value) {
  const std::uint16_t h = float_to_half(value);
  std::memcpy(p, &h, sizeof h);
}

// The value of largest magnitude, sign kept (the first one on ties).
float signed_absmax(const float* x) {
  float amax = 0.0f;
  float max = 0.0f;
  for (int j = 0; j < kBlock; ++j) {
    if (amax < std::fabs(x[j])) {
      amax = std::fabs(x[j]);
      max = x[j];
    }
  }
  return max;
}

void block_min_max(const float* x, float& min, float& max) {
  min = FLT_MAX;
  max = -FLT_MAX;
  for (int j = 0; j < kBlock; ++j) {
    if (x[j] < min) min = x[j];
    if (x[j] > max) max = x[j];
  }
}

// Low 4 bits of value j go to byte j % 16 (low nibble for the first half of the block,
// high nibble for the second), the layout the dequantizer reads.
void pack_nibbles(const int* q, std::byte* qs) {
  for (int j = 0; j < kHalf; ++j) qs[j] = static_cast<std::byte>((q[j] & 0x0f) | ((q[j + kHalf] & 0x0f) << 4));
}
// Bit 4 of value j goes to bit j of a little-endian uint32.
void pack_fifth_bits(const int* q, std::byte* qh) {
  std::uint32_t bits = 0;
  for (int j = 0; j < kBlock; ++j) bits |= static_cast<std::uint32_t>((q[j] >> 4) & 1) << j;
  std::memcpy(qh, &bits, sizeof bits);
}

// q8_0: 34 bytes, scale d = absmax / 127 then 32 int8 values round(x / d).
void quantize_q8_0(const float* x, std::byte* out) {
  float amax = 0.0f;
  for (int j = 0; j < kBlock; ++j) amax = std::max(amax, std::fabs(x[j]));
  const float d = amax / 127.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  store_half(out, d);
  for (int j = 0; j < kBlock; ++j) {
    out[2 + j] = static_cast<std::byte>(static_cast<std::int8_t>(std::round(x[j] * id)));
  }
}

// q4_0 / q5_0 (symmetric, `bits` wide): d = (signed absmax) / -2^(bits-1), values
// x / d + 2^(bits-1) truncated after adding one half, capped at 2^bits - 1.
void quantize_symmetric(const float* x, int bits, int* q, float& d) {
  const int offset = 1 << (bits - 1);
  const int top = (1 << bits) - 1;
  d = signed_absmax(x) / static_cast<float>(-offset);
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  const float shift = static_cast<float>(offset) + 0.5f;
  for (int j = 0; j < kBlock; ++j) q[j] = std::min(top, static_cast<int>(x[j] * id + shift));
}

// q4_1 / q5_1 (offset, `bits` wide): d = (max - min) / (2^bits - 1), m = min, values
// (x - min) / d truncated after adding one half (q4_1 capped at 15, as ggml does; q5_1 is not).
void quantize_offset(const float* x, int bits, bool cap, int* q, float& d, float& min) {
  float max;
  block_min_max(x, min, max);
  const int top = (1 << bits) - 1;
  d = (max - min) / static_cast<float>(top);
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  for (int j = 0; j < kBlock; ++j) {
    const int v = static_cast<int>((x[j] - min) * id + 0.5f);
    q[j] = cap ? std::min(top, v) : v;
  }
}

void quantize_block(TensorType type, const float* x, std::byte* out) {
  int q[kBlock];
  float d = 0.0f;
  float m = 0.0f;
  switch (type) {
    case TensorType::Q8_0:
      quantize_q8_0(x, out);
      return;
    case TensorType::Q4_0:  // d, 16 bytes of nibbles
      quantize_symmetric(x, 4, q, d);
      store_half(out, d);
      pack_nibbles(q, out + 2);
      return;
    case TensorType::Q5_0:  // d, 4 bytes of fifth bits, 16 bytes of nibbles
      quantize_symmetric(x, 5, q, d);
      store_half(out, d);
      pack_fifth_bits(q, out + 2);
      pack_nibbles(q, out + 6);
      return;
    case TensorType::Q4_1:  // d, m, 16 bytes of nibbles
      quantize_offset(x, 4, /*cap=*/true, q, d, m);
      store_half(out, d);
      store_half(out + 2, m);
      pack_nibbles(q, out + 4);
      return;
    case TensorType::Q5_1:  // d, m, 4 bytes of fifth bits, 16 bytes of nibbles
      quantize_offset(x, 5, /*cap=*/false, q, d, m);
      store_half(out, d);
      store_half(out + 2, m);
      pack_fifth_bits(q, out + 4);
      pack_nibbles(q, out + 8);
      return;
    case TensorType::F32:
    case TensorType::F16:
      break;
  }
  throw InternalError("quantize_block called for " + std::string(tensor_type_name(type)));
}

// The output file: written under a temporary name beside the target, renamed into place by
// commit(), removed if anything fails before.
class OutputFile {
 public:
  explicit OutputFile(const std::filesystem::path& target)
      : target_(target), partial_(target.string() + ".partial") {
    std::error_code ec;
    if (std::filesystem::is_directory(target_, ec)) throw Error("cannot write " + target_.string() + ": it is a directory");
    file_ = std::fopen(partial_.c_str(), "wb");
    if (!file_) throw Error("cannot write " + target_.string() + ": " + std::strerror(errno));
  }
  OutputFile(const OutputFile&) = delete;
  OutputFile& operator=(const OutputFile&) = delete;
  ~OutputFile() {
    if (file_) std::fclose(file_);
    if (!committed_) std::remove(partial_.c_str());
  }

  void write(const void* data, std::size_t n) {
    if (n != 0 && std::fwrite(data, 1, n, file_) != n) fail();
    written_ += n;
  }
  template <typename T>
  void write_value(T value) {
    write(&value, sizeof value);
  }
  std::size_t written() const { return written_; }

  void commit() {
    if (std::fflush(file_) != 0 || ::fsync(fileno(file_)) != 0) fail();
    const int rc = std::fclose(file_);
    file_ = nullptr;
    if (rc != 0) fail();
    if (std::rename(partial_.c_str(), target_.c_str()) != 0) fail();
    committed_ = true;
  }

 private:
  [[noreturn]] void fail() { throw Error("cannot write " + target_.string() + ": " + std::strerror(errno)); }

  std::filesystem::path target_;
  std::string partial_;
  std::FILE* file_ = nullptr;
  std::size_t written_ = 0;
  bool committed_ = false;
};

std::vector<float> tensor_values(const TensorView& t) {
  std::vector<float> values(static_cast<std::size_t>(t.elements()));
  if (t.type == TensorType::F32) {
    std::memcpy(values.data(), t.data.data(), values.size() * sizeof(float));
  } else {
    for (std::size_t i = 0; i < values.size(); ++i) {
      std::uint16_t h;
      std::memcpy(&h, t.data.data() + 2 * i, sizeof h);
      values[i] = half_to_float(h);
    }
  }
  return values;
}

}  // namespace

TensorType parse_quantization_type(std::string_view name) {
  for (TensorType type : {TensorType::Q8_0, TensorType::Q5_0, TensorType::Q5_1, TensorType::Q4_0, TensorType::Q4_1}) {
    if (name == tensor_type_name(type)) return type;
  }
  throw Error("unknown quantization type '" + std::string(name) + "' (supported: q8_0, q5_0, q5_1, q4_0, q4_1)");
}

std::int32_t quantized_ftype(TensorType type) {
  std::int32_t ftype = 0;
  switch (type) {  // ggml's file type codes (not its tensor type codes)
    case TensorType::Q4_0: ftype = 2; break;
    case TensorType::Q4_1: ftype = 3; break;
    case TensorType::Q8_0: ftype = 7; break;
    case TensorType::Q5_0: ftype = 8; break;
    case TensorType::Q5_1: ftype = 9; break;
    case TensorType::F32:
    case TensorType::F16:
      throw InternalError("quantized_ftype called for " + std::string(tensor_type_name(type)));
  }
  return ftype + kQuantVersion * kQuantVersionFactor;
}

bool is_quantizable(std::string_view name, int n_dims) {
  if (n_dims != 2) return false;
  return name != "encoder.conv1.bias" && name != "encoder.conv2.bias" && name != "encoder.positional_embedding" &&
         name != "decoder.positional_embedding";
}

void quantize_values(TensorType type, std::span<const float> values, std::span<std::byte> out) {
  if (values.size() % kBlock != 0) throw InternalError("quantize_values needs a multiple of 32 values");
  const std::size_t block_bytes = tensor_bytes(type, kBlock);
  if (out.size() != values.size() / kBlock * block_bytes) throw InternalError("quantize_values output size");
  for (std::size_t b = 0; b < values.size() / kBlock; ++b) {
    quantize_block(type, values.data() + b * kBlock, out.data() + b * block_bytes);
  }
}

QuantizeSummary quantize_model_file(const std::filesystem::path& in, const std::filesystem::path& out, TensorType type) {
  const std::int32_t ftype = quantized_ftype(type);
  const ModelFile model = ModelFile::open(in);
  const HyperParams& hp = model.hparams();
  if (hp.ftype != 0 && hp.ftype != 1) {
    throw Error(in.string() + " is already quantized (" + std::string(tensor_type_name(hp.weight_type())) +
                "); quantize from the f32 or f16 model");
  }
  QuantizeSummary summary;
  summary.source_type = hp.weight_type();
  summary.bytes_in = model.size_bytes();

  OutputFile file(out);
  file.write_value(kMagic);
  for (std::int32_t field : {hp.n_vocab, hp.n_audio_ctx, hp.n_audio_state, hp.n_audio_head, hp.n_audio_layer,
                             hp.n_text_ctx, hp.n_text_state, hp.n_text_head, hp.n_text_layer, hp.n_mels, ftype}) {
    file.write_value(field);
  }
  file.write_value<std::int32_t>(model.filter_n_mels());
  file.write_value<std::int32_t>(model.filter_n_fft());
  file.write(model.mel_filters().data(), model.mel_filters().size_bytes());
  file.write_value(static_cast<std::int32_t>(model.vocabulary().size()));
  for (const std::string& piece : model.vocabulary()) {
    file.write_value(static_cast<std::uint32_t>(piece.size()));
    file.write(piece.data(), piece.size());
  }

  std::vector<std::byte> quantized;
  for (const std::string& name : model.tensor_order()) {
    const TensorView& t = model.tensor(name);
    const bool convert = is_quantizable(t.name, t.n_dims);
    if (convert && t.type != TensorType::F32 && t.type != TensorType::F16) {
      throw Error(in.string() + ": tensor " + t.name + " is " + std::string(tensor_type_name(t.type)) +
                  "; only f32 and f16 tensors can be quantized");
    }
    if (convert && t.extents[0] % kBlock != 0) {
      throw Error(in.string() + ": tensor " + t.name + " has rows of " + std::to_string(t.extents[0]) +
                  " values, which do not split into blocks of 32");
    }
    file.write_value<std::int32_t>(t.n_dims);
    file.write_value(static_cast<std::int32_t>(t.name.size()));
    file.write_value(static_cast<std::int32_t>(convert ? type : t.type));
    for (int i = 0; i < t.n_dims; ++i) file.write_value(static_cast<std::int32_t>(t.extents[i]));
    file.write(t.name.data(), t.name.size());
    if (convert) {
      quantized.resize(tensor_bytes(type, t.elements()));
      quantize_values(type, tensor_values(t), quantized);
      file.write(quantized.data(), quantized.size());
      ++summary.quantized;
    } else {
      file.write(t.data.data(), t.data.size());
    }
    ++summary.tensors;
  }
  summary.bytes_out = file.written();
  file.commit();
  return summary;
}

}  // namespace amanuensis::model

// model: reads Whisper models in whisper.cpp's legacy ggml file format: hyper-parameters,
// mel filterbank, vocabulary and every tensor, from the file read into memory (not mapped:
// see ModelFile::Storage in ggml_file.cpp).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace amanuensis::model {

// Tensor element types as stored in the file (ggml type codes, not ftype codes).
enum class TensorType : std::int32_t { F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8 };

std::string_view tensor_type_name(TensorType type);
// Bytes taken by `elements` consecutive values (quantized types: whole 32-value blocks).
std::size_t tensor_bytes(TensorType type, std::int64_t elements);
bool is_quantized(TensorType type);

struct HyperParams {
  std::int32_t n_vocab = 0;
  std::int32_t n_audio_ctx = 0;
  std::int32_t n_audio_state = 0;
  std::int32_t n_audio_head = 0;
  std::int32_t n_audio_layer = 0;
  std::int32_t n_text_ctx = 0;
  std::int32_t n_text_state = 0;
  std::int32_t n_text_head = 0;
  std::int32_t n_text_layer = 0;
  std::int32_t n_mels = 0;
  std::int32_t ftype = 0;

  bool is_multilingual() const { return n_vocab >= 51865; }
  // Weight type of 2-D tensors, from ftype (quantized files store 1000*version + ftype).
  TensorType weight_type() const;
  // The official model size these dimensions correspond to ("tiny", "base", ..., "large"),
  // or "custom".
  std::string_view size_name() const;
};

// One tensor of the file. `extents` are PyTorch's shape reversed (fastest-varying first),
// as the file stores them; `data` points into the file's bytes (until release_tensors).
struct TensorView {
  std::string name;
  TensorType type = TensorType::F32;
  int n_dims = 0;
  std::array<std::int64_t, 3> extents{1, 1, 1};
  std::span<const std::byte> data;

  std::int64_t elements() const { return extents[0] * extents[1] * extents[2]; }
  // As a matrix: rows = PyTorch's first dimension, columns = all the others.
  std::int64_t rows() const { return extents[n_dims - 1]; }
  std::int64_t cols() const { return elements() / rows(); }
};

class ModelFile {
 public:
  // Reads and validates the file: magic, header, filters, vocabulary, and every tensor
  // Whisper needs, with the shape and type the header implies. Throws amanuensis::Error
  // naming the problem (bad magic, tensor X has wrong shape, file ends at byte N while
  // tensor X needs M, ...).
  static ModelFile open(const std::filesystem::path& path);
  // Same over bytes already in memory (the bytes must outlive the model).
  static ModelFile parse(std::span<const std::byte> bytes, std::string source_name);

  const HyperParams& hparams() const { return hparams_; }
  int filter_n_mels() const { return filter_n_mels_; }
  int filter_n_fft() const { return filter_n_fft_; }
  std::span<const float> mel_filters() const { return mel_filters_; }  // [n_mel][n_fft]
  const std::vector<std::string>& vocabulary() const { return vocabulary_; }
  const std::filesystem::path& path() const { return path_; }
  std::size_t size_bytes() const { return size_bytes_; }

  // Throws Error if the file has no tensor of that name.
  const TensorView& tensor(const std::string& name) const;
  bool has_tensor(const std::string& name) const { return tensors_.count(name) != 0; }
  const std::map<std::string, TensorView>& tensors() const { return tensors_; }
  // Tensor names in the order the file stores them.
  const std::vector<std::string>& tensor_order() const { return tensor_order_; }

  // Frees the file's bytes and forgets the tensors: call it once the weights are copied
  // into the backend's own storage, so that the model does not count twice in memory.
  // The header, filters and vocabulary stay; tensor() is then an InternalError (a bug),
  // never a read of freed memory.
  void release_tensors();

  // Forgets one tensor whose values the caller has copied, and gives the memory pages
  // that lie wholly inside its bytes back to the system, so that a load which releases
  // each tensor as it packs it never holds the whole file beside the packed weights.
  // tensor(name) is then an InternalError. Pages are only given back when this ModelFile
  // is the only one sharing its bytes (a copy keeps reading them).
  void release_tensor(const std::string& name);

 private:
  struct Storage;
  std::shared_ptr<Storage> storage_;  // keeps the bytes alive; shared so models can copy cheaply
  std::span<const std::byte> bytes_;
  std::size_t size_bytes_ = 0;
  bool released_ = false;
  std::filesystem::path path_;
  HyperParams hparams_;
  int filter_n_mels_ = 0;
  int filter_n_fft_ = 0;
  std::vector<float> mel_filters_;
  std::vector<std::string> vocabulary_;
  std::map<std::string, TensorView> tensors_;
  std::vector<std::string> tensor_order_;
  std::vector<std::string> released_tensors_;  // by release_tensor, for tensor()'s message
};

// Expected tensor table for a header: name -> (type class, PyTorch-order shape).
struct ExpectedTensor {
  std::string name;
  std::vector<std::int64_t> shape;  // PyTorch order
  bool is_weight_matrix = false;    // takes the file's weight type (else f32, or f16 conv)
  bool is_conv_kernel = false;
};
std::vector<ExpectedTensor> expected_tensors(const HyperParams& hp);

}  // namespace amanuensis::model

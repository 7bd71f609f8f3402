#include "model/ggml_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>
#include <new>
#include <sstream>

#include "common/error.h"

namespace amanuensis::model {
namespace {

constexpr std::uint32_t kMagic = 0x67676d6c;  // "ggml" read as a little-endian uint32
constexpr std::int64_t kQuantBlock = 32;

std::string to_string_shape(std::span<const std::int64_t> shape) {
  std::string s = "(";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + ")";
}

// Sequential reader over the file bytes that turns every overrun into a message naming
// what was being read and where the file ended.
class Reader {
 public:
  Reader(std::span<const std::byte> bytes, const std::string& source) : bytes_(bytes), source_(source) {}

  std::size_t offset() const { return offset_; }
  bool at_end() const { return offset_ == bytes_.size(); }

  std::span<const std::byte> take(std::size_t n, std::string_view what) {
    if (n > bytes_.size() - offset_) {
      std::ostringstream msg;
      msg << source_ << ": file ends at byte " << bytes_.size() << " while " << what << " needs "
          << n << " bytes from byte " << offset_ << " (truncated or corrupt model file)";
      throw Error(msg.str());
    }
    auto span = bytes_.subspan(offset_, n);
    offset_ += n;
    return span;
  }

  template <typename T>
  T read(std::string_view what) {
    T value;
    std::memcpy(&value, take(sizeof(T), what).data(), sizeof(T));
    return value;
  }

 private:
  std::span<const std::byte> bytes_;
  const std::string& source_;
  std::size_t offset_ = 0;
};

bool known_type(std::int32_t code) {
  switch (static_cast<TensorType>(code)) {
    case TensorType::F32: case TensorType::F16: case TensorType::Q4_0: case TensorType::Q4_1:
    case TensorType::Q5_0: case TensorType::Q5_1: case TensorType::Q8_0:
      return true;
  }
  return false;
}

HyperParams read_hparams(Reader& in, const std::string& source) {
  HyperParams hp;
  std::int32_t* fields[] = {&hp.n_vocab, &hp.n_audio_ctx, &hp.n_audio_state, &hp.n_audio_head,
                            &hp.n_audio_layer, &hp.n_text_ctx, &hp.n_text_state, &hp.n_text_head,
                            &hp.n_text_layer, &hp.n_mels, &hp.ftype};
  for (auto* field : fields) *field = in.read<std::int32_t>("the header");
  auto require = [&](bool ok, const std::string& what) {
    if (!ok) throw Error(source + ": invalid header: " + what);
  };
  require(hp.n_vocab >= 51864 && hp.n_vocab <= 51866,
          "n_vocab " + std::to_string(hp.n_vocab) + " (Whisper vocabularies have 51864-51866 tokens)");
  require(hp.n_audio_ctx > 0 && hp.n_audio_ctx <= 1500, "n_audio_ctx " + std::to_string(hp.n_audio_ctx));
  require(hp.n_text_ctx > 0 && hp.n_text_ctx <= 448, "n_text_ctx " + std::to_string(hp.n_text_ctx));
  require(hp.n_audio_state > 0 && hp.n_audio_state <= 4096, "n_audio_state " + std::to_string(hp.n_audio_state));
  require(hp.n_audio_state == hp.n_text_state, "n_audio_state " + std::to_string(hp.n_audio_state) +
                                                   " differs from n_text_state " + std::to_string(hp.n_text_state));
  require(hp.n_audio_head > 0 && hp.n_audio_state % hp.n_audio_head == 0,
          "n_audio_head " + std::to_string(hp.n_audio_head) + " does not divide the state size");
  require(hp.n_text_head > 0 && hp.n_text_state % hp.n_text_head == 0,
          "n_text_head " + std::to_string(hp.n_text_head) + " does not divide the state size");
  require(hp.n_audio_layer > 0 && hp.n_audio_layer <= 64, "n_audio_layer " + std::to_string(hp.n_audio_layer));
  require(hp.n_text_layer > 0 && hp.n_text_layer <= 64, "n_text_layer " + std::to_string(hp.n_text_layer));
  require(hp.n_mels == 80 || hp.n_mels == 128, "n_mels " + std::to_string(hp.n_mels) + " (expected 80 or 128)");
  (void)hp.weight_type();  // throws for an unknown ftype
  return hp;
}

}  // namespace

std::string_view tensor_type_name(TensorType type) {
  switch (type) {
    case TensorType::F32: return "f32";
    case TensorType::F16: return "f16";
    case TensorType::Q4_0: return "q4_0";
    case TensorType::Q4_1: return "q4_1";
    case TensorType::Q5_0: return "q5_0";
    case TensorType::Q5_1: return "q5_1";
    case TensorType::Q8_0: return "q8_0";
  }
  return "unknown";
}

bool is_quantized(TensorType type) { return type != TensorType::F32 && type != TensorType::F16; }

std::size_t tensor_bytes(TensorType type, std::int64_t elements) {
  auto blocks = static_cast<std::size_t>((elements + kQuantBlock - 1) / kQuantBlock);
  switch (type) {
    case TensorType::F32: return static_cast<std::size_t>(elements) * 4;
    case TensorType::F16: return static_cast<std::size_t>(elements) * 2;
    case TensorType::Q4_0: return blocks * 18;
    case TensorType::Q4_1: return blocks * 20;
    case TensorType::Q5_0: return blocks * 22;
    case TensorType::Q5_1: return blocks * 24;
    case TensorType::Q8_0: return blocks * 34;
  }
  return 0;
}

TensorType HyperParams::weight_type() const {
  switch (ftype % 1000) {
    case 0: return TensorType::F32;
    case 1: return TensorType::F16;
    case 2: return TensorType::Q4_0;
    case 3: return TensorType::Q4_1;
    case 7: return TensorType::Q8_0;
    case 8: return TensorType::Q5_0;
    case 9: return TensorType::Q5_1;
  }
  throw Error("unsupported ftype " + std::to_string(ftype) +
              " (supported: f32, f16, q8_0, q5_0, q5_1, q4_0, q4_1)");
}

std::string_view HyperParams::size_name() const {
  switch (n_audio_layer) {
    case 4: return n_audio_state == 384 ? "tiny" : "custom";
    case 6: return n_audio_state == 512 ? "base" : "custom";
    case 12: return n_audio_state == 768 ? "small" : "custom";
    case 24: return n_audio_state == 1024 ? "medium" : "custom";
    case 32: return n_audio_state == 1280 ? (n_text_layer == 4 ? "large-v3-turbo" : "large") : "custom";
  }
  return "custom";
}

std::vector<ExpectedTensor> expected_tensors(const HyperParams& hp) {
  const std::int64_t d = hp.n_audio_state;
  std::vector<ExpectedTensor> out;
  auto vec = [&](const std::string& name, std::int64_t n) { out.push_back({name, {n}, false, false}); };
  auto mat = [&](const std::string& name, std::int64_t rows, std::int64_t cols) {
    out.push_back({name, {rows, cols}, true, false});
  };
  auto attention = [&](const std::string& p, bool self) {
    mat(p + ".query.weight", d, d);
    vec(p + ".query.bias", d);
    mat(p + ".key.weight", d, d);
    mat(p + ".value.weight", d, d);
    vec(p + ".value.bias", d);
    mat(p + ".out.weight", d, d);
    vec(p + ".out.bias", d);
    (void)self;
  };
  auto block = [&](const std::string& p, bool cross) {
    attention(p + ".attn", true);
    vec(p + ".attn_ln.weight", d);
    vec(p + ".attn_ln.bias", d);
    if (cross) {
      attention(p + ".cross_attn", false);
      vec(p + ".cross_attn_ln.weight", d);
      vec(p + ".cross_attn_ln.bias", d);
    }
    mat(p + ".mlp.0.weight", 4 * d, d);
    vec(p + ".mlp.0.bias", 4 * d);
    mat(p + ".mlp.2.weight", d, 4 * d);
    vec(p + ".mlp.2.bias", d);
    vec(p + ".mlp_ln.weight", d);
    vec(p + ".mlp_ln.bias", d);
  };

  out.push_back({"encoder.positional_embedding", {hp.n_audio_ctx, d}, false, false});
  out.push_back({"encoder.conv1.weight", {d, hp.n_mels, 3}, false, true});
  out.push_back({"encoder.conv1.bias", {d, 1}, false, false});
  out.push_back({"encoder.conv2.weight", {d, d, 3}, false, true});
  out.push_back({"encoder.conv2.bias", {d, 1}, false, false});
  for (int i = 0; i < hp.n_audio_layer; ++i) block("encoder.blocks." + std::to_string(i), false);
  vec("encoder.ln_post.weight", d);
  vec("encoder.ln_post.bias", d);
  out.push_back({"decoder.positional_embedding", {hp.n_text_ctx, d}, false, false});
  mat("decoder.token_embedding.weight", hp.n_vocab, d);
  for (int i = 0; i < hp.n_text_layer; ++i) block("decoder.blocks." + std::to_string(i), true);
  vec("decoder.ln.weight", d);
  vec("decoder.ln.bias", d);
  return out;
}

// The file's bytes, read into memory rather than mapped: a mapping would tie the process
// to the file, and a file truncated or rewritten in place while the server runs would
// kill it with SIGBUS at the next touch of a page past the new end. Read, the bytes are
// the process's own; the load copies every tensor into the backend's storage and drops
// each one's pages as it goes (release_tensor), so the file and the packed weights are
// never resident together.
// The bytes are an anonymous private mapping (memory of the process, like the heap), so
// that release_tensor() can give a packed tensor's pages back with madvise.
struct ModelFile::Storage {
  std::byte* bytes = nullptr;
  std::size_t length = 0;
  std::size_t mapped = 0;

  explicit Storage(std::size_t n) : length(n), mapped(std::max<std::size_t>(1, n)) {
    void* p = ::mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    bytes = static_cast<std::byte*>(p);
  }
  ~Storage() { ::munmap(bytes, mapped); }
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  // The whole pages inside [from, from + n) back to the system (read as zeros afterwards).
  void discard(const std::byte* from, std::size_t n) const {
    const auto page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
    const auto begin = (reinterpret_cast<std::uintptr_t>(from) + page - 1) / page * page;
    const auto end = (reinterpret_cast<std::uintptr_t>(from) + n) / page * page;
    if (end > begin) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
  }
};

namespace {

// Reads the whole file of `length` bytes; a file that shrinks meanwhile (being replaced in
// place) is an Error, not a short model.
void read_all(int fd, std::byte* out, std::size_t length, const std::string& name) {
  std::size_t done = 0;
  while (done < length) {
    const auto n = ::pread(fd, out + done, std::min<std::size_t>(length - done, 1u << 30), static_cast<off_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw Error("cannot read model file " + name + ": " + std::strerror(errno));
    if (n == 0)
      throw Error("model file " + name + " ended at byte " + std::to_string(done) + " of " + std::to_string(length) +
                  " while it was read: was it being replaced? Load it again once it is written");
    done += static_cast<std::size_t>(n);
  }
}

// Closes the descriptor however open() leaves.
struct FileDescriptor {
  int fd;
  ~FileDescriptor() {
    if (fd >= 0) ::close(fd);
  }
};

}  // namespace

ModelFile ModelFile::open(const std::filesystem::path& path) {
  const std::string name = path.string();
  const FileDescriptor file{::open(name.c_str(), O_RDONLY | O_CLOEXEC)};
  if (file.fd < 0) throw Error("cannot open model file " + name + ": " + std::strerror(errno));
  struct stat st {};
  if (fstat(file.fd, &st) != 0 || !S_ISREG(st.st_mode)) throw Error("model path " + name + " is not a regular file");
  auto storage = std::make_shared<Storage>(static_cast<std::size_t>(st.st_size));
  read_all(file.fd, storage->bytes, storage->length, name);
  ModelFile model = parse({storage->bytes, storage->length}, name);
  model.storage_ = std::move(storage);
  model.path_ = path;
  return model;
}

void ModelFile::release_tensor(const std::string& name) {
  const auto it = tensors_.find(name);
  if (it == tensors_.end()) return;
  if (storage_ && storage_.use_count() == 1) storage_->discard(it->second.data.data(), it->second.data.size());
  tensors_.erase(it);
  released_tensors_.push_back(name);
}

void ModelFile::release_tensors() {
  tensors_.clear();
  bytes_ = {};
  storage_.reset();
  released_ = true;
}

ModelFile ModelFile::parse(std::span<const std::byte> bytes, std::string source) {
  ModelFile model;
  model.bytes_ = bytes;
  model.size_bytes_ = bytes.size();
  Reader in(bytes, source);

  const auto magic = in.read<std::uint32_t>("the magic number");
  if (magic != kMagic) {
    std::ostringstream msg;
    msg << source << ": bad magic 0x" << std::hex << magic << " (expected 0x" << kMagic
        << ", a whisper.cpp ggml .bin model; GGUF and PyTorch checkpoints are not supported)";
    throw Error(msg.str());
  }
  model.hparams_ = read_hparams(in, source);
  const HyperParams& hp = model.hparams_;

  model.filter_n_mels_ = in.read<std::int32_t>("the mel filter header");
  model.filter_n_fft_ = in.read<std::int32_t>("the mel filter header");
  if (model.filter_n_mels_ != hp.n_mels || model.filter_n_fft_ != 201) {
    throw Error(source + ": mel filterbank is " + std::to_string(model.filter_n_mels_) + " x " +
                std::to_string(model.filter_n_fft_) + ", expected " + std::to_string(hp.n_mels) + " x 201");
  }
  const auto filter_count = static_cast<std::size_t>(model.filter_n_mels_) * model.filter_n_fft_;
  auto filter_bytes = in.take(filter_count * sizeof(float), "the mel filterbank");
  model.mel_filters_.resize(filter_count);
  std::memcpy(model.mel_filters_.data(), filter_bytes.data(), filter_bytes.size());

  const auto vocab_count = in.read<std::int32_t>("the vocabulary size");
  if (vocab_count < 0 || vocab_count > hp.n_vocab) {
    throw Error(source + ": vocabulary holds " + std::to_string(vocab_count) + " entries, more than n_vocab " +
                std::to_string(hp.n_vocab));
  }
  model.vocabulary_.reserve(vocab_count);
  for (std::int32_t i = 0; i < vocab_count; ++i) {
    const auto what = "vocabulary entry " + std::to_string(i);
    const auto len = in.read<std::uint32_t>(what);
    if (len > 1024) throw Error(source + ": " + what + " claims " + std::to_string(len) + " bytes (corrupt vocabulary)");
    auto piece = in.take(len, what);
    model.vocabulary_.emplace_back(reinterpret_cast<const char*>(piece.data()), piece.size());
  }

  while (!in.at_end()) {
    TensorView t;
    t.n_dims = in.read<std::int32_t>("a tensor header");
    const auto name_len = in.read<std::int32_t>("a tensor header");
    const auto type_code = in.read<std::int32_t>("a tensor header");
    if (t.n_dims < 1 || t.n_dims > 3) {
      throw Error(source + ": tensor at byte " + std::to_string(in.offset() - 12) + " has " +
                  std::to_string(t.n_dims) + " dimensions (corrupt file)");
    }
    if (name_len <= 0 || name_len > 256) {
      throw Error(source + ": tensor at byte " + std::to_string(in.offset() - 12) + " has a name of " +
                  std::to_string(name_len) + " bytes (corrupt file)");
    }
    for (int i = 0; i < t.n_dims; ++i) {
      t.extents[i] = in.read<std::int32_t>("a tensor header");
      if (t.extents[i] <= 0) throw Error(source + ": tensor extent " + std::to_string(t.extents[i]) + " (corrupt file)");
    }
    auto name_bytes = in.take(name_len, "a tensor name");
    t.name.assign(reinterpret_cast<const char*>(name_bytes.data()), name_bytes.size());
    // Each extent is checked against what the limit leaves before it multiplies, so that the
    // product cannot overflow; no Whisper tensor comes near 2^40 values.
    constexpr std::int64_t kMaxElements = std::int64_t{1} << 40;
    std::int64_t elements = 1;
    for (int i = 0; i < t.n_dims; ++i) {
      if (t.extents[i] > kMaxElements / elements) {
        throw Error(source + ": tensor " + t.name + " claims an impossible size (corrupt file)");
      }
      elements *= t.extents[i];
    }
    if (!known_type(type_code)) {
      throw Error(source + ": tensor " + t.name + " has unknown type code " + std::to_string(type_code));
    }
    t.type = static_cast<TensorType>(type_code);
    if (is_quantized(t.type) && t.extents[0] % kQuantBlock != 0) {
      throw Error(source + ": tensor " + t.name + " is quantized but its row length " +
                  std::to_string(t.extents[0]) + " is not a multiple of 32");
    }
    t.data = in.take(tensor_bytes(t.type, t.elements()), "tensor " + t.name);
    if (model.tensors_.count(t.name)) throw Error(source + ": tensor " + t.name + " appears twice");
    model.tensor_order_.push_back(t.name);
    model.tensors_.emplace(t.name, std::move(t));
  }

  // A file with no tensors at all is a vocabulary-only file (whisper.cpp's test models);
  // it loads, and only the network refuses it.
  if (model.tensors_.empty()) return model;

  for (const auto& expected : expected_tensors(hp)) {
    auto it = model.tensors_.find(expected.name);
    if (it == model.tensors_.end()) throw Error(source + ": tensor " + expected.name + " is missing");
    const TensorView& t = it->second;
    std::vector<std::int64_t> shape;  // PyTorch order = stored extents reversed
    for (int i = t.n_dims - 1; i >= 0; --i) shape.push_back(t.extents[i]);
    if (shape != expected.shape) {
      throw Error(source + ": tensor " + expected.name + " has wrong shape " + to_string_shape(shape) +
                  ", expected " + to_string_shape(expected.shape) + " for this header");
    }
  }
  return model;
}

const TensorView& ModelFile::tensor(const std::string& name) const {
  // a bug: the weights are read from the file once, at load
  if (released_ || std::find(released_tensors_.begin(), released_tensors_.end(), name) != released_tensors_.end())
    throw InternalError(path_.string() + ": tensor " + name + " read after the model's bytes were released");
  auto it = tensors_.find(name);
  if (it == tensors_.end()) throw Error(path_.string() + ": model has no tensor " + name);
  return it->second;
}

}  // namespace amanuensis::model

// Tests of the ggml model file reader: every shipped model loads with the header the kit's
// README documents, and every kind of damage (truncation, bad magic, wrong shapes, unknown
// type codes, missing or duplicated tensors, nonsense header fields, random byte flips)
// ends in an amanuensis::Error that names the problem, never a crash.
//
// The damaged files are built from the bytes of micro.en-f16.bin. Where a tensor is
// patched, its header is located by an independent walk over the file layout (README
// "File format"), which is itself checked against the loader's view of the file.
#include <gtest/gtest.h>

#include <unistd.h>

#include <array>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "common/error.h"
#include "model/ggml_file.h"
#include "test_paths.h"

namespace amanuensis::model {
namespace {

namespace fs = std::filesystem;
using Bytes = std::vector<std::byte>;

Bytes read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path.string());
  in.seekg(0, std::ios::end);
  Bytes out(static_cast<std::size_t>(in.tellg()));
  in.seekg(0);
  in.read(reinterpret_cast<char*>(out.data()), static_cast<std::streamsize>(out.size()));
  if (!in) throw std::runtime_error("cannot read " + path.string());
  return out;
}

// The bytes of micro.en-f16.bin, read once for the whole file.
const Bytes& micro_bytes() {
  static const Bytes bytes = read_bytes(testing::conformance_dir() / "models" / "micro.en-f16.bin");
  return bytes;
}

std::int32_t get_i32(const Bytes& b, std::size_t at) {
  std::int32_t v;
  std::memcpy(&v, b.data() + at, 4);
  return v;
}
void put_i32(Bytes& b, std::size_t at, std::int32_t v) { std::memcpy(b.data() + at, &v, 4); }

// Byte offsets of one tensor record in the file.
struct TensorRecord {
  std::string name;
  std::size_t header = 0;   // n_dims
  std::size_t type_at = 0;  // int32 type code
  std::size_t extents_at = 0;
  std::size_t name_at = 0;
  std::size_t data_at = 0;
  std::size_t data_size = 0;
  int n_dims = 0;
  std::int32_t type = 0;
};

struct Layout {
  std::size_t filters_at = 0;  // first filter float (after n_mel, n_fft)
  std::size_t vocab_at = 0;    // vocabulary count
  std::size_t tensors_at = 0;  // first tensor record
  std::int32_t vocab_count = 0;
  std::vector<TensorRecord> tensors;

  const TensorRecord& tensor(const std::string& name) const {
    for (const auto& t : tensors)
      if (t.name == name) return t;
    throw std::runtime_error("no tensor " + name + " in the layout");
  }
};

// Independent of the loader: README "File format" plus the block sizes of the types.
std::size_t stored_bytes(std::int32_t type, std::int64_t elements) {
  const std::int64_t blocks = (elements + 31) / 32;
  switch (type) {
    case 0: return static_cast<std::size_t>(elements * 4);
    case 1: return static_cast<std::size_t>(elements * 2);
    case 2: return static_cast<std::size_t>(blocks * 18);
    case 3: return static_cast<std::size_t>(blocks * 20);
    case 6: return static_cast<std::size_t>(blocks * 22);
    case 7: return static_cast<std::size_t>(blocks * 24);
    case 8: return static_cast<std::size_t>(blocks * 34);
  }
  throw std::runtime_error("unexpected type code in a kit file");
}

Layout layout_of(const Bytes& b) {
  Layout l;
  const std::size_t filter_header = 4 + 11 * 4;
  const auto n_mel = get_i32(b, filter_header);
  const auto n_fft = get_i32(b, filter_header + 4);
  l.filters_at = filter_header + 8;
  l.vocab_at = l.filters_at + static_cast<std::size_t>(n_mel) * n_fft * 4;
  l.vocab_count = get_i32(b, l.vocab_at);
  std::size_t at = l.vocab_at + 4;
  for (std::int32_t i = 0; i < l.vocab_count; ++i) at += 4 + static_cast<std::uint32_t>(get_i32(b, at));
  l.tensors_at = at;
  while (at < b.size()) {
    TensorRecord t;
    t.header = at;
    t.n_dims = get_i32(b, at);
    const auto name_len = get_i32(b, at + 4);
    t.type_at = at + 8;
    t.type = get_i32(b, at + 8);
    t.extents_at = at + 12;
    std::int64_t elements = 1;
    for (int i = 0; i < t.n_dims; ++i) elements *= get_i32(b, t.extents_at + 4 * i);
    t.name_at = t.extents_at + 4 * static_cast<std::size_t>(t.n_dims);
    t.name.assign(reinterpret_cast<const char*>(b.data() + t.name_at), static_cast<std::size_t>(name_len));
    t.data_at = t.name_at + static_cast<std::size_t>(name_len);
    t.data_size = stored_bytes(t.type, elements);
    at = t.data_at + t.data_size;
    l.tensors.push_back(std::move(t));
  }
  return l;
}

const Layout& micro_layout() {
  static const Layout layout = layout_of(micro_bytes());
  return layout;
}

Bytes prefix(const Bytes& b, std::size_t n) { return Bytes(b.begin(), b.begin() + static_cast<std::ptrdiff_t>(n)); }

// Parses `bytes`, requires an amanuensis::Error and returns its message. Any other
// outcome (no error, another exception type) fails the calling test.
std::string parse_error(const Bytes& bytes) {
  try {
    ModelFile::parse(bytes, "damaged.bin");
  } catch (const Error& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected amanuensis::Error, got another exception: " << e.what();
    return {};
  }
  ADD_FAILURE() << "expected amanuensis::Error, but the bytes parsed";
  return {};
}

void expect_error_mentions(const Bytes& bytes, std::initializer_list<std::string> parts) {
  const std::string message = parse_error(bytes);
  for (const auto& part : parts) EXPECT_NE(message.find(part), std::string::npos) << "'" << part << "' not in: " << message;
}

// A temporary folder for the tests that go through ModelFile::open.
class TempDir {
 public:
  TempDir() {
    path_ = fs::temp_directory_path() / ("amanuensis_model_test_" + std::to_string(::getpid()));
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const fs::path& path() const { return path_; }
  fs::path write(const std::string& name, const Bytes& bytes) const {
    const auto file = path_ / name;
    std::ofstream out(file, std::ios::binary);
    out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    return file;
  }

 private:
  fs::path path_;
};

// ---------------------------------------------------------------------------------------
// Files that load

TEST(ModelFileLayout, IndependentWalkMatchesTheLoader) {
  const Bytes& bytes = micro_bytes();
  const Layout& l = micro_layout();
  ASSERT_EQ(bytes.size(), 8258876u);
  ASSERT_EQ(l.tensors.size(), 89u);
  const auto& last = l.tensors.back();
  EXPECT_EQ(last.data_at + last.data_size, bytes.size());

  const auto model = ModelFile::parse(bytes, "micro.en-f16.bin");
  ASSERT_EQ(model.tensors().size(), l.tensors.size());
  for (const auto& rec : l.tensors) {
    ASSERT_TRUE(model.has_tensor(rec.name)) << rec.name;
    const TensorView& t = model.tensor(rec.name);
    EXPECT_EQ(static_cast<std::size_t>(t.data.data() - bytes.data()), rec.data_at) << rec.name;
    EXPECT_EQ(t.data.size(), rec.data_size) << rec.name;
    EXPECT_EQ(t.n_dims, rec.n_dims) << rec.name;
    EXPECT_EQ(static_cast<std::int32_t>(t.type), rec.type) << rec.name;
  }
  EXPECT_EQ(static_cast<std::int32_t>(model.vocabulary().size()), l.vocab_count);
}

TEST(ModelFileLoad, MicroEnF16HyperParameters) {
  const auto path = testing::conformance_dir() / "models" / "micro.en-f16.bin";
  const auto model = ModelFile::open(path);
  const HyperParams& hp = model.hparams();
  EXPECT_EQ(hp.n_vocab, 51864);
  EXPECT_EQ(hp.n_audio_ctx, 1500);
  EXPECT_EQ(hp.n_audio_state, 64);
  EXPECT_EQ(hp.n_audio_head, 2);
  EXPECT_EQ(hp.n_audio_layer, 2);
  EXPECT_EQ(hp.n_text_ctx, 448);
  EXPECT_EQ(hp.n_text_state, 64);
  EXPECT_EQ(hp.n_text_head, 2);
  EXPECT_EQ(hp.n_text_layer, 2);
  EXPECT_EQ(hp.n_mels, 80);
  EXPECT_EQ(hp.ftype, 1);
  EXPECT_EQ(hp.weight_type(), TensorType::F16);
  EXPECT_FALSE(hp.is_multilingual());
  EXPECT_EQ(hp.size_name(), "custom");
  EXPECT_EQ(model.filter_n_mels(), 80);
  EXPECT_EQ(model.filter_n_fft(), 201);
  EXPECT_EQ(model.mel_filters().size(), 80u * 201u);
  EXPECT_EQ(model.size_bytes(), 8258876u);
  EXPECT_EQ(model.path(), path);
  EXPECT_EQ(model.tensors().size(), 89u);
  EXPECT_EQ(expected_tensors(hp).size(), 89u);
  // README "File format": the kit's vocabulary stores 50257 pieces; the rest are special
  ASSERT_EQ(model.vocabulary().size(), 50257u);
  EXPECT_EQ(model.vocabulary()[220], " ");
  EXPECT_EQ(model.vocabulary()[843], " And");
}

TEST(ModelFileLoad, TensorTypesAndShapesFollowTheReadmeTable) {
  const auto model = ModelFile::parse(micro_bytes(), "micro.en-f16.bin");
  for (const auto& e : expected_tensors(model.hparams())) {
    const TensorView& t = model.tensor(e.name);
    std::vector<std::int64_t> shape;
    for (int i = t.n_dims - 1; i >= 0; --i) shape.push_back(t.extents[i]);
    EXPECT_EQ(shape, e.shape) << e.name;
    const TensorType want = (e.is_weight_matrix || e.is_conv_kernel) ? TensorType::F16 : TensorType::F32;
    EXPECT_EQ(t.type, want) << e.name;
    EXPECT_EQ(t.data.size(), tensor_bytes(t.type, t.elements())) << e.name;
  }
  const TensorView& emb = model.tensor("decoder.token_embedding.weight");
  EXPECT_EQ(emb.rows(), 51864);
  EXPECT_EQ(emb.cols(), 64);
  EXPECT_THROW(model.tensor("no.such.tensor"), Error);
}

struct ShippedModel {
  const char* name;
  std::int32_t n_vocab;
  std::int32_t ftype;
  TensorType weight_type;
  std::size_t bytes;
};

TEST(ModelFileLoad, EveryKitModelLoadsWithItsWeightType) {
  const ShippedModel models[] = {
      {"micro.en-f16", 51864, 1, TensorType::F16, 8258876},
      {"micro.en-q8_0", 51864, 2007, TensorType::Q8_0, 4931996},
      {"micro.en-q5_1", 51864, 2009, TensorType::Q5_1, 3823036},
      {"micro.en-q4_0", 51864, 2002, TensorType::Q4_0, 3157660},
      {"micro-f16", 51865, 1, TensorType::F16, 8247619},
      {"micro.en-f32", 51864, 0, TensorType::F32, 15411516},      // generated at test time
      {"micro3.en-f16", 51864, 1, TensorType::F16, 8395520},      // generated at test time
  };
  for (const auto& m : models) {
    SCOPED_TRACE(m.name);
    const auto path = testing::model_path(m.name);
    ASSERT_TRUE(fs::exists(path)) << path;
    const auto model = ModelFile::open(path);
    const auto& hp = model.hparams();
    EXPECT_EQ(model.size_bytes(), m.bytes);
    EXPECT_EQ(hp.n_vocab, m.n_vocab);
    EXPECT_EQ(hp.ftype, m.ftype);
    EXPECT_EQ(hp.weight_type(), m.weight_type);
    EXPECT_EQ(hp.is_multilingual(), m.n_vocab >= 51865);
    const std::size_t expected = 11 + 15 * hp.n_audio_layer + 24 * hp.n_text_layer;
    EXPECT_EQ(expected_tensors(hp).size(), expected);
    EXPECT_EQ(model.tensors().size(), expected);
    // 2-D weight matrices take the file's weight type; conv kernels are f16 unless all-f32
    for (const auto& e : expected_tensors(hp)) {
      const TensorType type = model.tensor(e.name).type;
      if (e.is_weight_matrix) {
        EXPECT_EQ(type, m.weight_type) << e.name;
      } else if (e.is_conv_kernel) {
        EXPECT_EQ(type, m.weight_type == TensorType::F32 ? TensorType::F32 : TensorType::F16) << e.name;
      } else {
        EXPECT_EQ(type, TensorType::F32) << e.name;
      }
    }
  }
  EXPECT_EQ(ModelFile::open(testing::model_path("micro3.en-f16")).hparams().n_text_layer, 3);
}

TEST(ModelFileLoad, VocabularyOnlyFilesLoadWithoutTensors) {
  for (const auto& [file, n_vocab] : {std::pair{"vocab-en.bin", 51864}, std::pair{"vocab-multi.bin", 51865}}) {
    SCOPED_TRACE(file);
    const auto model = ModelFile::open(testing::conformance_dir() / file);
    EXPECT_EQ(model.hparams().n_vocab, n_vocab);
    EXPECT_TRUE(model.tensors().empty());
    EXPECT_GT(model.vocabulary().size(), 50000u);
    EXPECT_EQ(model.filter_n_mels(), 80);
    EXPECT_EQ(model.mel_filters().size(), 80u * 201u);
  }
}

TEST(ModelFileLoad, ModelOutlivesItsCopiesAndMoves) {
  std::vector<ModelFile> models;
  {
    auto model = ModelFile::open(testing::conformance_dir() / "models" / "micro.en-q4_0.bin");
    models.push_back(model);             // copy
    models.push_back(std::move(model));  // move
  }
  for (const auto& m : models) {
    const auto& t = m.tensor("encoder.conv1.bias");
    float first = 0.0f;
    std::memcpy(&first, t.data.data(), 4);  // the bytes must still be alive
    EXPECT_TRUE(std::isfinite(first));
  }
}

// A model file truncated (or rewritten in place) after it is opened, as when a model is
// replaced on disk while a server loads it: its tensors, read after the header to pack the
// weights, must still be the bytes opened. Over a memory map the pages past the new end
// were gone, and reading them killed the process with SIGBUS.
TEST(ModelFileLoad, TensorsStayReadableWhenTheFileIsTruncatedAfterOpen) {
  TempDir dir;
  const auto path = dir.write("micro.bin", micro_bytes());
  EXPECT_EXIT(
      {
        const auto model = ModelFile::open(path);
        fs::resize_file(path, 8);
        std::uint64_t sum = 0;
        for (const auto& [name, t] : model.tensors())
          for (const std::byte b : t.data) sum += std::to_integer<unsigned>(b);
        std::exit(sum > 0 ? 0 : 3);
      },
      ::testing::ExitedWithCode(0), "");
}

// Once the weights are packed the file's bytes are freed: the header, filters and
// vocabulary stay, and reading a tensor is a bug reported as one, not a read of freed memory.
TEST(ModelFileLoad, ReleasedTensorsAreAnInternalErrorNotAFreedRead) {
  auto model = ModelFile::open(testing::conformance_dir() / "models" / "micro.en-f16.bin");
  const auto size = model.size_bytes();
  model.release_tensors();
  EXPECT_TRUE(model.tensors().empty());
  EXPECT_EQ(model.size_bytes(), size);
  EXPECT_EQ(model.hparams().n_vocab, 51864);
  EXPECT_GT(model.vocabulary().size(), 50000u);
  EXPECT_EQ(model.mel_filters().size(), 80u * 201u);
  EXPECT_THROW((void)model.tensor("encoder.conv1.bias"), InternalError);
}

// Resident kB of this process (VmRSS).
long resident_kb() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line))
    if (line.rfind("VmRSS:", 0) == 0) return std::stol(line.substr(6));
  return -1;
}

// A load that releases each tensor as it packs it: the released tensor is a bug to read,
// the others keep their bytes, a copy sharing the bytes keeps reading them all, and
// without a copy the pages go back to the system as the tensors go.
TEST(ModelFileLoad, ReleasingATensorGivesItsPagesBack) {
  const auto path = testing::conformance_dir() / "models" / "micro.en-f16.bin";
  const std::string big = "decoder.token_embedding.weight";  // 51864 x 64 halves: 6.6 MB
  {
    auto model = ModelFile::open(path);
    const ModelFile copy = model;
    const std::vector<std::byte> expected(copy.tensor(big).data.begin(), copy.tensor(big).data.end());
    model.release_tensor(big);
    EXPECT_THROW((void)model.tensor(big), InternalError);
    EXPECT_NO_THROW((void)model.tensor("encoder.conv1.bias"));
    EXPECT_TRUE(std::equal(expected.begin(), expected.end(), copy.tensor(big).data.begin()))
        << "a copy's bytes changed when the original released the tensor";
  }
  auto model = ModelFile::open(path);
  std::uint64_t sum = 0;  // every page resident, as a load makes them
  for (const auto& [name, t] : model.tensors())
    for (const std::byte b : t.data) sum += std::to_integer<unsigned>(b);
  ASSERT_GT(sum, 0u);
  const long before = resident_kb();
  model.release_tensor(big);
  const long after = resident_kb();
  ASSERT_GT(before, 0);
  EXPECT_GE(before - after, 6000) << "resident " << before << " kB before releasing the 6.6 MB tensor, " << after << " after";
}

TEST(ModelFileExpectedTensors, CountFormulaAndUniqueNames) {
  for (int audio_layers : {1, 2, 4, 6, 32}) {
    for (int text_layers : {1, 2, 3, 4, 32}) {
      HyperParams hp;
      hp.n_vocab = 51865;
      hp.n_audio_ctx = 1500;
      hp.n_text_ctx = 448;
      hp.n_audio_state = hp.n_text_state = 384;
      hp.n_audio_head = hp.n_text_head = 6;
      hp.n_audio_layer = audio_layers;
      hp.n_text_layer = text_layers;
      hp.n_mels = 80;
      const auto tensors = expected_tensors(hp);
      EXPECT_EQ(tensors.size(), static_cast<std::size_t>(11 + 15 * audio_layers + 24 * text_layers));
      std::set<std::string> names;
      for (const auto& t : tensors) names.insert(t.name);
      EXPECT_EQ(names.size(), tensors.size());
      EXPECT_TRUE(names.count("encoder.blocks." + std::to_string(audio_layers - 1) + ".mlp_ln.bias"));
      EXPECT_FALSE(names.count("encoder.blocks." + std::to_string(audio_layers) + ".mlp_ln.bias"));
      EXPECT_TRUE(names.count("decoder.blocks." + std::to_string(text_layers - 1) + ".cross_attn.key.weight"));
      EXPECT_FALSE(names.count("encoder.blocks.0.attn.key.bias"));  // Whisper's key has no bias
    }
  }
}

// ---------------------------------------------------------------------------------------
// Truncation

TEST(ModelFileTruncated, EmptyInput) { expect_error_mentions({}, {"file ends at byte 0", "magic"}); }

TEST(ModelFileTruncated, InsideTheMagic) { expect_error_mentions(prefix(micro_bytes(), 3), {"file ends at byte 3"}); }

TEST(ModelFileTruncated, InsideTheHeader) {
  for (std::size_t n : {4u, 5u, 20u, 47u}) {
    SCOPED_TRACE(n);
    expect_error_mentions(prefix(micro_bytes(), n), {"file ends at byte " + std::to_string(n), "header"});
  }
}

TEST(ModelFileTruncated, InsideTheFilters) {
  const auto& l = micro_layout();
  for (std::size_t n : {l.filters_at - 6, l.filters_at + 1000, l.vocab_at - 1}) {
    SCOPED_TRACE(n);
    expect_error_mentions(prefix(micro_bytes(), n), {"file ends at byte " + std::to_string(n), "filter"});
  }
}

TEST(ModelFileTruncated, InsideTheVocabulary) {
  const auto& l = micro_layout();
  for (std::size_t n : {l.vocab_at + 2, l.vocab_at + 4 + 2, l.vocab_at + 5000, l.tensors_at - 1}) {
    SCOPED_TRACE(n);
    expect_error_mentions(prefix(micro_bytes(), n), {"file ends at byte " + std::to_string(n), "vocabulary"});
  }
}

TEST(ModelFileTruncated, InsideATensorHeaderOrName) {
  const auto& t = micro_layout().tensor("encoder.conv2.weight");
  expect_error_mentions(prefix(micro_bytes(), t.header + 6), {"file ends at byte", "tensor header"});
  expect_error_mentions(prefix(micro_bytes(), t.name_at + 3), {"file ends at byte", "tensor name"});
}

TEST(ModelFileTruncated, InsideATensorsDataNamesTheTensor) {
  const auto& l = micro_layout();
  for (const char* name : {"encoder.positional_embedding", "encoder.conv1.bias", "encoder.blocks.1.mlp.0.weight",
                           "decoder.token_embedding.weight", "decoder.ln.bias"}) {
    SCOPED_TRACE(name);
    const auto& t = l.tensor(name);
    for (std::size_t n : {t.data_at, t.data_at + t.data_size / 2, t.data_at + t.data_size - 1}) {
      const std::string msg = parse_error(prefix(micro_bytes(), n));
      EXPECT_NE(msg.find("file ends at byte " + std::to_string(n)), std::string::npos) << msg;
      EXPECT_NE(msg.find(std::string("tensor ") + name), std::string::npos) << msg;
      EXPECT_NE(msg.find(std::to_string(t.data_size)), std::string::npos) << "bytes needed: " << msg;
    }
  }
}

TEST(ModelFileTruncated, AtATensorBoundaryReportsTheFirstMissingTensor) {
  const auto& l = micro_layout();
  // the file ends cleanly after the tensor before decoder.ln.weight: everything parses,
  // but the last tensors are absent
  const auto& t = l.tensor("decoder.ln.weight");
  expect_error_mentions(prefix(micro_bytes(), t.header), {"decoder.ln.weight", "missing"});
  // cut just after the first tensor
  expect_error_mentions(prefix(micro_bytes(), l.tensors[1].header), {"missing"});
}

TEST(ModelFileTruncated, ThroughOpenNamesThePath) {
  TempDir dir;
  const auto path = dir.write("first1000.bin", prefix(micro_bytes(), 1000));
  try {
    ModelFile::open(path);
    FAIL() << "a 1000-byte prefix loaded";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(path.string()), std::string::npos) << msg;
    EXPECT_NE(msg.find("file ends at byte 1000"), std::string::npos) << msg;
  }
}

// ---------------------------------------------------------------------------------------
// Damaged contents

TEST(ModelFileDamaged, BadMagic) {
  Bytes b = micro_bytes();
  b[0] = std::byte{'x'};
  expect_error_mentions(b, {"bad magic"});
  // a GGUF file (the format whisper.cpp does not use for Whisper)
  Bytes gguf = micro_bytes();
  std::memcpy(gguf.data(), "GGUF", 4);
  expect_error_mentions(gguf, {"bad magic", "GGUF"});
  // big-endian magic
  Bytes swapped = micro_bytes();
  std::memcpy(swapped.data(), "ggml", 4);
  expect_error_mentions(swapped, {"bad magic"});
}

TEST(ModelFileDamaged, WrongShapeNamesTheTensor) {
  // swapped extents keep the element count (so the file still parses to the end) but
  // transpose the shape
  for (const char* name : {"encoder.conv1.bias", "encoder.blocks.0.mlp.0.weight", "decoder.blocks.1.mlp.2.weight",
                           "decoder.positional_embedding"}) {
    SCOPED_TRACE(name);
    Bytes b = micro_bytes();
    const auto& t = micro_layout().tensor(name);
    ASSERT_EQ(t.n_dims, 2);
    const auto e0 = get_i32(b, t.extents_at);
    const auto e1 = get_i32(b, t.extents_at + 4);
    ASSERT_NE(e0, e1);
    put_i32(b, t.extents_at, e1);
    put_i32(b, t.extents_at + 4, e0);
    expect_error_mentions(b, {std::string("tensor ") + name, "wrong shape"});
  }
}

TEST(ModelFileDamaged, WrongShapeWithAnotherElementCount) {
  // a conv kernel claiming 4 taps instead of 3: its data then eats into the next record,
  // which must still end in an Error
  Bytes b = micro_bytes();
  const auto& t = micro_layout().tensor("encoder.conv1.weight");
  ASSERT_EQ(get_i32(b, t.extents_at), 3);
  put_i32(b, t.extents_at, 4);
  parse_error(b);
  // a conv bias stored as (1, 64) instead of (64, 1): same bytes, rejected by shape
  Bytes c = micro_bytes();
  const auto& bias = micro_layout().tensor("encoder.conv1.bias");
  ASSERT_EQ(get_i32(c, bias.extents_at), 1);
  put_i32(c, bias.extents_at, 64);
  put_i32(c, bias.extents_at + 4, 1);
  expect_error_mentions(c, {"encoder.conv1.bias", "wrong shape"});
}

TEST(ModelFileDamaged, UnknownTensorTypeCode) {
  for (std::int32_t code : {4, 5, 9, 99, -1, 0x7fffffff}) {
    SCOPED_TRACE(code);
    Bytes b = micro_bytes();
    const auto& t = micro_layout().tensor("encoder.conv1.bias");
    put_i32(b, t.type_at, code);
    expect_error_mentions(b, {"encoder.conv1.bias", "unknown type code " + std::to_string(code)});
  }
}

TEST(ModelFileDamaged, QuantizedTypeOnARowNotAMultipleOf32) {
  Bytes b = micro_bytes();
  const auto& t = micro_layout().tensor("encoder.conv1.bias");  // extents (1, 64)
  put_i32(b, t.type_at, 8);                                     // q8_0
  expect_error_mentions(b, {"encoder.conv1.bias", "multiple of 32"});
}

TEST(ModelFileDamaged, MissingTensor) {
  Bytes b = micro_bytes();
  const auto& t = micro_layout().tensor("encoder.ln_post.bias");
  b[t.data_at - 1] = std::byte{'z'};  // "encoder.ln_post.biaz"
  expect_error_mentions(b, {"encoder.ln_post.bias", "missing"});
}

TEST(ModelFileDamaged, DuplicatedTensor) {
  Bytes b = micro_bytes();
  const auto& t = micro_layout().tensor("encoder.blocks.0.attn.query.bias");
  const std::size_t digit = t.name_at + std::string("encoder.blocks.").size();
  ASSERT_EQ(b[digit], std::byte{'0'});
  b[digit] = std::byte{'1'};
  expect_error_mentions(b, {"encoder.blocks.1.attn.query.bias", "twice"});
}

TEST(ModelFileDamaged, ImplausibleTensorRecords) {
  const auto& t = micro_layout().tensor("encoder.conv2.bias");
  struct Patch {
    std::size_t at;
    std::int32_t value;
    const char* message;
  };
  for (const Patch& p : {Patch{t.header, 0, "dimensions"}, Patch{t.header, 4, "dimensions"},
                         Patch{t.header, -1, "dimensions"}, Patch{t.header + 4, 0, "name of"},
                         Patch{t.header + 4, -5, "name of"}, Patch{t.header + 4, 100000, "name of"},
                         Patch{t.extents_at, 0, "extent"}, Patch{t.extents_at + 4, -64, "extent"}}) {
    SCOPED_TRACE(p.message);
    Bytes b = micro_bytes();
    put_i32(b, p.at, p.value);
    expect_error_mentions(b, {p.message});
  }
}

TEST(ModelFileDamaged, HugeExtentsEndInAnErrorNotAnOverflowCrash) {
  // 3 extents near 2^31: the element count does not fit any real file (and overflows
  // a 64-bit product: see below); the loader must still answer with an Error
  const auto& t = micro_layout().tensor("encoder.conv1.weight");
  ASSERT_EQ(t.n_dims, 3);
  for (std::int32_t e : {0x7fffffff, 0x40000000, 0x10000}) {
    SCOPED_TRACE(e);
    Bytes b = micro_bytes();
    for (int i = 0; i < 3; ++i) put_i32(b, t.extents_at + 4 * i, e);
    parse_error(b);
  }
}

// Extents 2^30 x 2^30 x 16 multiply to 2^64, which would wrap to 0 in an unchecked int64
// product and be accepted with no data at all; appended after a complete model as an
// extra tensor, nothing else would catch it.
// The fuzzer's case: 2^20 x 2^20 is exactly the largest count allowed, and a third extent
// of 2^31 - 1 overflowed the product before the limit was checked (2^71 - 2^40 wraps to
// -2^40, under the limit).
TEST(ModelFileDamaged, ExtentsWhoseProductOverflowsAreRejected) {
  const std::string name = "extra.overflowing";
  for (const std::array<std::int32_t, 3>& extents :
       {std::array<std::int32_t, 3>{1 << 30, 1 << 30, 16}, std::array<std::int32_t, 3>{1 << 20, 1 << 20, 0x7fffffff},
        std::array<std::int32_t, 3>{0x7fffffff, 1 << 9, 0x7fffffff}}) {
    SCOPED_TRACE(::testing::PrintToString(extents));
    Bytes b = micro_bytes();
    for (std::int32_t v : {3, static_cast<std::int32_t>(name.size()), 0, extents[0], extents[1], extents[2]}) {
      const auto at = b.size();
      b.resize(at + 4);
      put_i32(b, at, v);
    }
    for (char c : name) b.push_back(static_cast<std::byte>(c));
    expect_error_mentions(b, {"extra.overflowing", "impossible size"});
  }
}

TEST(ModelFileDamaged, UnknownFtype) {
  for (std::int32_t ftype : {4, 5, 6, 10, 1004, -1, 99}) {
    SCOPED_TRACE(ftype);
    Bytes b = micro_bytes();
    put_i32(b, 4 + 10 * 4, ftype);
    expect_error_mentions(b, {"ftype " + std::to_string(ftype)});
  }
}

TEST(ModelFileDamaged, NonsenseVocabularySize) {
  for (std::int32_t n_vocab : {0, -1, 1000, 50257, 51867, 100000, 0x7fffffff}) {
    SCOPED_TRACE(n_vocab);
    Bytes b = micro_bytes();
    put_i32(b, 4, n_vocab);
    expect_error_mentions(b, {"n_vocab " + std::to_string(n_vocab)});
  }
  // plausible but wrong for this file: the token embedding has 51864 rows
  Bytes b = micro_bytes();
  put_i32(b, 4, 51865);
  expect_error_mentions(b, {"decoder.token_embedding.weight", "wrong shape"});
}

TEST(ModelFileDamaged, NonsenseHeaderFields) {
  struct Patch {
    int field;  // index of the int32 after the magic
    std::int32_t value;
    const char* message;
  };
  for (const Patch& p : {Patch{1, 0, "n_audio_ctx"}, Patch{1, 1501, "n_audio_ctx"}, Patch{2, 65, "n_text_state"},
                         Patch{2, -64, "n_audio_state"}, Patch{3, 3, "n_audio_head"}, Patch{3, 0, "n_audio_head"},
                         Patch{4, 0, "n_audio_layer"}, Patch{4, 1000, "n_audio_layer"}, Patch{5, 449, "n_text_ctx"},
                         Patch{7, 0, "n_text_head"}, Patch{8, -2, "n_text_layer"}, Patch{9, 81, "n_mels"},
                         Patch{9, 0, "n_mels"}}) {
    SCOPED_TRACE(std::to_string(p.field) + "=" + std::to_string(p.value));
    Bytes b = micro_bytes();
    put_i32(b, 4 + 4 * static_cast<std::size_t>(p.field), p.value);
    expect_error_mentions(b, {"invalid header", p.message});
  }
  // a plausible header that disagrees with the tensors: 3 encoder layers
  Bytes b = micro_bytes();
  put_i32(b, 4 + 4 * 4, 3);
  expect_error_mentions(b, {"encoder.blocks.2", "missing"});
}

TEST(ModelFileDamaged, FilterbankOfTheWrongSize) {
  Bytes b = micro_bytes();
  put_i32(b, 48 + 4, 200);  // n_fft
  expect_error_mentions(b, {"mel filterbank", "201"});
  Bytes c = micro_bytes();
  put_i32(c, 48, 128);  // n_mel disagrees with the header's 80
  expect_error_mentions(c, {"mel filterbank"});
}

TEST(ModelFileDamaged, NonsenseVocabularyCounts) {
  const auto& l = micro_layout();
  for (std::int32_t count : {-1, 51865, 0x7fffffff}) {
    SCOPED_TRACE(count);
    Bytes b = micro_bytes();
    put_i32(b, l.vocab_at, count);
    expect_error_mentions(b, {"vocabulary"});
  }
  // a piece claiming an absurd length
  Bytes b = micro_bytes();
  put_i32(b, l.vocab_at + 4, 0x40000000);
  expect_error_mentions(b, {"vocabulary entry 0"});
}

TEST(ModelFileOpen, MissingPathDirectoryAndEmptyFile) {
  TempDir dir;
  const auto missing = dir.path() / "no-such-model.bin";
  try {
    ModelFile::open(missing);
    FAIL() << "opened a missing file";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(missing.string()), std::string::npos) << e.what();
  }
  EXPECT_THROW(ModelFile::open(dir.path()), Error);
  try {
    ModelFile::open(dir.path());
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("not a regular file"), std::string::npos) << e.what();
  }
  const auto empty = dir.write("empty.bin", {});
  try {
    ModelFile::open(empty);
    FAIL() << "opened an empty file";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("file ends at byte 0"), std::string::npos) << e.what();
  }
  // a text file
  std::ofstream(dir.path() / "notes.txt") << "this is not a model\n";
  EXPECT_THROW(ModelFile::open(dir.path() / "notes.txt"), Error);
}

// ---------------------------------------------------------------------------------------
// Random damage: every single-byte corruption either parses or throws amanuensis::Error.

void check_parses_or_throws_error(const Bytes& b, std::size_t at, std::uint8_t value, int& parsed, int& rejected) {
  try {
    const auto model = ModelFile::parse(b, "fuzzed.bin");
    ++parsed;
    // what parses must be a whole model (or a vocabulary-only file)
    if (!model.tensors().empty()) {
      EXPECT_EQ(model.tensors().size(), expected_tensors(model.hparams()).size()) << "byte " << at;
    }
  } catch (const Error&) {
    ++rejected;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "byte " << at << " set to " << int(value) << ": non-Error exception " << e.what();
  }
}

TEST(ModelFileFuzz, RandomSingleByteCorruptionsInTheFirst600KB) {
  Bytes b = micro_bytes();
  const std::size_t region = std::min<std::size_t>(600 * 1024, b.size());
  ASSERT_GT(region, micro_layout().tensors_at) << "the region should reach the first tensors";
  std::mt19937 rng(20250401);
  std::uniform_int_distribution<std::size_t> where(0, region - 1);
  std::uniform_int_distribution<int> what(0, 255);
  int parsed = 0, rejected = 0;
  for (int i = 0; i < 2000; ++i) {
    const std::size_t at = where(rng);
    auto value = static_cast<std::uint8_t>(what(rng));
    if (std::byte{value} == b[at]) value ^= 0x80;
    const std::byte saved = b[at];
    b[at] = std::byte{value};
    check_parses_or_throws_error(b, at, value, parsed, rejected);
    b[at] = saved;
  }
  EXPECT_EQ(parsed + rejected, 2000);
  EXPECT_GT(parsed, 0);  // most flips land in filter floats or vocabulary text
}

TEST(ModelFileFuzz, EveryHeaderAndTensorRecordByteFlipped) {
  // The structural bytes, exhaustively: the header and filter header, the vocabulary
  // count, and the records (not the data) of the first 8 and the last tensors.
  Bytes b = micro_bytes();
  const auto& l = micro_layout();
  std::vector<std::size_t> positions;
  for (std::size_t i = 0; i < 56; ++i) positions.push_back(i);
  for (std::size_t i = l.vocab_at; i < l.vocab_at + 12; ++i) positions.push_back(i);
  auto add_record = [&](const TensorRecord& t) {
    for (std::size_t i = t.header; i < t.data_at; ++i) positions.push_back(i);
  };
  for (std::size_t k = 0; k < 8; ++k) add_record(l.tensors[k]);
  add_record(l.tensors.back());
  int parsed = 0, rejected = 0;
  for (std::size_t at : positions) {
    for (std::uint8_t mask : {0x01, 0xFF}) {
      const std::byte saved = b[at];
      b[at] = saved ^ std::byte{mask};
      check_parses_or_throws_error(b, at, static_cast<std::uint8_t>(b[at]), parsed, rejected);
      b[at] = saved;
    }
  }
  EXPECT_GT(rejected, 0);
}

}  // namespace
}  // namespace amanuensis::model

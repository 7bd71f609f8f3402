// Fuzzes the ggml model reader (ModelFile::parse over bytes in memory, as open() does over
// its memory map): any input either loads or throws amanuensis::Error. A model that loads
// has every tensor inside the bytes; each one is read end to end, as the backends copy them.
#include <cstddef>
#include <cstdint>
#include <span>

#include "common/error.h"
#include "model/ggml_file.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace amanuensis;
  try {
    const auto model = model::ModelFile::parse({reinterpret_cast<const std::byte*>(data), size}, "fuzz.bin");
    unsigned sum = 0;
    for (const auto& [name, t] : model.tensors()) {
      if (t.data.size() != model::tensor_bytes(t.type, t.elements())) __builtin_trap();
      for (std::byte b : t.data) sum += static_cast<unsigned>(b);
      (void)t.rows();
      (void)t.cols();
    }
    for (const auto& piece : model.vocabulary()) sum += piece.size();
    for (float f : model.mel_filters()) sum += f > 0;
    (void)model.hparams().size_name();
    (void)model.hparams().weight_type();
    volatile unsigned sink = sum;
    (void)sink;
  } catch (const Error&) {
  }
  return 0;
}

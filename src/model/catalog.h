// model: models by name. The official whisper.cpp ggml models (tiny ... large-v3-turbo),
// with the file name and SHA-1 whisper.cpp publishes for each, and the local model cache
// ($XDG_CACHE_HOME/amanuensis, else ~/.cache/amanuensis) where `amanuensis download` puts
// them, so that `--model tiny.en` finds ggml-tiny.en.bin there.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace amanuensis::model {

struct CatalogEntry {
  std::string name;       // "tiny.en"
  std::string sha1;       // of the whole file, lowercase hex (models/README.md of whisper.cpp)
  std::uint64_t mib = 0;  // approximate size
  std::string file_name() const { return "ggml-" + name + ".bin"; }
};

// The official models, smallest first.
const std::vector<CatalogEntry>& official_models();
// nullptr when `name` is not an official model.
const CatalogEntry* find_official_model(std::string_view name);

// $XDG_CACHE_HOME/amanuensis when XDG_CACHE_HOME is set (and absolute), else
// $HOME/.cache/amanuensis. Throws Error when neither can be determined.
std::filesystem::path model_cache_dir();
// Where a model called `name` lives in the cache: model_cache_dir() / "ggml-NAME.bin".
std::filesystem::path cached_model_path(std::string_view name);

// The file a --model argument means: an existing file as given; otherwise a bare name
// (no '/', no ".bin") whose ggml-NAME.bin is in the cache, official or not (a model
// quantized into the cache, say); otherwise, for an official name, an Error saying it is not
// downloaded yet and the command that downloads it; otherwise the argument as a path (the
// loader then reports it missing).
std::filesystem::path resolve_model(std::string_view argument);

}  // namespace amanuensis::model

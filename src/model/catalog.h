// model: models by name. The official whisper.cpp ggml models (tiny ... large-v3-turbo),
// with the file name and SHA-1 whisper.cpp publishes for each, and the local model cache
// ($XDG_CACHE_HOME/amanuensis, else ~/.cache/amanuensis) where `amanuensis download` puts
// them, so that `--model tiny.en` finds ggml-tiny.en.bin there. The environment is read by
// the command line (src/cli), which passes the values in: library code reads none.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
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

// The model cache by the XDG base directory rules, from the values of XDG_CACHE_HOME and
// HOME (nullptr when unset): XDG_CACHE_HOME/amanuensis when it is absolute, else
// HOME/.cache/amanuensis; nullopt when neither gives one.
std::optional<std::filesystem::path> model_cache_dir(const char* xdg_cache_home, const char* home);
// The cache folder itself; throws Error (saying which variables to set) when there is none.
std::filesystem::path require_cache_dir(const std::optional<std::filesystem::path>& cache_dir);
// Where a model called `name` lives in the cache: cache_dir / "ggml-NAME.bin".
std::filesystem::path cached_model_path(const std::filesystem::path& cache_dir, std::string_view name);

// The file a --model argument means: an existing file as given; otherwise a bare name
// (no '/', no ".bin") whose ggml-NAME.bin is in the cache, official or not (a model
// quantized into the cache, say); otherwise, for an official name, an Error saying it is not
// downloaded yet and the command that downloads it; otherwise the argument as a path (the
// loader then reports it missing). `cache_dir` (model_cache_dir()) is needed only for a
// bare name: without one that is an Error.
std::filesystem::path resolve_model(std::string_view argument, const std::optional<std::filesystem::path>& cache_dir);

}  // namespace amanuensis::model

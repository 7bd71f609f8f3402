#include "model/catalog.h"

#include "common/error.h"

namespace amanuensis::model {

const std::vector<CatalogEntry>& official_models() {
  // Names, SHA-1 and sizes as listed in whisper.cpp's models/README.md.
  static const std::vector<CatalogEntry> models = {
      {"tiny", "bd577a113a864445d4c299885e0cb97d4ba92b5f", 75},
      {"tiny.en", "c78c86eb1a8faa21b369bcd33207cc90d64ae9df", 75},
      {"base", "465707469ff3a37a2b9b8d8f89f2f99de7299dac", 142},
      {"base.en", "137c40403d78fd54d454da0f9bd998f78703390c", 142},
      {"small", "55356645c2b361a969dfd0ef2c5a50d530afd8d5", 466},
      {"small.en", "db8a495a91d927739e50b3fc1cc4c6b8f6c2d022", 466},
      {"medium", "fd9727b6e1217c2f614f9b698455c4ffd82463b4", 1536},
      {"medium.en", "8c30f0e44ce9560643ebd10bbe50cd20eafd3723", 1536},
      {"large-v1", "b1caaf735c4cc1429223d5a74f0f4d0b9b59a299", 2970},
      {"large-v2", "0f4c8e34f21cf1a914c59d8b3ce882345ad349d6", 2970},
      {"large-v2-q5_0", "00e39f2196344e901b3a2bd5814807a769bd1630", 1126},
      {"large-v3", "ad82bf6a9043ceed055076d0fd39f5f186ff8062", 2970},
      {"large-v3-q5_0", "e6e2ed78495d403bef4b7cff42ef4aaadcfea8de", 1126},
      {"large-v3-turbo", "4af2b29d7ec73d781377bfd1758ca957a807e941", 1536},
      {"large-v3-turbo-q5_0", "e050f7970618a659205450ad97eb95a18d69c9ee", 547},
  };
  return models;
}

const CatalogEntry* find_official_model(std::string_view name) {
  for (const auto& entry : official_models()) {
    if (entry.name == name) return &entry;
  }
  return nullptr;
}

std::optional<std::filesystem::path> model_cache_dir(const char* xdg_cache_home, const char* home) {
  // The XDG base directory rules: a relative XDG_CACHE_HOME is invalid and ignored.
  if (xdg_cache_home != nullptr && xdg_cache_home[0] == '/') return std::filesystem::path(xdg_cache_home) / "amanuensis";
  if (home != nullptr && home[0] != '\0') return std::filesystem::path(home) / ".cache" / "amanuensis";
  return std::nullopt;
}

std::filesystem::path require_cache_dir(const std::optional<std::filesystem::path>& cache_dir) {
  if (!cache_dir) throw Error("cannot find the model cache: neither XDG_CACHE_HOME nor HOME is set");
  return *cache_dir;
}

std::filesystem::path cached_model_path(const std::filesystem::path& cache_dir, std::string_view name) {
  return cache_dir / ("ggml-" + std::string(name) + ".bin");
}

std::filesystem::path resolve_model(std::string_view argument, const std::optional<std::filesystem::path>& cache_dir) {
  const std::filesystem::path as_given(argument);
  std::error_code ec;
  if (std::filesystem::exists(as_given, ec)) return as_given;
  const bool bare_name = !argument.empty() && argument.find('/') == std::string_view::npos &&
                         !argument.ends_with(".bin") && argument != "." && argument != "..";
  if (!bare_name) return as_given;
  const auto cached = cached_model_path(require_cache_dir(cache_dir), argument);
  if (std::filesystem::exists(cached, ec)) return cached;
  if (find_official_model(argument) != nullptr) {
    throw Error("model " + std::string(argument) + " is not downloaded yet (no " + cached.string() +
                "); download it with: amanuensis download " + std::string(argument));
  }
  return as_given;
}

}  // namespace amanuensis::model

// cli: where the model cache is, read from the environment here (XDG_CACHE_HOME, HOME) and
// passed down to model/catalog.h, which reads no environment itself.
#pragma once

#include <filesystem>
#include <optional>
#include <string_view>

namespace amanuensis::cli {

// model::model_cache_dir() of this process's XDG_CACHE_HOME and HOME (nullopt: neither set).
std::optional<std::filesystem::path> model_cache_dir();

// A --model argument as a file (model::resolve_model against this process's cache).
std::filesystem::path resolve_model(std::string_view argument);

}  // namespace amanuensis::cli

#include "cli/model_cache.h"

#include <cstdlib>

#include "model/catalog.h"

namespace amanuensis::cli {

std::optional<std::filesystem::path> model_cache_dir() {
  return model::model_cache_dir(std::getenv("XDG_CACHE_HOME"), std::getenv("HOME"));
}

std::filesystem::path resolve_model(std::string_view argument) {
  return model::resolve_model(argument, model_cache_dir());
}

}  // namespace amanuensis::cli

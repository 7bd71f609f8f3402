// Where tests find the conformance kit, generated models and the CLI binary.
#pragma once

#include <filesystem>
#include <string>

namespace amanuensis::testing {

inline std::filesystem::path shared_dir() { return AMANUENSIS_SHARED_DIR; }
inline std::filesystem::path conformance_dir() { return shared_dir() / "conformance"; }
inline std::filesystem::path generated_dir() { return AMANUENSIS_GENERATED_DIR; }
inline std::filesystem::path cli_path() { return AMANUENSIS_CLI; }

// Shipped models live in the kit; the unshipped ones are generated at test time.
inline std::filesystem::path model_path(const std::string& name) {
  auto shipped = conformance_dir() / "models" / (name + ".bin");
  if (std::filesystem::exists(shipped)) return shipped;
  return generated_dir() / (name + ".bin");
}

}  // namespace amanuensis::testing

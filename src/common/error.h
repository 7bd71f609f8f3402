// common: the few types every layer shares (the error type and small helpers).
#pragma once

#include <stdexcept>
#include <string>

namespace amanuensis {

// The one exception type that crosses module boundaries. Its message is meant for
// the user: it names what was wrong and, where possible, what to do about it.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

}  // namespace amanuensis

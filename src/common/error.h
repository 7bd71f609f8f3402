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

// A broken invariant inside the program: a bug, not something the user did. Not an
// Error, so the layers that turn Errors into a 400 or a per-file message let it through:
// the server answers 500 and logs it, the CLI exits 70. Its message starts "internal: ".
class InternalError : public std::logic_error {
 public:
  explicit InternalError(const std::string& message) : std::logic_error("internal: " + message) {}
};

}  // namespace amanuensis

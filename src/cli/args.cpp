#include "cli/args.h"

#include <cmath>

#include <type_traits>

#include "common/error.h"

namespace amanuensis::cli {

Args::Args(const std::vector<std::string>& argv, const std::set<std::string>& flags,
           const std::set<std::string>& options) {
  for (std::size_t i = 0; i < argv.size(); ++i) {
    const std::string& arg = argv[i];
    if (arg.size() < 2 || arg.rfind("--", 0) != 0) {
      positional_.push_back(arg);  // includes "-" for standard input
      continue;
    }
    std::string name = arg.substr(2);
    std::optional<std::string> inline_value;
    if (auto eq = name.find('='); eq != std::string::npos) {
      inline_value = name.substr(eq + 1);
      name = name.substr(0, eq);
    }
    if (flags.count(name)) {
      if (inline_value) throw Error("option --" + name + " takes no value");
      flags_.insert(name);
    } else if (options.count(name)) {
      if (inline_value) {
        values_[name].push_back(*inline_value);
      } else if (i + 1 < argv.size()) {
        values_[name].push_back(argv[++i]);
      } else {
        throw Error("option --" + name + " needs a value");
      }
    } else {
      throw Error("unknown option --" + name + " (see --help)");
    }
  }
}

std::optional<std::string> Args::get(const std::string& name) const {
  auto it = values_.find(name);
  if (it == values_.end()) return std::nullopt;
  return it->second.back();  // the last one given wins
}

std::vector<std::string> Args::get_all(const std::string& name) const {
  auto it = values_.find(name);
  return it == values_.end() ? std::vector<std::string>{} : it->second;
}

std::string Args::get_or(const std::string& name, const std::string& fallback) const {
  return get(name).value_or(fallback);
}

std::string Args::required(const std::string& name) const {
  if (auto v = get(name)) return *v;
  throw Error("missing required option --" + name);
}

namespace {

// The whole value must be a number of the requested kind.
template <typename T>
std::optional<T> parse_number(const std::string& text) {
  try {
    std::size_t used = 0;
    T value;
    if constexpr (std::is_integral_v<T>) {
      value = std::stoi(text, &used);
    } else {
      value = std::stod(text, &used);
    }
    if (used == text.size()) return value;
  } catch (const std::exception&) {
  }
  return std::nullopt;
}

}  // namespace

int Args::get_int(const std::string& name, int fallback) const {
  auto v = get(name);
  if (!v) return fallback;
  if (auto n = parse_number<int>(*v)) return *n;
  throw Error("option --" + name + " needs a whole number, got '" + *v + "'");
}

double Args::get_double(const std::string& name, double fallback) const {
  auto v = get(name);
  if (!v) return fallback;
  // NaN compares false with every bound, so it would slip past each range check after
  if (auto n = parse_number<double>(*v); n && !std::isnan(*n)) return *n;
  throw Error("option --" + name + " needs a number, got '" + *v + "'");
}

}  // namespace amanuensis::cli

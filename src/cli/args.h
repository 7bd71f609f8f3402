// cli: a small command-line parser: `--name value`, `--flag`, and positional arguments,
// with errors that name the offending option. An option given twice keeps its last value
// for get(); get_all() returns every value, for the options a command lets repeat.
#pragma once

#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace amanuensis::cli {

class Args {
 public:
  // `flags` take no value; every other --option takes one.
  Args(const std::vector<std::string>& argv, const std::set<std::string>& flags, const std::set<std::string>& options);

  bool flag(const std::string& name) const { return flags_.count(name) != 0; }
  std::optional<std::string> get(const std::string& name) const;
  std::string get_or(const std::string& name, const std::string& fallback) const;
  std::string required(const std::string& name) const;
  // Every value given for `name`, in command-line order (empty when it was not given).
  std::vector<std::string> get_all(const std::string& name) const;
  int get_int(const std::string& name, int fallback) const;
  double get_double(const std::string& name, double fallback) const;
  const std::vector<std::string>& positional() const { return positional_; }

 private:
  std::set<std::string> flags_;
  std::map<std::string, std::vector<std::string>> values_;  // in command-line order
  std::vector<std::string> positional_;
};

}  // namespace amanuensis::cli

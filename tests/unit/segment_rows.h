// Test helper: a transcript's segments as plain rows (seek, times, text, tokens), so a
// served verbose_json and a library Transcript can be compared with one ==.
#pragma once

#include <ostream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "pipeline/transcriber.h"

namespace amanuensis::testing {

struct SegmentRow {
  int seek = 0;
  double start = 0, end = 0;
  std::string text;
  std::vector<int> tokens;
  bool operator==(const SegmentRow&) const = default;
};

inline std::ostream& operator<<(std::ostream& os, const SegmentRow& s) {
  os << "{seek " << s.seek << ", " << s.start << "-" << s.end << ", '" << s.text << "', tokens";
  for (int t : s.tokens) os << " " << t;
  return os << "}";
}

inline std::vector<SegmentRow> rows_of(const nlohmann::json& verbose) {
  std::vector<SegmentRow> rows;
  for (const auto& s : verbose["segments"])
    rows.push_back({s["seek"], s["start"], s["end"], s["text"], s["tokens"].get<std::vector<int>>()});
  return rows;
}

inline std::vector<SegmentRow> rows_of(const pipeline::Transcript& t) {
  std::vector<SegmentRow> rows;
  for (const auto& s : t.segments) rows.push_back({s.seek, s.start, s.end, s.text, {s.tokens.begin(), s.tokens.end()}});
  return rows;
}

}  // namespace amanuensis::testing

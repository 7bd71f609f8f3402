#include "pipeline/output_formats.h"

#include <cmath>
#include <cstdio>
#include <sstream>

#include <nlohmann/json.hpp>

#include "common/error.h"

namespace amanuensis::pipeline {
namespace {

// OpenAI's writers strip each segment's text and replace "-->" so cues stay parseable.
std::string cue_text(const std::string& text) {
  const auto first = text.find_first_not_of(" \t\n");
  if (first == std::string::npos) return "";
  const auto last = text.find_last_not_of(" \t\n");
  std::string out = text.substr(first, last - first + 1);
  for (std::size_t pos; (pos = out.find("-->")) != std::string::npos;) out.replace(pos, 3, "->");
  return out;
}

std::string dump(const nlohmann::json& j) {
  // random-weight (and sometimes real) models can split a UTF-8 character across segments
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

nlohmann::json segment_json(const Segment& s) {
  nlohmann::json j = {{"id", s.id},
          {"seek", s.seek},
          {"start", s.start},
          {"end", s.end},
          {"text", s.text},
          {"tokens", s.tokens},
          {"temperature", s.temperature},
          {"avg_logprob", s.avg_logprob},
          {"compression_ratio", s.compression_ratio},
          {"no_speech_prob", s.no_speech_prob}};
  if (!s.words.empty()) {
    nlohmann::json words = nlohmann::json::array();
    for (const auto& w : s.words)
      words.push_back({{"word", w.word}, {"start", w.start}, {"end", w.end}, {"probability", w.probability}});
    j["words"] = words;
  }
  return j;
}

std::string render_subtitles(const Transcript& t, bool vtt) {
  std::ostringstream out;
  if (vtt) out << "WEBVTT\n\n";
  int index = 1;
  for (const auto& s : t.segments) {
    const auto text = cue_text(s.text);
    if (text.empty()) continue;
    if (!vtt) out << index++ << "\n";
    out << format_timestamp(s.start, vtt ? '.' : ',') << " --> " << format_timestamp(s.end, vtt ? '.' : ',') << "\n"
        << text << "\n\n";
  }
  return out.str();
}

}  // namespace

OutputFormat parse_output_format(std::string_view name) {
  if (name == "txt" || name == "text") return OutputFormat::Text;
  if (name == "json") return OutputFormat::Json;
  if (name == "verbose_json") return OutputFormat::VerboseJson;
  if (name == "srt") return OutputFormat::Srt;
  if (name == "vtt") return OutputFormat::Vtt;
  if (name == "tsv") return OutputFormat::Tsv;
  throw Error("unknown output format '" + std::string(name) + "' (use txt, json, verbose_json, srt, vtt or tsv)");
}

std::string_view file_extension(OutputFormat format) {
  switch (format) {
    case OutputFormat::Text: return "txt";
    case OutputFormat::Json: return "json";
    case OutputFormat::VerboseJson: return "verbose.json";
    case OutputFormat::Srt: return "srt";
    case OutputFormat::Vtt: return "vtt";
    case OutputFormat::Tsv: return "tsv";
  }
  return "txt";
}

std::string format_timestamp(double seconds, char decimal_marker) {
  const long long ms = std::llround(std::max(0.0, seconds) * 1000.0);
  char buf[40];
  std::snprintf(buf, sizeof buf, "%02lld:%02lld:%02lld%c%03lld", ms / 3600000, ms / 60000 % 60, ms / 1000 % 60,
                decimal_marker, ms % 1000);
  return buf;
}

std::string render(const Transcript& t, OutputFormat format) {
  switch (format) {
    case OutputFormat::Text: {
      std::string out;
      for (const auto& s : t.segments) {
        const auto text = cue_text(s.text);
        if (!text.empty()) out += text + "\n";
      }
      return out;
    }
    case OutputFormat::Json: {
      nlohmann::json segments = nlohmann::json::array();
      for (const auto& s : t.segments)
        segments.push_back({{"start", s.start}, {"end", s.end}, {"text", s.text}, {"tokens", s.tokens}});
      return dump({{"text", t.text}, {"segments", segments}}) + "\n";
    }
    case OutputFormat::VerboseJson: {
      nlohmann::json segments = nlohmann::json::array();
      for (const auto& s : t.segments) segments.push_back(segment_json(s));
      return dump({{"task", t.task}, {"language", t.language}, {"duration", t.duration}, {"text", t.text},
                   {"segments", segments}}) + "\n";
    }
    case OutputFormat::Srt: return render_subtitles(t, false);
    case OutputFormat::Vtt: return render_subtitles(t, true);
    case OutputFormat::Tsv: {
      // OpenAI's tsv: integer milliseconds, tab-separated
      std::ostringstream out;
      out << "start\tend\ttext\n";
      for (const auto& s : t.segments) {
        const auto text = cue_text(s.text);
        if (text.empty()) continue;
        out << std::llround(s.start * 1000) << "\t" << std::llround(s.end * 1000) << "\t" << text << "\n";
      }
      return out.str();
    }
  }
  return {};
}

std::vector<TokenLogprob> text_token_logprobs(const Transcript& transcript, const text::Tokenizer& tokenizer) {
  std::vector<TokenLogprob> out;
  for (const auto& s : transcript.segments) {
    if (s.token_logprobs.size() != s.tokens.size())
      throw InternalError("segment " + std::to_string(s.id) + " lacks the log-probabilities of its tokens");
    for (std::size_t i = 0; i < s.tokens.size(); ++i) {
      if (tokenizer.is_special(s.tokens[i])) continue;
      out.push_back({std::string(tokenizer.piece(s.tokens[i])), s.token_logprobs[i]});
    }
  }
  return out;
}

}  // namespace amanuensis::pipeline

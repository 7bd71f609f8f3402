#include "server/request_options.h"

#include <cmath>
#include <functional>
#include <map>
#include <set>

#include <nlohmann/json.hpp>

#include "text/tokenizer.h"

namespace amanuensis::server {

namespace {

using nlohmann::json;

// A number that is all of `value` and within [min, max].
double read_number(const std::string& field, const std::string& value, double min, double max) {
  double v = NAN;
  try {
    std::size_t used = 0;
    v = std::stod(value, &used);
    if (used != value.size()) v = NAN;
  } catch (const std::exception&) {
  }
  if (!(v >= min && v <= max)) {
    throw FieldError(field, field + " must be a number from " + json(min).dump() + " to " + json(max).dump() +
                                " (got '" + value + "')");
  }
  return v;
}

int read_int(const std::string& field, const std::string& value, int min, int max) {
  const double v = read_number(field, value, min, max);
  if (v != std::floor(v)) throw FieldError(field, field + " must be a whole number (got '" + value + "')");
  return static_cast<int>(v);
}

bool read_bool(const std::string& field, const std::string& value) {
  if (value == "true" || value == "1") return true;
  if (value == "false" || value == "0") return false;
  throw FieldError(field, field + " must be true or false (got '" + value + "')");
}

// OpenAI's chunking_strategy: "auto", or {"type": "server_vad", threshold,
// prefix_padding_ms, silence_duration_ms}; both mean the built-in VAD. The object comes as
// JSON text, or (as OpenAI's clients send it) as chunking_strategy[type] and so on, whose
// values are then numbers in text.
vad::VadOptions read_chunking_object(const json& j) {
  const std::string field = "chunking_strategy";
  // form values are any bytes: dump() would throw json's type_error on invalid UTF-8
  const auto dump = [](const json& value) { return value.dump(-1, ' ', false, json::error_handler_t::replace); };
  if (!j.is_object() || j.value("type", json()) != "server_vad")
    throw FieldError(field, "chunking_strategy must be \"auto\" or an object {\"type\": \"server_vad\", ...} (got '" +
                                dump(j) + "')");
  vad::VadOptions v;
  for (const auto& [key, item] : j.items()) {
    if (key == "type") continue;
    const std::string name = "chunking_strategy." + key;
    const std::string text = item.is_string() ? item.get<std::string>() : dump(item);
    if (key == "threshold") {
      v.threshold = read_number(field, text, 0.01, 0.99);
    } else if (key == "prefix_padding_ms") {
      v.speech_pad_ms = read_int(field, text, 0, 10000);
    } else if (key == "silence_duration_ms") {
      v.min_silence_duration_ms = read_int(field, text, 0, 60000);
    } else {
      throw FieldError(field, name + " is not a server_vad setting (threshold, prefix_padding_ms, silence_duration_ms)");
    }
  }
  return v;
}

vad::VadOptions read_chunking_strategy(const std::string& value) {
  if (value == "auto") return {};
  return read_chunking_object(json::parse(value, nullptr, false));
}

// "chunking_strategy[type]" -> "type"; "" for any other name.
std::string chunking_key(std::string_view name) {
  constexpr std::string_view prefix = "chunking_strategy[";
  if (name.size() <= prefix.size() + 1 || name.substr(0, prefix.size()) != prefix || name.back() != ']') return {};
  return std::string(name.substr(prefix.size(), name.size() - prefix.size() - 1));
}

std::string read_language(const std::string& value) {
  if (value.empty() || value == "auto" || !text::language_name(value).empty()) return value;
  throw FieldError("language", "language must be an ISO-639-1 code Whisper knows, such as en or de (got '" + value +
                                   "')");
}

// The fallback step: 0 (no fallback) or at least 0.01, so that the schedule up to 1 has at
// most 100 steps (a step of 1e-300 would list temperatures for ever).
double read_temperature_inc(const std::string& value) {
  const double v = read_number("temperature_inc", value, 0, 1);
  if (v > 0 && v < 0.01)
    throw FieldError("temperature_inc", "temperature_inc must be 0 (no fallback) or from 0.01 to 1 (got '" + value + "')");
  return v;
}

void read_granularity(const std::string& value, TranscriptionRequest& r) {
  if (value == "word") {
    r.word_granularity = true;
  } else if (value != "segment") {
    throw FieldError("timestamp_granularities", "timestamp_granularities must be 'segment' or 'word' (got '" + value + "')");
  }
}

void read_include(const std::string& value, TranscriptionRequest& r) {
  if (value != "logprobs") throw FieldError("include", "include[] takes only 'logprobs' (got '" + value + "')");
  r.include_logprobs = true;
}

void read_stream(const std::string& value) {
  if (!read_bool("stream", value)) return;
  throw FieldError("stream", "stream=true is not supported: this server answers with the whole transcription");
}

using FieldReader = std::function<void(const std::string& value, TranscriptionRequest& r, const RequestLimits& limits)>;

// One reader per field name; array fields are listed with and without OpenAI's "[]".
const std::map<std::string, FieldReader, std::less<>>& field_readers() {
  static const std::map<std::string, FieldReader, std::less<>> readers = {
      {"model", [](const std::string& v, auto& r, auto&) { r.model = v; }},
      {"response_format", [](const std::string& v, auto& r, auto&) { r.response_format = v; }},
      {"language", [](const std::string& v, auto& r, auto&) { r.language = read_language(v); }},
      {"prompt", [](const std::string& v, auto& r, auto&) { r.prompt = v; }},
      {"hotwords", [](const std::string& v, auto& r, auto&) { r.hotwords = v; }},
      {"temperature", [](const std::string& v, auto& r, auto&) { r.temperature = read_number("temperature", v, 0, 1); }},
      {"timestamp_granularities[]", [](const std::string& v, auto& r, auto&) { read_granularity(v, r); }},
      {"timestamp_granularities", [](const std::string& v, auto& r, auto&) { read_granularity(v, r); }},
      {"include[]", [](const std::string& v, auto& r, auto&) { read_include(v, r); }},
      {"include", [](const std::string& v, auto& r, auto&) { read_include(v, r); }},
      {"chunking_strategy", [](const std::string& v, auto& r, auto&) { r.chunking_strategy = read_chunking_strategy(v); }},
      {"stream", [](const std::string& v, auto&, auto&) { read_stream(v); }},
      {"include_timing", [](const std::string& v, auto& r, auto&) { r.include_timing = read_bool("include_timing", v); }},
      {"detect_language",
       [](const std::string& v, auto& r, auto&) { r.detect_language = read_bool("detect_language", v); }},
      {"beam_size", [](const std::string& v, auto& r, const RequestLimits& l) {
         r.beam_size = read_int("beam_size", v, 0, l.max_beam_size);
       }},
      {"best_of", [](const std::string& v, auto& r, const RequestLimits& l) {
         r.best_of = read_int("best_of", v, 1, l.max_best_of);
       }},
      {"temperature_inc", [](const std::string& v, auto& r, auto&) { r.temperature_inc = read_temperature_inc(v); }},
      {"no_speech_threshold",
       [](const std::string& v, auto& r, auto&) { r.no_speech_threshold = read_number("no_speech_threshold", v, 0, 1); }},
      {"compression_ratio_threshold",
       [](const std::string& v, auto& r, auto&) {
         r.compression_ratio_threshold = read_number("compression_ratio_threshold", v, 0, 1000);
       }},
      {"logprob_threshold",
       [](const std::string& v, auto& r, auto&) { r.logprob_threshold = read_number("logprob_threshold", v, -1000, 0); }},
      {"condition_on_previous_text",
       [](const std::string& v, auto& r, auto&) {
         r.condition_on_previous_text = read_bool("condition_on_previous_text", v);
       }},
      {"no_timestamps", [](const std::string& v, auto& r, auto&) { r.no_timestamps = read_bool("no_timestamps", v); }},
      {"word_timestamps", [](const std::string& v, auto& r, auto&) { r.word_timestamps = read_bool("word_timestamps", v); }},
      {"vad", [](const std::string& v, auto& r, auto&) { r.vad = read_bool("vad", v); }},
      {"vad_threshold",
       [](const std::string& v, auto& r, auto&) { r.vad_threshold = read_number("vad_threshold", v, 0.01, 0.99); }},
      {"hallucination_silence_threshold",
       [](const std::string& v, auto& r, auto&) {
         r.hallucination_silence_threshold = read_number("hallucination_silence_threshold", v, 0, 3600);
       }},
      {"offset", [](const std::string& v, auto& r, auto&) { r.offset = read_number("offset", v, 0, 86400.0 * 7); }},
      {"duration", [](const std::string& v, auto& r, auto&) { r.duration = read_number("duration", v, 0.01, 86400.0 * 7); }},
  };
  return readers;
}

// The checks across fields, once all are read.
void check_combination(TranscriptionRequest& r, const RequestLimits& limits) {
  static const std::set<std::string, std::less<>> formats = {"json", "text", "srt", "verbose_json", "vtt"};
  if (!formats.count(r.response_format))
    throw FieldError("response_format", "response_format must be json, text, srt, verbose_json or vtt (got '" +
                                            r.response_format + "')");
  if (r.include_logprobs && r.response_format != "json" && r.response_format != "verbose_json")
    throw FieldError("include", "include[]=logprobs needs response_format json or verbose_json (got " +
                                    r.response_format + ")");
  if (r.word_granularity && r.response_format != "verbose_json")
    throw FieldError("timestamp_granularities",
                     "timestamp_granularities[]=word needs response_format verbose_json (got " + r.response_format + ")");
  if (r.wants_words() && !limits.word_timestamps)
    throw FieldError(r.word_granularity ? "timestamp_granularities" : "word_timestamps",
                     "word timestamps need OpenAI semantics");
  if (r.hallucination_silence_threshold.value_or(0) > 0 && !limits.word_timestamps)
    throw FieldError("hallucination_silence_threshold",
                     "hallucination_silence_threshold needs OpenAI semantics (it works on word timings)");
  if (r.hallucination_silence_threshold.value_or(0) > 0 && r.no_timestamps.value_or(false))
    throw FieldError("no_timestamps", "no_timestamps cannot go with hallucination_silence_threshold, which works on "
                                      "word timings");
  if (r.wants_words() && r.no_timestamps.value_or(false))
    throw FieldError("no_timestamps", "no_timestamps cannot go with word timestamps, which are timed from them");
  // vad=false with a chunking_strategy or vad_threshold asks for both: refused, not guessed
  const bool vad_asked = r.chunking_strategy || r.vad_threshold;
  if (r.vad && !*r.vad && vad_asked)
    throw FieldError("vad", "vad=false contradicts chunking_strategy / vad_threshold, which turn VAD on");
  if (r.vad.value_or(false) || vad_asked) {
    r.vad_options = r.chunking_strategy.value_or(vad::VadOptions{});
    if (r.vad_threshold) r.vad_options->threshold = *r.vad_threshold;
  }
}

}  // namespace

const std::vector<std::string_view>& known_fields() {
  static const std::vector<std::string_view> names = [] {
    std::vector<std::string_view> all = {"file"};
    for (const auto& [name, reader] : field_readers()) all.push_back(name);
    return all;
  }();
  return names;
}

TranscriptionRequest parse_transcription_request(const std::vector<FormPart>& parts, const RequestLimits& limits) {
  TranscriptionRequest r;
  const auto& readers = field_readers();
  json chunking_fields = json::object();
  for (const auto& p : parts) {
    if (p.name == "file") {
      r.file = p.data;
      continue;
    }
    if (const auto key = chunking_key(p.name); !key.empty()) {
      chunking_fields[key] = std::string(p.data);
      continue;
    }
    const auto reader = readers.find(p.name);
    if (reader == readers.end())
      throw FieldError(p.name, "unknown field '" + p.name + "' (the README lists the fields this server takes)");
    reader->second(std::string(p.data), r, limits);
  }
  if (!chunking_fields.empty()) {
    if (r.chunking_strategy) throw FieldError("chunking_strategy", "chunking_strategy is given twice");
    r.chunking_strategy = read_chunking_object(chunking_fields);
  }
  if (!r.file) throw FieldError("file", "the form has no 'file' field with the audio");
  if (r.file->empty()) throw FieldError("file", "the audio file is empty");
  check_combination(r, limits);
  return r;
}

namespace {

std::uint64_t fnv1a(std::string_view data, std::uint64_t h) {
  for (unsigned char c : data) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

// The temperatures tried: the request's (or the default's first) and its fallback steps.
std::vector<float> temperature_schedule(const TranscriptionRequest& r, const pipeline::TranscribeOptions& defaults,
                                        const TemperaturePolicy& policy) {
  if (!r.temperature && !r.temperature_inc) return defaults.temperatures;
  const double start = r.temperature.value_or(defaults.temperatures.empty() ? 0.0 : defaults.temperatures.front());
  const double increment = r.temperature_inc.value_or(policy.increment);
  // an explicit temperature_inc turns the fallback on (or off, with 0) whatever the default
  const bool fallback = r.temperature_inc ? increment > 0 : policy.fallback && increment > 0;
  std::vector<float> schedule = {static_cast<float>(start)};
  if (fallback)
    for (double t = start + increment; t <= 1.0 + 1e-6; t += increment) schedule.push_back(static_cast<float>(t));
  return schedule;
}

void apply_decoding(const TranscriptionRequest& r, pipeline::TranscribeOptions& o) {
  if (r.beam_size) {
    if (*r.beam_size <= 1) {
      o.beam.reset();  // 0 or 1: greedy, as --beam-size
    } else {
      if (!o.beam) o.beam = decoding::BeamOptions{};
      o.beam->beam_size = *r.beam_size;
    }
  }
  if (r.best_of) o.best_of = *r.best_of;
  if (r.no_speech_threshold) o.thresholds.no_speech = *r.no_speech_threshold;
  if (r.compression_ratio_threshold) o.thresholds.compression_ratio = *r.compression_ratio_threshold;
  if (r.logprob_threshold) o.thresholds.logprob = *r.logprob_threshold;
  if (r.condition_on_previous_text) o.condition_on_previous_text = *r.condition_on_previous_text;
  if (r.no_timestamps) o.decode.timestamps = !*r.no_timestamps;
  if (r.wants_words()) o.word_timestamps = true;
  if (r.hallucination_silence_threshold) {
    if (*r.hallucination_silence_threshold > 0) {
      o.hallucination_silence_threshold = *r.hallucination_silence_threshold;
      o.word_timestamps = true;  // the silences are found between the words
    } else {
      o.hallucination_silence_threshold.reset();
    }
  }
  if (r.vad && !*r.vad) o.vad.reset();
  if (r.vad_options) o.vad = *r.vad_options;
}

// What, besides the audio, makes one request differ from another, for the seed.
std::string options_key(const TranscriptionRequest& r, const pipeline::TranscribeOptions& o) {
  std::string key = o.decode.task + "|" + o.decode.language + "|" + r.prompt + "|" + r.hotwords + "|" +
                    std::to_string(r.temperature.value_or(-1));
  if (r.best_of || r.temperature_inc || r.offset > 0 || r.duration || r.hallucination_silence_threshold)
    key += "|" + std::to_string(o.best_of) + "|" + std::to_string(r.temperature_inc.value_or(-1)) + "|" +
           std::to_string(r.offset) + "|" + std::to_string(r.duration.value_or(-1)) + "|" +
           std::to_string(r.hallucination_silence_threshold.value_or(-1));
  return key;
}

}  // namespace

pipeline::TranscribeOptions transcribe_options(const TranscriptionRequest& request, bool translate,
                                               const pipeline::TranscribeOptions& defaults,
                                               const TemperaturePolicy& temperature) {
  auto o = defaults;
  o.decode.task = translate ? "translate" : "transcribe";
  if (!request.language.empty()) o.decode.language = request.language;
  if (!request.prompt.empty()) o.initial_prompt = request.prompt;
  if (!request.hotwords.empty()) o.hotwords = request.hotwords;
  o.temperatures = temperature_schedule(request, defaults, temperature);
  apply_decoding(request, o);
  if (!request.file) throw InternalError("transcribe_options: a request without its file");
  const std::uint64_t seed = fnv1a(*request.file, defaults.seed ^ 1469598103934665603ull);
  o.seed = fnv1a(options_key(request, o), seed);
  o.progress = nullptr;
  return o;
}

}  // namespace amanuensis::server

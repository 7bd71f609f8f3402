// cli: `amanuensis loadtest`. Each client thread owns one keep-alive HTTP/1.1 connection
// and one io_context, and waits for each operation it starts: synchronous in effect, but
// Beast's timeouts only apply to asynchronous operations, and a hung server must show up
// as a timeout rather than hang the load test.
#include "cli/loadtest.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>

#include "audio/decode.h"
#include "audio/wav.h"
#include "cli/args.h"
#include "common/error.h"

namespace amanuensis::cli {

const char* const kLoadtestUsage =
    R"(loadtest options (amanuensis loadtest --url http://HOST:PORT [options] FILE [FILE ...]):
  --url URL               the server's base address (http only)
  --concurrency LIST      clients at once, one level after another (default 1,4,8,16,32)
  --requests N            requests per level (default 100); request i sends file i mod the file count
  --endpoint E            transcriptions (default) or translations
  --response-format F     the requests' response_format (default json)
  --model NAME            the requests' model field (default whisper-1)
  --api-key KEY           sent as "Authorization: Bearer KEY"
  --field NAME=VALUE      one more form field, or another value for model/response_format (repeatable)
  --timeout S             seconds one request may take, connecting included (default 300)
  --json PATH             also write every number as JSON; "-": JSON on stdout, the table on stderr
  --metrics-every N       every N requests, record the server's process_resident_memory_bytes
  --fail-on-unexpected    exit 1 when a request was not answered as expected: 200, or 400 for a
                          file that does not decode here
)";

namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace fs = std::filesystem;
using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;
using Request = http::request<http::string_body>;
using nlohmann::json;

// Random enough not to occur inside an audio file by chance.
constexpr std::string_view kBoundary = "amanuensis-loadtest-3f9b27c4e1d85a60";
constexpr std::uint64_t kMaxResponseBytes = 64u << 20;

struct Url {
  std::string host;
  std::string port;
  std::string authority;  // the Host header
  std::string prefix;     // path in front of /v1/..., without a trailing slash
};

struct AudioFile {
  std::string path;
  std::size_t bytes = 0;
  double seconds = 0.0;      // decoded here; 0 for a broken file
  int expected_status = 200;
  Request upload;            // built once, sent by every client
};

struct Options {
  Url url;
  std::string endpoint = "transcriptions";
  std::vector<int> levels;
  int requests = 100;
  std::vector<std::pair<std::string, std::string>> fields;
  std::string api_key;
  Clock::duration timeout{};
  int metrics_every = 0;
  std::optional<std::string> json_path;
  bool fail_on_unexpected = false;
  std::vector<std::string> paths;
};

// What became of one request.
struct Outcome {
  int status = 0;         // 0: no HTTP answer, see failure
  std::string failure;    // connect, timeout, closed, bad_response or other
  double seconds = 0.0;
};

struct RssSample {
  int completed = 0;
  std::uint64_t bytes = 0;
};

struct Level {
  int concurrency = 0;
  double wall_seconds = 0.0;
  std::vector<Outcome> outcomes;  // by request number
  std::vector<RssSample> rss;
};

struct Summary {
  int ok = 0;
  int errors = 0;
  int unexpected = 0;
  double audio_seconds = 0.0;
  double audio_per_second = 0.0;
  double requests_per_second = 0.0;
  double p50 = 0.0, p95 = 0.0, p99 = 0.0, max = 0.0;
  std::map<std::string, int> statuses;  // "200", "400", ... or "transport:<failure>"
};

// ---- command line -------------------------------------------------------------------------

// Up to five digits and nothing else (ports, client counts).
std::optional<int> small_number(std::string_view text) {
  const auto digit = [](char c) { return c >= '0' && c <= '9'; };
  if (text.empty() || text.size() > 5 || !std::all_of(text.begin(), text.end(), digit)) return std::nullopt;
  return std::stoi(std::string(text));
}

Url parse_url(std::string_view text) {
  constexpr std::string_view kScheme = "http://";
  if (text.rfind("https://", 0) == 0)
    throw Error("--url: https is not supported; use the server's plain http:// address (or a local TLS proxy)");
  if (text.rfind(kScheme, 0) != 0) throw Error("--url must start with http:// (got '" + std::string(text) + "')");
  const std::string_view rest = text.substr(kScheme.size());
  const auto slash = rest.find('/');
  Url url;
  url.authority = std::string(rest.substr(0, slash));
  url.prefix = slash == std::string_view::npos ? "" : std::string(rest.substr(slash));
  while (!url.prefix.empty() && url.prefix.back() == '/') url.prefix.pop_back();
  if (url.prefix.find_first_of("?#") != std::string::npos)
    throw Error("--url: give the server's base address, without ? or #");

  std::string_view host = url.authority;
  std::string_view port = "80";
  if (host.rfind('[', 0) == 0) {  // [v6 address]:port
    const auto close = host.find(']');
    if (close == std::string_view::npos) throw Error("--url: unterminated [ in '" + url.authority + "'");
    if (close + 1 < host.size()) {
      if (host[close + 1] != ':') throw Error("--url: expected :PORT after ] in '" + url.authority + "'");
      port = host.substr(close + 2);
    }
    host = host.substr(1, close - 1);
  } else if (const auto colon = host.rfind(':'); colon != std::string_view::npos) {
    port = host.substr(colon + 1);
    host = host.substr(0, colon);
  }
  if (host.empty()) throw Error("--url has no host: '" + std::string(text) + "'");
  const int port_number = small_number(port).value_or(0);
  if (port_number < 1 || port_number > 65535)
    throw Error("--url: port must be 1 to 65535 (got '" + std::string(port) + "')");
  url.host = std::string(host);
  url.port = std::string(port);
  return url;
}

std::vector<int> parse_levels(const std::string& list) {
  std::vector<int> levels;
  std::stringstream items(list);
  for (std::string item; std::getline(items, item, ',');) {
    const int n = small_number(item).value_or(0);
    if (n < 1 || n > 4096)
      throw Error("--concurrency: '" + item + "' is not a client count from 1 to 4096 (e.g. 1,4,8)");
    levels.push_back(n);
  }
  if (levels.empty() || list.back() == ',')
    throw Error("--concurrency needs a list like 1,4,8,16,32 (got '" + list + "')");
  return levels;
}

// --field may repeat, which Args does not support, so it is taken out first.
std::vector<std::string> take_fields(const std::vector<std::string>& argv, Options& o) {
  std::vector<std::string> rest;
  for (std::size_t i = 0; i < argv.size(); ++i) {
    std::optional<std::string> field;
    if (argv[i] == "--field") {
      if (i + 1 == argv.size()) throw Error("option --field needs NAME=VALUE");
      field = argv[++i];
    } else if (argv[i].rfind("--field=", 0) == 0) {
      field = argv[i].substr(8);
    }
    if (!field) {
      rest.push_back(argv[i]);
      continue;
    }
    const auto eq = field->find('=');
    if (eq == 0 || eq == std::string::npos) throw Error("--field needs NAME=VALUE (got '" + *field + "')");
    o.fields.emplace_back(field->substr(0, eq), field->substr(eq + 1));
  }
  return rest;
}

Options parse_options(const std::vector<std::string>& argv) {
  Options o;
  const Args args(take_fields(argv, o), {"fail-on-unexpected"},
                  {"url", "concurrency", "requests", "endpoint", "response-format", "model", "api-key", "timeout",
                   "json", "metrics-every"});
  o.url = parse_url(args.required("url"));
  o.levels = parse_levels(args.get_or("concurrency", "1,4,8,16,32"));
  o.requests = args.get_int("requests", 100);
  if (o.requests < 1) throw Error("--requests must be at least 1");
  o.endpoint = args.get_or("endpoint", "transcriptions");
  if (o.endpoint != "transcriptions" && o.endpoint != "translations")
    throw Error("--endpoint must be transcriptions or translations (got '" + o.endpoint + "')");
  // A --field of the same name replaces these rather than sending the field twice.
  for (const auto& [name, value] : {std::pair<std::string, std::string>{"model", args.get_or("model", "whisper-1")},
                                    {"response_format", args.get_or("response-format", "json")}}) {
    if (std::none_of(o.fields.begin(), o.fields.end(), [&](const auto& f) { return f.first == name; }))
      o.fields.insert(o.fields.begin(), {name, value});
  }
  o.api_key = args.get_or("api-key", "");
  const double timeout = args.get_double("timeout", 300.0);
  if (!(timeout > 0)) throw Error("--timeout must be a positive number of seconds");
  o.timeout = std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeout));
  o.metrics_every = args.get_int("metrics-every", 0);
  if (o.metrics_every < 0) throw Error("--metrics-every must be a positive number of requests");
  o.json_path = args.get("json");
  o.fail_on_unexpected = args.flag("fail-on-unexpected");
  o.paths = args.positional();
  if (o.paths.empty()) throw Error("loadtest needs at least one audio file to send");
  return o;
}

// ---- requests -----------------------------------------------------------------------------

std::string multipart_body(std::string_view file_name, std::string_view file_bytes,
                           std::span<const std::pair<std::string, std::string>> fields) {
  std::string body;
  body.reserve(file_bytes.size() + 1024);
  for (const auto& [name, value] : fields) {
    body.append("--").append(kBoundary).append("\r\nContent-Disposition: form-data; name=\"").append(name);
    body.append("\"\r\n\r\n").append(value).append("\r\n");
  }
  body.append("--").append(kBoundary).append("\r\nContent-Disposition: form-data; name=\"file\"; filename=\"");
  body.append(file_name).append("\"\r\nContent-Type: application/octet-stream\r\n\r\n").append(file_bytes);
  body.append("\r\n--").append(kBoundary).append("--\r\n");
  return body;
}

Request new_request(http::verb verb, const Options& o, const std::string& path) {
  Request r{verb, o.url.prefix + path, 11};
  r.set(http::field::host, o.url.authority);
  r.set(http::field::user_agent, "amanuensis-loadtest");
  if (!o.api_key.empty()) r.set(http::field::authorization, "Bearer " + o.api_key);
  return r;
}

// Reads the file and decodes it here: its length counts towards throughput, and a file the
// project's decoder refuses is one the server must refuse with 400.
AudioFile load_file(const std::string& path, const Options& o) {
  std::ifstream in(path, std::ios::binary);
  if (!in || fs::is_directory(path)) throw Error("cannot read audio file '" + path + "'");
  std::ostringstream content;
  content << in.rdbuf();
  if (in.bad()) throw Error("cannot read audio file '" + path + "'");
  const std::string bytes = std::move(content).str();

  AudioFile file;
  file.path = path;
  file.bytes = bytes.size();
  try {
    const auto samples = audio::decode_audio(std::as_bytes(std::span(bytes)));
    file.seconds = static_cast<double>(samples.size()) / audio::kSampleRate;
  } catch (const Error&) {
    file.expected_status = 400;
  }
  file.upload = new_request(http::verb::post, o, "/v1/audio/" + o.endpoint);
  file.upload.set(http::field::content_type, "multipart/form-data; boundary=" + std::string(kBoundary));
  file.upload.body() = multipart_body(fs::path(path).filename().string(), bytes, o.fields);
  file.upload.prepare_payload();
  return file;
}

std::string failure_kind(const beast::error_code& ec) {
  if (ec == beast::error::timeout) return "timeout";
  if (ec == http::error::end_of_stream || ec == http::error::partial_message || ec == asio::error::eof ||
      ec == asio::error::connection_reset || ec == asio::error::broken_pipe || ec == asio::error::connection_aborted)
    return "closed";
  if (ec.category() == http::make_error_code(http::error::bad_version).category()) return "bad_response";
  return "other";
}

class Connection {
 public:
  Connection(const Url& url, Clock::duration timeout) : url_(url), timeout_(timeout) {}

  // Sends one request and reads its answer; failures come back as Outcome::failure.
  Outcome exchange(const Request& request, std::string* body = nullptr) {
    const auto deadline = Clock::now() + timeout_;  // for connecting, sending and receiving
    Outcome outcome = attempt(request, deadline, body);
    // A server may close an idle keep-alive connection just as a request goes out; like
    // curl and browsers, send it once more, on a new connection, which cannot be stale.
    if (outcome.failure == kStale) outcome = attempt(request, deadline, body);
    return outcome;
  }

 private:
  static constexpr std::string_view kStale = "stale";

  Outcome attempt(const Request& request, Clock::time_point deadline, std::string* body) {
    stream_.expires_at(deadline);
    const bool reused = open_;
    if (!open_) {
      if (auto failure = connect()) return {0, *failure};
    }
    beast::error_code write_error, read_error;
    http::async_write(stream_, request, [&](beast::error_code ec, std::size_t) { write_error = ec; });
    wait();
    // Read even after a failed write: a server may answer (413, 400) and close before
    // taking the whole upload.
    http::response_parser<http::string_body> parser;
    parser.body_limit(kMaxResponseBytes);
    http::async_read(stream_, buffer_, parser, [&](beast::error_code ec, std::size_t) { read_error = ec; });
    wait();
    if (read_error) {
      close();
      const std::string failure = failure_kind(write_error ? write_error : read_error);
      if (reused && failure == "closed" && !parser.got_some()) return {0, std::string(kStale)};
      return {0, failure};
    }
    auto& response = parser.get();
    if (!response.keep_alive() || write_error) close();
    if (body) *body = std::move(response.body());
    return {static_cast<int>(response.result_int()), {}};
  }

  std::optional<std::string> connect() {
    beast::error_code ec;
    tcp::resolver resolver(io_);
    const auto endpoints = resolver.resolve(url_.host, url_.port, ec);
    if (!ec) {
      stream_.async_connect(endpoints, [&](beast::error_code e, const tcp::endpoint&) { ec = e; });
      wait();
    }
    if (ec) {
      close();
      return ec == beast::error::timeout ? "timeout" : "connect";
    }
    stream_.socket().set_option(tcp::no_delay(true), ec);
    open_ = true;
    return std::nullopt;
  }

  void close() {
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
    stream_.close();
    buffer_.clear();
    open_ = false;
  }

  // Runs what was started on this connection until it completes (or its deadline passes).
  void wait() {
    io_.restart();
    io_.run();
  }

  const Url& url_;
  Clock::duration timeout_;
  asio::io_context io_{1};
  beast::tcp_stream stream_{io_};
  beast::flat_buffer buffer_;
  bool open_ = false;
};

double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

Outcome send(Connection& connection, const Request& request) {
  const auto start = Clock::now();
  Outcome outcome;
  try {
    outcome = connection.exchange(request);
  } catch (const std::exception&) {
    outcome = {0, "other"};  // e.g. out of memory: still one failed request, not a dead client
  }
  outcome.seconds = seconds_since(start);
  return outcome;
}

// The server's process_resident_memory_bytes, when /metrics answers with it.
std::optional<std::uint64_t> scrape_rss(Connection& connection, const Request& metrics) {
  constexpr std::string_view kName = "process_resident_memory_bytes ";
  std::string body;
  try {
    if (connection.exchange(metrics, &body).status != 200) return std::nullopt;
  } catch (const std::exception&) {
    return std::nullopt;
  }
  std::istringstream lines(body);
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind(kName, 0) == 0) return static_cast<std::uint64_t>(std::strtod(line.c_str() + kName.size(), nullptr));
  }
  return std::nullopt;
}

Level run_level(const Options& o, std::span<const AudioFile> files, int concurrency) {
  Level level;
  level.concurrency = concurrency;
  level.outcomes.resize(static_cast<std::size_t>(o.requests));
  const Request metrics = new_request(http::verb::get, o, "/metrics");
  std::atomic<int> next{0}, completed{0};
  std::mutex rss_mutex;
  const auto start = Clock::now();
  {
    std::vector<std::jthread> clients;
    for (int c = 0; c < concurrency; ++c) {
      clients.emplace_back([&] {
        Connection connection(o.url, o.timeout);
        for (int i = next++; i < o.requests; i = next++) {
          const auto n = static_cast<std::size_t>(i);
          level.outcomes[n] = send(connection, files[n % files.size()].upload);
          const int done = ++completed;
          if (o.metrics_every > 0 && done % o.metrics_every == 0) {
            if (auto rss = scrape_rss(connection, metrics)) {
              std::lock_guard lock(rss_mutex);
              level.rss.push_back({done, *rss});
            }
          }
        }
      });
    }
  }
  level.wall_seconds = seconds_since(start);
  std::sort(level.rss.begin(), level.rss.end(), [](const auto& a, const auto& b) { return a.completed < b.completed; });
  return level;
}

// ---- numbers ------------------------------------------------------------------------------

// Nearest-rank percentile of sorted values: a latency some request really had.
double percentile(std::span<const double> sorted, double p) {
  if (sorted.empty()) return 0.0;
  const auto rank = static_cast<std::size_t>(std::ceil(p / 100.0 * static_cast<double>(sorted.size())));
  return sorted[std::clamp<std::size_t>(rank, 1, sorted.size()) - 1];
}

std::string status_key(const Outcome& outcome) {
  return outcome.status != 0 ? std::to_string(outcome.status) : "transport:" + outcome.failure;
}

Summary summarize(const Level& level, std::span<const AudioFile> files) {
  Summary s;
  std::vector<double> latencies;
  for (std::size_t i = 0; i < level.outcomes.size(); ++i) {
    const Outcome& outcome = level.outcomes[i];
    const AudioFile& file = files[i % files.size()];
    latencies.push_back(outcome.seconds);
    ++s.statuses[status_key(outcome)];
    if (outcome.status == 200) {
      ++s.ok;
      s.audio_seconds += file.seconds;
    } else {
      ++s.errors;
    }
    if (outcome.status != file.expected_status) ++s.unexpected;
  }
  std::sort(latencies.begin(), latencies.end());
  s.p50 = percentile(latencies, 50);
  s.p95 = percentile(latencies, 95);
  s.p99 = percentile(latencies, 99);
  s.max = latencies.empty() ? 0.0 : latencies.back();
  if (level.wall_seconds > 0) {
    s.audio_per_second = s.audio_seconds / level.wall_seconds;
    s.requests_per_second = static_cast<double>(level.outcomes.size()) / level.wall_seconds;
  }
  return s;
}

// ---- output -------------------------------------------------------------------------------

std::string table_header() {
  char line[160];
  std::snprintf(line, sizeof line, "%11s %8s %6s %6s %10s %9s %8s %8s %8s %8s  %s\n", "concurrency", "requests", "ok",
                "errors", "unexpected", "audio s/s", "req/s", "p50 s", "p95 s", "p99 s", "statuses");
  return line;
}

std::string table_row(const Level& level, const Summary& s) {
  std::string statuses;
  for (const auto& [key, count] : s.statuses)
    statuses += (statuses.empty() ? "" : " ") + key + "x" + std::to_string(count);
  char line[160];
  std::snprintf(line, sizeof line, "%11d %8zu %6d %6d %10d %9.2f %8.2f %8.3f %8.3f %8.3f  ", level.concurrency,
                level.outcomes.size(), s.ok, s.errors, s.unexpected, s.audio_per_second, s.requests_per_second, s.p50,
                s.p95, s.p99);
  return line + statuses + "\n";
}

// RSS samples, and the mean over the first and the last 200 requests when they do not
// overlap: a steady server keeps the two close, a leaking one does not.
json memory_json(const Level& level) {
  constexpr int kWindow = 200;
  json j;
  j["series"] = json::array();
  for (const auto& sample : level.rss)
    j["series"].push_back({{"completed", sample.completed}, {"rss_bytes", sample.bytes}});
  const int n = static_cast<int>(level.outcomes.size());
  if (n < 2 * kWindow) return j;
  auto mean = [&](int from, int to) -> std::optional<double> {  // samples with completed in (from, to]
    double sum = 0.0;
    int count = 0;
    for (const auto& sample : level.rss) {
      if (sample.completed > from && sample.completed <= to) {
        sum += static_cast<double>(sample.bytes);
        ++count;
      }
    }
    return count > 0 ? std::optional(sum / count) : std::nullopt;
  };
  const auto first = mean(0, kWindow), last = mean(n - kWindow, n);
  if (first && last) {
    j["first_200_mean_rss_bytes"] = *first;
    j["last_200_mean_rss_bytes"] = *last;
    j["last_to_first_ratio"] = *last / *first;
  }
  return j;
}

json level_json(const Level& level, const Summary& s, std::span<const AudioFile> files, double first_throughput) {
  json per_file = json::array();
  for (const auto& file : files) per_file.push_back({{"file", file.path}, {"expected_status", file.expected_status},
                                                     {"statuses", json::object()}});
  for (std::size_t i = 0; i < level.outcomes.size(); ++i) {
    auto& count = per_file[i % files.size()]["statuses"][status_key(level.outcomes[i])];
    count = count.is_null() ? 1 : count.get<int>() + 1;
  }
  json j = {{"concurrency", level.concurrency},
            {"requests", level.outcomes.size()},
            {"wall_seconds", level.wall_seconds},
            {"ok", s.ok},
            {"errors", s.errors},
            {"unexpected", s.unexpected},
            {"audio_seconds", s.audio_seconds},
            {"audio_seconds_per_second", s.audio_per_second},
            {"requests_per_second", s.requests_per_second},
            {"throughput_vs_first_level", first_throughput > 0 ? json(s.audio_per_second / first_throughput) : json()},
            {"latency_seconds", {{"p50", s.p50}, {"p95", s.p95}, {"p99", s.p99}, {"max", s.max}}},
            {"statuses", s.statuses},
            {"per_file", per_file}};
  if (!level.rss.empty()) j["memory"] = memory_json(level);
  return j;
}

json report_json(const Options& o, std::span<const AudioFile> files, const json& levels) {
  json j = {{"url", "http://" + o.url.authority + o.url.prefix},
            {"endpoint", "/v1/audio/" + o.endpoint},
            {"requests_per_level", o.requests},
            {"files", json::array()},
            {"levels", levels}};
  for (const auto& file : files)
    j["files"].push_back({{"path", file.path}, {"bytes", file.bytes}, {"audio_seconds", file.seconds},
                          {"expected_status", file.expected_status}});
  return j;
}

}  // namespace

int run_loadtest(const std::vector<std::string>& argv) {
  Options o;
  std::vector<AudioFile> files;
  std::ofstream json_file;
  try {
    o = parse_options(argv);
    for (const auto& path : o.paths) files.push_back(load_file(path, o));
    // Opened now: a bad path should not cost a whole run.
    if (o.json_path && *o.json_path != "-") {
      json_file.open(*o.json_path, std::ios::binary | std::ios::trunc);
      if (!json_file) throw Error("--json: cannot write '" + *o.json_path + "'");
    }
  } catch (const Error& e) {
    std::cerr << "amanuensis loadtest: " << e.what() << " (see amanuensis --help)\n";
    return 2;
  }
  const bool json_on_stdout = o.json_path && *o.json_path == "-";
  std::ostream& table = json_on_stdout ? std::cerr : std::cout;

  table << table_header() << std::flush;
  json levels = json::array();
  double first_throughput = 0.0;
  bool any_unexpected = false;
  for (std::size_t n = 0; n < o.levels.size(); ++n) {
    const Level level = run_level(o, files, o.levels[n]);
    const Summary summary = summarize(level, files);
    if (n == 0) first_throughput = summary.audio_per_second;
    any_unexpected = any_unexpected || summary.unexpected > 0;
    table << table_row(level, summary) << std::flush;
    levels.push_back(level_json(level, summary, files, first_throughput));
  }

  const json report = report_json(o, files, levels);
  if (json_on_stdout) {
    std::cout << report.dump(2) << "\n";
  } else if (json_file.is_open()) {
    json_file << report.dump(2) << "\n";
    if (!json_file.flush()) throw Error("--json: cannot write '" + *o.json_path + "'");
  }
  return o.fail_on_unexpected && any_unexpected ? 1 : 0;
}

}  // namespace amanuensis::cli

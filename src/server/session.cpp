// server: one HTTP connection of the server (see server_impl.h): reads requests one after
// another (keep-alive), routes and authenticates them from their headers, answers /health,
// /metrics and /v1/models, and turns an audio request into a job on its model's scheduler
// (form checked, audio decoded within --max-audio-seconds), answering it in OpenAI's
// formats once done, all without blocking the network threads.
#include <poll.h>
#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>

#include "audio/decode.h"
#include "common/cpu_features.h"
#include "common/error.h"
#include "kernels/backend.h"
#include "kernels/cpu/thread_pool.h"
#include "pipeline/output_formats.h"
#include "pipeline/scheduler.h"
#include "server/metrics.h"
#include "server/multipart.h"
#include "server/request_options.h"
#include "server/server_impl.h"
#include "text/tokenizer.h"

namespace amanuensis::server {

namespace beast = boost::beast;
namespace http = beast::http;
using nlohmann::json;
using pipeline::Job;
using pipeline::JobResult;
using pipeline::QueueFull;
using pipeline::SchedulerStats;
using pipeline::ShuttingDown;
using pipeline::TranscriptionScheduler;

namespace {

using Response = http::response<http::string_body>;

// An upload's audio as its job reads it: decoded as it is read, cut to the request's
// offset and duration.
class UploadAudio final : public SampleSource {
 public:
  UploadAudio(std::unique_ptr<audio::AudioReader> reader, std::size_t first, std::size_t count)
      : reader_(std::move(reader)), range_(*reader_, first, count) {}
  std::size_t read(std::span<float> out) override { return range_.read(out); }
  void rewind() override { range_.rewind(); }

 private:
  std::unique_ptr<audio::AudioReader> reader_;
  RangeSource range_;
};

// An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}.
struct ApiError {
  int status = 400;
  std::string message;
  std::string type = "invalid_request_error";
  std::optional<std::string> param;
  std::optional<std::string> code;
  double retry_after = 0.0;
};

ApiError bad_request(std::string message, std::optional<std::string> param = std::nullopt) {
  return {400, std::move(message), "invalid_request_error", std::move(param), std::nullopt};
}

std::string json_dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

std::string error_body(const ApiError& e) {
  json err = {{"message", e.message}, {"type", e.type}, {"param", nullptr}, {"code", nullptr}};
  if (e.param) err["param"] = *e.param;
  if (e.code) err["code"] = *e.code;
  return json_dump({{"error", err}}) + "\n";
}

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (std::tolower(static_cast<unsigned char>(a[i])) != std::tolower(static_cast<unsigned char>(b[i]))) return false;
  return true;
}

// Constant-time comparison of the API key.
bool same_secret(std::string_view a, std::string_view b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (std::size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i % std::max<std::size_t>(1, b.size())]);
  return diff == 0 && !b.empty();
}

// True when the peer has closed its side (or the socket failed): a best-effort check used
// to drop queued jobs of clients that went away.
bool peer_gone(int fd) {
  pollfd p{fd, POLLIN | POLLRDHUP, 0};
  if (::poll(&p, 1, 0) <= 0) return false;
  if (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) return true;
  if (p.revents & POLLIN) {
    char c;
    const auto n = ::recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    return n == 0;
  }
  return false;
}

std::string_view to_sv(beast::string_view s) { return {s.data(), s.size()}; }

// A response's x-request-id: unique within the process (a counter) and across restarts
// (a random prefix), as OpenAI's "req_" ids.
std::string next_request_id() {
  static const std::uint64_t prefix = std::random_device{}() * 0x9E3779B97F4A7C15ull ^ static_cast<std::uint64_t>(std::time(nullptr));
  static std::atomic<std::uint64_t> counter{0};
  char buf[48];
  std::snprintf(buf, sizeof buf, "req_%016llx%016llx", static_cast<unsigned long long>(prefix),
                static_cast<unsigned long long>(++counter));
  return buf;
}

// OpenAI's text and words have no outer spaces; Whisper's tokens start with one.
std::string trimmed(const std::string& s) {
  const auto first = s.find_first_not_of(" \t\n");
  if (first == std::string::npos) return {};
  return s.substr(first, s.find_last_not_of(" \t\n") - first + 1);
}

// Times of a transcript of the audio from `offset` seconds on, made times of the file.
void shift_times(pipeline::Transcript& t, double offset) {
  if (offset == 0.0) return;
  for (auto& s : t.segments) {
    s.start += offset;
    s.end += offset;
    for (auto& w : s.words) {
      w.start += offset;
      w.end += offset;
    }
  }
}

}  // namespace

// One HTTP connection: reads requests one after another (keep-alive), answers them, and
// hands transcriptions to the scheduler without blocking the network threads.
class Session : public std::enable_shared_from_this<Session> {
 public:
  // Counted open from here to the destructor (--max-connections): the descriptor is held
  // that long.
  Session(tcp::socket socket, Server::Impl& server) : stream_(std::move(socket)), server_(server) {
    ++server_.metrics.connections.open;
  }
  ~Session() { --server_.metrics.connections.open; }
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  void start() {
    net::dispatch(stream_.get_executor(), beast::bind_front_handler(&Session::do_read, shared_from_this()));
  }

  // Posted by Server::stop(): closes the connection when it waits for a new request.
  void stop_if_idle() {
    net::post(stream_.get_executor(), [self = shared_from_this()] {
      if (self->idle_) {
        beast::error_code ec;
        self->stream_.socket().shutdown(tcp::socket::shutdown_both, ec);
        self->stream_.socket().close(ec);
      }
    });
  }

 private:
  static Clock::duration seconds(double s) {
    return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(s));
  }

  // The next request: on a kept-alive connection with nothing of it read yet, first its
  // first byte within --keep-alive-timeout; then its header within --header-timeout.
  void do_read() {
    if (server_.stopping) return close();
    parser_.emplace();
    parser_->header_limit(kMaxHeaderBytes);
    parser_->body_limit(server_.opt.max_upload_bytes + (1u << 20));
    idle_ = true;
    if (answered_ && buffer_.size() == 0) return wait_for_next_request();
    read_header();
  }

  void wait_for_next_request() {
    stream_.expires_after(seconds(server_.opt.keep_alive_timeout));
    stream_.async_read_some(buffer_.prepare(4096), [self = shared_from_this()](beast::error_code ec, std::size_t n) {
      self->buffer_.commit(n);
      if (ec == beast::error::timeout) ++self->server_.metrics.connections.idle_timeouts;
      if (ec) return self->close();  // the client closed it, or was idle too long
      self->read_header();
    });
  }

  void read_header() {
    stream_.expires_after(seconds(server_.opt.header_timeout));
    http::async_read_header(stream_, buffer_, *parser_, beast::bind_front_handler(&Session::on_header, shared_from_this()));
  }

  void on_header(beast::error_code ec, std::size_t) {
    idle_ = false;
    if (ec == beast::error::timeout) {  // no complete header in time: the stream has closed itself
      ++server_.metrics.connections.header_timeouts;
      return close();
    }
    if (ec) return on_read_error(ec);
    stream_.expires_after(seconds(server_.opt.request_timeout));  // the body has the request's time
    auto& req = parser_->get();
    label_request(req);
    if (req.target().size() > kMaxTargetBytes) return send_error(target_too_long(), true);
    // Answer what needs no body before reading it (and close: the body is left unread).
    if (auto early = check_before_body(req)) return send_error(*early, /*close=*/!parser_->is_done());
    if (auto len = parser_->content_length(); len && *len > server_.opt.max_upload_bytes + (1u << 20))
      return send_error(too_large(), true);
    if (iequals(to_sv(req[http::field::expect]), "100-continue")) {
      auto cont = std::make_shared<http::response<http::empty_body>>(http::status::continue_, req.version());
      http::async_write(stream_, *cont, [self = shared_from_this(), cont](beast::error_code ec, std::size_t) {
        if (ec) return self->close();
        self->read_body();
      });
      return;
    }
    read_body();
  }

  void read_body() {
    http::async_read(stream_, buffer_, *parser_, beast::bind_front_handler(&Session::on_read, shared_from_this()));
  }

  // What the metrics and the log say of this request: its own path and method, never the
  // previous request's on this connection.
  void label_request(const http::request<http::string_body>& req) {
    request_start_ = Clock::now();
    endpoint_ = endpoint_label(std::string(req.target()));
    method_ = req.method_string().empty() ? std::string("?") : std::string(req.method_string());
    version_ = req.version();
    keep_alive_ = req.keep_alive();
  }

  void on_read_error(beast::error_code ec) {
    // The parser stops at a Content-Length over the limit while reading the header: the
    // request line is parsed by then, so the 413 is counted under the request's path.
    if (ec == http::error::body_limit) {
      label_request(parser_->get());
      return send_error(too_large(), true);
    }
    // A header over the limit: a request line without its end is 414, too many or too
    // long fields 431 (counted under the request's path).
    if (ec == http::error::header_limit) {
      if (!request_line_parsed()) {
        label_unparsed_request();
        return send_error(target_too_long(), true);
      }
      label_request(parser_->get());
      keep_alive_ = false;
      return send_error(header_too_large(), true);
    }
    if (ec.category() == http::make_error_code(http::error::bad_target).category() && ec != http::error::end_of_stream &&
        ec != http::error::partial_message) {
      label_unparsed_request();
      return send_error(bad_request("malformed HTTP request: " + ec.message()), true);
    }
    close();  // end of stream, timeout, reset
  }

  // A request whose header could not be parsed: counted and logged as "? other".
  void label_unparsed_request() {
    endpoint_ = "other";
    method_ = "?";
    keep_alive_ = false;
    request_start_ = Clock::now();
  }

  // Whether the request line was parsed before the header ran over its limit: Beast parses
  // it as soon as it has ended (and consumes it), so the message has its target then.
  bool request_line_parsed() const { return !parser_->get().target().empty(); }

  static ApiError target_too_long() {
    return {414, "the request line is longer than the server's limit of " + std::to_string(kMaxTargetBytes / 1024) +
                     " KiB; send the fields in the body",
            "invalid_request_error", std::nullopt, std::string("uri_too_long")};
  }

  static ApiError header_too_large() {
    return {431, "the request's header is larger than the server's limit of " +
                     std::to_string(kMaxHeaderBytes / 1024) + " KiB; send fewer or shorter header fields",
            "invalid_request_error", std::nullopt, std::string("header_too_large")};
  }

  void on_read(beast::error_code ec, std::size_t) {
    if (ec) return on_read_error(ec);
    request_ = parser_->release();
    handle();
  }

  ApiError too_large() const {
    ApiError e{413, "the upload is larger than the server's limit of " +
                        std::to_string(server_.opt.max_upload_bytes >> 20) + " MB",
               "invalid_request_error", std::string("file"), std::string("file_too_large")};
    return e;
  }

  static ApiError audio_too_long(double limit) {
    return {413,
            "the audio is longer than the server's limit of " + std::to_string(static_cast<long long>(std::ceil(limit))) +
                " seconds a request (--max-audio-seconds); send a shorter file, or split it",
            "invalid_request_error", std::string("file"), std::string("audio_too_long")};
  }

  static std::string path_of(std::string_view target) {
    const auto q = target.find('?');
    return std::string(target.substr(0, q));
  }

  static std::string endpoint_label(const std::string& target) {
    const auto path = path_of(target);
    for (const char* known : {"/health", "/metrics", "/v1/models", "/v1/audio/transcriptions", "/v1/audio/translations",
                              "/v1/audio/language"})
      if (path == known) return path;
    if (path.rfind("/v1/models/", 0) == 0) return "/v1/models/{id}";
    return "other";
  }

  // Routing and authentication, from the headers alone.
  std::optional<ApiError> check_before_body(const http::request_header<>& req) const {
    const auto path = path_of(to_sv(req.target()));
    const bool audio =
        path == "/v1/audio/transcriptions" || path == "/v1/audio/translations" || path == "/v1/audio/language";
    const bool get_path = path == "/health" || path == "/metrics" || path == "/v1/models" || path.rfind("/v1/models/", 0) == 0;
    if (!audio && !get_path) {
      return ApiError{404, "unknown path " + path, "invalid_request_error", std::nullopt, std::string("unknown_url")};
    }
    const bool method_ok = audio ? req.method() == http::verb::post
                                 : (req.method() == http::verb::get || req.method() == http::verb::head);
    if (!method_ok) {
      return ApiError{405, "method " + std::string(req.method_string()) + " is not allowed on " + path + " (use " +
                               (audio ? "POST" : "GET") + ")",
                      "invalid_request_error", std::nullopt, std::string("method_not_allowed")};
    }
    if (!server_.opt.api_key.empty() && path.rfind("/v1/", 0) == 0) {
      const std::string auth(req[http::field::authorization]);
      const std::string prefix = "Bearer ";
      const bool ok = auth.size() > prefix.size() && iequals(auth.substr(0, prefix.size()), prefix) &&
                      same_secret(auth.substr(prefix.size()), server_.opt.api_key);
      if (!ok) {
        return ApiError{401,
                        auth.empty() ? "missing API key: send the header 'Authorization: Bearer KEY'"
                                     : "incorrect API key provided",
                        "invalid_request_error", std::nullopt, std::string("invalid_api_key")};
      }
    }
    return std::nullopt;
  }

  void handle() {
    const auto path = path_of(to_sv(request_.target()));
    try {
      if (path == "/health") {
        const json h = health();
        return send_json(h, health_status_);
      }
      if (path == "/metrics") {
        const auto models = server_.registry.status();
        return send_text(server_.metrics.render(total_stats(models), server_.active_requests, seconds_up(),
                                                server_.registry.loaded_count()),
                         "text/plain; version=0.0.4; charset=utf-8", 200);
      }
      if (path == "/v1/models") return send_json({{"object", "list"}, {"data", model_list()}}, 200);
      if (path.rfind("/v1/models/", 0) == 0) return send_json(model_object(path.substr(11)), 200);
      return start_transcription(path == "/v1/audio/translations", path == "/v1/audio/language");
    } catch (const ApiError& e) {
      return send_error(e);
    } catch (const std::exception& e) {
      return send_error({500, std::string("internal error: ") + e.what(), "server_error", std::nullopt, std::nullopt});
    }
  }

  double seconds_up() const { return std::chrono::duration<double>(Clock::now() - server_.started).count(); }

  // 404 in OpenAI's shape, listing what this server has.
  ApiError model_not_found(const std::string& name) const {
    std::string known;
    for (const auto& id : server_.registry.ids()) known += (known.empty() ? "" : ", ") + id;
    return {404,
            "the model '" + name + "' does not exist; this server has " + known + " (and " +
                std::string(ModelRegistry::kAlias) + " for " + server_.registry.ids().front() + ")",
            "invalid_request_error", std::string("model"), std::string("model_not_found")};
  }

  // OpenAI's model object, plus the file's size and whether it is loaded.
  json model_json(const std::string& id, const ModelStatus& m) const {
    return {{"id", id},
            {"object", "model"},
            {"created", static_cast<std::int64_t>(server_.started_unix)},
            {"owned_by", "amanuensis"},
            {"size_bytes", m.size_bytes},
            {"state", state_name(m.state)}};
  }

  // Every model, then the alias of the first: what is listed is what a request may name.
  json model_list() const {
    const auto models = server_.registry.status();
    json data = json::array();
    for (const auto& m : models) data.push_back(model_json(m.id, m));
    if (models.front().id != ModelRegistry::kAlias) {
      json alias = model_json(std::string(ModelRegistry::kAlias), models.front());
      alias["alias_of"] = models.front().id;
      data.push_back(alias);
    }
    return data;
  }

  json model_object(const std::string& name) const {
    for (const auto& m : model_list())
      if (m["id"] == name) return m;
    throw model_not_found(name);
  }

  json health() {
    const auto models = server_.registry.status();
    const auto stats = total_stats(models);
    const bool started = server_.registry.first_loaded();
    json j = {{"status", started ? (server_.stopping ? "stopping" : "ok") : "loading"},
              {"model", models.front().id},
              {"threads", kernels::cpu::thread_count()},
              {"cpu_features", cpu_features().names()},
              {"isa_cap", std::string(isa_cap_name(isa_cap()))},
              {"workers", server_.opt.workers},
              {"active_transcriptions", stats.active_jobs},
              {"queue_depth", stats.queued_jobs},
              {"queued_audio_seconds", stats.queued_audio_seconds},
              {"running_audio_seconds", stats.running_audio_seconds},
              {"kv_pool",
               {{"reserved_bytes", stats.kv_reserved_bytes},
                {"used_bytes", stats.kv_used_bytes},
                {"audio_bytes", stats.kv_audio_bytes},
                {"admitted_bytes", stats.kv_admitted_bytes},
                {"limit_bytes", stats.kv_limit_bytes}}},
              {"jobs_waiting_for_memory", stats.jobs_waiting_for_memory},
              {"active_requests", server_.active_requests.load()},
              {"uptime_seconds", seconds_up()}};
    if (const auto& info = models.front().info) {  // the first model's, as with one model
      j["n_vocab"] = info->n_vocab;
      j["backend"] = info->backend;
      j["kernels"] = info->kernels;
      j["size"] = info->size;
      j["multilingual"] = info->multilingual;
    }
    j["models"] = json::array();
    for (const auto& m : models) {
      json one = {{"id", m.id},
                  {"state", state_name(m.state)},
                  {"size_bytes", m.size_bytes},
                  {"requests", m.requests},
                  {"active_transcriptions", m.stats.active_jobs},
                  {"queue_depth", m.stats.queued_jobs},
                  {"kv_pool_reserved_bytes", m.stats.kv_reserved_bytes},
                  {"kv_pool_used_bytes", m.stats.kv_used_bytes},
                  {"kv_pool_audio_bytes", m.stats.kv_audio_bytes},
                  {"kv_pool_admitted_bytes", m.stats.kv_admitted_bytes}};
      if (m.state == ModelState::Failed) one["error"] = m.error;
      j["models"].push_back(one);
    }
    health_status_ = started && !server_.stopping ? 200 : 503;
    return j;
  }

  // Parses and checks the multipart form: 400 (or 413) naming the field at fault.
  TranscriptionRequest read_form() const {
    const auto content_type = std::string(request_[http::field::content_type]);
    std::optional<std::string> boundary;
    try {
      boundary = multipart_boundary(content_type);
    } catch (const Error& e) {
      throw bad_request(e.what());
    }
    if (!boundary) throw bad_request("the request must be multipart/form-data (got '" + content_type + "')");
    std::vector<FormPart> parts;
    try {
      parts = parse_multipart(request_.body(), *boundary);
    } catch (const Error& e) {
      throw bad_request(e.what());
    }
    RequestLimits limits;
    limits.max_beam_size = server_.opt.max_beam_size;
    limits.max_best_of = server_.opt.max_best_of;
    limits.word_timestamps = server_.opt.defaults.decode.semantics == decoding::Semantics::OpenAI;
    TranscriptionRequest form;
    try {
      form = parse_transcription_request(parts, limits);
    } catch (const FieldError& e) {
      throw bad_request(e.what(), e.field);
    }
    if (form.file->size() > server_.opt.max_upload_bytes) throw too_large();
    return form;
  }

  // The served model the form names: OpenAI requires the field.
  std::size_t pick_model(const TranscriptionRequest& form) const {
    if (form.model.empty())
      throw bad_request("you must provide a model parameter (an id of GET /v1/models, such as " +
                            std::string(ModelRegistry::kAlias) + ")",
                        "model");
    if (const auto index = server_.registry.find(form.model)) return *index;
    throw model_not_found(form.model);
  }

  // Decodes the audio (400 when it is not audio) and makes the job, whose completion
  // posts finish_transcription.
  Job make_job(const TranscriptionRequest& form, bool translate) {
    const auto decode_start = Clock::now();
    // the job outlives the request body: its decoder reads a copy of the upload
    const auto* first_byte = reinterpret_cast<const std::byte*>(form.file->data());
    auto upload = std::make_shared<const std::vector<std::byte>>(first_byte, first_byte + form.file->size());
    std::unique_ptr<audio::AudioReader> reader;
    std::size_t n_samples = 0;
    audio::DecodeReport report;
    try {
      reader = audio::open_audio(*upload, {server_.opt.max_audio_seconds}, upload);
      n_samples = audio::scan_audio(*reader, &report);  // a broken or too long file is refused before it queues
    } catch (const audio::AudioTooLong& e) {
      throw audio_too_long(e.limit_seconds);
    } catch (const Error& e) {
      throw bad_request(std::string("could not decode the audio file: ") + e.what(), "file");
    }
    if (report.non_finite_samples > 0 && server_.opt.log_requests)  // one line a request, as the request's own
      std::fprintf(stderr, "amanuensis serve: warning: %zu NaN or infinite samples of an upload replaced by silence\n",
                   report.non_finite_samples);
    decode_seconds_ = std::chrono::duration<double>(Clock::now() - decode_start).count();
    file_seconds_ = static_cast<double>(n_samples) / 16000.0;
    const auto [first, count] = requested_range(n_samples, form);
    audio_seconds_ = static_cast<double>(count) / 16000.0;

    Job job;
    job.audio = std::make_shared<UploadAudio>(std::move(reader), first, count);
    job.n_samples = count;
    job.options = transcribe_options(form, translate, server_.opt.defaults,
                                     {server_.opt.temperature_fallback, server_.opt.temperature_increment});
    const int fd = stream_.socket().native_handle();
    const auto deadline = request_start_ + std::chrono::duration_cast<Clock::duration>(
                                               std::chrono::duration<double>(server_.opt.request_timeout));
    client_gone_ = std::make_shared<std::atomic<bool>>(false);
    job.cancelled = [fd, deadline, gone = client_gone_] {
      if (peer_gone(fd)) {
        *gone = true;
        return true;
      }
      return Clock::now() > deadline;
    };
    // once running, only a client that left stops the work (long files may run past the
    // queueing deadline)
    job.abandoned = [fd, gone = client_gone_] { return *gone || (*gone = peer_gone(fd)); };
    job.on_complete = [self = shared_from_this()] {
      net::post(self->stream_.get_executor(), [self] { self->finish_transcription(); });
    };
    return job;
  }

  // The samples [first, first + count) from `offset` for `duration` seconds (400 when
  // nothing is left).
  std::pair<std::size_t, std::size_t> requested_range(std::size_t n_samples, const TranscriptionRequest& form) {
    offset_ = form.offset;
    if (form.offset == 0.0 && !form.duration) return {0, n_samples};
    const auto first = static_cast<std::size_t>(std::llround(form.offset * 16000.0));
    if (first >= n_samples)
      throw bad_request("offset " + std::to_string(form.offset) + " s is past the end of the audio (" +
                            std::to_string(file_seconds_) + " s)",
                        "offset");
    std::size_t end = n_samples;
    if (form.duration) end = std::min(end, first + static_cast<std::size_t>(std::llround(*form.duration * 16000.0)));
    if (end <= first) throw bad_request("duration leaves no audio to transcribe", "duration");
    return {first, end - first};
  }

  // Parses the form, decodes the audio and queues the job on its model, once that model is
  // loaded (a request for a model still unloaded waits here without holding a thread); the
  // answer is sent by finish_transcription when the model's scheduler is done.
  void start_transcription(bool translate, bool language_endpoint) {
    if (!server_.registry.first_loaded())
      throw ApiError{503, "the model is still loading; retry shortly", "server_error", std::nullopt,
                     std::string("model_loading")};
    const auto form = read_form();
    const auto model = pick_model(form);
    auto job = make_job(form, translate);
    detect_language_ = language_endpoint || form.detect_language;
    job.detect_language_only = detect_language_;
    response_format_ = form.response_format;
    words_ = form.wants_words();  // shown in verbose_json, the one format with a place for them
    translate_ = translate;
    requested_language_ = form.language;
    include_timing_ = form.include_timing;
    include_logprobs_ = form.include_logprobs;
    request_.body().clear();  // `form` views it: not used below
    request_.body().shrink_to_fit();
    std::optional<ModelLease> lease;
    try {
      lease = server_.registry.acquire(model, [self = shared_from_this()](std::optional<ModelLease> loaded,
                                                                         std::exception_ptr error) {
        auto held = std::make_shared<std::optional<ModelLease>>(std::move(loaded));
        net::post(self->stream_.get_executor(),
                  [self, held, error] { self->on_model_loaded(std::move(*held), error); });
      });
    } catch (const ModelCapacity& e) {
      ApiError err{503, e.what(), "server_error", std::string("model"), std::string("model_capacity")};
      err.retry_after = e.retry_after_seconds;
      throw err;
    } catch (const ShuttingDown& e) {
      throw ApiError{503, e.what(), "server_error", std::nullopt, std::string("shutting_down")};
    }
    if (lease) return submit(std::move(job), std::move(*lease));
    waiting_job_ = std::move(job);
    ++server_.active_requests;  // accepted: it waits for its model
  }

  // On this session's strand once the model a request waited for is loaded, or is not.
  void on_model_loaded(std::optional<ModelLease> lease, std::exception_ptr error) {
    --server_.active_requests;
    if (!waiting_job_) return;
    Job job = std::move(*waiting_job_);
    waiting_job_.reset();
    try {
      if (error) std::rethrow_exception(error);
      if (!lease) throw InternalError("a model was loaded without a lease");
      submit(std::move(job), std::move(*lease));
    } catch (const ApiError& e) {
      send_error(e);
    } catch (const ModelLoadFailed& e) {
      send_error({500, e.what(), "server_error", std::string("model"), std::string("model_load_failed")});
    } catch (const ShuttingDown& e) {
      send_error({503, e.what(), "server_error", std::nullopt, std::string("shutting_down")});
    } catch (const std::exception& e) {
      send_error({500, std::string("internal error: ") + e.what(), "server_error", std::nullopt, std::nullopt});
    }
  }

  // Queues the job on the leased model's scheduler; the lease is held until it is done.
  void submit(Job job, ModelLease lease) {
    check_language(requested_language_, *lease.model());
    if (detect_language_ && !lease.model()->tokenizer().is_multilingual())
      throw bad_request("language detection needs a multilingual model; this one is English-only", "model");
    try {
      future_ = lease.scheduler().submit(std::move(job));
    } catch (const QueueFull& e) {
      ApiError err{429, e.what(), "rate_limit_exceeded", std::nullopt, std::string("queue_full")};
      err.retry_after = e.retry_after_seconds;
      throw err;
    } catch (const pipeline::JobTooLarge& e) {
      if (e.field.empty()) throw ApiError{503, e.what(), "server_error", std::nullopt, std::string("decoder_memory")};
      throw ApiError{400, e.what(), "invalid_request_error", e.field, std::string("decoder_memory")};
    } catch (const ShuttingDown& e) {
      throw ApiError{503, e.what(), "server_error", std::nullopt, std::string("shutting_down")};
    }
    if (include_logprobs_) logprob_model_ = lease.model();  // its tokenizer spells the tokens
    lease_ = std::move(lease);
    ++server_.active_requests;
  }

  // The language a request names must be one the model has: only English for an
  // English-only model (which would otherwise transcribe English whatever was asked).
  static void check_language(const std::string& language, const pipeline::Model& model) {
    if (language.empty() || language == "auto") return;
    const auto& tok = model.tokenizer();
    if (!tok.is_multilingual() && language != "en")
      throw bad_request("this model is English-only: language must be en (got '" + language + "')", "language");
    if (tok.is_multilingual() && !tok.language_token(language))
      throw bad_request("this model has no language '" + language + "'", "language");
  }

  void finish_transcription() {
    --server_.active_requests;
    lease_.reset();  // the job is done: its model may unload once idle
    try {
      answer_transcription();
    } catch (const std::exception& e) {
      send_error({500, std::string("internal error: ") + e.what(), "server_error", std::nullopt, std::nullopt});
    }
  }

  void answer_transcription() {
    JobResult result;
    try {
      result = future_.get();
    } catch (const Error& e) {
      return send_error(bad_request(e.what()));
    } catch (const std::exception& e) {  // InternalError among them: a bug, so it is logged
      std::fprintf(stderr, "amanuensis serve: transcription failed: %s\n", e.what());
      return send_error({500, std::string("transcription failed: ") + e.what(), "server_error", std::nullopt, std::nullopt});
    }
    if (result.dropped && client_gone_ && *client_gone_) {
      // The client went away while its job waited: nobody to answer. Counted as 499
      // ("client closed request", as nginx says).
      server_.metrics.record_request(endpoint_, 499, std::chrono::duration<double>(Clock::now() - request_start_).count());
      if (server_.opt.log_requests) std::fprintf(stderr, "amanuensis serve: %s %s 499 (client gone, job dropped)\n", method_.c_str(), endpoint_.c_str());
      return close();
    }
    if (result.dropped) {
      return send_error({504, "the request waited in the queue longer than the server's timeout (--request-timeout)",
                         "server_error", std::nullopt, std::string("timeout")},
                        true);
    }
    if (result.language) return answer_language(*result.language);
    server_.metrics.record_transcription(audio_seconds_, result.run_seconds);
    send_transcript(std::move(result));
  }

  // The transcript in the request's response_format, times made the file's, text as
  // OpenAI's, with usage (and the timing breakdown when asked for).
  void send_transcript(JobResult result) {
    auto t = std::move(result.transcript);
    shift_times(t, offset_);
    t.duration = file_seconds_;
    t.text = trimmed(t.text);
    // OpenAI bills whole seconds of audio, rounded up
    const json usage = {{"type", "duration"}, {"seconds", static_cast<std::int64_t>(std::ceil(audio_seconds_ - 1e-9))}};
    json timing = {{"queue_seconds", result.queue_seconds},
                   {"decode_audio_seconds", decode_seconds_},
                   {"transcription_seconds", result.run_seconds},
                   {"encoder_seconds", result.encoder_seconds},
                   {"decoder_seconds", result.decoder_seconds},
                   {"mel_and_rules_seconds",
                    std::max(0.0, result.run_seconds - result.encoder_seconds - result.decoder_seconds)},
                   {"audio_seconds", audio_seconds_}};
    auto res = std::make_shared<Response>(http::status::ok, version_);
    std::string body, type = "text/plain; charset=utf-8";
    if (response_format_ == "json") {
      json j = {{"text", t.text}, {"usage", usage}};
      if (include_logprobs_) j["logprobs"] = logprobs_json(t);
      if (include_timing_) j["timing"] = timing;
      body = json_dump(j) + "\n";
      type = "application/json";
    } else if (response_format_ == "verbose_json") {
      json j = json::parse(pipeline::render(t, pipeline::OutputFormat::VerboseJson));
      // OpenAI names the language, and a translation's is always English
      j["language"] = translate_ ? "english" : std::string(text::language_name(t.language));
      if (words_) {
        json all = json::array();
        for (const auto& s : t.segments)
          for (const auto& w : s.words) all.push_back({{"word", trimmed(w.word)}, {"start", w.start}, {"end", w.end}});
        j["words"] = all;
      }
      j["usage"] = usage;
      if (include_logprobs_) j["logprobs"] = logprobs_json(t);
      if (include_timing_) j["timing"] = timing;
      body = json_dump(j) + "\n";
      type = "application/json";
    } else if (response_format_ == "text") {
      body = t.text + "\n";
    } else if (response_format_ == "srt") {
      body = pipeline::render(t, pipeline::OutputFormat::Srt);
    } else {
      body = pipeline::render(t, pipeline::OutputFormat::Vtt);
      type = "text/vtt; charset=utf-8";
    }
    if (include_timing_) {
      char buf[256];
      std::snprintf(buf, sizeof buf, "queue;dur=%.1f, decode;dur=%.1f, transcribe;dur=%.1f, encoder;dur=%.1f, decoder;dur=%.1f",
                    result.queue_seconds * 1000, decode_seconds_ * 1000, result.run_seconds * 1000,
                    result.encoder_seconds * 1000, result.decoder_seconds * 1000);
      res->set("Server-Timing", buf);
    }
    res->set(http::field::content_type, type);
    res->body() = std::move(body);
    send(res, false);
  }

  // OpenAI's `logprobs`: every text token as {token, logprob, bytes}.
  json logprobs_json(const pipeline::Transcript& t) const {
    if (!logprob_model_) throw InternalError("log-probabilities asked for without the model's tokenizer");
    json all = json::array();
    for (const auto& [piece, logprob] : pipeline::text_token_logprobs(t, logprob_model_->tokenizer())) {
      json bytes = json::array();
      for (const char c : piece) bytes.push_back(static_cast<unsigned char>(c));
      all.push_back({{"token", piece}, {"logprob", logprob}, {"bytes", bytes}});
    }
    return all;
  }

  // detect_language / POST /v1/audio/language: the likeliest language as an ISO code (what
  // the `language` field takes) and as OpenAI's name, and every language's probability.
  void answer_language(const decoding::LanguageGuess& guess) {
    json all = json::object();
    for (const auto& [code, p] : guess.probabilities) all[code] = p;
    send_json({{"language", guess.code},
               {"language_name", std::string(text::language_name(guess.code))},
               {"probability", guess.probability},
               {"language_probabilities", all}},
              200);
  }

  void send_json(const json& j, int status) { send_text(json_dump(j) + "\n", "application/json", status); }

  void send_text(std::string body, const std::string& type, int status) {
    auto res = std::make_shared<Response>(static_cast<http::status>(status), version_);
    res->set(http::field::content_type, type);
    res->body() = method_ == "HEAD" ? std::string() : std::move(body);
    send(res, false);
  }

  void send_error(const ApiError& e, bool close_after = false) {
    auto res = std::make_shared<Response>(static_cast<http::status>(e.status), version_);
    res->set(http::field::content_type, "application/json");
    if (e.status == 429 || e.status == 503) res->set(http::field::retry_after, std::to_string(static_cast<int>(std::ceil(std::max(1.0, e.retry_after)))));
    if (e.status == 405) res->set(http::field::allow, endpoint_.rfind("/v1/audio/", 0) == 0 ? "POST" : "GET, HEAD");
    if (e.status == 401) res->set(http::field::www_authenticate, "Bearer");
    res->body() = error_body(e);
    send(res, close_after);
  }

  void send(const std::shared_ptr<Response>& res, bool close_after) {
    const bool keep_alive = !close_after && !server_.stopping && keep_alive_;
    res->set(http::field::server, "amanuensis");
    res->set("x-request-id", next_request_id());
    res->keep_alive(keep_alive);
    res->prepare_payload();
    const int status = static_cast<int>(res->result_int());
    const double latency = std::chrono::duration<double>(Clock::now() - request_start_).count();
    server_.metrics.record_request(endpoint_, status, latency);
    if (server_.opt.log_requests) {
      std::fprintf(stderr, "amanuensis serve: %s %s %d %.3f s\n", method_.c_str(),
                   endpoint_.c_str(), status, latency);
    }
    if (keep_alive)  // so that a client closes an idle connection before the server does
      res->set("Keep-Alive", "timeout=" + std::to_string(static_cast<long long>(server_.opt.keep_alive_timeout)));
    stream_.expires_after(seconds(server_.opt.request_timeout));
    http::async_write(stream_, *res, [self = shared_from_this(), res, keep_alive](beast::error_code ec, std::size_t) {
      if (ec) return self->close();
      self->answered_ = true;
      self->request_ = {};
      if (!keep_alive) return self->linger_close();
      self->do_read();
    });
  }

  // Closes after an answer sent before the whole request was read: stops sending, then
  // reads and discards what the client still sends for a short while, so that it gets
  // the answer rather than a connection reset.
  void linger_close() {
    beast::error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ec);
    if (ec) return close();
    drained_ = 0;
    stream_.expires_after(std::chrono::seconds(2));
    drain();
  }

  void drain() {
    drain_buffer_.resize(64 * 1024);
    stream_.async_read_some(net::buffer(drain_buffer_), [self = shared_from_this()](beast::error_code ec, std::size_t n) {
      self->drained_ += n;
      if (ec || self->drained_ > self->server_.opt.max_upload_bytes + (8u << 20)) return self->close();
      self->drain();
    });
  }

  void close() {
    idle_ = false;
    beast::error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ec);
    stream_.socket().close(ec);
  }

  // A request's header, its request line included, at most; and its request line's target.
  static constexpr std::size_t kMaxHeaderBytes = 64 * 1024;
  static constexpr std::size_t kMaxTargetBytes = 8 * 1024;

  beast::tcp_stream stream_;
  Server::Impl& server_;
  beast::flat_buffer buffer_;
  bool answered_ = false;  // a request of this connection was answered: the next one is kept alive
  std::optional<http::request_parser<http::string_body>> parser_;
  http::request<http::string_body> request_;
  bool idle_ = false;
  Clock::time_point request_start_ = Clock::now();
  std::string endpoint_ = "other";
  std::string method_ = "?";
  unsigned version_ = 11;
  bool keep_alive_ = false;
  int health_status_ = 200;
  // the transcription in progress
  std::future<JobResult> future_;
  std::optional<Job> waiting_job_;     // while its model loads
  std::optional<ModelLease> lease_;    // while its job is queued or running
  std::string response_format_;
  bool words_ = false;
  bool translate_ = false;
  bool detect_language_ = false;  // detect only: answered by answer_language
  std::string requested_language_;  // the request's own: a server default is not checked per request
  bool include_timing_ = false;
  bool include_logprobs_ = false;
  std::shared_ptr<const pipeline::Model> logprob_model_;  // with include_logprobs_
  double offset_ = 0.0;        // seconds of the file before the audio transcribed
  double file_seconds_ = 0.0;  // of the whole file
  double audio_seconds_ = 0.0; // transcribed
  double decode_seconds_ = 0.0;
  std::shared_ptr<std::atomic<bool>> client_gone_;
  std::vector<char> drain_buffer_;
  std::size_t drained_ = 0;
};

std::shared_ptr<Session> start_session(tcp::socket socket, Server::Impl& server) {
  auto session = std::make_shared<Session>(std::move(socket), server);
  session->start();
  return session;
}

void stop_session_if_idle(const std::shared_ptr<Session>& session) { session->stop_if_idle(); }

}  // namespace amanuensis::server

#include "cli/download.h"

#include <openssl/evp.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <iostream>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>

#include "cli/args.h"
#include "cli/model_cache.h"
#include "common/error.h"
#include "model/catalog.h"

namespace amanuensis::cli {

const char* const kDownloadUsage = R"(download options (amanuensis download NAME [NAME ...]):
  --list                  the official models, their sizes and which are in the cache
  --dir DIR               download into DIR (default: the model cache, $XDG_CACHE_HOME/amanuensis
                          or ~/.cache/amanuensis, where --model NAME looks)
  --base-url URL          fetch URL/ggml-NAME.bin (default: whisper.cpp's models on Hugging Face)
  --sha1 HEX              expected SHA-1 (one NAME only; allows a name outside the list)
  --force                 download again even when the model is already there
An interrupted download is resumed from NAME.partial; the file is renamed into place only
once its SHA-1 matches.
)";

namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace ssl = asio::ssl;
namespace fs = std::filesystem;
using tcp = asio::ip::tcp;

constexpr const char* kDefaultBaseUrl = "https://huggingface.co/ggerganov/whisper.cpp/resolve/main";
constexpr int kMaxRedirects = 8;
constexpr auto kTimeout = std::chrono::seconds(60);

struct Url {
  bool https = false;
  std::string host;
  std::string port;
  std::string target;  // path and query, starting with '/'
  std::string text;
};

Url parse_url(const std::string& text) {
  Url url;
  url.text = text;
  std::string_view rest = text;
  if (rest.starts_with("http://")) {
    rest.remove_prefix(7);
  } else if (rest.starts_with("https://")) {
    url.https = true;
    rest.remove_prefix(8);
  } else {
    throw Error("URL " + text + " must start with http:// or https://");
  }
  const auto slash = rest.find('/');
  std::string_view authority = rest.substr(0, slash);
  url.target = slash == std::string_view::npos ? "/" : std::string(rest.substr(slash));
  const auto colon = authority.rfind(':');
  if (colon != std::string_view::npos && authority.find(']') == std::string_view::npos) {
    url.host = std::string(authority.substr(0, colon));
    url.port = std::string(authority.substr(colon + 1));
  } else {
    url.host = std::string(authority);
    url.port = url.https ? "443" : "80";
  }
  if (url.host.empty()) throw Error("URL " + text + " names no host");
  return url;
}

// A Location header: absolute, or a path on the same server.
Url redirect_target(const Url& from, std::string_view location) {
  if (location.starts_with("http://") || location.starts_with("https://")) return parse_url(std::string(location));
  if (!location.starts_with("/")) throw Error("unsupported redirect to " + std::string(location) + " from " + from.text);
  Url url = from;
  url.target = std::string(location);
  url.text = (from.https ? "https://" : "http://") + from.host + ":" + from.port + url.target;
  return url;
}

class Sha1 {
 public:
  Sha1() : ctx_(EVP_MD_CTX_new(), EVP_MD_CTX_free) { reset(); }
  void reset() {
    if (!ctx_ || EVP_DigestInit_ex(ctx_.get(), EVP_sha1(), nullptr) != 1) throw Error("internal: SHA-1 unavailable");
  }
  void update(const void* data, std::size_t n) { EVP_DigestUpdate(ctx_.get(), data, n); }
  std::string hex() {
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int length = 0;
    EVP_DigestFinal_ex(ctx_.get(), digest, &length);
    static const char* kDigits = "0123456789abcdef";
    std::string out;
    for (unsigned int i = 0; i < length; ++i) out += {kDigits[digest[i] >> 4], kDigits[digest[i] & 15]};
    return out;
  }

 private:
  std::unique_ptr<EVP_MD_CTX, void (*)(EVP_MD_CTX*)> ctx_;
};

// The .partial file being written, and the hash of everything in it.
class PartialFile {
 public:
  explicit PartialFile(fs::path path) : path_(std::move(path)) {
    std::error_code ec;
    if (fs::exists(path_, ec)) {  // hash what an earlier run left, then append
      std::FILE* in = std::fopen(path_.c_str(), "rb");
      if (!in) fail("read");
      char buffer[1 << 16];
      std::size_t n;
      while ((n = std::fread(buffer, 1, sizeof buffer, in)) > 0) {
        sha1_.update(buffer, n);
        size_ += n;
      }
      std::fclose(in);
    }
    file_ = std::fopen(path_.c_str(), "ab");
    if (!file_) fail("write");
  }
  PartialFile(const PartialFile&) = delete;
  PartialFile& operator=(const PartialFile&) = delete;
  ~PartialFile() {
    if (file_) std::fclose(file_);
  }

  std::uint64_t size() const { return size_; }
  void restart() {  // the server sent the whole file: start over
    file_ = std::freopen(path_.c_str(), "wb", file_);
    if (!file_) fail("write");
    sha1_.reset();
    size_ = 0;
  }
  void append(const char* data, std::size_t n) {
    if (std::fwrite(data, 1, n, file_) != n) fail("write");
    sha1_.update(data, n);
    size_ += n;
  }
  // Flushes and closes the file; returns the SHA-1 of its contents.
  std::string finish() {
    if (std::fflush(file_) != 0 || ::fsync(fileno(file_)) != 0) fail("write");
    std::fclose(file_);
    file_ = nullptr;
    return sha1_.hex();
  }

 private:
  [[noreturn]] void fail(const char* what) {
    throw Error(std::string("cannot ") + what + " " + path_.string() + ": " + std::strerror(errno));
  }
  fs::path path_;
  std::FILE* file_ = nullptr;
  Sha1 sha1_;
  std::uint64_t size_ = 0;
};

using Progress = std::function<void(std::uint64_t done, std::uint64_t total)>;

struct Response {
  int status = 0;
  std::string location;
};

// One GET of `url` from byte `offset` on; a 200 or 206 body goes into `file`.
template <typename Stream>
Response get_over(Stream& stream, const Url& url, PartialFile& file, const Progress& progress) {
  http::request<http::empty_body> request(http::verb::get, url.target, 11);
  request.set(http::field::host, url.host);
  request.set(http::field::user_agent, "amanuensis/0.1.0");
  const std::uint64_t offset = file.size();
  if (offset > 0) request.set(http::field::range, "bytes=" + std::to_string(offset) + "-");
  beast::get_lowest_layer(stream).expires_after(kTimeout);
  http::write(stream, request);

  beast::flat_buffer buffer;
  http::response_parser<http::buffer_body> parser;
  parser.body_limit(std::numeric_limits<std::uint64_t>::max());
  http::read_header(stream, buffer, parser);
  Response response;
  response.status = static_cast<int>(parser.get().result_int());
  if (auto it = parser.get().find(http::field::location); it != parser.get().end()) response.location = std::string(it->value());
  if (response.status != 200 && response.status != 206) return response;

  if (response.status == 200 && offset > 0) file.restart();  // range ignored: the whole file comes
  if (response.status == 206) {
    const auto range = std::string(parser.get()[http::field::content_range]);
    if (!range.starts_with("bytes " + std::to_string(offset) + "-")) {
      throw Error(url.text + " answered range " + std::to_string(offset) + "- with '" + range + "'");
    }
  }
  const std::uint64_t total =
      parser.content_length() ? file.size() + *parser.content_length() : 0;  // 0: unknown
  std::vector<char> chunk(1 << 20);
  while (!parser.is_done()) {
    parser.get().body().data = chunk.data();
    parser.get().body().size = chunk.size();
    beast::get_lowest_layer(stream).expires_after(kTimeout);
    beast::error_code ec;
    http::read(stream, buffer, parser, ec);
    file.append(chunk.data(), chunk.size() - parser.get().body().size);  // kept even when the read failed
    if (ec && ec != http::error::need_buffer) throw beast::system_error(ec);
    if (progress) progress(file.size(), total);
  }
  return response;
}

Response get(const Url& url, PartialFile& file, const Progress& progress) {
  asio::io_context io;
  tcp::resolver resolver(io);
  const auto endpoints = resolver.resolve(url.host, url.port);
  if (!url.https) {
    beast::tcp_stream stream(io);
    stream.expires_after(kTimeout);
    stream.connect(endpoints);
    auto response = get_over(stream, url, file, progress);
    beast::error_code ec;
    stream.socket().shutdown(tcp::socket::shutdown_both, ec);
    return response;
  }
  ssl::context context(ssl::context::tls_client);
  context.set_default_verify_paths();
  context.set_verify_mode(ssl::verify_peer);
  beast::ssl_stream<beast::tcp_stream> stream(io, context);
  if (!SSL_set_tlsext_host_name(stream.native_handle(), url.host.c_str())) {
    throw Error("cannot set the TLS server name for " + url.host);
  }
  stream.set_verify_callback(ssl::host_name_verification(url.host));
  beast::get_lowest_layer(stream).expires_after(kTimeout);
  beast::get_lowest_layer(stream).connect(endpoints);
  stream.handshake(ssl::stream_base::client);
  auto response = get_over(stream, url, file, progress);
  beast::error_code ec;
  stream.shutdown(ec);  // servers often just close; not an error for a complete body
  return response;
}

Progress progress_bar(const std::string& name) {
  if (!isatty(STDERR_FILENO)) return {};
  auto last = std::make_shared<std::chrono::steady_clock::time_point>();
  return [name, last](std::uint64_t done, std::uint64_t total) {
    const auto now = std::chrono::steady_clock::now();
    if (now - *last < std::chrono::milliseconds(200) && done != total) return;
    *last = now;
    constexpr int kWidth = 30;
    const double fraction = total > 0 ? std::min(1.0, static_cast<double>(done) / total) : 0.0;
    const int filled = static_cast<int>(fraction * kWidth);
    std::fprintf(stderr, "\r%s [%s%s] %3d%% %.1f / %.1f MB", name.c_str(), std::string(filled, '#').c_str(),
                 std::string(kWidth - filled, '.').c_str(), static_cast<int>(fraction * 100), done / 1e6, total / 1e6);
    std::fflush(stderr);
  };
}

// Downloads one model into `dir`; returns the path of the verified file.
fs::path download_one(const std::string& name, const std::string& sha1, const std::string& base_url, const fs::path& dir,
                      bool force) {
  const fs::path target = dir / ("ggml-" + name + ".bin");
  std::error_code ec;
  if (!force && fs::exists(target, ec)) {
    std::cerr << name << ": already downloaded (" << target.string() << ")\n";
    return target;
  }
  fs::create_directories(dir, ec);
  if (ec) throw Error("cannot create " + dir.string() + ": " + ec.message());
  const fs::path partial = target.string() + ".partial";
  std::string base = base_url;
  while (base.ends_with("/")) base.pop_back();
  Url url = parse_url(base + "/ggml-" + name + ".bin");

  std::string got;
  std::uint64_t resumed_from = 0;
  {
    PartialFile file(partial);
    resumed_from = file.size();
    if (resumed_from > 0) std::cerr << name << ": resuming at byte " << resumed_from << "\n";
    const auto progress = progress_bar(name);
    for (int hop = 0;; ++hop) {
      Response response;
      try {
        response = get(url, file, progress);
      } catch (const beast::system_error& e) {
        if (progress) std::fputc('\n', stderr);
        throw Error(name + ": download from " + url.text + " failed after " + std::to_string(file.size()) +
                    " bytes: " + e.code().message() + " (run the same command again to resume)");
      }
      if (response.status >= 300 && response.status < 400 && !response.location.empty()) {
        if (hop == kMaxRedirects) throw Error(name + ": too many redirects from " + base_url);
        url = redirect_target(url, response.location);
        continue;
      }
      if (response.status == 416 && file.size() > 0) {  // the partial file is not a prefix of this one
        file.restart();
        continue;
      }
      if (response.status != 200 && response.status != 206) {
        throw Error(name + ": " + url.text + " answered HTTP " + std::to_string(response.status));
      }
      break;
    }
    if (progress) std::fputc('\n', stderr);
    got = file.finish();
  }
  if (got != sha1) {
    fs::remove(partial, ec);
    throw Error(name + ": checksum mismatch: SHA-1 " + got + ", expected " + sha1 +
                " (the download was removed; try again, or check --base-url)");
  }
  fs::rename(partial, target, ec);
  if (ec) throw Error("cannot rename " + partial.string() + " to " + target.string() + ": " + ec.message());
  std::cerr << name << ": downloaded " << fs::file_size(target) / 1000000.0 << " MB to " << target.string()
            << " (SHA-1 ok" << (resumed_from > 0 ? ", resumed" : "") << ")\n";
  return target;
}

bool is_sha1(const std::string& s) {
  return s.size() == 40 && std::all_of(s.begin(), s.end(), [](char c) { return std::isxdigit(static_cast<unsigned char>(c)); });
}

}  // namespace

int run_download(const std::vector<std::string>& argv) {
  Args args(argv, {"list", "force"}, {"dir", "base-url", "sha1"});
  const fs::path dir = args.get("dir") ? fs::path(*args.get("dir")) : model::require_cache_dir(model_cache_dir());
  if (args.flag("list")) {
    std::cout << "models in " << dir.string() << ":\n";
    for (const auto& entry : model::official_models()) {
      std::error_code ec;
      const bool here = fs::exists(dir / entry.file_name(), ec);
      std::printf("  %-20s %6llu MiB%s\n", entry.name.c_str(), static_cast<unsigned long long>(entry.mib),
                  here ? "  (downloaded)" : "");
    }
    return 0;
  }
  const auto& names = args.positional();
  if (names.empty()) throw Error("download needs at least one model name (amanuensis download --list shows them)");
  std::optional<std::string> sha1 = args.get("sha1");
  if (sha1) {
    if (names.size() != 1) throw Error("--sha1 goes with exactly one model name");
    std::transform(sha1->begin(), sha1->end(), sha1->begin(), [](unsigned char c) { return std::tolower(c); });
    if (!is_sha1(*sha1)) throw Error("--sha1 " + *sha1 + " is not 40 hexadecimal digits");
  }
  for (const auto& name : names) {
    if (name.empty() || name.find('/') != std::string::npos) throw Error("'" + name + "' is not a model name");
    if (!sha1 && model::find_official_model(name) == nullptr) {
      throw Error("unknown model '" + name + "' (amanuensis download --list shows the official models; --sha1 for others)");
    }
  }
  int failures = 0;
  for (const auto& name : names) {
    try {
      const auto* entry = model::find_official_model(name);
      download_one(name, sha1 ? *sha1 : entry->sha1, args.get_or("base-url", kDefaultBaseUrl), dir, args.flag("force"));
    } catch (const Error& e) {
      std::cerr << "amanuensis: " << e.what() << "\n";
      ++failures;
    }
  }
  return failures == 0 ? 0 : 1;
}

}  // namespace amanuensis::cli

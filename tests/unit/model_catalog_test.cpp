// Models by name (model/catalog.h): where the cache is ($XDG_CACHE_HOME, else ~/.cache, from
// the values the command line passes in),
// how a --model argument resolves (an existing path first, then a cached NAME, then the
// "not downloaded yet" error for official names), and the official list itself.
#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <optional>
#include <set>
#include <string>

#include "common/error.h"
#include "model/catalog.h"

namespace amanuensis::model {
namespace {

namespace fs = std::filesystem;

class Catalog : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("amanuensis_catalog_test_" + std::to_string(::getpid()));
    fs::create_directories(dir_);
    cache_ = model_cache_dir(dir_.c_str(), (dir_ / "home").c_str());
  }
  void TearDown() override { fs::remove_all(dir_); }
  void touch(const fs::path& p) {
    fs::create_directories(p.parent_path());
    std::ofstream(p) << "x";
  }
  fs::path dir_;
  std::optional<fs::path> cache_;
};

TEST_F(Catalog, CacheFolderFollowsXdgThenHome) {
  const std::string home = (dir_ / "home").string();
  EXPECT_EQ(cache_, dir_ / "amanuensis");
  EXPECT_EQ(cached_model_path(*cache_, "tiny.en"), dir_ / "amanuensis" / "ggml-tiny.en.bin");
  // not absolute: ignored, as the XDG rules say
  EXPECT_EQ(model_cache_dir("relative/cache", home.c_str()), dir_ / "home" / ".cache" / "amanuensis");
  EXPECT_EQ(model_cache_dir(nullptr, home.c_str()), dir_ / "home" / ".cache" / "amanuensis");
  EXPECT_EQ(model_cache_dir(nullptr, nullptr), std::nullopt);
  EXPECT_EQ(model_cache_dir("", ""), std::nullopt);
  EXPECT_THROW(require_cache_dir(std::nullopt), Error);
  EXPECT_EQ(require_cache_dir(cache_), dir_ / "amanuensis");
}

TEST_F(Catalog, NoCacheMattersOnlyForBareNames) {
  touch(dir_ / "given.bin");
  EXPECT_EQ(resolve_model((dir_ / "given.bin").string(), std::nullopt), dir_ / "given.bin");
  EXPECT_EQ(resolve_model("models/tiny.en", std::nullopt), fs::path("models/tiny.en"));
  EXPECT_THROW(resolve_model("tiny.en", std::nullopt), Error);
}

TEST_F(Catalog, ResolveOrder) {
  // not downloaded: official names say how to get them
  try {
    resolve_model("base.en", cache_);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("model base.en is not downloaded yet"), std::string::npos) << m;
    EXPECT_NE(m.find((dir_ / "amanuensis" / "ggml-base.en.bin").string()), std::string::npos) << m;
    EXPECT_NE(m.find("amanuensis download base.en"), std::string::npos) << m;
  }
  // other names and paths come back as given (the loader reports them missing)
  EXPECT_EQ(resolve_model("my-model", cache_), fs::path("my-model"));
  EXPECT_EQ(resolve_model("models/tiny.en", cache_), fs::path("models/tiny.en"));
  EXPECT_EQ(resolve_model("tiny.en.bin", cache_), fs::path("tiny.en.bin"));
  // a cached file, official or not
  touch(dir_ / "amanuensis" / "ggml-base.en.bin");
  touch(dir_ / "amanuensis" / "ggml-base.en-q5_1.bin");
  EXPECT_EQ(resolve_model("base.en", cache_), dir_ / "amanuensis" / "ggml-base.en.bin");
  EXPECT_EQ(resolve_model("base.en-q5_1", cache_), dir_ / "amanuensis" / "ggml-base.en-q5_1.bin");
  // an existing path wins over a name
  const fs::path cwd = fs::current_path();
  fs::current_path(dir_);
  touch(dir_ / "base.en");
  EXPECT_EQ(resolve_model("base.en", cache_), fs::path("base.en"));
  fs::current_path(cwd);
}

TEST(CatalogList, OfficialModels) {
  std::set<std::string> names;
  for (const auto& m : official_models()) {
    EXPECT_TRUE(names.insert(m.name).second) << m.name;
    EXPECT_EQ(m.sha1.size(), 40u) << m.name;
    EXPECT_EQ(m.sha1.find_first_not_of("0123456789abcdef"), std::string::npos) << m.name;
    EXPECT_GT(m.mib, 0u) << m.name;
  }
  for (const char* name : {"tiny", "tiny.en", "base", "base.en", "small", "small.en", "medium", "medium.en", "large-v1",
                           "large-v2", "large-v3", "large-v3-turbo"}) {
    EXPECT_NE(find_official_model(name), nullptr) << name;
  }
  EXPECT_EQ(find_official_model("tiny.en")->file_name(), "ggml-tiny.en.bin");
  EXPECT_EQ(find_official_model("tiny.en")->sha1, "c78c86eb1a8faa21b369bcd33207cc90d64ae9df");
  EXPECT_EQ(find_official_model("huge"), nullptr);
}

}  // namespace
}  // namespace amanuensis::model

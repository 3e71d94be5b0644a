#pragma once
// A private directory under /tmp for one test, removed with everything in
// it when the test ends. `path` is empty if mkdtemp failed (tests assert on
// that before using it).
#include <stdlib.h>

#include <filesystem>
#include <string>
#include <system_error>

namespace ferry::test {

struct TempDir {
  std::string path;
  explicit TempDir(const char* prefix = "ferry-test") {
    std::string tmpl = std::string("/tmp/") + prefix + "-XXXXXX";
    if (const char* p = ::mkdtemp(tmpl.data())) path = p;
  }
  ~TempDir() {
    std::error_code ec;
    if (!path.empty()) std::filesystem::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
};

}  // namespace ferry::test

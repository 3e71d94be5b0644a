#pragma once
// Shared by the libFuzzer harnesses (tests/fuzz/README.md): a failed
// round-trip check aborts with what differed, which libFuzzer reports as a
// crash and saves the input for.
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <span>
#include <string>
#include <vector>

namespace ferry::fuzz {

[[noreturn]] inline void mismatch(const char* what) {
  std::fprintf(stderr, "round trip: %s re-encodes to other bytes than it was decoded from\n", what);
  std::abort();
}

inline void expect_same(std::span<const std::byte> decoded_from, std::span<const std::byte> reencoded,
                        const char* what) {
  if (decoded_from.size() != reencoded.size()) mismatch(what);
  if (!reencoded.empty() && std::memcmp(decoded_from.data(), reencoded.data(), reencoded.size()) != 0) mismatch(what);
}

// FERRY_FUZZ_WRITE_SEEDS=DIR: the harness writes its seed inputs there
// (made by the real encoders) and exits; tests/fuzz/corpus holds them.
template <class Seeds>
void write_seeds_if_asked(Seeds&& make) {
  const char* dir = std::getenv("FERRY_FUZZ_WRITE_SEEDS");
  if (!dir) return;
  std::filesystem::create_directories(dir);
  int i = 0;
  for (const std::vector<std::byte>& s : make()) {
    std::ofstream(std::string(dir) + "/seed-" + std::to_string(i++), std::ios::binary)
        .write(reinterpret_cast<const char*>(s.data()), static_cast<std::streamsize>(s.size()));
  }
  std::exit(0);
}

inline std::vector<std::byte> bytes_of(std::string_view s) {
  auto b = std::as_bytes(std::span(s.data(), s.size()));
  return {b.begin(), b.end()};
}

}  // namespace ferry::fuzz

// `ferry bench-transport` as a user runs it: a small memory through the
// engine's page path, raw TCP and memcpy on loopback. No KVM needed. The
// figures are not judged (speed targets are printed, not asserted); what
// must hold is that every transfer ran and the engine delivered the memory
// intact.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "tests/e2e/process.hh"

namespace ferry::test {
namespace {

using namespace std::chrono_literals;

TEST(BenchTransport, LoopbackDeliversTheMemoryIntact) {
  auto r = run_process({FERRY_BIN, "bench-transport", "--memory", "64M", "--streams-list", "1,2", "--path", "loopback",
                        "--json"},
                       240s);
  ASSERT_FALSE(r.timed_out) << r.describe();
  ASSERT_EQ(r.exit_code, 0) << r.describe();
  auto j = nlohmann::json::parse(r.out, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << "bench-transport --json printed invalid JSON:\n" << r.describe();
  EXPECT_TRUE(j["ok"].get<bool>()) << j["error"];
  EXPECT_EQ(j["memory_bytes"].get<std::uint64_t>(), 64ull << 20);
  EXPECT_GT(j["checksum_gb_s"].get<double>(), 0);
  ASSERT_EQ(j["rows"].size(), 2u) << j.dump(2);
  std::vector<unsigned> streams;
  for (const auto& row : j["rows"]) {
    SCOPED_TRACE(row.dump());
    EXPECT_EQ(row["path"], "loopback");
    streams.push_back(row["streams"].get<unsigned>());
    EXPECT_GT(row["engine_gb_s"].get<double>(), 0);
    EXPECT_GT(row["raw_tcp_gb_s"].get<double>(), 0);
    EXPECT_GT(row["memcpy_gb_s"].get<double>(), 0);
    EXPECT_GT(row["zero_only_gb_s"].get<double>(), 0);
    EXPECT_GT(row["ratio_engine_raw"].get<double>(), 0);
    EXPECT_GT(row["bytes_sent"].get<std::uint64_t>(), 0u);
    EXPECT_EQ(row["bytes_received"].get<std::uint64_t>(), row["bytes_sent"].get<std::uint64_t>());
    EXPECT_TRUE(row["bytes_equal"].get<bool>());
    EXPECT_TRUE(row["memory_equal"].get<bool>());
    EXPECT_EQ(row["checksum_failures"].get<std::uint64_t>(), 0u);
    EXPECT_EQ(row["pages_verified"].get<std::uint64_t>(), row["pages_sent"].get<std::uint64_t>());
    EXPECT_EQ(row["pages_sent"].get<std::uint64_t>() + row["zero_pages_sent"].get<std::uint64_t>(),
              j["pages"].get<std::uint64_t>());
    // --zero-share 25 by default: some pages of each kind.
    EXPECT_GT(row["zero_pages_sent"].get<std::uint64_t>(), 0u);
    EXPECT_GT(row["pages_sent"].get<std::uint64_t>(), 0u);
    EXPECT_GT(row["engine_cpu_seconds"].get<double>(), 0);
  }
  EXPECT_EQ(streams, (std::vector<unsigned>{1, 2}));
}

TEST(BenchTransport, TextReportAndHelp) {
  auto r = run_process({FERRY_BIN, "bench-transport", "--memory", "8M", "--path", "loopback"}, 120s);
  ASSERT_EQ(r.exit_code, 0) << r.describe();
  EXPECT_NE(r.out.find("engine/raw"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("loopback"), std::string::npos) << r.out;
  EXPECT_NE(r.err.find("bench-transport:"), std::string::npos) << "no progress on stderr:\n" << r.err;
  auto h = run_process({FERRY_BIN, "bench-transport", "--help"}, 30s);
  ASSERT_EQ(h.exit_code, 0) << h.describe();
  for (const char* flag : {"--memory", "--zero-share", "--streams", "--streams-list", "--path", "--json"})
    EXPECT_NE(h.out.find(flag), std::string::npos) << flag << " missing from:\n" << h.out;
  auto bad = run_process({FERRY_BIN, "bench-transport", "--memory", "3M", "--json"}, 30s);
  EXPECT_EQ(bad.exit_code, 1) << bad.describe();
  EXPECT_NE(bad.err.find("multiple of 2 MiB"), std::string::npos) << bad.err;
}

}  // namespace
}  // namespace ferry::test

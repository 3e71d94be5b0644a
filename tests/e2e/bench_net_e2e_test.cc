// The network benchmark's smoke run (tools/bench-net --duration 2): in one
// tools/kvm-sandbox boot, iperf3 between the sandbox and a peer network
// namespace, then between the sandbox and a Ferry Linux guest on a TAP,
// then a live migration of that guest while a client in the namespace
// streams through an echo server in it, then iperf3 to the moved guest.
// The figures are not judged here (docs/benchmarks.md shows the full run);
// what must hold is that every measurement ran and moved data, the stream
// came back intact through the migration, and the ratios are the figures'
// quotients.
#include <gtest/gtest.h>

#include <filesystem>

#include <nlohmann/json.hpp>

#include "tests/e2e/process.hh"

namespace ferry::test {
namespace {

using namespace std::chrono_literals;

TEST(BenchNet, SmokeRunMeasuresTheTapTheNamespacesAndAMigration) {
  const auto script = std::filesystem::path(FERRY_SANDBOX_BIN).parent_path() / "bench-net";
  auto r = run_process({"python3", script.string(), "--duration", "2", "--ferry", FERRY_BIN, "--json",
                        "--timeout", "1000"},
                       1100s);
  ASSERT_FALSE(r.timed_out) << r.describe();
  auto j = nlohmann::json::parse(r.out, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << "bench-net --json printed invalid JSON:\n" << r.describe();
  ASSERT_EQ(r.exit_code, 0) << j.dump(2) << "\n" << r.describe();
  EXPECT_NE(j["command"].get<std::string>().find("--duration 2"), std::string::npos);
  for (const char* row : {"netns", "guest", "moved"}) {
    for (const char* dir : {"host_sends", "host_receives"}) {
      SCOPED_TRACE(std::string(row) + " " + dir);
      ASSERT_TRUE(j[row][dir]["gbit_s"].is_number()) << j.dump(2);
      EXPECT_GT(j[row][dir]["gbit_s"].get<double>(), 0);
    }
  }
  for (const char* row : {"guest", "moved"})
    for (const char* dir : {"host_sends", "host_receives"})
      EXPECT_NEAR(j[std::string("ratio_") + row + "_over_netns"][dir].get<double>(),
                  j[row][dir]["gbit_s"].get<double>() / j["netns"][dir]["gbit_s"].get<double>(), 1e-9);
  const auto& m = j["migration"];
  EXPECT_TRUE(m["intact"].get<bool>()) << "the stream through the migration lost, repeated or reordered bytes: "
                                       << m.dump(2);
  EXPECT_GT(m["echoed_bytes"].get<int>(), 100);
  EXPECT_GT(m["downtime_ms"].get<double>(), 0);
  // The stall is measured from echoes, so it spans at least the pause.
  EXPECT_GE(m["stall_ms"].get<double>(), m["downtime_ms"].get<double>() * 0.5) << m.dump(2);
}

TEST(BenchNet, RejectsABadDurationBeforeBootingAnything) {
  const auto script = std::filesystem::path(FERRY_SANDBOX_BIN).parent_path() / "bench-net";
  auto r = run_process({"python3", script.string(), "--duration", "0"}, 30s);
  EXPECT_EQ(r.exit_code, 2) << r.describe();
  EXPECT_NE(r.err.find("--duration must be positive"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace ferry::test

// The peer benchmark's smoke row (tools/bench-vs-qemu --rows smoke): in one
// tools/kvm-sandbox boot, the same Linux guest (256 MiB, a 16 MiB working
// set rewritten at 4 MiB/s, a console heartbeat every 20 ms) is migrated by
// QEMU over QMP and by Ferry. The figures are not judged here (the ratios are
// printed by the full run, docs/benchmarks.md); what must hold is that both
// migrations completed, each side's figures were read from the VMM itself,
// the guest's heartbeats were seen on both consoles without a page failure,
// and the ratios are the figures' quotients.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "tests/e2e/process.hh"

namespace ferry::test {
namespace {

using namespace std::chrono_literals;

TEST(BenchVsQemu, SmokeRowMigratesTheSameGuestWithQemuAndFerry) {
  const auto script = std::filesystem::path(FERRY_SANDBOX_BIN).parent_path() / "bench-vs-qemu";
  auto r = run_process({"python3", script.string(), "--rows", "smoke", "--ferry", FERRY_BIN, "--json",
                        "--migration-timeout", "300", "--sandbox-memory", "2048", "--timeout", "1500"},
                       1700s);
  ASSERT_FALSE(r.timed_out) << r.describe();
  auto j = nlohmann::json::parse(r.out, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << "bench-vs-qemu --json printed invalid JSON:\n" << r.describe();
  ASSERT_EQ(r.exit_code, 0) << j.dump(2) << "\n" << r.describe();
  EXPECT_NE(j["command"].get<std::string>().find("--rows smoke"), std::string::npos);
  ASSERT_EQ(j["rows"].size(), 1u) << j.dump(2);
  const auto& row = j["rows"][0];
  EXPECT_EQ(row["memory_mib"], 256);
  EXPECT_EQ(row["downtime_limit_ms"], 300.0);
  for (const char* vmm : {"qemu", "ferry"}) {
    SCOPED_TRACE(vmm);
    const auto& m = row[vmm];
    ASSERT_FALSE(m.contains("error")) << m.dump(2);
    EXPECT_TRUE(m["converged"].get<bool>()) << m.dump(2);
    EXPECT_GT(m["total_ms"].get<double>(), 0);
    EXPECT_GT(m["downtime_ms"].get<double>(), 0);
    // Heartbeats reached both consoles: the gap is measured, not missing.
    ASSERT_TRUE(m["guest_ms"].is_number()) << m.dump(2);
    EXPECT_GE(m["guest_ms"].get<double>(), 0);
    EXPECT_FALSE(m["guest_ms_at_least"].get<bool>()) << "the destination's console stayed silent: " << m.dump(2);
    EXPECT_EQ(m["guest_failures"].get<int>(), 0) << "the guest's workload saw a page it did not write";
    // At least the working set crossed (zero pages are sent compactly by both).
    EXPECT_GT(m["bytes"].get<double>(), 16.0 * 1048576) << m.dump(2);
    EXPECT_GE(m["rounds"].get<int>(), 1);
  }
  const auto& q = row["qemu"];
  const auto& f = row["ferry"];
  for (const char* k : {"total_ms", "downtime_ms", "guest_ms", "bytes"}) {
    SCOPED_TRACE(k);
    if (q[k].get<double>() == 0) continue;
    EXPECT_NEAR(row["ratio_ferry_over_qemu"][k].get<double>(), f[k].get<double>() / q[k].get<double>(), 1e-9);
  }
  EXPECT_FALSE(row["ferry_converges_where_qemu_does_not"].get<bool>());
}

TEST(BenchVsQemu, RejectsABadRowBeforeBootingAnything) {
  const auto script = std::filesystem::path(FERRY_SANDBOX_BIN).parent_path() / "bench-vs-qemu";
  auto r = run_process({"python3", script.string(), "--rows", "512:1:128"}, 30s);
  EXPECT_EQ(r.exit_code, 2) << r.describe();
  EXPECT_NE(r.err.find("bad row '512:1:128'"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace ferry::test

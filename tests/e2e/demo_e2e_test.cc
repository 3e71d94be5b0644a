// `ferry demo` as a user runs it, forced into the sandbox so it exercises the
// re-exec path that users without /dev/kvm get.
#include <gtest/gtest.h>

#include <cstdio>

#include <nlohmann/json.hpp>

#include "tests/e2e/process.hh"

namespace ferry::test {
namespace {

using namespace std::chrono_literals;

// The default demo live-migrates the built-in guest between two ferry
// processes and watches it go on verifying its memory at the destination.
TEST(Sandbox, DemoMigratesALiveVm) {
  auto r = run_process({FERRY_BIN, "demo", "--sandbox", "--json"}, 600s);
  ASSERT_FALSE(r.timed_out) << r.describe();
  ASSERT_EQ(r.exit_code, 0) << r.describe();
  auto j = nlohmann::json::parse(r.out, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << r.describe();
  EXPECT_EQ(j["scenario"], "live-migration");
  EXPECT_EQ(j["where"], "kvm-sandbox");
  EXPECT_TRUE(j["ok"].get<bool>()) << j.dump(2);
  EXPECT_EQ(j["error"], "");

  // The migration itself, as `ferry migrate` reported it.
  const auto& m = j["migration"];
  ASSERT_TRUE(m.is_object()) << j.dump(2);
  EXPECT_EQ(m["phase"], "migrated") << m.dump(2);
  ASSERT_TRUE(m["downtime_ms"].is_number()) << m.dump(2);
  ASSERT_TRUE(m["guest_downtime_ms"].is_number()) << m.dump(2);
  EXPECT_GT(m["downtime_ms"].get<double>(), 0);
  EXPECT_GT(m["guest_downtime_ms"].get<double>(), 0);
  const auto& b = m["downtime_breakdown"];
  for (const char* k : {"final_pages_ms", "state_ms", "destination_load_ms", "commit_ms"})
    EXPECT_TRUE(b[k].is_number()) << k << "\n" << m.dump(2);
  EXPECT_GT(b["state_bytes"].get<std::uint64_t>(), 0u);
  ASSERT_GE(m["rounds"].size(), 2u) << m.dump(2);
  EXPECT_EQ(m["rounds"].back()["decision"], "final");
  // Round 0 carries at least the guest's working set.
  const auto ws_pages = j["vm"]["working_set_mib"].get<std::uint64_t>() * 256;
  EXPECT_GE(m["pages_sent"].get<std::uint64_t>(), ws_pages) << m.dump(2);

  // The source handed the VM over and ended; the guest went on at the
  // destination from where it was, verifying pages without a failure.
  EXPECT_EQ(j["source"]["exit_code"], 0);
  EXPECT_EQ(j["source"]["failures"], 0);
  const auto& d = j["destination"];
  EXPECT_NE(d["restored_from"].get<std::string>().find("migration"), std::string::npos) << d.dump(2);
  EXPECT_GT(d["verified"].get<std::uint64_t>(), 0u) << d.dump(2);
  EXPECT_EQ(d["failures"], 0) << d.dump(2);
  EXPECT_GE(d["verified_at_start"].get<std::uint64_t>(), j["source"]["verified_before_migration"].get<std::uint64_t>())
      << "the guest's counters went back: it restarted";
  EXPECT_EQ(d["quit"], "ok");
  std::printf("[ figures  ] demo in the sandbox: %zu rounds, downtime %.1f ms, guest saw %.1f ms, %.1f s in all\n",
              m["rounds"].size(), m["downtime_ms"].get<double>(), m["guest_downtime_ms"].get<double>(),
              j["elapsed_s"].get<double>());
}

TEST(Sandbox, DemoTextShowsTheMigration) {
  auto r = run_process({FERRY_BIN, "demo", "--sandbox"}, 600s);
  ASSERT_FALSE(r.timed_out) << r.describe();
  ASSERT_EQ(r.exit_code, 0) << r.describe();
  EXPECT_NE(r.err.find("running the demo inside tools/kvm-sandbox"), std::string::npos) << r.describe();
  EXPECT_NE(r.out.find("inside tools/kvm-sandbox: nested KVM"), std::string::npos) << r.describe();
  // ferry migrate's own report, with the downtime the guest saw.
  EXPECT_NE(r.out.find(": migrated\n"), std::string::npos) << r.describe();
  EXPECT_NE(r.out.find("  downtime "), std::string::npos) << r.describe();
  EXPECT_NE(r.out.find("  guest saw "), std::string::npos) << r.describe();
  EXPECT_NE(r.out.find("The VM moved live"), std::string::npos) << r.describe();
  EXPECT_EQ(r.out.find("ferry demo: "), std::string::npos) << r.describe();
}

// `ferry demo --guest linux`: a real kernel boots, its workload verifies
// its memory, the console answers, and it survives a snapshot + restore.
TEST(Sandbox, DemoOfARealKernelGuest) {
  auto r = run_process({FERRY_BIN, "demo", "--guest", "linux", "--sandbox", "--json"}, 900s);
  ASSERT_FALSE(r.timed_out) << r.describe();
  ASSERT_EQ(r.exit_code, 0) << r.describe();
  auto j = nlohmann::json::parse(r.out, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << r.describe();
  EXPECT_EQ(j["scenario"], "linux-guest");
  EXPECT_EQ(j["where"], "kvm-sandbox");
  EXPECT_TRUE(j["ok"].get<bool>()) << j.dump(2);
  EXPECT_EQ(j["failures"], 0);
  EXPECT_EQ(j["console"].get<std::string>().rfind("Linux ", 0), 0u) << j.dump(2);
  // It went on after the restore: counters beyond their values at the snapshot.
  EXPECT_GT(j["verified_after_restore"].get<std::uint64_t>(), j["verified_before_snapshot"].get<std::uint64_t>());
  EXPECT_GT(j["heartbeat_after_restore"].get<std::uint64_t>(), j["heartbeat_before_snapshot"].get<std::uint64_t>());
  EXPECT_GE(j["heartbeat_before_snapshot"].get<std::uint64_t>(), 3u);
  std::printf("[ figures  ] demo --guest linux: init reached after %.1f s\n", j["boot_to_init_s"].get<double>());
}

}  // namespace
}  // namespace ferry::test

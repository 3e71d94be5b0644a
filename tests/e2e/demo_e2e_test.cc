// `ferry demo` as a user runs it, forced into the sandbox so it exercises the
// re-exec path that users without /dev/kvm get.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "e2e/process.hh"

namespace ferry::test {
namespace {

using namespace std::chrono_literals;

TEST(Sandbox, DemoShowsExactDirtyTracking) {
  auto r = run_process({FERRY_BIN, "demo", "--sandbox", "--json"}, 600s);
  ASSERT_FALSE(r.timed_out) << r.describe();
  ASSERT_EQ(r.exit_code, 0) << r.describe();
  auto j = nlohmann::json::parse(r.out, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << r.describe();
  EXPECT_EQ(j["where"], "kvm-sandbox");
  EXPECT_TRUE(j["exact"].get<bool>()) << j.dump(2);
  ASSERT_EQ(j["rounds"].size(), 3u);
  EXPECT_EQ(j["rounds"][0]["pages_reported"], 64);
  EXPECT_EQ(j["rounds"][1]["pages_reported"], 16);
  EXPECT_GE(j["rounds"][2]["ring_full_exits"].get<int>(), 1);
}

TEST(Sandbox, DemoTextSaysWhereItRan) {
  auto r = run_process({FERRY_BIN, "demo", "--sandbox"}, 600s);
  ASSERT_EQ(r.exit_code, 0) << r.describe();
  EXPECT_NE(r.err.find("running the demo inside tools/kvm-sandbox"), std::string::npos) << r.describe();
  EXPECT_NE(r.out.find("inside tools/kvm-sandbox: nested KVM"), std::string::npos) << r.describe();
  EXPECT_NE(r.out.find("Every guest write was reported, and nothing else"), std::string::npos) << r.describe();
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

// The VM lifecycle as an operator drives it, in real processes: `ferry run`
// with the built-in guest dirtying memory on 2 vCPUs, then `ferry pause`,
// `resume` and `snapshot` through its control socket, and `ferry restore`
// in a second process. The guest's own verification of every page it
// rewrites must keep passing after the restore, and its heartbeats must
// continue their sequence: the guest continued, it did not start over.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "tests/temp_dir.hh"
#include "tests/e2e/process.hh"
#include "tests/e2e/vm_client.hh"

namespace ferry::test {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;


TEST(Vm, RunPauseResumeSnapshotThenRestoreInAnotherProcess) {
  TempDir dir;
  const std::string api1 = dir.path + "/run.sock", api2 = dir.path + "/restore.sock";
  const std::string snap = dir.path + "/vm.snap", snap_live = dir.path + "/live.snap";
  BackgroundProcess src({FERRY_BIN, "run", "--vcpus", "2", "--working-set", "1", "--api", api1, "--json",
                         "--serial-log", dir.path + "/serial-src.log"});
  ASSERT_TRUE(src.started());
  // Past the first pass over the working set: every rewrite now verifies.
  auto s = wait_status(api1, [](const json& j) { return verified(j) > 200; }, 180s);
  ASSERT_FALSE(s.is_null()) << "no status from ferry run\n" << src.output();
  ASSERT_GT(verified(s), 200u) << s.dump(2);
  EXPECT_EQ(s["state"], "running");
  EXPECT_EQ(s["vcpus"], 2);

  // Pause: the guest's counters freeze. Resume: they move again.
  auto p = ctl({"pause", "--vm", api1});
  ASSERT_FALSE(p.is_null()) << src.output();
  EXPECT_EQ(p["state"], "paused");
  const auto frozen = status(api1);
  std::this_thread::sleep_for(300ms);
  const auto still = status(api1);
  EXPECT_EQ(still["state"], "paused");
  EXPECT_EQ(still["totals"], frozen["totals"]) << "the guest ran while paused";
  EXPECT_EQ(ctl({"resume", "--vm", api1})["state"], "running");
  s = wait_status(api1, [&](const json& j) { return verified(j) > verified(frozen) + 50; }, 120s);
  ASSERT_GT(verified(s), verified(frozen) + 50) << "no progress after resume\n" << s.dump(2);

  // A snapshot of the running VM pauses it briefly and lets it go on.
  auto live = ctl({"snapshot", "--vm", api1, snap_live});
  ASSERT_FALSE(live.is_null()) << src.output();
  EXPECT_TRUE(live["was_running"].get<bool>());
  EXPECT_EQ(status(api1)["state"], "running");

  // The snapshot that moves: taken paused, so the status read now is
  // exactly the guest's state in the file. The source then quits: only one
  // copy of a VM ever runs.
  ASSERT_EQ(ctl({"pause", "--vm", api1})["state"], "paused");
  auto f = ctl({"snapshot", "--vm", api1, snap});
  ASSERT_FALSE(f.is_null()) << src.output();
  EXPECT_FALSE(f["was_running"].get<bool>());
  EXPECT_LT(f["data_pages"].get<std::uint64_t>(), f["pages"].get<std::uint64_t>()) << "zero pages should be holes";
  const auto at_snapshot = status(api1);
  ASSERT_FALSE(at_snapshot.is_null());
  EXPECT_EQ(ctl({"quit", "--vm", api1})["state"], "stopping");
  auto src_end = src.wait(60s);
  EXPECT_EQ(src_end.exit_code, 0) << src_end.describe();
  auto src_report = last_event(src_end.out);
  EXPECT_EQ(src_report["event"], "stopped") << src_end.out;
  EXPECT_TRUE(src_report["ok"].get<bool>()) << src_end.out;
  EXPECT_FALSE(std::filesystem::exists(api1)) << "the control socket outlived its VM";

  BackgroundProcess dst({FERRY_BIN, "restore", snap, "--api", api2, "--json", "--serial-log",
                         dir.path + "/serial-dst.log"});
  ASSERT_TRUE(dst.started());
  const auto base = verified(at_snapshot);
  s = wait_status(api2, [&](const json& j) { return verified(j) >= base + 3000; }, 300s);
  ASSERT_FALSE(s.is_null()) << "no status from ferry restore\n" << dst.output();
  EXPECT_EQ(s["restored_from"], std::filesystem::absolute(snap).string());
  EXPECT_GE(verified(s), base + 3000) << "the restored guest stalled\n" << s.dump(2);
  EXPECT_EQ(s["totals"]["failures"], 0) << s.dump(2);
  for (int i = 0; i < 2; ++i)
    EXPECT_GE(s["per_vcpu"][i]["rewrites"].get<std::uint64_t>(),
              at_snapshot["per_vcpu"][i]["rewrites"].get<std::uint64_t>())
        << "vCPU " << i << " restarted its count";
  // Heartbeats continue the guest's own sequence (not 1, 2, 3... again).
  const auto hb0 = at_snapshot["guest"]["heartbeats"].get<std::uint64_t>();
  s = wait_status(api2, [](const json& j) { return j["heartbeats"]["received"].get<std::uint64_t>() >= 5; }, 60s);
  EXPECT_GE(s["heartbeats"]["received"].get<std::uint64_t>(), 5u) << s.dump(2);
  EXPECT_GT(s["heartbeats"]["last_sequence"].get<std::uint64_t>(), hb0);
  EXPECT_EQ(ctl({"quit", "--vm", api2})["state"], "stopping");
  auto dst_end = dst.wait(60s);
  EXPECT_EQ(dst_end.exit_code, 0) << dst_end.describe();
  EXPECT_TRUE(last_event(dst_end.out)["ok"].get<bool>()) << dst_end.out;

  // The guest printed its banner once, when it booted; the restored guest
  // did not boot again.
  EXPECT_EQ(slurp(dir.path + "/serial-src.log"), "ferry test guest: 2 vCPUs, 256 pages to dirty\n");
  EXPECT_EQ(slurp(dir.path + "/serial-dst.log"), "");
}

TEST(Vm, RestoreRefusesACorruptSnapshotAndRunsNothing) {
  TempDir dir;
  const std::string api = dir.path + "/run.sock", snap = dir.path + "/vm.snap";
  BackgroundProcess src({FERRY_BIN, "run", "--working-set", "1", "--api", api});
  ASSERT_TRUE(src.started());
  ASSERT_FALSE(wait_status(api, [](const json& j) { return verified(j) > 0; }, 180s).is_null()) << src.output();
  ASSERT_FALSE(ctl({"snapshot", "--vm", api, snap}).is_null()) << src.output();
  ctl({"quit", "--vm", api});
  EXPECT_EQ(src.wait(60s).exit_code, 0);
  // Flip one byte in the middle of the CPU state (the state image's CRC).
  {
    std::fstream f(snap, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(200);
    const char c = static_cast<char>(f.get());
    f.seekp(200);
    f.put(static_cast<char>(c ^ 0x40));
  }
  auto r = run_process({FERRY_BIN, "restore", snap, "--api", dir.path + "/r.sock"}, 120s);
  EXPECT_EQ(r.exit_code, 1) << r.describe();
  EXPECT_NE(r.err.find("CRC mismatch"), std::string::npos) << r.describe();
  EXPECT_FALSE(std::filesystem::exists(dir.path + "/r.sock"));
}

TEST(Vm, ControlErrorsAreReportedAndLeaveTheVmRunning) {
  // Control-plane errors: a client with no VM behind the socket, and an
  // unknown snapshot target directory, each fail with the reason.
  TempDir dir;
  auto r = run_process({FERRY_BIN, "status", "--vm", dir.path + "/none.sock"}, 60s);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find(dir.path + "/none.sock"), std::string::npos) << r.describe();
  const std::string api = dir.path + "/run.sock";
  BackgroundProcess src({FERRY_BIN, "run", "--working-set", "1", "--api", api, "--json"});
  ASSERT_FALSE(wait_status(api, [](const json& j) { return verified(j) > 0; }, 180s).is_null()) << src.output();
  auto bad = run_process({FERRY_BIN, "snapshot", "--vm", api, dir.path + "/no/such/dir/x.snap"}, 60s);
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE(bad.err.find("no/such/dir/x.snap"), std::string::npos) << bad.describe();
  EXPECT_EQ(status(api)["state"], "running") << "a failed snapshot must leave the VM running";
  ctl({"quit", "--vm", api});
  EXPECT_EQ(src.wait(60s).exit_code, 0);
}

}  // namespace
}  // namespace ferry::test

// The doctor's verdict logic and output formats, on hand-made check lists,
// plus the real KVM probe against a device that does not exist.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include <fmt/format.h>

#include "tools/doctor/checks.hh"
#include "tools/doctor/report.hh"

namespace ferry::doctor {
namespace {

Check c(std::string area, std::string name, Level l, std::string detail = "d", std::string remedy = "") {
  return Check{std::move(area), std::move(name), l, std::move(detail), std::move(remedy), nullptr};
}

TEST(DoctorReport, WarningsDoNotBlockMigration) {
  Report r;
  r.add(c("kvm", "device", Level::kOk));
  r.add(c("system", "hugepages", Level::kWarn, "none", "reserve some"));
  EXPECT_TRUE(r.migration_possible());
  const auto text = r.render_text(false);
  EXPECT_EQ(text.rfind("Live migration can work on this host (1 warning).", 0), 0u) << text;
  EXPECT_NE(text.find("-> reserve some"), std::string::npos) << text;
}

TEST(DoctorReport, FirstFailureIsTheReasonAndComesFirst) {
  Report r;
  r.add(c("kvm", "device", Level::kFail, "/dev/kvm does not exist", "use tools/kvm-sandbox"));
  r.add(c("io_uring", "enabled", Level::kFail, "io_uring disabled", "sysctl"));
  EXPECT_FALSE(r.migration_possible());
  ASSERT_EQ(r.failures().size(), 2u);
  const auto text = r.render_text(false);
  EXPECT_EQ(text.rfind("Live migration CANNOT work on this host: /dev/kvm does not exist\n  fix: use tools/kvm-sandbox", 0), 0u)
      << text;
  const auto j = r.to_json();
  EXPECT_EQ(j["migration_possible"], false);
  EXPECT_EQ(j["reason"], "/dev/kvm does not exist");
  EXPECT_EQ(j["checks"][0]["status"], "FAIL");
  EXPECT_EQ(j["checks"][1]["area"], "io_uring");
}

TEST(DoctorReport, ColorOnlyWhenAsked) {
  Report r;
  r.add(c("kvm", "device", Level::kOk));
  EXPECT_EQ(r.render_text(false).find('\x1b'), std::string::npos);
  EXPECT_NE(r.render_text(true).find("\x1b[32mOK"), std::string::npos);
}

TEST(DoctorChecks, MissingKvmDeviceFailsWithSandboxRemedy) {
  const auto checks = check_kvm("/nonexistent/kvm");
  ASSERT_EQ(checks.size(), 1u);
  EXPECT_EQ(checks[0].level, Level::kFail);
  EXPECT_EQ(checks[0].detail, "/nonexistent/kvm does not exist");
  EXPECT_NE(checks[0].remedy.find("tools/kvm-sandbox"), std::string::npos);
}

TEST(DoctorChecks, TracefsAbsenceIsAWarningWithTheMountCommand) {
  const auto checks = check_bpf("/nonexistent/tracing");
  Report r;
  r.add_all(checks);
  const auto* t = r.find("ebpf", "tracefs");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->level, Level::kWarn);
  EXPECT_EQ(t->remedy, "mount -t tracefs nodev /nonexistent/tracing");
  EXPECT_TRUE(r.migration_possible()) << "eBPF problems must never block migration";
}

TEST(DoctorChecks, TracepointsAreFoundUnderTheirOldNamesToo) {
  // A fake tracefs tree (a directory is all the check reads): the 6.1 name
  // of the io_uring submit tracepoint, and no tcp group at all.
  namespace fs = std::filesystem;
  const fs::path root = fs::temp_directory_path() / fmt::format("ferry-tracefs-{}", ::getpid());
  fs::remove_all(root);
  fs::create_directories(root / "events/io_uring/io_uring_submit_sqe");
  std::ofstream(root / "events/io_uring/io_uring_submit_sqe/id") << "42\n";
  const auto checks = check_bpf(root.string());
  fs::remove_all(root);
  Report r;
  r.add_all(checks);
  const auto* submit = r.find("ebpf", "tp:io_uring/io_uring_submit_req");
  ASSERT_NE(submit, nullptr);
  EXPECT_EQ(submit->level, Level::kOk);
  EXPECT_EQ(submit->detail, "tracepoint io_uring/io_uring_submit_sqe present");
  const auto* probe = r.find("ebpf", "tp:tcp/tcp_probe");
  ASSERT_NE(probe, nullptr);
  EXPECT_EQ(probe->level, Level::kWarn);
  EXPECT_NE(probe->remedy.find("ferry trace"), std::string::npos);
  const auto* kvm = r.find("ebpf", "tp:kvm/kvm_dirty_ring_push");
  ASSERT_NE(kvm, nullptr);
  EXPECT_EQ(kvm->remedy, "load the kvm module (its tracepoints come with it)");
}

TEST(DoctorChecks, SystemChecksCoverTheDocumentedFacilities) {
  Report r;
  r.add_all(check_system());
  for (const char* name : {"userfaultfd", "memlock", "hugepages", "ktls"})
    EXPECT_NE(r.find("system", name), nullptr) << name;
}

}  // namespace
}  // namespace ferry::doctor

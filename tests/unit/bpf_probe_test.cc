// DoctorProbe against the real kernel: load, attach, count, and the errors an
// operator sees when something is missing. Needs root (CAP_BPF + CAP_PERFMON).
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include <gtest/gtest.h>

#include "bpf/doctor_probe_loader.hh"

namespace ferry::bpf {
namespace {

bool has(const std::string& text, const char* needle) {
  return text.find(needle) != std::string::npos;
}

bool tracefs_events_visible() {
  return ::access("/sys/kernel/tracing/events", F_OK) == 0 ||
         ::access("/sys/kernel/debug/tracing/events", F_OK) == 0;
}

class DoctorProbeTest : public ::testing::Test {
 protected:
  // Tracepoint attach needs tracefs, which hosts often leave unmounted. The
  // suite mounts it in a private mount namespace, so the host is untouched
  // and the "not mounted" error path can be exercised too.
  static void SetUpTestSuite() {
    if (::geteuid() != 0) return;
    if (::unshare(CLONE_NEWNS) != 0) {
      suite_error_ = std::string("unshare(CLONE_NEWNS): ") + std::strerror(errno);
      return;
    }
    // Without this, (u)mounts below would propagate back to the host.
    if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) {
      suite_error_ = std::string("make / private: ") + std::strerror(errno);
    }
  }

  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "needs root (CAP_BPF + CAP_PERFMON) to load BPF";
    if (!suite_error_.empty()) GTEST_SKIP() << "no private mount namespace: " << suite_error_;
    ASSERT_TRUE(mount_tracefs()) << std::strerror(errno);
  }

  static bool mount_tracefs() {
    if (tracefs_events_visible()) return true;
    return ::mount("nodev", "/sys/kernel/tracing", "tracefs", 0, nullptr) == 0;
  }

  static inline std::string suite_error_;
};

TEST_F(DoctorProbeTest, CountsOnlyTheTargetsCallsAfterAttach) {
  auto probe = DoctorProbe::load(::getpid());
  ASSERT_TRUE(probe) << probe.error().what();
  DoctorProbe::trigger(3);
  auto before = probe->hits();
  ASSERT_TRUE(before) << before.error().what();
  EXPECT_EQ(*before, 0u) << "counted before attach";

  ASSERT_TRUE(probe->attach()) << "attach";
  auto again = probe->attach();
  ASSERT_TRUE(again) << "second attach must be a no-op: " << again.error().what();
  EXPECT_TRUE(probe->attached());

  DoctorProbe::trigger(5);
  auto counters = probe->counters();
  ASSERT_TRUE(counters) << counters.error().what();
  EXPECT_EQ(counters->hits, 5u);
  EXPECT_EQ(counters->core_mismatches, 0u) << "CO-RE read of task->tgid is wrong";
}

TEST_F(DoctorProbeTest, IgnoresOtherProcesses) {
  pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::pause();
    ::_exit(0);
  }
  auto probe = DoctorProbe::load(child);
  ASSERT_TRUE(probe) << probe.error().what();
  ASSERT_TRUE(probe->attach());
  DoctorProbe::trigger(5);
  auto hits = probe->hits();
  ::kill(child, SIGKILL);
  ::waitpid(child, nullptr, 0);
  ASSERT_TRUE(hits) << hits.error().what();
  EXPECT_EQ(*hits, 0u) << "the in-kernel tgid filter let our calls through";
}

TEST_F(DoctorProbeTest, RunAttachProbeReportsTracepointAndHits) {
  auto outcome = run_attach_probe();
  ASSERT_TRUE(outcome) << outcome.error().what();
  EXPECT_EQ(outcome->tracepoint, "syscalls/sys_enter_getppid");
  EXPECT_GE(outcome->hits, 4u);
}

TEST_F(DoctorProbeTest, MovedFromProbeReportsNotLoaded) {
  auto probe = DoctorProbe::load(::getpid());
  ASSERT_TRUE(probe) << probe.error().what();
  DoctorProbe owner = std::move(*probe);
  auto hits = probe->hits();
  ASSERT_FALSE(hits);
  EXPECT_TRUE(has(hits.error().what(), "not loaded")) << hits.error().what();
  EXPECT_FALSE(probe->attach());
  EXPECT_TRUE(owner.hits());
}

TEST_F(DoctorProbeTest, LoadRejectsNonProcessTgid) {
  auto probe = DoctorProbe::load(0);
  ASSERT_FALSE(probe);
  EXPECT_TRUE(has(probe.error().what(), "not a process id")) << probe.error().what();
}

TEST_F(DoctorProbeTest, UnprivilegedLoadNamesTheMissingCapability) {
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    // Leaving uid 0 for "nobody" drops every capability.
    ::close(fds[0]);
    if (::setresgid(65534, 65534, 65534) != 0 || ::setresuid(65534, 65534, 65534) != 0) {
      ::_exit(2);
    }
    auto probe = DoctorProbe::load(::getpid());
    std::string msg = probe ? "loaded without privileges" : probe.error().what();
    ssize_t written = ::write(fds[1], msg.data(), msg.size());
    ::_exit(written == static_cast<ssize_t>(msg.size()) ? 0 : 3);
  }
  ::close(fds[1]);
  std::string msg;
  char buf[512];
  for (ssize_t n; (n = ::read(fds[0], buf, sizeof buf)) > 0;) msg.append(buf, static_cast<size_t>(n));
  ::close(fds[0]);
  int status = 0;
  ::waitpid(child, &status, 0);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "child status " << status;
  EXPECT_TRUE(has(msg, "load doctor_probe failed")) << msg;
  EXPECT_TRUE(has(msg, "Operation not permitted")) << msg;
  EXPECT_TRUE(has(msg, "CAP_BPF")) << msg;
}

TEST_F(DoctorProbeTest, AttachWithoutTracefsSaysHowToMountIt) {
  // Only in this test's private mount namespace (see SetUpTestSuite).
  ::umount2("/sys/kernel/debug", MNT_DETACH);
  while (::umount2("/sys/kernel/tracing", MNT_DETACH) == 0) {
  }
  if (tracefs_events_visible()) GTEST_SKIP() << "tracefs could not be unmounted";

  auto probe = DoctorProbe::load(::getpid());
  ASSERT_TRUE(probe) << probe.error().what();
  auto attached = probe->attach();
  EXPECT_FALSE(attached);
  if (!attached) {
    EXPECT_TRUE(has(attached.error().what(), "mount -t tracefs")) << attached.error().what();
    EXPECT_EQ(attached.error().sys_errno(), ENOENT);
  }

  ASSERT_TRUE(mount_tracefs()) << std::strerror(errno);
  auto retried = probe->attach();
  EXPECT_TRUE(retried) << retried.error().what();
}

}  // namespace
}  // namespace ferry::bpf

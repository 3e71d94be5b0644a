// The contract of tools/kvm-sandbox itself: arguments arrive intact, the
// command's exit status comes back, /dev/kvm exists inside, timeouts end,
// a sandbox that stops making progress is noticed.
#include <gtest/gtest.h>

#include "tests/e2e/process.hh"

namespace ferry::test {
namespace {

using namespace std::chrono_literals;

TEST(Sandbox, RunnerPassesArgumentsAndReturnsExitStatus) {
  auto r = run_process({FERRY_SANDBOX_BIN, "--", "/bin/sh", "-c",
                        "test -c /dev/kvm && echo \"kvm:$1|$2\"; grep -q ' /sys/kernel/tracing tracefs ' /proc/mounts && echo tracefs; exit 7",
                        "sh", "one", "two words"},
                       600s);
  ASSERT_FALSE(r.timed_out) << r.describe();
  EXPECT_EQ(r.exit_code, 7) << r.describe();
  EXPECT_NE(r.out.find("kvm:one|two words\n"), std::string::npos) << r.describe();
  EXPECT_NE(r.out.find("tracefs\n"), std::string::npos) << r.describe();
}

TEST(Sandbox, RunnerEnforcesItsTimeout) {
  auto r = run_process({FERRY_SANDBOX_BIN, "--timeout", "30", "--", "/bin/sleep", "3600"}, 300s);
  ASSERT_FALSE(r.timed_out) << "the runner itself hung:\n" << r.describe();
  EXPECT_EQ(r.exit_code, 124) << r.describe();
}

// The runner's stall watch: a sandbox whose init stops ticking is noticed
// within FERRY_SANDBOX_STALL seconds, the CPU's registers are read from
// QEMU's monitor, and an idle CPU (halted, not livelocked) is a failure
// (124), not a reason to run the command again.
TEST(Sandbox, RunnerNoticesASandboxThatStopsMakingProgress) {
  auto r = run_process({"/usr/bin/env", "FERRY_SANDBOX_STALL=15", FERRY_SANDBOX_BIN, "--timeout", "600", "--",
                        "/bin/sh", "-c", "kill -STOP $(cat /run/ferry-sandbox-ticker.pid) && echo stopped; sleep 3600"},
                       500s);
  ASSERT_FALSE(r.timed_out) << "the runner itself hung:\n" << r.describe();
  EXPECT_EQ(r.exit_code, 124) << r.describe();
  EXPECT_NE(r.out.find("stopped"), std::string::npos) << r.describe();
  EXPECT_NE(r.err.find("made no progress for 15s"), std::string::npos) << r.describe();
  EXPECT_NE(r.err.find("the emulated CPU: RIP/RFLAGS"), std::string::npos) << r.describe();
  EXPECT_NE(r.err.find("HLT=1"), std::string::npos) << "an idle sandbox's CPU is halted\n" << r.describe();
  EXPECT_EQ(r.err.find("booting a fresh sandbox"), std::string::npos) << "an idle CPU is not a livelock\n"
                                                                      << r.describe();
}

}  // namespace
}  // namespace ferry::test

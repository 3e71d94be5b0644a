// The contract of tools/kvm-sandbox itself: arguments arrive intact, the
// command's exit status comes back, /dev/kvm exists inside, timeouts end.
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

}  // namespace
}  // namespace ferry::test

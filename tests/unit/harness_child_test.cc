// tools/harness/child: real child processes, as demos, benchmarks and the
// e2e tests start them.
#include <gtest/gtest.h>

#include <signal.h>
#include <unistd.h>

#include <fstream>
#include <sstream>

#include "tests/temp_dir.hh"
#include "tools/harness/child.hh"

namespace ferry::harness {
namespace {

using namespace std::chrono_literals;

std::string read(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

TEST(HarnessChild, RunsAProgramWithItsOutputInFilesAndReportsItsStatus) {
  test::TempDir dir;
  ChildOptions o;
  o.stdout_path = dir.path + "/out";
  o.stderr_path = dir.path + "/err";
  auto c = Child::spawn({"sh", "-c", "read x || echo stdin-is-empty; echo out; echo err >&2; exit 3"}, o);
  ASSERT_TRUE(c) << c.error().what();
  auto st = c->wait(30s);
  ASSERT_TRUE(st) << st.error().what();
  EXPECT_EQ(*st, 3);
  EXPECT_TRUE(c->exited_normally());
  EXPECT_EQ(read(o.stdout_path), "stdin-is-empty\nout\n");
  EXPECT_EQ(read(o.stderr_path), "err\n");

  auto killed = Child::spawn({"sh", "-c", "kill -9 $$"});
  ASSERT_TRUE(killed);
  EXPECT_EQ(killed->wait(30s).value_or(-1), 128 + SIGKILL);
  EXPECT_FALSE(killed->exited_normally());

  auto missing = Child::spawn({"no-such-program-ferry"});
  ASSERT_FALSE(missing);
  EXPECT_NE(missing.error().message().find("not found in PATH"), std::string::npos) << missing.error().what();
}

TEST(HarnessChild, ATimeoutKillsTheWholeGroupAndTheDestructorEndsAChild) {
  test::TempDir dir;
  ChildOptions o;
  o.own_process_group = true;
  o.name = "sleeper";
  o.stdout_path = dir.path + "/pid";
  // The grandchild prints its pid and sleeps; the child waits for it.
  auto c = Child::spawn({"sh", "-c", "sleep 60 & echo $!; wait"}, o);
  ASSERT_TRUE(c) << c.error().what();
  auto st = c->wait(300ms);
  ASSERT_FALSE(st);
  EXPECT_NE(st.error().message().find("sleeper (pid"), std::string::npos) << st.error().what();
  const pid_t grandchild = std::stoi(read(o.stdout_path));
  // SIGKILL to the group reached the grandchild too (it may linger as a
  // zombie of init for a moment).
  bool gone = false;
  for (int i = 0; i < 200 && !gone; ++i) {
    std::ifstream stat("/proc/" + std::to_string(grandchild) + "/stat");
    std::string s;
    std::getline(stat, s);
    gone = s.empty() || s.find(") Z") != std::string::npos;
    if (!gone) ::usleep(10000);
  }
  EXPECT_TRUE(gone) << "the grandchild " << grandchild << " survived the group kill";

  pid_t pid = -1;
  {
    ChildOptions graceful;
    graceful.grace = 2s;  // SIGTERM first, which ends sleep
    auto d = Child::spawn({"sleep", "60"}, graceful);
    ASSERT_TRUE(d);
    pid = d->pid();
    EXPECT_TRUE(d->running());
  }
  EXPECT_NE(::kill(pid, 0), 0) << "the destructor left pid " << pid << " running";
}

}  // namespace
}  // namespace ferry::harness

#pragma once
// One child process, as `ferry demo`, the benchmarks and the e2e tests run
// them: argv in; stdin from /dev/null; stdout and stderr to files or to
// ours; optionally in its own process group (a kill reaches what it spawned,
// e.g. the sandbox's qemu) and ended with SIGTERM if we die. Move-only; the
// destructor ends a child still running (SIGTERM, then SIGKILL after the
// grace period), so a failed test or an early return never leaves a VM
// behind.
#include <sys/types.h>

#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include "userspace/base/error.hh"

namespace ferry::harness {

struct ChildOptions {
  std::string stdout_path;  // empty: inherit ours
  std::string stderr_path;  // empty: inherit ours
  // The program to execute; empty: argv[0], searched in PATH when it has no '/'.
  std::string program;
  std::string name;  // for messages; empty: argv[0]
  bool own_process_group = false;
  bool die_with_parent = false;  // PR_SET_PDEATHSIG(SIGTERM)
  std::chrono::milliseconds grace{0};  // SIGTERM before SIGKILL when ending it
};

class Child {
 public:
  static Result<Child> spawn(const std::vector<std::string>& argv, const ChildOptions& o = {});
  Child(Child&& o) noexcept;
  Child& operator=(Child&& o) noexcept;
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;
  ~Child();

  pid_t pid() const { return pid_; }
  const std::string& name() const { return name_; }
  bool running();  // reaps it when it has exited
  // After it exited: the exit status, or 128+N for signal N.
  std::optional<int> status() const { return reaped_ ? std::optional<int>(status_) : std::nullopt; }
  bool exited_normally() const { return reaped_ && normal_exit_; }
  // Waits up to `limit` for the exit; then kills it (its group too) and
  // fails, naming the program.
  Result<int> wait(std::chrono::milliseconds limit);
  // SIGTERM, up to the grace period, then SIGKILL; reaps it.
  void stop();
  void signal(int sig) const;  // to its group when it has its own

 private:
  Child() = default;
  void kill_now();
  pid_t pid_ = -1;
  int status_ = -1;
  bool normal_exit_ = false;
  bool reaped_ = false;
  bool group_ = false;
  std::chrono::milliseconds grace_{0};
  std::string name_;
};

}  // namespace ferry::harness

#pragma once
// Runs a real child process for end-to-end tests (tools/harness, as the
// demos do): argv in, exit status, stdout and stderr out, with a hard
// timeout so a hung child fails the test instead of hanging the suite.
#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include "tools/harness/child.hh"

namespace ferry::test {

struct ProcessResult {
  int exit_code = -1;  // -1 when killed by a signal or timed out
  bool timed_out = false;
  std::string out;
  std::string err;
  std::string describe() const;  // for assertion messages: status + stderr tail
};

ProcessResult run_process(const std::vector<std::string>& argv, std::chrono::seconds timeout);

// A child that runs while the test talks to it (a `ferry run` VM). Output
// goes to files read at wait(); the destructor kills a child still running,
// so a failed assertion never leaves a VM behind.
class BackgroundProcess {
 public:
  explicit BackgroundProcess(const std::vector<std::string>& argv);
  ~BackgroundProcess();
  BackgroundProcess(const BackgroundProcess&) = delete;
  BackgroundProcess& operator=(const BackgroundProcess&) = delete;

  bool started() const { return child_.has_value(); }
  bool running();  // not yet exited (reaps it if it has)
  // Waits for exit (SIGKILL after `timeout`) and returns status and output.
  ProcessResult wait(std::chrono::seconds timeout);
  std::string output() const;  // stdout + stderr so far, for messages
  void signal(int sig) const {  // SIGKILL: a host that dies; SIGTERM: an operator
    if (child_) child_->signal(sig);
  }

 private:
  std::optional<harness::Child> child_;
  std::string out_path_, err_path_;
};

}  // namespace ferry::test

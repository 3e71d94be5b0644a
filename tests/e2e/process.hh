#pragma once
// Runs a real child process for end-to-end tests: argv in, exit status,
// stdout and stderr out, with a hard timeout so a hung child fails the test
// instead of hanging the suite.
#include <chrono>
#include <string>
#include <vector>

namespace ferry::test {

struct ProcessResult {
  int exit_code = -1;  // -1 when killed by a signal or timed out
  bool timed_out = false;
  std::string out;
  std::string err;
  std::string describe() const;  // for assertion messages: status + stderr tail
};

ProcessResult run_process(const std::vector<std::string>& argv, std::chrono::seconds timeout);

}  // namespace ferry::test

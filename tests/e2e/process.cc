#include "tests/e2e/process.hh"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>

#include <fmt/format.h>

namespace ferry::test {
namespace {

std::string slurp(const std::string& path) {
  std::string out;
  if (FILE* f = std::fopen(path.c_str(), "rb")) {
    char buf[65536];
    for (std::size_t n; (n = std::fread(buf, 1, sizeof buf, f)) > 0;) out.append(buf, n);
    std::fclose(f);
  }
  return out;
}

// Two fresh file names for a child's stdout and stderr.
std::pair<std::string, std::string> output_paths() {
  char tmpl[] = "/tmp/ferry-child-XXXXXX";
  const int fd = ::mkstemp(tmpl);
  if (fd < 0) return {};
  ::close(fd);
  ::unlink(tmpl);
  return {std::string(tmpl) + ".out", std::string(tmpl) + ".err"};
}

}  // namespace

std::string ProcessResult::describe() const {
  const auto tail = err.size() > 4000 ? err.substr(err.size() - 4000) : err;
  return fmt::format("exit={} timed_out={}\n--- stdout ---\n{}\n--- stderr (tail) ---\n{}", exit_code, timed_out,
                     out.size() > 4000 ? out.substr(out.size() - 4000) : out, tail);
}

ProcessResult run_process(const std::vector<std::string>& argv, std::chrono::seconds timeout) {
  ProcessResult res;
  const auto [out, err] = output_paths();
  if (out.empty()) {
    res.err = "mkstemp failed";
    return res;
  }
  harness::ChildOptions o;
  o.stdout_path = out;
  o.stderr_path = err;
  o.own_process_group = true;  // a timeout kills the child's children (qemu) too
  auto c = harness::Child::spawn(argv, o);
  if (!c) {
    res.err = fmt::format("spawn {} failed: {}", argv.empty() ? "" : argv[0], c.error().what());
    return res;
  }
  auto st = c->wait(timeout);
  res.timed_out = !st;
  if (st && c->exited_normally()) res.exit_code = *st;
  res.out = slurp(out);
  res.err = slurp(err);
  ::unlink(out.c_str());
  ::unlink(err.c_str());
  return res;
}

BackgroundProcess::BackgroundProcess(const std::vector<std::string>& argv) {
  std::tie(out_path_, err_path_) = output_paths();
  if (out_path_.empty()) return;
  harness::ChildOptions o;
  o.stdout_path = out_path_;
  o.stderr_path = err_path_;
  if (auto c = harness::Child::spawn(argv, o)) child_.emplace(std::move(*c));
}

BackgroundProcess::~BackgroundProcess() {
  child_.reset();  // SIGKILL if still running
  if (!out_path_.empty()) {
    ::unlink(out_path_.c_str());
    ::unlink(err_path_.c_str());
  }
}

bool BackgroundProcess::running() { return child_ && child_->running(); }

ProcessResult BackgroundProcess::wait(std::chrono::seconds timeout) {
  ProcessResult r;
  if (child_) {
    auto st = child_->wait(timeout);
    r.timed_out = !st;
    if (st && child_->exited_normally()) r.exit_code = *st;
  }
  r.out = slurp(out_path_);
  r.err = slurp(err_path_);
  return r;
}

std::string BackgroundProcess::output() const {
  return "--- stdout ---\n" + slurp(out_path_) + "\n--- stderr ---\n" + slurp(err_path_);
}

}  // namespace ferry::test

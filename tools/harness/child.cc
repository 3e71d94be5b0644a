#include "tools/harness/child.hh"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include <fmt/format.h>

#include "userspace/base/unique_fd.hh"

extern char** environ;

namespace ferry::harness {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

Result<UniqueFd> open_output(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (!fd) return fail_sys(fmt::format("open {}", path));
  return fd;
}

// PATH lookup in the parent: the child may only make async-signal-safe
// calls between fork and exec.
Result<std::string> resolve(const std::string& program) {
  if (program.find('/') != std::string::npos) return program;
  const char* path = std::getenv("PATH");
  std::string dirs = path ? path : "/usr/local/bin:/usr/bin:/bin";
  for (std::size_t at = 0; at <= dirs.size();) {
    const auto end = std::min(dirs.find(':', at), dirs.size());
    const std::string dir = end > at ? dirs.substr(at, end - at) : ".";
    const std::string full = dir + "/" + program;
    if (::access(full.c_str(), X_OK) == 0) return full;
    at = end + 1;
  }
  return fail("{}: not found in PATH", program);
}

}  // namespace

Result<Child> Child::spawn(const std::vector<std::string>& argv, const ChildOptions& o) {
  if (argv.empty()) return fail("spawn: empty argv");
  auto exe = resolve(o.program.empty() ? argv[0] : o.program);
  if (!exe) return std::unexpected(exe.error());
  std::vector<std::string> args = argv;
  std::vector<char*> cargv;
  for (auto& a : args) cargv.push_back(a.data());
  cargv.push_back(nullptr);
  UniqueFd in(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  if (!in) return fail_sys("open /dev/null");
  UniqueFd out, err;
  if (!o.stdout_path.empty()) {
    auto f = open_output(o.stdout_path);
    if (!f) return std::unexpected(f.error());
    out = std::move(*f);
  }
  if (!o.stderr_path.empty()) {
    auto f = open_output(o.stderr_path);
    if (!f) return std::unexpected(f.error());
    err = std::move(*f);
  }
  // What we printed must come before what the child prints on shared fds.
  std::fflush(stdout);
  std::fflush(stderr);
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) return fail_sys("fork");
  if (pid == 0) {
    // Only async-signal-safe calls from here to exec.
    if (o.die_with_parent) {
      ::prctl(PR_SET_PDEATHSIG, SIGTERM);
      if (::getppid() != parent) ::_exit(127);
    }
    if (o.own_process_group) ::setpgid(0, 0);
    // A VM process blocks SIGTERM for its signalfd; its children must not
    // inherit that.
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    ::dup2(in.get(), 0);
    if (out) ::dup2(out.get(), 1);
    if (err) ::dup2(err.get(), 2);
    ::execve(exe->c_str(), cargv.data(), environ);
    ::_exit(127);
  }
  // Also from this side, so a kill of the group cannot race the child's setpgid.
  if (o.own_process_group) ::setpgid(pid, pid);
  Child c;
  c.pid_ = pid;
  c.group_ = o.own_process_group;
  c.grace_ = o.grace;
  c.name_ = o.name.empty() ? argv[0] : o.name;
  return c;
}

Child::Child(Child&& o) noexcept
    : pid_(o.pid_), status_(o.status_), normal_exit_(o.normal_exit_), reaped_(o.reaped_), group_(o.group_),
      grace_(o.grace_), name_(std::move(o.name_)) {
  o.pid_ = -1;
}

Child& Child::operator=(Child&& o) noexcept {
  if (this != &o) {
    stop();
    pid_ = o.pid_;
    status_ = o.status_;
    normal_exit_ = o.normal_exit_;
    reaped_ = o.reaped_;
    group_ = o.group_;
    grace_ = o.grace_;
    name_ = std::move(o.name_);
    o.pid_ = -1;
  }
  return *this;
}

Child::~Child() { stop(); }

bool Child::running() {
  if (pid_ <= 0 || reaped_) return false;
  int st = 0;
  const pid_t r = ::waitpid(pid_, &st, WNOHANG);
  if (r == pid_) {
    normal_exit_ = WIFEXITED(st);
    status_ = WIFEXITED(st) ? WEXITSTATUS(st) : WIFSIGNALED(st) ? 128 + WTERMSIG(st) : -1;
    reaped_ = true;
    return false;
  }
  if (r < 0 && errno == ECHILD) {  // reaped elsewhere: nothing more to learn
    reaped_ = true;
    return false;
  }
  return true;
}

void Child::signal(int sig) const {
  if (pid_ > 0 && !reaped_) ::kill(group_ ? -pid_ : pid_, sig);
}

void Child::kill_now() {
  signal(SIGKILL);
  while (running()) std::this_thread::sleep_for(5ms);
}

Result<int> Child::wait(std::chrono::milliseconds limit) {
  const auto end = Clock::now() + limit;
  while (running()) {
    if (Clock::now() >= end) {
      kill_now();
      return fail("{} (pid {}) did not end within {:.1f} s", name_, pid_, limit.count() / 1000.0);
    }
    std::this_thread::sleep_for(10ms);
  }
  return status_;
}

void Child::stop() {
  if (!running()) return;
  if (grace_.count() > 0) {
    signal(SIGTERM);
    const auto end = Clock::now() + grace_;
    while (running() && Clock::now() < end) std::this_thread::sleep_for(10ms);
  }
  if (running()) kill_now();
}

}  // namespace ferry::harness

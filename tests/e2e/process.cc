#include "tests/e2e/process.hh"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include <fmt/format.h>

extern char** environ;

namespace ferry::test {

std::string ProcessResult::describe() const {
  const auto tail = err.size() > 4000 ? err.substr(err.size() - 4000) : err;
  return fmt::format("exit={} timed_out={}\n--- stdout ---\n{}\n--- stderr (tail) ---\n{}", exit_code, timed_out,
                     out.size() > 4000 ? out.substr(out.size() - 4000) : out, tail);
}

ProcessResult run_process(const std::vector<std::string>& argv, std::chrono::seconds timeout) {
  ProcessResult res;
  int out_pipe[2], err_pipe[2];
  if (::pipe2(out_pipe, O_CLOEXEC) < 0 || ::pipe2(err_pipe, O_CLOEXEC) < 0) {
    res.err = "pipe failed";
    return res;
  }
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, out_pipe[1], 1);
  posix_spawn_file_actions_adddup2(&fa, err_pipe[1], 2);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  // Own process group, so a timeout kills the child's children (qemu) too.
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP);
  posix_spawnattr_setpgroup(&attr, 0);
  std::vector<char*> cargv;
  for (const auto& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
  cargv.push_back(nullptr);
  pid_t pid = -1;
  const int rc = ::posix_spawnp(&pid, cargv[0], &fa, &attr, cargv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  ::close(out_pipe[1]);
  ::close(err_pipe[1]);
  if (rc != 0) {
    res.err = fmt::format("spawn {} failed: {}", argv[0], std::strerror(rc));
    ::close(out_pipe[0]);
    ::close(err_pipe[0]);
    return res;
  }
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  pollfd fds[2] = {{out_pipe[0], POLLIN, 0}, {err_pipe[0], POLLIN, 0}};
  std::string* sinks[2] = {&res.out, &res.err};
  int open_fds = 2;
  while (open_fds > 0) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      res.timed_out = true;
      ::kill(-pid, SIGKILL);
      break;
    }
    const int ready = ::poll(fds, 2, static_cast<int>(std::min<long>(left.count(), 1000)));
    if (ready < 0) {
      if (errno == EINTR) continue;  // revents are stale: poll again
      res.err += fmt::format("\n[run_process: poll failed: {}]", std::strerror(errno));
      ::kill(-pid, SIGKILL);  // never wait unbounded below
      break;
    }
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP))) continue;
      char buf[65536];
      const ssize_t n = ::read(fds[i].fd, buf, sizeof buf);
      if (n > 0) {
        sinks[i]->append(buf, static_cast<std::size_t>(n));
      } else {
        ::close(fds[i].fd);
        fds[i].fd = -1;
        --open_fds;
      }
    }
  }
  for (auto& f : fds)
    if (f.fd >= 0) ::close(f.fd);
  int status = 0;
  ::waitpid(pid, &status, 0);
  if (!res.timed_out && WIFEXITED(status)) res.exit_code = WEXITSTATUS(status);
  return res;
}

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
}  // namespace

BackgroundProcess::BackgroundProcess(const std::vector<std::string>& argv) {
  char tmpl[] = "/tmp/ferry-child-XXXXXX";
  const int fd = ::mkstemp(tmpl);
  if (fd < 0) return;
  ::close(fd);
  out_path_ = std::string(tmpl) + ".out";
  err_path_ = std::string(tmpl) + ".err";
  ::unlink(tmpl);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 1, out_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  posix_spawn_file_actions_addopen(&fa, 2, err_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  std::vector<char*> cargv;
  for (const auto& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
  cargv.push_back(nullptr);
  pid_t pid = -1;
  if (::posix_spawnp(&pid, cargv[0], &fa, nullptr, cargv.data(), environ) == 0) pid_ = pid;
  posix_spawn_file_actions_destroy(&fa);
}

BackgroundProcess::~BackgroundProcess() {
  if (pid_ > 0 && !reaped_) {
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
  }
  if (!out_path_.empty()) {
    ::unlink(out_path_.c_str());
    ::unlink(err_path_.c_str());
  }
}

bool BackgroundProcess::running() {
  if (pid_ <= 0 || reaped_) return false;
  int st = 0;
  if (::waitpid(pid_, &st, WNOHANG) == pid_) {
    reaped_ = true;
    status_ = st;
    return false;
  }
  return true;
}

ProcessResult BackgroundProcess::wait(std::chrono::seconds timeout) {
  ProcessResult r;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (running() && std::chrono::steady_clock::now() < deadline)
    ::poll(nullptr, 0, 10);
  if (running()) {
    r.timed_out = true;
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, &status_, 0);
    reaped_ = true;
  }
  if (reaped_ && WIFEXITED(status_)) r.exit_code = WEXITSTATUS(status_);
  r.out = slurp(out_path_);
  r.err = slurp(err_path_);
  return r;
}

std::string BackgroundProcess::output() const {
  return "--- stdout ---\n" + slurp(out_path_) + "\n--- stderr ---\n" + slurp(err_path_);
}

}  // namespace ferry::test

// In-process socketpair transport (local.hh).
#include "userspace/transport/local.hh"

#include <sys/socket.h>
#include <unistd.h>

namespace ferry::transport {

Result<Connection> LocalLink::dial(const Endpoint& to, std::chrono::milliseconds) {
  int fds[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0)
    return std::unexpected(sys_error(fmt::format("connect to {}: socketpair", to.str())));
  std::uint64_t n = 0;
  {
    std::lock_guard lock(mu_);
    if (closed_) {
      ::close(fds[0]);
      ::close(fds[1]);
      return std::unexpected(Error(fmt::format("connect to {}: connection refused (listener closed)", to.str()),
                                   ECONNREFUSED));
    }
    n = dialed_++;
  }
  Connection mine(UniqueFd(fds[0]), fmt::format("local listener ({})", n));
  Connection theirs(UniqueFd(fds[1]), fmt::format("local dialer {}", n));
  if (hook_) hook_(mine, theirs);
  std::lock_guard lock(mu_);
  pending_.push_back(std::move(theirs));
  cv_.notify_all();
  return mine;
}

Result<Connection> LocalLink::accept(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mu_);
  auto ready = [&] { return closed_ || !pending_.empty(); };
  if (timeout.count() > 0) {
    if (!cv_.wait_for(lock, timeout, ready))
      return std::unexpected(Error(fmt::format("accept: no connection within {} ms", timeout.count()), ETIMEDOUT));
  } else {
    cv_.wait(lock, ready);
  }
  if (!pending_.empty()) {
    Connection c = std::move(pending_.front());
    pending_.pop_front();
    return c;
  }
  return fail("accept: listener closed");
}

void LocalLink::close() {
  std::lock_guard lock(mu_);
  closed_ = true;
  pending_.clear();
  cv_.notify_all();
}

}  // namespace ferry::transport

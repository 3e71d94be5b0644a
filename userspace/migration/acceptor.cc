// The destination's front door (acceptor.hh).
#include "userspace/migration/acceptor.hh"

#include <sys/socket.h>

#include <cerrno>

#include <spdlog/spdlog.h>

#include "userspace/base/thread_name.hh"

namespace ferry::migration {
namespace {
// How often the accept thread looks at the stop flag.
constexpr std::chrono::milliseconds kAcceptPoll{200};
}  // namespace

Acceptor::Acceptor(transport::Listener& listener, Options o)
    : listener_(listener), o_(o), accept_thread_([this] { accept_loop(); }) {}

Acceptor::~Acceptor() {
  stop_ = true;
  accept_thread_.join();
  {
    std::lock_guard lock(mu_);
    for (int fd : handshake_fds_) ::shutdown(fd, SHUT_RDWR);  // their reads end now, not at the deadline
  }
  for (auto& h : handshakes_) h.thread.join();
}

void Acceptor::accept_loop() {
  name_this_thread("acceptor");
  while (!stop_) {
    auto c = listener_.accept(kAcceptPoll);
    reap();
    if (!c) {
      if (c.error().sys_errno() == ETIMEDOUT) continue;
      std::lock_guard lock(mu_);
      listener_error_ = std::move(c.error());
      cv_.notify_all();
      return;
    }
    if (in_handshake_ >= o_.max_handshakes) {
      // Closing it is the answer: a flood must not buy threads.
      spdlog::warn("receive: refused a connection from {}: {} others are still in their handshake", c->peer(),
                   o_.max_handshakes);
      ++refused_;
      continue;
    }
    ++in_handshake_;
    auto done = std::make_shared<std::atomic<bool>>(false);
    handshakes_.push_back({std::thread([this, done, conn = std::move(*c)]() mutable {
                             handshake(std::move(conn));
                             --in_handshake_;
                             *done = true;
                           }),
                           done});
  }
}

void Acceptor::handshake(transport::Connection c) {
  name_this_thread("handshake");
  const std::string peer = c.peer();
  const int fd = c.fd();
  {
    std::lock_guard lock(mu_);
    if (stop_) return;
    handshake_fds_.insert(fd);
  }
  auto in = open_incoming(std::move(c), "stream", o_.read_timeout, o_.hello_deadline);
  {
    std::lock_guard lock(mu_);  // the socket is still open: `in` owns it
    handshake_fds_.erase(fd);
  }
  if (!in) {
    spdlog::warn("receive: could not open a connection from {}: {}", peer, in.error().what());
    ++refused_;
    return;
  }
  if (!in->hello) {
    // A peer speaking another version (or garbage, or nothing) learns why;
    // it costs only its own connection.
    (void)in->stream->send_now(FrameType::kAbort, Abort{in->hello.error().what().substr(0, kMaxReason)});
    spdlog::warn("receive: refused a connection from {}: {}", peer, in->hello.error().what());
    ++refused_;
    return;
  }
  std::lock_guard lock(mu_);
  ready_.push_back(std::move(*in));
  cv_.notify_all();
}

void Acceptor::reap() {
  for (auto it = handshakes_.begin(); it != handshakes_.end();) {
    if (*it->done) {
      it->thread.join();
      it = handshakes_.erase(it);
    } else {
      ++it;
    }
  }
}

Result<Incoming> Acceptor::next(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mu_);
  auto ready = [&] { return !ready_.empty() || listener_error_.has_value(); };
  if (timeout.count() > 0) {
    if (!cv_.wait_for(lock, timeout, ready))
      return std::unexpected(Error(fmt::format("no connection within {} ms", timeout.count()), ETIMEDOUT));
  } else {
    cv_.wait(lock, ready);
  }
  if (!ready_.empty()) {
    Incoming in = std::move(ready_.front());
    ready_.pop_front();
    return in;
  }
  return std::unexpected(*listener_error_);
}

}  // namespace ferry::migration

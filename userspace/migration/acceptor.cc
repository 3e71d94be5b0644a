// The destination's front door (acceptor.hh).
#include "userspace/migration/acceptor.hh"

#include <fcntl.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <system_error>

#include <spdlog/spdlog.h>

#include "userspace/base/thread_name.hh"
#include "userspace/base/unique_fd.hh"

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
      const int e = c.error().sys_errno();
      if (e == ETIMEDOUT) continue;
      if (e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM || e == EINTR || e == ECONNABORTED) {
        // Out of descriptors or memory for now: a flood must not end the
        // listener (a held VM waits on it for its resolver).
        spdlog::warn("receive: accept failed: {}; retrying", c.error().what());
        std::this_thread::sleep_for(kAcceptPoll);
        continue;
      }
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
    try {
      handshakes_.push_back({std::thread([this, done, conn = std::move(*c)]() mutable {
                               handshake(std::move(conn));
                               --in_handshake_;
                               *done = true;
                             }),
                             done});
    } catch (const std::system_error& e) {  // no thread to be had: the connection goes
      spdlog::warn("receive: refused a connection: no thread for its handshake ({})", e.what());
      --in_handshake_;
      ++refused_;
    }
  }
}

void Acceptor::handshake(transport::Connection c) {
  name_this_thread("handshake");
  const std::string peer = c.peer();
  UniqueFd guard(::fcntl(c.fd(), F_DUPFD_CLOEXEC, 0));
  {
    std::lock_guard lock(mu_);
    if (stop_) return;
    if (guard) handshake_fds_.insert(guard.get());
  }
  // One deadline for the TLS handshake and HELLO together: a peer that
  // has not proved who it is gets no buffer, no frame reader, no state.
  const auto deadline = std::chrono::steady_clock::now() + o_.hello_deadline;
  auto secured = listener_.secure(std::move(c), deadline);
  if (!secured) {
    {
      std::lock_guard lock(mu_);
      if (guard) handshake_fds_.erase(guard.get());
    }
    spdlog::warn("receive: refused a connection from {}: {}", peer, secured.error().what());
    ++refused_;
    return;
  }
  const auto left = std::max(std::chrono::milliseconds(1), std::chrono::duration_cast<std::chrono::milliseconds>(
                                                               deadline - std::chrono::steady_clock::now()));
  auto in = open_incoming(std::move(*secured), "stream", o_.read_timeout, left);
  {
    std::lock_guard lock(mu_);
    if (guard) handshake_fds_.erase(guard.get());
  }
  if (!in) {
    spdlog::warn("receive: could not open a connection from {}: {}", peer, in.error().what());
    ++refused_;
    return;
  }
  if (!in->hello) {
    // A peer speaking another version (or garbage, or nothing) learns why;
    // it costs only its own connection.
    ++refused_;
    spdlog::warn("receive: refused a connection from {}: {}", peer, in->hello.error().what());
    (void)in->stream->send_now(FrameType::kAbort, Abort{in->hello.error().what().substr(0, kMaxReason)});
    return;
  }
  if (in->hello->purpose == HelloPurpose::kMigrate && migrations_closed_) {
    ++refused_;
    spdlog::warn("receive: refused a migration from {}: busy with another", peer);
    (void)in->stream->send_now(FrameType::kAbort, Abort{"this destination is busy with another migration"});
    return;
  }
  std::lock_guard lock(mu_);
  if (ready_.size() >= o_.max_handshakes) {  // nobody takes them now: the session is busy
    spdlog::warn("receive: refused a connection from {}: {} others are waiting", peer, ready_.size());
    ++refused_;
    return;
  }
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

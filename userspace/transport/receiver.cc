// Receiver: exact reads from a stream socket into caller memory through
// io_uring RECVMSG with MSG_WAITALL.
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>

#include <spdlog/spdlog.h>

#include "userspace/transport/io_uring.hh"
#include "userspace/transport/socket_util.hh"
#include "userspace/transport/receiver.hh"

namespace ferry::transport {
namespace {

using namespace std::chrono_literals;

// UIO_MAXIOV: recvmsg rejects longer iovec arrays with EMSGSIZE.
constexpr std::size_t kMaxIov = 1024;
constexpr std::uint64_t kRecvTag = 1;
constexpr std::uint64_t kCancelTag = 2;
// How long a cancelled receive may take to complete before we shut the
// socket's read side to force it (never seen; io_uring cancels a receive
// waiting for data at once).
constexpr auto kCancelGrace = 1s;
// "Forever" for IoUring::wait, which always takes a timeout.
constexpr auto kForever = std::chrono::hours(24);

}  // namespace

struct Receiver::Impl {
  int fd;
  std::string name;
  IoUring ring;
  std::uint64_t bytes = 0;

  // One RECVMSG into `msg`. Returns bytes received (0: end of stream); a
  // request that timed out and was cancelled after receiving part of the
  // data returns that part, so only a silent period is an error.
  Result<std::size_t> recv_once(msghdr& msg, std::chrono::milliseconds idle);
  Result<Completion> wait_recv(std::chrono::milliseconds timeout);
  Status submit_recv(msghdr& msg);
  Status cancel_recv();
};

Status Receiver::Impl::submit_recv(msghdr& msg) {
  auto sqe = ring.get_sqe();
  if (!sqe) return std::unexpected(std::move(sqe.error()));
  io_uring_prep_recvmsg(*sqe, fd, &msg, MSG_WAITALL);
  io_uring_sqe_set_data64(*sqe, kRecvTag);
  if (auto s = ring.submit(); !s) return std::unexpected(std::move(s.error()));
  return {};
}

Status Receiver::Impl::cancel_recv() {
  auto sqe = ring.get_sqe();
  if (!sqe) return std::unexpected(std::move(sqe.error()));
  io_uring_prep_cancel64(*sqe, kRecvTag, 0);
  io_uring_sqe_set_data64(*sqe, kCancelTag);
  if (auto s = ring.submit(); !s) return std::unexpected(std::move(s.error()));
  return {};
}

// The receive's CQE; the cancel requests' own CQEs are skipped.
Result<Completion> Receiver::Impl::wait_recv(std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    auto c = ring.wait(std::max(left, 0ms));
    if (!c) {
      if (c.error().sys_errno() == EINTR) continue;
      return c;
    }
    if (c->user_data == kRecvTag) return c;
  }
}

Result<std::size_t> Receiver::Impl::recv_once(msghdr& msg, std::chrono::milliseconds idle) {
  for (;;) {
    if (auto s = submit_recv(msg); !s) return std::unexpected(std::move(s.error()).context(name));
    const bool timed = idle.count() > 0;
    auto c = wait_recv(timed ? idle : kForever);
    bool cancelled = false;
    while (!c && c.error().sys_errno() == ETIME) {
      if (!timed) {
        c = wait_recv(kForever);
        continue;
      }
      // Nothing completed within the idle timeout. The request still owns
      // the caller's memory: cancel it and wait for its CQE, so the kernel
      // cannot write there after we return.
      if (!cancelled) {
        if (auto s = cancel_recv(); !s) {
          spdlog::error("{}: cancelling a timed-out receive: {}", name, s.error());
        }
        cancelled = true;
        c = wait_recv(kCancelGrace);
        continue;
      }
      spdlog::warn("{}: cancelled receive still running after {} ms; shutting the read side down",
                   name, std::chrono::duration_cast<std::chrono::milliseconds>(kCancelGrace).count());
      ::shutdown(fd, SHUT_RD);
      c = wait_recv(kForever);
    }
    if (!c) {
      // The ring itself failed; the request's fate is unknown.
      return std::unexpected(std::move(c.error()).context(name));
    }
    if (c->res >= 0) return static_cast<std::size_t>(c->res);
    const int err = -c->res;
    if (cancelled && (err == ECANCELED || err == EINTR)) {
      return std::unexpected(Error(fmt::format("{}: no data for {} ms", name, idle.count()), ETIMEDOUT));
    }
    if (err == EINTR || err == EAGAIN) continue;
    return std::unexpected(Error(fmt::format("{}: recv", name), err));
  }
}

Result<Receiver> Receiver::create(int fd, std::string name, unsigned entries) {
  if (auto s = set_blocking(fd); !s) return std::unexpected(std::move(s.error()).context(name));
  auto ring = IoUring::create(std::max(entries, 2u));
  if (!ring) return std::unexpected(std::move(ring.error()).context(name));
  return Receiver(std::make_unique<Impl>(Impl{.fd = fd, .name = std::move(name), .ring = std::move(*ring)}));
}

Receiver::Receiver(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Receiver::Receiver(Receiver&&) noexcept = default;
Receiver& Receiver::operator=(Receiver&&) noexcept = default;
Receiver::~Receiver() = default;

Result<std::size_t> Receiver::read_exact(std::span<const iovec> ranges, std::chrono::milliseconds idle_timeout) {
  std::size_t total = 0;
  for (const iovec& r : ranges) total += r.iov_len;
  if (total == 0) return 0;

  std::size_t got = 0, index = 0, offset = 0;
  std::vector<iovec> window;
  window.reserve(std::min(ranges.size(), kMaxIov));
  while (got < total) {
    // The next at most kMaxIov ranges, starting part way into the first.
    window.clear();
    for (std::size_t i = index; i < ranges.size() && window.size() < kMaxIov; ++i) {
      iovec v = ranges[i];
      if (i == index) {
        v.iov_base = static_cast<std::byte*>(v.iov_base) + offset;
        v.iov_len -= offset;
      }
      if (v.iov_len > 0) window.push_back(v);
    }
    msghdr msg{};
    msg.msg_iov = window.data();
    msg.msg_iovlen = window.size();
    auto n = impl_->recv_once(msg, idle_timeout);
    if (!n) return std::unexpected(std::move(n.error()));
    if (*n == 0) {
      if (got == 0) return 0;
      return fail("{}: connection closed after {} of {} bytes", impl_->name, got, total);
    }
    got += *n;
    impl_->bytes += *n;
    // Advance (index, offset) past the bytes just received.
    std::size_t left = *n;
    while (left > 0 && index < ranges.size()) {
      const std::size_t room = ranges[index].iov_len - offset;
      if (left < room) {
        offset += left;
        left = 0;
      } else {
        left -= room;
        ++index;
        offset = 0;
      }
    }
  }
  return total;
}

Result<std::size_t> Receiver::read_exact(std::span<std::byte> into, std::chrono::milliseconds idle_timeout) {
  const iovec range{.iov_base = into.data(), .iov_len = into.size()};
  return read_exact(std::span<const iovec>(&range, 1), idle_timeout);
}

std::uint64_t Receiver::bytes() const { return impl_->bytes; }

}  // namespace ferry::transport

// Sender: one TCP connection's sending side, a thread driving its own
// io_uring.
//
// Ordering: exactly one send request is in flight at a time, and a short
// send is followed by a request for the rest, so bytes leave in send()
// order without relying on IOSQE_IO_LINK (a link breaks on a short send).
//
// Memory: a request holds its frame (the owned head) until its result CQE
// and, for zero-copy, its notification CQE (IORING_CQE_F_NOTIF) have both
// arrived; the two may come in either order. A result with IORING_CQE_F_MORE
// promises the notification.
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <deque>
#include <optional>
#include <thread>
#include <unordered_map>

#include <spdlog/spdlog.h>

#include "userspace/base/thread_name.hh"
#include "userspace/transport/io_uring.hh"
#include "userspace/transport/socket_util.hh"
#include "userspace/transport/sender.hh"
#include "userspace/transport/uring_compat.hh"

namespace ferry::transport {
namespace {

using namespace std::chrono_literals;
using SteadyClock = std::chrono::steady_clock;

// UIO_MAXIOV: sendmsg rejects longer iovec arrays with EMSGSIZE.
constexpr std::size_t kMaxIov = 1024;
// Bounds one request so a switch to plain sends, a cancel or an abort takes
// effect within a bounded amount of data.
constexpr std::size_t kMaxRequestBytes = 8u << 20;
// With a shared rate limiter: small enough that streams interleave fairly.
constexpr std::size_t kLimitedRequestBytes = 1u << 20;
// No MSG_WAITALL: io_uring would then retry partial sends internally, but
// a request also comes back short on a signal, a cancel or an error after
// some progress, so the resubmission path exists anyway; without the flag
// it runs whenever the socket buffer fills, which keeps it exercised.
constexpr unsigned kSendFlags = MSG_NOSIGNAL;

constexpr std::uint64_t kWakeTag = 1;
constexpr std::uint64_t kCancelTag = 2;
constexpr std::uint64_t kFirstRequestTag = 16;

// Destruction with work outstanding (see run()): how long to wait before
// shutting the socket down under a cancelled request that does not end,
// before resetting the connection so the kernel frees (and notifies for)
// zero-copy data stuck in the socket's send queue, and before giving up.
constexpr auto kShutdownAfter = 250ms;
constexpr auto kResetAfter = 1s;
constexpr auto kGiveUpAfter = 3s;

constexpr const char* kNoteOff = "zero-copy off by option: plain sends";
constexpr const char* kNoteNoOpcode = "kernel has no IORING_OP_SENDMSG_ZC (< 6.1): plain sends";
constexpr const char* kNoteNoUsage = "kernel cannot report zero-copy usage (< 6.2): plain sends";
constexpr const char* kNoteUnsupported = "socket does not support zero-copy sends: plain sends";
constexpr const char* kNoteCopied = "kernel copied the data (loopback/veth?): plain sends";

struct Frame {
  std::vector<std::byte> head;
  std::vector<iovec> iov;  // the head (when not empty), then the non-empty borrowed ranges
  std::size_t head_entries = 0;
  std::size_t bytes = 0;
};

struct Request {
  std::shared_ptr<Frame> frame;  // keeps the owned head alive while the kernel may read it
  std::vector<iovec> iov;
  msghdr msg{};
  std::size_t bytes = 0;
  bool zero_copy = false;
  bool completed = false;       // result CQE seen
  bool notif_expected = false;  // the result carried IORING_CQE_F_MORE
  bool notif_seen = false;
};

}  // namespace

struct Sender::Impl {
  Impl(UniqueFd s, SenderOptions o, IoUring r, UniqueFd w)
      : socket(std::move(s)), options(std::move(o)), ring(std::move(r)), wake_fd(std::move(w)) {}

  UniqueFd socket;
  SenderOptions options;
  IoUring ring;  // used by the worker thread only
  UniqueFd wake_fd;
  std::thread thread;

  // Shared with callers.
  mutable std::mutex mu;
  std::condition_variable cv;  // space freed, error, in_flight cleared, idle
  std::deque<std::shared_ptr<Frame>> queue;
  std::size_t unsent = 0;  // bytes of queued frames not yet sent
  std::optional<Error> error;
  bool stopping = false;
  bool idle = true;  // nothing queued, being sent, or awaiting a notification
  bool in_flight = false;
  SenderStats stats;

  // Worker thread only.
  std::shared_ptr<Frame> current;
  std::size_t cur_index = 0, cur_offset = 0;  // position in current->iov
  std::unordered_map<std::uint64_t, std::unique_ptr<Request>> requests;
  std::uint64_t active = 0;  // tag of the request in flight, 0 when none
  bool cancel_sent = false;
  std::uint64_t next_tag = kFirstRequestTag;
  bool zero_copy = false;
  std::size_t prepaid = 0;  // bytes acquired from the limiter and not yet sent

  void wake();
  void run();
  void fail_locked(Error e);
  void fail_now(Error e);
  Status arm_wake();
  void submit_next();
  void submit_cancel();
  void complete_empty_frame();
  bool wait_and_handle(std::chrono::milliseconds timeout);
  void handle(const Completion& c);
  void on_result(Request& r, int res, std::uint32_t flags);
  void on_notification(Request& r, int res);
  void switch_to_plain_locked(const char* note);
  void reset_connection();
};

void Sender::Impl::wake() {
  const std::uint64_t one = 1;
  // Only fails when the counter would overflow, and then a wake-up is pending anyway.
  if (::write(wake_fd.get(), &one, sizeof one) < 0) return;
}

void Sender::Impl::fail_locked(Error e) {
  if (!error) {
    spdlog::debug("{}", e.what());
    error = std::move(e);
  }
  cv.notify_all();
}

void Sender::Impl::fail_now(Error e) {
  std::lock_guard lock(mu);
  fail_locked(std::move(e));
}

void Sender::Impl::switch_to_plain_locked(const char* note) {
  if (!zero_copy) return;
  zero_copy = false;
  stats.zero_copy_active = false;
  stats.zero_copy_note = note;
  spdlog::debug("{}: {}", options.name, note);
}

// A poll on the eventfd that send(), abort() and the destructor write to,
// so one wait covers both new work and CQEs.
Status Sender::Impl::arm_wake() {
  auto sqe = ring.get_sqe();
  if (!sqe) return std::unexpected(std::move(sqe.error()));
  io_uring_prep_poll_add(*sqe, wake_fd.get(), POLLIN);
  io_uring_sqe_set_data64(*sqe, kWakeTag);
  if (auto s = ring.submit(); !s) return std::unexpected(std::move(s.error()));
  return {};
}

void Sender::Impl::run() {
  if (auto s = arm_wake(); !s) {
    // Still works, only slower: the loop below also wakes up on a timer.
    spdlog::warn("{}: wake-up poll: {}", options.name, s.error());
  }
  std::optional<SteadyClock::time_point> stop_started;
  bool shut_down = false, reset = false;
  for (;;) {
    bool stop = false, failed = false;
    {
      std::lock_guard lock(mu);
      if (stopping && !error && (current || !queue.empty() || active != 0)) {
        // Cut off part way: the peer must not take a truncated stream for a
        // complete one, so the stream counts as failed (and is reset below).
        fail_locked(Error(fmt::format("{}: stopped with data unsent", options.name)));
      }
      failed = error.has_value();
      stop = stopping;
      if (failed || stop) {
        // What the kernel has not been given is abandoned.
        queue.clear();
        unsent = 0;
        current.reset();
      } else if (!current && !queue.empty()) {
        current = std::move(queue.front());
        queue.pop_front();
        cur_index = cur_offset = 0;
      }
      if (!current && requests.empty() && !idle) {
        idle = true;
        cv.notify_all();
      }
      if (stop && requests.empty()) return;
    }

    if (stop) {
      // The destructor waits for outstanding requests and notifications,
      // but not forever: a cancelled request that does not end gets the
      // socket shut down under it; zero-copy data the peer never takes
      // (zero window) is only released by resetting the connection, done
      // at once when the stream has failed anyway.
      const auto now = SteadyClock::now();
      if (!stop_started) stop_started = now;
      const auto since = now - *stop_started;
      if (active != 0 && since >= kShutdownAfter && !shut_down) {
        ::shutdown(socket.get(), SHUT_RDWR);
        shut_down = true;
      }
      if (active == 0 && !reset && (failed || since >= kResetAfter)) {
        reset_connection();
        reset = true;
      }
      if (since >= kGiveUpAfter) {
        // Leaking is the only safe choice once we stop waiting: the kernel
        // may still read the owned heads.
        spdlog::warn("{}: {} send requests still not released by the kernel after {} ms; leaking them",
                     options.name, requests.size(),
                     std::chrono::duration_cast<std::chrono::milliseconds>(since).count());
        (void)new std::unordered_map<std::uint64_t, std::unique_ptr<Request>>(std::move(requests));
        return;
      }
    }

    if (current && active == 0) {
      if (current->bytes == 0) {
        complete_empty_frame();
        continue;
      }
      submit_next();
    } else if ((failed || stop) && active != 0 && !cancel_sent) {
      submit_cancel();
    }
    if (!wait_and_handle(stop ? 25ms : 1s)) {
      (void)new std::unordered_map<std::uint64_t, std::unique_ptr<Request>>(std::move(requests));
      return;
    }
  }
}

void Sender::Impl::complete_empty_frame() {
  std::lock_guard lock(mu);
  ++stats.frames;
  current.reset();
}

void Sender::Impl::submit_next() {
  const Frame& f = *current;
  auto req = std::make_unique<Request>();
  req->frame = current;
  const std::size_t cap = options.limiter ? kLimitedRequestBytes : kMaxRequestBytes;
  std::size_t last = cur_index;
  for (std::size_t i = cur_index; i < f.iov.size() && req->iov.size() < kMaxIov && req->bytes < cap; ++i) {
    iovec v = f.iov[i];
    if (i == cur_index) {
      v.iov_base = static_cast<std::byte*>(v.iov_base) + cur_offset;
      v.iov_len -= cur_offset;
    }
    v.iov_len = std::min(v.iov_len, cap - req->bytes);
    req->iov.push_back(v);
    req->bytes += v.iov_len;
    last = i;
  }
  // Zero-copy only for requests carrying borrowed memory; a lone head is
  // small and copying it is cheaper than a notification.
  req->zero_copy = zero_copy && last >= f.head_entries;
  req->msg.msg_iov = req->iov.data();
  req->msg.msg_iovlen = req->iov.size();

  if (options.limiter && req->bytes > prepaid) {
    // Bytes acquired for a request that went out short are still paid for.
    options.limiter->acquire(req->bytes - prepaid);
    prepaid = req->bytes;
  }

  {
    std::lock_guard lock(mu);
    if (error || stopping) return;  // abort() came while the limiter held us
    in_flight = true;
  }
  auto sqe = ring.get_sqe();
  if (!sqe) {
    std::lock_guard lock(mu);
    in_flight = false;
    fail_locked(std::move(sqe.error()).context(fmt::format("{}: send", options.name)));
    return;
  }
  if (req->zero_copy) {
    io_uring_prep_sendmsg_zc(*sqe, socket.get(), &req->msg, kSendFlags);
    (*sqe)->ioprio |= IORING_SEND_ZC_REPORT_USAGE;
  } else {
    io_uring_prep_sendmsg(*sqe, socket.get(), &req->msg, kSendFlags);
  }
  const std::uint64_t tag = next_tag++;
  io_uring_sqe_set_data64(*sqe, tag);
  requests.emplace(tag, std::move(req));
  active = tag;
  cancel_sent = false;
  // On failure the SQE stays queued and goes in with the next submit (from
  // wait_and_handle), so the request stays registered.
  if (auto s = ring.submit(); !s) {
    fail_now(std::move(s.error()).context(fmt::format("{}: send", options.name)));
  }
}

void Sender::Impl::submit_cancel() {
  auto sqe = ring.get_sqe();
  if (!sqe) return;  // retried on the next turn of the loop
  io_uring_prep_cancel64(*sqe, active, 0);
  io_uring_sqe_set_data64(*sqe, kCancelTag);
  cancel_sent = true;
  if (auto s = ring.submit(); !s) spdlog::debug("{}: cancel: {}", options.name, s.error());
}

// Resets the connection (connect(AF_UNSPEC) is tcp_disconnect: RST, send
// queue purged), which releases the pages of zero-copy sends the peer never
// acknowledged so their notifications arrive.
void Sender::Impl::reset_connection() {
  if (requests.empty()) return;
  const linger abortive{.l_onoff = 1, .l_linger = 0};
  (void)::setsockopt(socket.get(), SOL_SOCKET, SO_LINGER, &abortive, sizeof abortive);
  sockaddr unspec{};
  unspec.sa_family = AF_UNSPEC;
  if (::connect(socket.get(), &unspec, sizeof unspec) != 0) {
    spdlog::debug("{}: resetting the connection: {}", options.name, sys_error("connect(AF_UNSPEC)"));
  }
}

// Waits for one CQE, then takes whatever else is ready. Returns false when
// the ring itself has failed and nothing more can be learned from it.
bool Sender::Impl::wait_and_handle(std::chrono::milliseconds timeout) {
  if (io_uring_sq_ready(ring.raw()) > 0) {
    if (auto s = ring.submit(); !s) spdlog::debug("{}: resubmit: {}", options.name, s.error());
  }
  auto c = ring.wait(timeout);
  if (!c) {
    const int err = c.error().sys_errno();
    if (err == ETIME || err == EINTR) return true;
    fail_now(std::move(c.error()).context(fmt::format("{}: send", options.name)));
    std::lock_guard lock(mu);
    in_flight = false;
    cv.notify_all();
    spdlog::error("{}: io_uring failed; abandoning {} requests", options.name, requests.size());
    return false;
  }
  handle(*c);
  io_uring_cqe* cqe = nullptr;
  while (io_uring_peek_cqe(ring.raw(), &cqe) == 0) {
    const Completion next{.user_data = cqe->user_data, .res = cqe->res, .flags = cqe->flags};
    io_uring_cqe_seen(ring.raw(), cqe);
    handle(next);
  }
  return true;
}

void Sender::Impl::handle(const Completion& c) {
  if (c.user_data == kWakeTag) {
    std::uint64_t count = 0;
    if (::read(wake_fd.get(), &count, sizeof count) < 0 && errno != EAGAIN) {
      spdlog::debug("{}: wake-up read: {}", options.name, sys_error("read(eventfd)"));
    }
    if (c.res < 0) {
      spdlog::warn("{}: wake-up poll failed: {}", options.name, sys_error("poll(eventfd)", -c.res));
      return;
    }
    if (auto s = arm_wake(); !s) spdlog::warn("{}: wake-up poll: {}", options.name, s.error());
    return;
  }
  if (c.user_data == kCancelTag) return;
  auto it = requests.find(c.user_data);
  if (it == requests.end()) return;
  Request& r = *it->second;
  if (c.flags & IORING_CQE_F_NOTIF) {
    on_notification(r, c.res);
  } else {
    on_result(r, c.res, c.flags);
  }
  if (r.completed && (!r.notif_expected || r.notif_seen)) requests.erase(it);
}

void Sender::Impl::on_result(Request& r, int res, std::uint32_t flags) {
  r.completed = true;
  r.notif_expected = (flags & IORING_CQE_F_MORE) != 0;
  active = 0;
  cancel_sent = false;

  std::lock_guard lock(mu);
  in_flight = false;
  cv.notify_all();
  if (res > 0) {
    const auto n = static_cast<std::size_t>(res);
    stats.bytes += n;
    ++(r.zero_copy ? stats.zc_requests : stats.plain_requests);
    unsent -= std::min(unsent, n);
    prepaid -= std::min(prepaid, n);
    if (current != r.frame) return;  // abandoned meanwhile
    std::size_t left = n;
    while (left > 0 && cur_index < current->iov.size()) {
      const std::size_t room = current->iov[cur_index].iov_len - cur_offset;
      if (left < room) {
        cur_offset += left;
        left = 0;
      } else {
        left -= room;
        ++cur_index;
        cur_offset = 0;
      }
    }
    if (cur_index == current->iov.size()) {
      ++stats.frames;
      current.reset();
    }
    return;
  }
  if (res == 0) {
    fail_locked(Error(fmt::format("{}: send: the socket took no data", options.name)));
    return;
  }
  const int err = -res;
  // Nothing of this request was sent, so the next request resends the very
  // same bytes with a plain sendmsg: no gap, no duplicate.
  if (r.zero_copy && zero_copy && !error) {
    if (err == EINVAL && stats.zc_requests == 0) {
      // Kernels before 6.2 reject IORING_SEND_ZC_REPORT_USAGE; without the
      // report we cannot tell whether zero-copy pays (on loopback and veth
      // it costs half the throughput). Once a request with the flag has
      // gone through, EINVAL means something else and fails the stream.
      switch_to_plain_locked(kNoteNoUsage);
      return;
    }
    if (err == EOPNOTSUPP) {
      switch_to_plain_locked(kNoteUnsupported);
      return;
    }
  }
  if (err == EINTR && !error && !stopping) return;  // resend
  fail_locked(Error(fmt::format("{}: send", options.name), err));
}

void Sender::Impl::on_notification(Request& r, int res) {
  r.notif_seen = true;
  if ((static_cast<std::uint32_t>(res) & IORING_NOTIF_USAGE_ZC_COPIED) == 0) return;
  std::lock_guard lock(mu);
  ++stats.zc_copied;
  switch_to_plain_locked(kNoteCopied);
}

Result<std::unique_ptr<Sender>> Sender::start(UniqueFd socket, SenderOptions options) {
  if (!socket) return fail("{}: no socket", options.name);
  if (auto s = set_blocking(socket.get()); !s) return std::unexpected(std::move(s.error()).context(options.name));
  // Room for a request, its cancel and the wake-up poll.
  auto ring = IoUring::create(std::max(options.ring_entries, 4u));
  if (!ring) return std::unexpected(std::move(ring.error()).context(options.name));
  UniqueFd wake(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!wake) return std::unexpected(sys_error("eventfd").context(options.name));

  bool zero_copy = false;
  const char* note = kNoteOff;
  if (options.zero_copy == ZeroCopy::kAuto) {
    std::unique_ptr<io_uring_probe, decltype(&io_uring_free_probe)> probe(io_uring_get_probe_ring(ring->raw()),
                                                                          &io_uring_free_probe);
    zero_copy = probe && io_uring_opcode_supported(probe.get(), IORING_OP_SENDMSG_ZC);
    note = zero_copy ? "" : kNoteNoOpcode;
  }

  auto impl = std::make_unique<Impl>(std::move(socket), std::move(options), std::move(*ring), std::move(wake));
  impl->zero_copy = zero_copy;
  impl->stats.zero_copy_active = zero_copy;
  impl->stats.zero_copy_note = note;
  impl->thread = std::thread([p = impl.get()] {
    name_this_thread("mig-sender");
    p->run();
  });
  return std::unique_ptr<Sender>(new Sender(std::move(impl)));
}

Sender::Sender(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Sender::~Sender() {
  {
    std::lock_guard lock(impl_->mu);
    impl_->stopping = true;
  }
  impl_->wake();
  impl_->thread.join();
}

Status Sender::send(std::vector<std::byte> head, std::vector<iovec> borrowed) {
  auto frame = std::make_shared<Frame>();
  frame->head = std::move(head);
  frame->iov.reserve(borrowed.size() + 1);
  if (!frame->head.empty()) {
    frame->iov.push_back({.iov_base = frame->head.data(), .iov_len = frame->head.size()});
    frame->head_entries = 1;
    frame->bytes = frame->head.size();
  }
  for (const iovec& r : borrowed) {
    if (r.iov_len == 0) continue;
    frame->iov.push_back(r);
    frame->bytes += r.iov_len;
  }

  Impl& s = *impl_;
  std::unique_lock lock(s.mu);
  // A frame larger than the limit still goes out, alone.
  s.cv.wait(lock, [&] {
    return s.error || s.unsent == 0 || s.unsent + frame->bytes <= s.options.max_queued_bytes;
  });
  if (s.error) return std::unexpected(*s.error);
  const bool was_empty = s.queue.empty();
  s.unsent += frame->bytes;
  s.queue.push_back(std::move(frame));
  s.idle = false;
  lock.unlock();
  // The worker only sleeps once the queue is empty, so waking it for the
  // first queued frame is enough.
  if (was_empty) s.wake();
  return {};
}

Status Sender::flush() {
  Impl& s = *impl_;
  std::unique_lock lock(s.mu);
  // After a failure there may be zero-copy notifications that never come
  // (data the peer does not take); the destructor deals with those.
  s.cv.wait(lock, [&] { return s.error ? !s.in_flight : s.idle; });
  if (s.error) return std::unexpected(*s.error);
  return {};
}

void Sender::abort(const std::string& why) {
  {
    std::lock_guard lock(impl_->mu);
    impl_->fail_locked(Error(fmt::format("{}: aborted: {}", impl_->options.name, why)));
  }
  // Wakes the peer, a local reader of fd(), and our own request in flight.
  ::shutdown(impl_->socket.get(), SHUT_RDWR);
  impl_->wake();
}

SenderStats Sender::stats() const {
  std::lock_guard lock(impl_->mu);
  return impl_->stats;
}

int Sender::fd() const { return impl_->socket.get(); }

}  // namespace ferry::transport

#pragma once
// The migration data path: one TCP connection per stream, each driven by its
// own io_uring instance on its own thread (Sender), and exact reads into
// caller memory (Receiver), so the destination receives page data straight
// into guest memory.
//
// Zero-copy: the Sender transmits borrowed memory (guest pages) with
// IORING_OP_SENDMSG_ZC and IORING_SEND_ZC_REPORT_USAGE. Every zero-copy send
// produces two CQEs: the result, then (IORING_CQE_F_NOTIF) the notification
// that the kernel no longer references the memory. Buffers are held until
// that notification. When a notification reports IORING_NOTIF_USAGE_ZC_COPIED
// (always the case on loopback and veth, see ../shared/design/environment.md),
// zero-copy is pure overhead and the stream switches to plain sends for the
// rest of its life. Kernels before 6.2 reject the usage-report flag with
// EINVAL; then the stream cannot know whether zero-copy pays and uses plain
// sends (stats say why).
#include <sys/uio.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "userspace/base/error.hh"
#include "userspace/base/unique_fd.hh"

namespace ferry::transport {

// A token bucket shared by every stream of a migration: the bandwidth cap.
// Thread-safe. A rate of 0 means unlimited. The bucket holds at most
// `burst` bytes (default: 50 ms worth of the rate, at least 256 KiB) so an
// idle stream cannot save up a large burst.
class RateLimiter {
 public:
  using Clock = std::function<std::chrono::steady_clock::time_point()>;
  using Sleep = std::function<void(std::chrono::nanoseconds)>;
  // clock/sleep are injectable for unit tests; defaults are steady_clock and
  // std::this_thread::sleep_for.
  explicit RateLimiter(double bytes_per_second, Clock clock = {}, Sleep sleep = {});
  // Blocks until `bytes` may go out (a request larger than the burst is
  // allowed and leaves the bucket in debt). Returns at once when unlimited.
  void acquire(std::uint64_t bytes);
  void set_rate(double bytes_per_second);
  double rate() const;

 private:
  mutable std::mutex mu_;
  double rate_ = 0;
  double tokens_ = 0;
  std::chrono::steady_clock::time_point last_{};
  Clock clock_;
  Sleep sleep_;
};

enum class ZeroCopy {
  kAuto,  // SENDMSG_ZC with usage reporting; plain sends once the kernel says it copied
  kOff,   // plain sends only
};

struct SenderOptions {
  ZeroCopy zero_copy = ZeroCopy::kAuto;
  RateLimiter* limiter = nullptr;  // shared by the streams of one migration; may be null
  // send() blocks while more than this many bytes are queued and unsent.
  std::size_t max_queued_bytes = 64u << 20;
  unsigned ring_entries = 64;
  std::string name = "stream";  // prefixes errors and logs: "stream 2: send: ..."
};

struct SenderStats {
  std::uint64_t bytes = 0;        // sent (completed by the kernel)
  std::uint64_t frames = 0;       // send() calls fully sent
  std::uint64_t zc_requests = 0;  // zero-copy send requests completed
  std::uint64_t zc_copied = 0;    // notifications that said the kernel copied anyway
  std::uint64_t plain_requests = 0;
  bool zero_copy_active = false;  // zero-copy currently in use
  std::string zero_copy_note;     // why not, when inactive: "kernel copied (loopback/veth)", ...
};

// One TCP connection's sending side: a thread with its own io_uring. Frames
// go out in send() order, each as its owned head then its borrowed ranges.
class Sender {
 public:
  // Takes a connected stream socket and starts the thread.
  static Result<std::unique_ptr<Sender>> start(UniqueFd socket, SenderOptions options);
  // Stops sending (what is still queued is abandoned), waits for every
  // outstanding zero-copy notification so no borrowed memory is still
  // referenced, joins the thread and closes the socket.
  ~Sender();
  Sender(const Sender&) = delete;
  Sender& operator=(const Sender&) = delete;

  // Queues one frame: `head` (header, descriptors; the Sender owns it until
  // the kernel is done with it), then `borrowed` ranges (guest pages), which
  // the caller keeps mapped until flush() returns or the Sender is
  // destroyed. Their contents may change meanwhile; what arrives is whatever
  // the kernel read. Blocks while more than max_queued_bytes are unsent.
  // The first failure is final: it and every later call return it, prefixed
  // with the stream's name ("stream 1: send: Connection reset by peer").
  Status send(std::vector<std::byte> head, std::vector<iovec> borrowed = {});
  // Waits until everything queued has been sent and every zero-copy
  // notification has arrived. Returns the stream's error, if any; once the
  // stream has failed it returns as soon as no request is in flight, since
  // notifications for data the peer never took may not come until the
  // destructor resets the connection (the kernel holds its own references
  // to those pages, so unmapping them is still safe).
  Status flush();
  // Fails the stream now ("aborted: <why>") and shuts the socket down in
  // both directions, waking a peer and any local reader. Pending and later
  // send()/flush() calls return that error.
  void abort(const std::string& why);

  SenderStats stats() const;
  // The socket, for reading the peer's replies on it (the Sender only
  // writes). Valid until the Sender is destroyed.
  int fd() const;

 private:
  struct Impl;
  explicit Sender(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Exact reads from a stream socket through io_uring (IORING_OP_RECVMSG with
// MSG_WAITALL, resubmitting the rest after a short read), into any memory:
// the destination reads page data straight into guest RAM.
class Receiver {
 public:
  // Borrows `fd`, which must outlive the Receiver.
  static Result<Receiver> create(int fd, std::string name = "stream", unsigned entries = 8);
  Receiver(Receiver&&) noexcept;
  Receiver& operator=(Receiver&&) noexcept;
  ~Receiver();

  // Fills the ranges completely, in order. Returns the byte count (their
  // total), or 0 when the peer closed the connection cleanly before the
  // first byte. Fails on a close part way ("stream 0: connection closed
  // after 100 of 4096 bytes"), a socket error, or when nothing arrives for
  // `idle_timeout` (0: wait forever); the timed-out request is cancelled.
  Result<std::size_t> read_exact(std::span<const iovec> ranges,
                                 std::chrono::milliseconds idle_timeout = std::chrono::milliseconds(0));
  Result<std::size_t> read_exact(std::span<std::byte> into,
                                 std::chrono::milliseconds idle_timeout = std::chrono::milliseconds(0));

  std::uint64_t bytes() const;  // total received

 private:
  struct Impl;
  explicit Receiver(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// TCP helpers for the migration: "HOST:PORT" parsing (IPv4, IPv6 in
// brackets, or a name), listening and connecting with TCP_NODELAY and
// generous socket buffers.
struct Endpoint {
  std::string host;
  std::uint16_t port = 0;
  std::string str() const;  // "host:port" ("[::1]:port" for IPv6)
};
Result<Endpoint> parse_endpoint(std::string_view text);  // port 0 allowed only when listening
// Binds and listens; port 0 picks a free port (listening_port() tells which).
Result<UniqueFd> listen_tcp(const Endpoint& where, int backlog = 16);
Result<std::uint16_t> listening_port(int fd);
Result<UniqueFd> connect_tcp(const Endpoint& to, std::chrono::milliseconds timeout);
// accept() with a timeout (0: forever); the accepted socket gets the same options.
Result<UniqueFd> accept_tcp(int listen_fd, std::chrono::milliseconds timeout);

}  // namespace ferry::transport

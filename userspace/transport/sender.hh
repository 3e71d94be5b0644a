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

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "userspace/base/error.hh"
#include "userspace/base/unique_fd.hh"
#include "userspace/transport/rate_limiter.hh"

namespace ferry::transport {

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

}  // namespace ferry::transport

#pragma once
// The receiving side of a stream: exact reads into any memory.
#include <sys/uio.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "userspace/base/error.hh"

namespace ferry::transport {

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

}  // namespace ferry::transport

#pragma once
// A move-only owner of one io_uring instance (the ring fd plus its mmapped
// SQ/CQ). The struct lives on the heap so its address stays stable across
// moves: liburing calls keep taking io_uring* from raw().
#include <liburing.h>

#include <chrono>
#include <cstdint>
#include <memory>

#include "userspace/base/error.hh"

namespace ferry::transport {

// A CQE copied out of the ring, so the slot can be released at once.
struct Completion {
  uint64_t user_data = 0;
  int32_t res = 0;
  uint32_t flags = 0;
};

class IoUring {
 public:
  // io_uring_queue_init(entries, flags). Errors carry io_uring_setup's errno.
  static Result<IoUring> create(unsigned entries, unsigned flags = 0);

  // A free SQE, or an error when the submission queue is full.
  Result<io_uring_sqe*> get_sqe();
  // Submits queued SQEs; returns how many the kernel consumed.
  Result<unsigned> submit();
  // Waits for the next CQE and marks it seen. A timeout is an error with
  // errno ETIME, so callers can tell "nothing came" from a failure.
  Result<Completion> wait(std::chrono::milliseconds timeout);

  // For liburing calls this class does not wrap. Null after a move.
  io_uring* raw() { return ring_.get(); }
  const io_uring* raw() const { return ring_.get(); }

  IoUring(IoUring&&) noexcept = default;
  IoUring& operator=(IoUring&&) noexcept = default;
  IoUring(const IoUring&) = delete;
  IoUring& operator=(const IoUring&) = delete;
  ~IoUring() = default;

 private:
  struct Exit {
    void operator()(io_uring* ring) const;
  };
  explicit IoUring(std::unique_ptr<io_uring, Exit> ring) : ring_(std::move(ring)) {}

  std::unique_ptr<io_uring, Exit> ring_;
};

}  // namespace ferry::transport

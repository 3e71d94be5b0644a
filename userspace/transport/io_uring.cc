#include "userspace/transport/io_uring.hh"

#include <cerrno>

namespace ferry::transport {

void IoUring::Exit::operator()(io_uring* ring) const {
  // queue_exit unmaps the rings and closes the fd. In-flight zero-copy sends
  // keep their pages pinned in the kernel; callers must still drain
  // notifications before freeing the buffers they sent from.
  io_uring_queue_exit(ring);
  delete ring;
}

Result<IoUring> IoUring::create(unsigned entries, unsigned flags) {
  auto ring = std::make_unique<io_uring>();
  // liburing returns -errno instead of setting errno.
  if (int ret = io_uring_queue_init(entries, ring.get(), flags); ret < 0) {
    return std::unexpected(sys_error(
        fmt::format("io_uring_setup(entries={}, flags={:#x})", entries, flags), -ret));
  }
  return IoUring(std::unique_ptr<io_uring, Exit>(ring.release()));
}

Result<io_uring_sqe*> IoUring::get_sqe() {
  if (!ring_) return fail("io_uring: ring is not set up");
  io_uring_sqe* sqe = io_uring_get_sqe(ring_.get());
  if (!sqe) return std::unexpected(Error("io_uring: submission queue is full", EBUSY));
  return sqe;
}

Result<unsigned> IoUring::submit() {
  if (!ring_) return fail("io_uring: ring is not set up");
  int ret = io_uring_submit(ring_.get());
  if (ret < 0) return std::unexpected(sys_error("io_uring_enter(submit)", -ret));
  return static_cast<unsigned>(ret);
}

Result<Completion> IoUring::wait(std::chrono::milliseconds timeout) {
  if (!ring_) return fail("io_uring: ring is not set up");
  auto secs = std::chrono::duration_cast<std::chrono::seconds>(timeout);
  __kernel_timespec ts{
      .tv_sec = secs.count(),
      .tv_nsec = std::chrono::duration_cast<std::chrono::nanoseconds>(timeout - secs).count(),
  };
  io_uring_cqe* cqe = nullptr;
  int ret = io_uring_wait_cqe_timeout(ring_.get(), &cqe, &ts);
  if (ret == -ETIME) {
    return std::unexpected(
        Error(fmt::format("io_uring: no completion within {} ms", timeout.count()), ETIME));
  }
  if (ret < 0) return std::unexpected(sys_error("io_uring_wait_cqe", -ret));
  Completion c{.user_data = cqe->user_data, .res = cqe->res, .flags = cqe->flags};
  io_uring_cqe_seen(ring_.get(), cqe);
  return c;
}

}  // namespace ferry::transport

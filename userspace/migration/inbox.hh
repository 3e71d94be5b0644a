#pragma once
// The source's inbox: frames from the destination on stream 0, read by
// their own thread so that an ABORT or a lost connection is noticed in the
// middle of a round. Internal to the source session.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>

#include "userspace/base/error.hh"
#include "userspace/migration/protocol.hh"

namespace ferry::migration {

class Inbox {
 public:
  // The destination sends a handful of frames per session; a peer that
  // floods more is broken or hostile, and must not grow this process (it
  // hosts the running VM) without bound.
  static constexpr std::size_t kMaxQueued = 16;
  void push(Frame f);
  void close(Error e);
  // The next frame, or the reason none will come; a timeout is an error.
  Result<Frame> wait(std::chrono::milliseconds timeout, const std::atomic<bool>& cancelled);
  // A problem reported so far without waiting: an ABORT or a closed stream.
  std::optional<Error> problem();
  // Only the destination's ABORT ("the destination aborted: why"), waiting
  // up to `within` for it, the stream's end or `cancelled`, whichever
  // comes first.
  std::optional<Error> abort_within(std::chrono::milliseconds within, const std::atomic<bool>& cancelled);
  void notify() { cv_.notify_all(); }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Frame> frames_;
  std::optional<Error> closed_;
  std::optional<Error> problem_locked() const;
  std::optional<Error> abort_locked() const;
};

// An unexpected frame as an error: an ABORT says why.
Error unexpected_frame(const Frame& f, std::string_view waiting_for);

}  // namespace ferry::migration

// The source's inbox (inbox.hh).
#include "userspace/migration/inbox.hh"

#include <fmt/format.h>

#include "userspace/migration/payloads.hh"

namespace ferry::migration {

using Clock = std::chrono::steady_clock;

void Inbox::push(Frame f) {
  std::lock_guard lock(mu_);
  if (frames_.size() >= kMaxQueued) {
    if (!closed_) closed_ = Error(fmt::format("the destination sent more than {} unanswered frames", kMaxQueued));
  } else {
    frames_.push_back(std::move(f));
  }
  cv_.notify_all();
}

void Inbox::close(Error e) {
  std::lock_guard lock(mu_);
  if (!closed_) closed_ = std::move(e);
  cv_.notify_all();
}

Result<Frame> Inbox::wait(std::chrono::milliseconds timeout, const std::atomic<bool>& cancelled) {
  std::unique_lock lock(mu_);
  const auto deadline = Clock::now() + timeout;
  for (;;) {
    if (!frames_.empty()) {
      Frame f = std::move(frames_.front());
      frames_.pop_front();
      return f;
    }
    if (closed_) return std::unexpected(*closed_);
    if (cancelled.load()) return fail("cancelled");
    if (cv_.wait_until(lock, std::min(deadline, Clock::now() + std::chrono::milliseconds(100))) ==
            std::cv_status::timeout &&
        Clock::now() >= deadline)
      return fail("no answer from the destination within {} ms", timeout.count());
  }
}

std::optional<Error> Inbox::problem() {
  std::lock_guard lock(mu_);
  return problem_locked();
}

std::optional<Error> Inbox::abort_within(std::chrono::milliseconds within, const std::atomic<bool>& cancelled) {
  std::unique_lock lock(mu_);
  cv_.wait_for(lock, within, [&] { return closed_ || cancelled.load() || abort_locked(); });
  return abort_locked();
}

std::optional<Error> Inbox::abort_locked() const {
  for (const auto& f : frames_)
    if (f.type == FrameType::kAbort) {
      auto a = decode_abort(f.payload);
      return Error(fmt::format("the destination aborted: {}", a ? a->reason : a.error().what()));
    }
  return std::nullopt;
}

std::optional<Error> Inbox::problem_locked() const {
  if (auto a = abort_locked()) return a;
  if (closed_) return closed_;
  return std::nullopt;
}

Error unexpected_frame(const Frame& f, std::string_view waiting_for) {
  if (f.type == FrameType::kAbort) {
    auto a = decode_abort(f.payload);
    return Error(fmt::format("the destination aborted: {}", a ? a->reason : a.error().what()));
  }
  return Error(fmt::format("expected {} from the destination, got {}", waiting_for, frame_type_name(f.type)));
}

}  // namespace ferry::migration

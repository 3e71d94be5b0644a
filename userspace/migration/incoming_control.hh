#pragma once
// The receiving process's handle on the session under way, for its control
// API and its signals while no VM runs yet: which phase the session is in,
// and the operator's one decision a destination may take alone. When the
// source is gone for good after READY (COMMIT lost, then the source process
// died), nothing can resume the source's copy, so committing forward here
// is the only way the VM survives: `ferry resolve --vm DEST --source-gone`.
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <utility>

#include "userspace/base/error.hh"
#include "userspace/migration/incoming.hh"

namespace ferry::migration {

class IncomingControl {
 public:
  struct View {
    IncomingPhase phase = IncomingPhase::kListening;
    std::uint64_t session = 0;
    std::string source;
  };
  View view() const {
    std::lock_guard lock(mu_);
    return view_;
  }

  // The operator's call: commit forward a VM held here. Waits for the
  // session to act on it (at most `timeout`); fails, changing nothing,
  // unless the session is holding.
  Status commit_forward(std::chrono::milliseconds timeout) {
    std::unique_lock lock(mu_);
    if (view_.phase != IncomingPhase::kHolding)
      return fail("nothing to commit: the incoming migration is {}, not holding (only a VM held after READY "
                  "with its source gone can be committed here)",
                  incoming_phase_name(view_.phase));
    commit_requested_ = true;
    cv_.notify_all();
    if (!cv_.wait_for(lock, timeout, [&] { return commit_result_.has_value(); }))
      return fail("the session did not act on the request within {} ms", timeout.count());
    auto r = std::move(*commit_result_);
    commit_result_.reset();
    return r;
  }

  // The session's side.
  void set_phase(IncomingPhase p) {
    std::lock_guard lock(mu_);
    view_.phase = p;
  }
  void set_session(std::uint64_t session, std::string source) {
    std::lock_guard lock(mu_);
    view_.session = session;
    view_.source = std::move(source);
  }
  // Whether the operator asked to commit forward (and clears the request).
  bool take_commit_request() {
    std::lock_guard lock(mu_);
    return std::exchange(commit_requested_, false);
  }
  void commit_done(Status result) {
    std::lock_guard lock(mu_);
    commit_result_ = std::move(result);
    cv_.notify_all();
  }

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  View view_;
  bool commit_requested_ = false;
  std::optional<Status> commit_result_;
};

}  // namespace ferry::migration

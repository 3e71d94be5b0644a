#pragma once
// The source session's insides (source.hh is its public face), shared by
// its files: source.cc (lifecycle, phase transitions, rollback, resolve),
// source_connect.cc (streams, HELLO, precheck), source_precopy.cc (the
// rounds, calibration), source_commit.cc (switchover and commit).
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "userspace/migration/inbox.hh"
#include "userspace/migration/kernel_view.hh"
#include "userspace/migration/migration_stream.hh"
#include "userspace/migration/policy.hh"
#include "userspace/migration/round_planner.hh"
#include "userspace/migration/source.hh"
#include "userspace/migration/status.hh"
#include "userspace/migration/vm.hh"
#include "userspace/transport/rate_limiter.hh"

namespace ferry::migration {

using Clock = std::chrono::steady_clock;
inline double ms_since(Clock::time_point t) { return Millis(Clock::now() - t).count(); }

// The session's figures and its one state: the status the API reports,
// the phase inside it, and the cancel request. Thread-safe: the session
// thread writes, status() and cancel() come from the VM's control thread.
class SourceContext {
 public:
  explicit SourceContext(MigrationStatus initial) : st_(std::move(initial)) {}

  // The one place the phase changes. Refuses a transition the commit rule
  // forbids (after COMMIT only migrated or outcome-unknown; after that only
  // what resolve decides) and says so; `also` updates the status in the
  // same step, under the same lock.
  Status enter(Phase to, const std::function<void(MigrationStatus&)>& also = {});
  // Enters kCommitting unless a cancel got there first (a cancel that
  // arrives with READY wins: nothing was committed yet).
  Status enter_committing();
  Phase phase() const;
  std::uint64_t session() const;  // the token connect() picked (0 before)
  template <class F>
  void update(F&& f) {
    std::lock_guard lock(mu_);
    f(st_);
    st_.elapsed_ms = ms_since(t0_);
  }
  MigrationStatus snapshot() const;
  Clock::time_point t0() const { return t0_; }

  // Cancelling: possible until COMMIT (false once committing or final).
  bool request_cancel(std::string why);
  bool cancelled() const { return cancelled_.load(); }
  const std::atomic<bool>& cancel_flag() const { return cancelled_; }
  std::string cancel_reason() const;

 private:
  mutable std::mutex mu_;  // guards st_ and cancel_reason_
  MigrationStatus st_;
  const Clock::time_point t0_ = Clock::now();
  std::atomic<bool> cancelled_{false};
  std::string cancel_reason_;
  Status enter_locked(Phase to, const std::function<void(MigrationStatus&)>& also);
};

struct SourceMigration::Impl {
  Impl(std::unique_ptr<SourceVm> vm, MigrateOptions options);

  std::unique_ptr<SourceVm> vm;
  MigrateOptions o;
  SourceContext ctx;
  std::function<void(Phase)> on_end;
  std::thread thread;
  std::thread reader;

  std::unique_ptr<transport::Dialer> own_dialer;  // when the options bring none
  std::unique_ptr<transport::RateLimiter> limiter;
  std::mutex streams_mu;  // connect() adds while cancel() may abort
  std::vector<std::unique_ptr<MigrationStream>> streams;
  // The control connection's TLS secret (none over plain TCP): set once by
  // connect() before anything can ask for a proof.
  std::optional<transport::Connection::Secret> session_secret;
  Inbox inbox;
  bool paused_by_us = false;
  std::unique_ptr<KernelView> kernel;  // eBPF measurements, or why there are none
  // Loading and verifying the eBPF programs takes ~1 s under emulation:
  // it runs while the streams connect and the destination prechecks.
  std::future<std::unique_ptr<KernelView>> kernel_loading;

  // Pre-copy's outcome, for the switchover.
  struct Precopy {
    RoundPlanner planner;
    Decision last_decision;
  };

  // Set when migrate() and any rollback are over; watch_deadline waits on it.
  std::mutex end_mu;
  std::condition_variable end_cv;
  bool ended = false;

  void run();
  Status migrate();
  void cancel(std::string why);
  void watch_deadline();
  // source_connect.cc
  Status connect();
  Status precheck();
  Status check_peer();
  Result<Frame> wait_reply(FrameType type, std::chrono::milliseconds timeout);
  // source_precopy.cc
  Result<Precopy> precopy(double connect_ms, double precheck_ms);
  // Takes the eBPF view once its load has finished (never waits); true
  // when it was taken now.
  bool adopt_kernel_view();
  Result<RoundFigures> send_round(std::uint32_t round, const RoundPlanner::PerStream& per_stream,
                                  RoundPlanner& planner);
  Result<RoundSample> sample_round(std::uint32_t round, const RoundFigures& fig, const RoundPlanner::Harvest& harvest,
                                   const Decision& last_decision);
  static void record_decision(RoundFigures& fig, const RoundSample& sample, const Decision& d,
                              const std::vector<double>& throttle, std::uint64_t withheld);
  Status calibrate(RoundSample& sample);
  void collect_transport_figures();
  // source_commit.cc
  Status switchover_and_commit(Precopy& pre);
  void roll_back(const Error& failure);

  SwitchCostEstimate switch_costs;  // the migration thread's
  double calibration_pauses_ms = 0;  // every calibration pause: the guest saw them all
  double digest_ms = 0;  // predicted --verify digest time, part of switch_costs.ms()
  std::uint64_t calibrated_state_bytes = 0;  // the state image at the last calibration pause
  std::vector<std::uint64_t> vcpu_dirty_last;
  // The digest has every core: the guest is paused while it runs.
  static unsigned digest_threads() { return std::max(1u, std::thread::hardware_concurrency()); }
  // Bytes the kernel took from every stream so far, live (the status's
  // figure moves only when a round ends).
  std::uint64_t bytes_on_the_wire() {
    std::lock_guard lock(streams_mu);
    std::uint64_t n = 0;
    for (const auto& s : streams)
      if (s) n += s->sender().stats().bytes;
    return n;
  }
  void abort_transport(const std::string& why) {
    std::lock_guard lock(streams_mu);
    for (auto& s : streams) s->abort(why);
  }
};

}  // namespace ferry::migration

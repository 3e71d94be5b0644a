// The source session's lifecycle: start, the phase transitions, rollback,
// cancel and resolve (source_session.hh lists where the rest lives).
#include "userspace/migration/source.hh"

#include "userspace/migration/session_proof.hh"

#include <spdlog/spdlog.h>

#include "userspace/base/thread_name.hh"
#include "userspace/migration/kvm_vm.hh"
#include "userspace/migration/source_session.hh"
#include "userspace/transport/connection.hh"

namespace ferry::migration {

std::string_view phase_name(Phase p) {
  switch (p) {
    case Phase::kConnecting: return "connecting";
    case Phase::kPrecheck: return "precheck";
    case Phase::kPrecopy: return "precopy";
    case Phase::kSwitchover: return "switchover";
    case Phase::kCommitting: return "committing";
    case Phase::kMigrated: return "migrated";
    case Phase::kFailed: return "failed";
    case Phase::kCancelled: return "cancelled";
    case Phase::kOutcomeUnknown: return "outcome-unknown";
  }
  return "?";
}

bool phase_final(Phase p) {
  return p == Phase::kMigrated || p == Phase::kFailed || p == Phase::kCancelled || p == Phase::kOutcomeUnknown;
}

// The commit rule as a table: forward one step at a time until COMMIT;
// before COMMIT any phase may fail or be cancelled (the VM resumes here);
// after COMMIT only the destination's answer (or its absence) decides;
// outcome-unknown ends only by resolve.
bool phase_transition_allowed(Phase from, Phase to) {
  using enum Phase;
  switch (from) {
    case kConnecting: return to == kPrecheck || to == kFailed || to == kCancelled;
    case kPrecheck: return to == kPrecopy || to == kFailed || to == kCancelled;
    case kPrecopy: return to == kSwitchover || to == kFailed || to == kCancelled;
    case kSwitchover: return to == kCommitting || to == kFailed || to == kCancelled;
    case kCommitting: return to == kMigrated || to == kOutcomeUnknown;
    case kOutcomeUnknown: return to == kMigrated || to == kFailed;
    case kMigrated:
    case kFailed:
    case kCancelled: return false;
  }
  return false;
}

Status SourceContext::enter(Phase to, const std::function<void(MigrationStatus&)>& also) {
  std::lock_guard lock(mu_);
  return enter_locked(to, also);
}

Status SourceContext::enter_committing() {
  std::lock_guard lock(mu_);
  if (cancelled_.load()) return fail("{}", cancel_reason_);
  return enter_locked(Phase::kCommitting, {});
}

Status SourceContext::enter_locked(Phase to, const std::function<void(MigrationStatus&)>& also) {
  if (!phase_transition_allowed(st_.phase, to)) {
    spdlog::error("migration: refused phase change {} -> {}", phase_name(st_.phase), phase_name(to));
    return fail("migration: the phase cannot go from {} to {}", phase_name(st_.phase), phase_name(to));
  }
  st_.phase = to;
  if (also) also(st_);
  st_.elapsed_ms = ms_since(t0_);
  return {};
}

std::uint64_t SourceContext::session() const {
  std::lock_guard lock(mu_);
  return st_.session;
}

Phase SourceContext::phase() const {
  std::lock_guard lock(mu_);
  return st_.phase;
}

MigrationStatus SourceContext::snapshot() const {
  std::lock_guard lock(mu_);
  auto s = st_;
  if (!phase_final(s.phase)) s.elapsed_ms = ms_since(t0_);
  return s;
}

bool SourceContext::request_cancel(std::string why) {
  std::lock_guard lock(mu_);
  if (phase_final(st_.phase) || st_.phase == Phase::kCommitting) return false;
  cancel_reason_ = std::move(why);
  cancelled_ = true;
  return true;
}

std::string SourceContext::cancel_reason() const {
  std::lock_guard lock(mu_);
  return cancel_reason_;
}

namespace {
MigrationStatus initial_status(const SourceVm& vm, const MigrateOptions& o) {
  MigrationStatus st;
  st.to = o.to.str();
  st.security_mode = std::string(transport::security_mode_name(o.security.kind));
  st.security_path = o.security.path;
  st.streams = o.streams;
  st.max_bandwidth = o.max_bandwidth;
  st.downtime_limit_ms = o.downtime_limit.count();
  st.memory_bytes = vm.memory_bytes();
  return st;
}
}  // namespace

SourceMigration::Impl::Impl(std::unique_ptr<SourceVm> v, MigrateOptions options)
    : vm(std::move(v)), o(std::move(options)), ctx(initial_status(*vm, o)) {}

Status SourceMigration::Impl::migrate() {
  auto step = Clock::now();
  auto lap = [&] {  // ms since the previous lap
    const auto now = Clock::now();
    return std::chrono::duration<double, std::milli>(now - std::exchange(step, now)).count();
  };
  if (auto ok = connect(); !ok) return ok;
  const double connect_ms = lap();
  if (auto ok = precheck(); !ok) return ok;
  const double precheck_ms = lap();
  auto pre = precopy(connect_ms, precheck_ms);
  if (!pre) return std::unexpected(pre.error());
  return switchover_and_commit(*pre);
}

void SourceMigration::Impl::roll_back(const Error& failure) {
  // After COMMIT nothing rolls back: the destination may be running the VM.
  // No path gets here with COMMIT sent; should one ever, the operator can
  // still settle it with `ferry resolve`.
  if (const Phase p = ctx.phase(); p == Phase::kCommitting || p == Phase::kOutcomeUnknown || p == Phase::kMigrated) {
    spdlog::error("migration: {} after COMMIT; the VM stays as it is ({})", failure.what(), phase_name(p));
    if (p == Phase::kCommitting)
      (void)ctx.enter(Phase::kOutcomeUnknown, [&](MigrationStatus& s) {
        s.error = fmt::format("COMMIT sent, then: {}", failure.what());
      });
    return;
  }
  // The guest first: no COMMIT was sent, so it is ours, and a stalled
  // connection must not keep it paused. Pages still in flight from guest
  // memory are harmless (pre-copy sends from running guests anyway).
  vm->set_throttle(std::vector<double>(vm->vcpu_count(), 0.0));
  if (auto ok = vm->stop_dirty_tracking(); !ok) spdlog::warn("migration: {}", ok.error());
  if (paused_by_us)
    if (auto ok = vm->resume(); !ok) spdlog::error("migration: resuming the VM after a failed migration: {}", ok.error());
  paused_by_us = false;
  // Then why, with the guest running again. A cancel may surface as
  // whatever it broke (a cut connection): report the cancel, which is what
  // happened. A send that failed because the destination gave up says
  // less than the ABORT it sent first, which the reader may still be
  // taking in: wait for it briefly (the stream's end or a cancel ends the
  // wait at once).
  Error why = failure;
  if (!ctx.cancelled() && reader.joinable())
    if (auto a = inbox.abort_within(std::chrono::milliseconds(500), ctx.cancel_flag())) why = *a;
  const bool cancelled_now = ctx.cancelled();
  if (cancelled_now) why = Error(ctx.cancel_reason());
  (void)ctx.enter(cancelled_now ? Phase::kCancelled : Phase::kFailed,
                  [&](MigrationStatus& s) { s.error = why.what(); });
  // Then tell the destination, best effort (it drops what it received;
  // TCP_USER_TIMEOUT bounds a flush into a dead peer).
  if (!streams.empty() && streams[0]) (void)streams[0]->send_now(FrameType::kAbort, Abort{why.what().substr(0, kMaxReason)});
  abort_transport(why.what());
  spdlog::warn("migration {}: {}; the VM keeps running here", cancelled_now ? "cancelled" : "failed", why.what());
}

// Cancels before COMMIT: the flag first (every wait checks it), then,
// since a worker blocked on a stalled peer does not see the flag, a moment
// for the migration to stop cleanly (and tell the destination why), then
// the connections are cut.
void SourceMigration::Impl::cancel(std::string why) {
  if (!ctx.request_cancel(std::move(why))) return;
  inbox.notify();
  for (int i = 0; i < 20 && !phase_final(ctx.phase()); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  const Phase p = ctx.phase();
  if (!phase_final(p) && p != Phase::kCommitting) abort_transport("cancelled");
}

// The policy acts on --timeout when a round ends. A round that never ends
// (a peer that keeps its connection open but stops reading) would hold the
// migration, and the guest's throttle, forever. From timeout + grace on,
// this thread looks once per grace period: a migration still before COMMIT
// whose streams moved no byte in that time is stuck, and is cancelled
// (cancel refuses after COMMIT, so the commit rule is untouched). One that
// still moves bytes (a long round on a slow link, a forced switchover's
// final round) is left to finish.
void SourceMigration::Impl::watch_deadline() {
  const auto grace = std::max<std::chrono::milliseconds>(o.timeout_grace, o.timeout / 10);
  auto next = ctx.t0() + o.timeout + grace;
  std::uint64_t last = bytes_on_the_wire();
  for (;;) {
    {
      std::unique_lock lock(end_mu);
      if (end_cv.wait_until(lock, next, [&] { return ended; })) return;
    }
    const std::uint64_t now = bytes_on_the_wire();
    const Phase p = ctx.phase();
    if (phase_final(p) || p == Phase::kCommitting) return;
    if (now == last) {
      const auto why = fmt::format(
          "timeout: still in {} after the {} s --timeout, and no byte went out in the last {:.1f} s (the policy "
          "acts when a round ends, and none did: is the destination taking data?); cancelled",
          phase_name(p), o.timeout.count(), grace.count() / 1000.0);
      spdlog::error("migration: {}", why);
      cancel(why);
      return;
    }
    last = now;
    next += grace;
  }
}

void SourceMigration::Impl::run() {
  std::thread watchdog([this] {
    name_this_thread("mig-deadline");
    watch_deadline();
  });
  if (auto ok = migrate(); !ok) roll_back(ok.error());
  {
    std::lock_guard lock(end_mu);
    ended = true;
  }
  end_cv.notify_all();
  watchdog.join();
  collect_transport_figures();
  // Detach the eBPF programs now: a VM that stays here must not go on
  // paying for tracepoints (and locked map memory) nobody reads.
  kernel.reset();
  const auto throttled = vm->throttled_time();
  ctx.update([&](MigrationStatus& s) {
    s.throttled_ms.clear();
    for (auto t : throttled) s.throttled_ms.push_back(Millis(t).count());
  });
  const Phase p = ctx.phase();
  if (p != Phase::kOutcomeUnknown) {
    // Everything is settled: release the connections (the reader ends on
    // the closed socket).
    abort_transport("migration ended");
    if (reader.joinable()) reader.join();
  }
  if (on_end) on_end(p);
  // A load still running (a migration shorter than it) ends here, on this
  // thread, not in whoever destroys the migration; the view it yields is
  // dropped at once, so its tracepoints do not stay attached to a VM that
  // is no longer migrating.
  if (kernel_loading.valid()) (void)kernel_loading.get();
}

std::unique_ptr<SourceMigration> SourceMigration::start(kvm::Machine& machine, MigrateOptions options,
                                                        std::function<void(Phase)> on_end) {
  return start(std::make_unique<KvmSourceVm>(machine), std::move(options), std::move(on_end));
}

std::unique_ptr<SourceMigration> SourceMigration::start(std::unique_ptr<SourceVm> vm, MigrateOptions options,
                                                        std::function<void(Phase)> on_end) {
  auto impl = std::make_unique<Impl>(std::move(vm), std::move(options));
  impl->on_end = std::move(on_end);
  auto* p = impl.get();
  p->thread = std::thread([p] {
    name_this_thread("migration");
    p->run();
  });
  return std::unique_ptr<SourceMigration>(new SourceMigration(std::move(impl)));
}

SourceMigration::SourceMigration(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

SourceMigration::~SourceMigration() {
  cancel("the VM process is ending");
  if (impl_->thread.joinable()) impl_->thread.join();
  impl_->abort_transport("the VM process is ending");
  if (impl_->reader.joinable()) impl_->reader.join();
}

MigrationStatus SourceMigration::status() const { return impl_->ctx.snapshot(); }

Phase SourceMigration::phase() const { return impl_->ctx.phase(); }

void SourceMigration::cancel(std::string why) { impl_->cancel(std::move(why)); }

Result<transport::Connection::Secret> SourceMigration::session_proof(const transport::Connection::Secret& binding) const {
  // Asked for only once the outcome is unknown: connect() set it long before.
  if (!impl_->session_secret) return fail("resolve-proof: the migration ran over plain TCP: there is nothing to prove");
  return migration::session_proof(*impl_->session_secret, binding);
}

Status SourceMigration::resolve(bool migrated) {
  if (const Phase p = phase(); p != Phase::kOutcomeUnknown)
    return fail("resolve: the migration is {}, not outcome-unknown", phase_name(p));
  auto& vm = *impl_->vm;
  if (migrated) {
    (void)vm.stop(fmt::format("migrated to {} (resolved)", impl_->o.to.str()));
    if (auto ok = impl_->ctx.enter(Phase::kMigrated,
                                   [](MigrationStatus& s) { s.error = "resolved: the destination runs the VM"; });
        !ok)
      return ok;
  } else {
    vm.set_throttle(std::vector<double>(vm.vcpu_count(), 0.0));
    (void)vm.stop_dirty_tracking();
    if (auto ok = vm.resume(); !ok) return ok;
    if (auto ok = impl_->ctx.enter(Phase::kFailed, [](MigrationStatus& s) {
          s.error = "resolved: the destination did not run the VM; resumed here";
        });
        !ok)
      return ok;
  }
  impl_->abort_transport("resolved");
  if (impl_->on_end) impl_->on_end(impl_->ctx.phase());
  return {};
}

}  // namespace ferry::migration

#include "userspace/control/vm_service.hh"

#include <signal.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "userspace/base/hex.hh"
#include "userspace/control/replies.hh"
#include "userspace/migration/dirty_rate.hh"

namespace ferry::control {
namespace {

using nlohmann::json;

constexpr auto kExitAfterMigration = std::chrono::seconds(10);

void drain(int fd) {
  std::uint64_t v;
  [[maybe_unused]] const ssize_t n = ::read(fd, &v, sizeof v);
}

}  // namespace

Result<UniqueFd> take_signals() {
  ::signal(SIGPIPE, SIG_IGN);
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGHUP);
  ::pthread_sigmask(SIG_BLOCK, &set, nullptr);
  UniqueFd fd(::signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK));
  if (!fd) return fail_sys("signalfd");
  return fd;
}

VmService::VmService(kvm::Machine& m, ApiServer& api, int stopped_fd, int signal_fd)
    : m_(m), api_(api), stopped_fd_(stopped_fd), signal_fd_(signal_fd),
      mig_fd_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {}

VmService::~VmService() {
  end_now();
  if (exit_timer_.joinable()) exit_timer_.join();
}

bool VmService::migration_active() const { return mig_ && !migration::phase_final(mig_->phase()); }
bool VmService::outcome_unknown() const { return mig_ && mig_->phase() == migration::Phase::kOutcomeUnknown; }

void VmService::end_now() {
  std::lock_guard lock(exit_mu_);
  exit_now_ = true;
  exit_cv_.notify_all();
}

// On the API thread: the migration changed phase. A migrated VM's process
// ends once a client fetched the final report, or after a grace period.
void VmService::on_migration_phase() {
  drain(mig_fd_.get());
  if (mig_ && !quit_pending_.empty() && migration::phase_final(mig_->phase())) {
    if (mig_->phase() == migration::Phase::kOutcomeUnknown) {
      spdlog::warn("not quitting ({}): the migration's outcome is unknown and this may be the only copy of the VM; "
                   "run `ferry resolve`, then quit again",
                   quit_pending_);
      quit_pending_.clear();
    } else if (mig_->phase() != migration::Phase::kMigrated) {
      quit_reason_ = std::exchange(quit_pending_, {});
      api_.stop();
      return;
    }
  }
  if (!mig_ || mig_->phase() != migration::Phase::kMigrated || migrated_) return;
  migrated_ = true;
  quit_reason_ = fmt::format("migrated to {}", mig_->status().to);
  exit_timer_ = std::thread([this] {
    std::unique_lock lock(exit_mu_);
    if (!exit_cv_.wait_for(lock, kExitAfterMigration, [this] { return exit_now_; })) api_.stop();
  });
}

Result<json> VmService::execute(const Request& request) {
  const std::string_view cmd = command_name(request);
  // While a migration runs or waits for a resolution, the VM belongs to it.
  auto owned = [&]() -> Status {
    if (!migration_active() && !outcome_unknown()) return {};
    return fail("{}: {}", cmd,
                outcome_unknown() ? "the migration's outcome is unknown: resuming could run the VM twice. "
                                    "Run `ferry resolve --vm SOCKET`"
                                  : "a migration is running (cancel it first)");
  };
  return std::visit(
      [&](const auto& r) -> Result<json> {
        using R = std::decay_t<decltype(r)>;
        if constexpr (std::is_same_v<R, StatusRequest>) {
          auto j = status_json(m_.status());
          // The summary only: rounds are paged through `migration`.
          if (mig_) {
            const auto st = mig_->status();
            j["migration"] = migration::to_json(st, st.rounds.size(), 0);
          }
          return j;
        } else if constexpr (std::is_same_v<R, MigrateRequest>) {
          if (migration_active()) return fail("migrate: a migration is already running");
          if (outcome_unknown()) return fail("migrate: the last migration's outcome is unknown; run `ferry resolve` first");
          if (m_.status().state != kvm::RunState::kRunning) return fail("migrate: the VM must be running");
          mig_.reset();
          const int efd = mig_fd_.get();
          mig_ = migration::SourceMigration::start(m_, r.options, [efd](migration::Phase) {
            const std::uint64_t one = 1;
            [[maybe_unused]] const ssize_t n = ::write(efd, &one, sizeof one);
          });
          return json{{"migration", "started"}, {"to", r.options.to.str()}};
        } else if constexpr (std::is_same_v<R, DirtyRateRequest>) {
          if (migration_active() || outcome_unknown()) return fail("dirty-rate: a migration owns dirty logging now");
          auto d = migration::measure_dirty_rate(m_, r.options);
          if (!d) return std::unexpected(d.error());
          return dirty_rate_json(*d, r.options.harvest);
        } else if constexpr (std::is_same_v<R, MigrationRequest>) {
          if (!mig_) return fail("migration: no migration has been started");
          auto st = mig_->status();
          if (st.phase == migration::Phase::kMigrated && r.since_round + migration::kRoundsPerAnswer >= st.rounds.size()) {
            // The final report's last rounds have been fetched: the process can end.
            end_now();
            migrated_ = true;
            quit_reason_ = fmt::format("migrated to {}", st.to);
            api_.stop();
          }
          return migration::to_json(st, r.since_round, migration::kRoundsPerAnswer);
        } else if constexpr (std::is_same_v<R, CancelRequest>) {
          if (!migration_active()) return fail("cancel: no migration is running");
          if (mig_->phase() == migration::Phase::kCommitting)
            return fail("cancel: COMMIT was already sent; the migration can no longer be cancelled");
          mig_->cancel(r.reason);
          return json{{"migration", "cancelling"}};
        } else if constexpr (std::is_same_v<R, ResolveRequest>) {
          if (!outcome_unknown()) return fail("resolve: no migration is waiting for a resolution");
          if (auto ok = mig_->resolve(r.migrated); !ok) return std::unexpected(ok.error());
          return json{{"resolved", r.migrated ? "migrated" : "resumed"}};
        } else if constexpr (std::is_same_v<R, ResolveProofRequest>) {
          // Only while the outcome is unknown: the one time a resolver asks.
          if (!outcome_unknown()) return fail("resolve-proof: no migration is waiting for a resolution");
          auto p = mig_->session_proof(r.binding);
          if (!p) return std::unexpected(p.error());
          return json{{"proof", to_hex(*p)}};
        } else if constexpr (std::is_same_v<R, PauseRequest>) {
          if (auto ok = owned(); !ok) return std::unexpected(ok.error());
          if (auto ok = m_.pause(); !ok) return std::unexpected(ok.error());
          return json{{"state", "paused"}};
        } else if constexpr (std::is_same_v<R, ResumeRequest>) {
          if (auto ok = owned(); !ok) return std::unexpected(ok.error());
          if (auto ok = m_.resume(); !ok) return std::unexpected(ok.error());
          return json{{"state", "running"}};
        } else if constexpr (std::is_same_v<R, SnapshotRequest>) {
          if (auto ok = owned(); !ok) return std::unexpected(ok.error());
          auto f = m_.snapshot(r.path);
          if (!f) return std::unexpected(f.error());
          spdlog::info("snapshot written to {} ({} MiB, vCPUs paused {:.1f} ms)", r.path, f->file.file_bytes >> 20,
                       std::chrono::duration<double, std::milli>(f->paused_for).count());
          return snapshot_json(*f, r.path);
        } else if constexpr (std::is_same_v<R, ConsoleRequest>) {
          m_.console_input(r.input);
          return json{{"bytes", r.input.size()}};
        } else if constexpr (std::is_same_v<R, MemoryReadRequest>) {
          // Guest physical memory as the VMM sees it (kernel-level diagnostics).
          std::vector<std::byte> bytes(r.len);
          if (auto ok = m_.read_guest(r.gpa, bytes); !ok) return std::unexpected(ok.error());
          return json{{"gpa", r.gpa}, {"len", bytes.size()}, {"hex", to_hex(bytes)}};
        } else if constexpr (std::is_same_v<R, MemoryWriteRequest>) {
          // Marked for dirty tracking like a device's DMA, so a migration in
          // pre-copy carries it; a paused VM refuses it.
          if (auto ok = m_.write_guest(r.gpa, r.bytes); !ok) return std::unexpected(ok.error());
          return json{{"gpa", r.gpa}, {"bytes", r.bytes.size()}};
        } else {
          static_assert(std::is_same_v<R, QuitRequest>);
          return quit("quit through the API");
        }
      },
      request);
}

Result<json> VmService::quit(std::string reason) {
  if (outcome_unknown() || (mig_ && mig_->phase() == migration::Phase::kCommitting))
    return fail("quit: the migration's outcome is unknown: this may be the only copy of the VM. "
                "Run `ferry resolve --vm SOCKET` first");
  if (migration_active()) {
    // Racing the switchover: the migration may send COMMIT before the
    // cancel reaches it. Ending now would drop the VM here while the
    // destination may lack COMMIT; wait for the outcome instead.
    quit_pending_ = std::move(reason);
    mig_->cancel(fmt::format("the VM is quitting ({})", quit_pending_));
    return json{{"state", "stopping"}, {"after", "the migration settles"}};
  }
  quit_reason_ = std::move(reason);
  api_.stop();
  return json{{"state", "stopping"}};
}

VmService::Outcome VmService::serve() {
  api_.watch(mig_fd_.get(), [this] { on_migration_phase(); });
  api_.watch(stopped_fd_, [this] {
    drain(stopped_fd_);
    api_.stop();
  });
  api_.watch(signal_fd_, [this] {
    signalfd_siginfo si{};
    [[maybe_unused]] const ssize_t n = ::read(signal_fd_, &si, sizeof si);
    // Ending with the outcome unknown could drop the only copy of the VM (a
    // destination that never got COMMIT can only discard its own).
    if (auto q = quit(fmt::format("signal {}", ::strsignal(static_cast<int>(si.ssi_signo)))); !q)
      spdlog::warn("ignoring signal {}: a migration's outcome is unknown; run `ferry resolve` (SIGKILL still works)",
                   ::strsignal(static_cast<int>(si.ssi_signo)));
  });
  Outcome out;
  out.served = api_.serve([this](const std::string& cmd, const json& req) -> Result<json> {
    auto r = parse_request(cmd, req);
    if (!r) return std::unexpected(r.error());
    return execute(*r);
  });
  if (!out.served) spdlog::error("control API: {}", out.served.error());
  end_now();
  if (exit_timer_.joinable()) exit_timer_.join();
  if (mig_) {
    if (migration_active()) mig_->cancel("the VM process is ending");
    if (migrated_) out.migrated = mig_->status();
    out.outcome_unknown = outcome_unknown();
  }
  if (out.outcome_unknown)
    spdlog::warn("ending while a migration's outcome is unknown: the VM here is dropped (the destination may run it)");
  mig_.reset();  // before the machine stops: the migration uses it
  out.quit_reason = quit_reason_;
  return out;
}

}  // namespace ferry::control

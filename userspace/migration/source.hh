#pragma once
// The source side of a live migration, run inside the VM's own `ferry`
// process (it owns guest memory): handshake and prechecks, iterative
// pre-copy over N io_uring streams with the switchover policy deciding
// after each round, then switchover and the commit protocol.
//
// The commit rule (docs/protocol.md): until READY, any failure (connection
// loss, destination crash or ABORT, cancel, timeout) stops dirty tracking
// and throttling and resumes the VM if it was paused, as if nothing had
// happened. Once COMMIT is sent the VM never resumes by itself: without
// CONFIRMED it stays paused in kOutcomeUnknown until resolve().
#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>

#include "userspace/base/error.hh"
#include "kvm/machine.hh"
#include "userspace/migration/policy.hh"
#include "userspace/migration/status.hh"
#include "userspace/transport/connection.hh"
#include "userspace/transport/endpoint.hh"
#include "userspace/transport/sender.hh"
#include "userspace/transport/tls.hh"

namespace ferry::migration {

struct MigrateOptions {
  transport::Endpoint to;
  // How to secure the connections (TLS or, when asked, plain TCP).
  transport::Security security;
  Millis downtime_limit{300};
  double max_bandwidth = 0;  // bytes/s; 0: no cap
  std::uint32_t streams = 1;
  std::chrono::seconds timeout{600};
  TimeoutAction on_timeout = TimeoutAction::kCancel;
  // The policy acts on the timeout when a round ends; a migration still
  // before COMMIT this long (or a tenth of the timeout, if more) after it,
  // with no round ended, is cancelled (a peer that stopped reading).
  std::chrono::milliseconds timeout_grace{30000};
  bool verify = false;
  transport::ZeroCopy zero_copy = transport::ZeroCopy::kAuto;
  std::chrono::milliseconds connect_timeout{10000};
  // No byte from the destination for this long while waiting for it: gone.
  std::chrono::milliseconds reply_timeout{60000};
  std::chrono::milliseconds confirm_timeout{10000};
  // The switchover rule, and whether the adaptive one may use eBPF (off:
  // it uses the engine's own counters, as when eBPF is unavailable).
  PolicyKind policy = PolicyKind::kAdaptive;
  bool use_ebpf = true;
  // How to reach `to`; null: the transport its scheme names. Borrowed: it
  // must outlive the migration (the sessions' tests pass an in-process link).
  transport::Dialer* dialer = nullptr;
};

class SourceVm;  // vm.hh: what the engine needs from the VM

class SourceMigration {
 public:
  // Starts the migration thread. `on_end` runs on it when the migration
  // reaches a final phase (migrated, failed, cancelled, outcome unknown).
  static std::unique_ptr<SourceMigration> start(kvm::Machine& machine, MigrateOptions options,
                                                std::function<void(Phase)> on_end);
  static std::unique_ptr<SourceMigration> start(std::unique_ptr<SourceVm> vm, MigrateOptions options,
                                                std::function<void(Phase)> on_end);
  ~SourceMigration();  // cancels if still running, joins

  MigrationStatus status() const;
  Phase phase() const;
  // Asks to stop before READY; after COMMIT it has no effect (the rule).
  void cancel(std::string why = "cancelled by request");
  // For kOutcomeUnknown only, after the operator asked the destination
  // (`ferry resolve`): migrated=true stops the source VM for good,
  // false resumes it.
  Status resolve(bool migrated);
  // The resolver's proof for a connection with secret `binding`
  // (session_proof.hh); fails when the migration ran over plain TCP.
  Result<transport::Connection::Secret> session_proof(const transport::Connection::Secret& binding) const;

  struct Impl;

 private:
  explicit SourceMigration(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace ferry::migration

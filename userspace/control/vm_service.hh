#pragma once
// The VM service: what one `ferry run`, `restore` or `receive` process
// does once its VM exists. It owns the VM's outgoing migration, executes
// the control API's typed requests against the machine, enforces what may
// run while a migration owns the VM, reacts to SIGINT/SIGTERM/SIGHUP and to
// the VM stopping by itself, and decides when the process ends (a migrated
// VM's process ends once its final report was fetched, or 10 s after). The
// CLI only builds the machine and prints the outcome.
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

#include "kvm/machine.hh"
#include "userspace/base/error.hh"
#include "userspace/base/unique_fd.hh"
#include "userspace/control/api.hh"
#include "userspace/control/requests.hh"
#include "userspace/migration/source.hh"

namespace ferry::control {

// Blocks SIGINT, SIGTERM and SIGHUP in the calling thread (and so in every
// thread created after, the vCPUs included) and returns a signalfd for
// them; SIGPIPE is ignored (a console piped into `head` must not kill the
// VM). Call before the machine exists.
Result<UniqueFd> take_signals();

class VmService {
 public:
  struct Outcome {
    Status served;                 // the API loop's own failure, if any
    std::string quit_reason;       // why the process ends ("" if the VM stopped by itself)
    // Set when the VM migrated away: the final report.
    std::optional<migration::MigrationStatus> migrated;
    bool outcome_unknown = false;  // ending with a migration's outcome unknown
  };

  // `stopped_fd` is readable once the machine stopped by itself (its
  // Notify wrote it); `signal_fd` comes from take_signals().
  VmService(kvm::Machine& m, ApiServer& api, int stopped_fd, int signal_fd);
  ~VmService();
  VmService(const VmService&) = delete;
  VmService& operator=(const VmService&) = delete;

  // Serves the API until the process should end.
  Outcome serve();

  // One request, as serve() executes it (also for tests).
  Result<nlohmann::json> execute(const Request& r);

 private:
  bool migration_active() const;
  bool outcome_unknown() const;
  void on_migration_phase();
  void end_now();

  kvm::Machine& m_;
  ApiServer& api_;
  int stopped_fd_;
  int signal_fd_;
  UniqueFd mig_fd_;  // eventfd: the migration changed phase
  std::unique_ptr<migration::SourceMigration> mig_;
  bool migrated_ = false;
  std::string quit_reason_;
  // A quit or signal that came while a migration ran: the migration is
  // cancelled and the process ends once it settles, never before (it may
  // already have sent COMMIT). Empty: none pending.
  std::string quit_pending_;
  // Quit now, or (during a migration) once it settles; the API's answer.
  Result<nlohmann::json> quit(std::string reason);
  // A migrated VM's process ends when its final report was fetched, or
  // after kExitAfterMigration: the timer thread stops the API then.
  std::mutex exit_mu_;
  std::condition_variable exit_cv_;
  bool exit_now_ = false;
  std::thread exit_timer_;
};

}  // namespace ferry::control

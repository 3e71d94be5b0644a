#pragma once
// The demo scenarios behind `ferry demo` (cmd_demo.cc wires the flags), and
// the live-migration rig that `ferry demo` and `ferry bench-migrate` share:
// real `ferry` child processes on this host, driven the way a user would.
#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "tools/harness/child.hh"
#include "userspace/base/error.hh"

namespace ferry::cli {

// A Linux guest: boot, verified workload, console, snapshot, restore.
int run_linux_demo(bool json, bool in_sandbox);

// One child `ferry` process: this very binary (/proc/self/exe) with `args`.
// stdout and stderr go to the given files, or to ours when a path is empty;
// stdin is /dev/null. The child gets SIGTERM if this process dies, and the
// destructor ends one still running (SIGTERM, then SIGKILL after 5 s).
class FerryChild {
 public:
  static Result<std::unique_ptr<FerryChild>> start(const std::vector<std::string>& args, const std::string& out_path,
                                                   const std::string& err_path);

  bool running() { return child_.running(); }  // reaps it when it has exited
  // Waits for the exit; its status (128+N for signal N), or an error after
  // `limit` (the child is then killed).
  Result<int> wait(std::chrono::milliseconds limit) { return child_.wait(limit); }
  pid_t pid() const { return child_.pid(); }
  const std::string& name() const { return child_.name(); }  // "ferry run", ...

 private:
  explicit FerryChild(harness::Child c) : child_(std::move(c)) {}
  harness::Child child_;
};

// The guest that is migrated: `ferry run` with the built-in guest.
struct SourceSpec {
  std::uint32_t vcpus = 2;
  std::string memory = "256M";
  std::uint64_t working_set_mib = 16;
  double rate_mib_s = 0;  // 0: as fast as the guest can
};

// A live migration on this host between two child processes: a `ferry run`
// source, a `ferry receive` destination on 127.0.0.1 (port chosen by the
// kernel) and `ferry migrate` between them. Sockets, outputs and serial
// logs live in a temporary directory removed with the rig; children still
// running then are ended.
class MigrationRig {
 public:
  using json = nlohmann::json;
  // `tls`: the migration runs over TLS 1.3 with a fresh random pre-shared
  // key; otherwise plain TCP (--insecure).
  static Result<std::unique_ptr<MigrationRig>> create(bool tls);
  ~MigrationRig();

  Status start_source(const SourceSpec& spec);
  // Polls the source's status (control API) every 100 ms until `done`
  // holds; fails after `limit`, or when the source process ends, saying
  // `what` it waited for.
  Result<json> wait_source(const std::function<bool(const json&)>& done, std::chrono::seconds limit,
                           const std::string& what);
  // Starts `ferry receive --listen 127.0.0.1:0`; the address it listens on.
  Result<std::string> start_destination();

  struct Migration {
    int exit_code = -1;  // of `ferry migrate`: 0 migrated, 1 failed, 3 outcome unknown
    json report;         // the final report (migration::to_json)
    double wall_ms = 0;  // `ferry migrate` from start to exit
  };
  // Runs `ferry migrate --vm SRC --to DST extra...` to its end. With
  // `show_progress`, its progress (stderr) and text report (stdout) go to
  // ours and the JSON report is taken from the source's "migrated" event
  // (or its API when it failed); otherwise it runs with --json, captured.
  Result<Migration> migrate(const std::vector<std::string>& extra, bool show_progress);
  // After a successful migration: the source process must end by itself,
  // with exit status 0 and a "migrated" event.
  Status wait_source_migrated(std::chrono::seconds limit);

  Result<json> source_status();
  Result<json> destination_status();
  // Like wait_source, for the destination VM.
  Result<json> wait_destination(const std::function<bool(const json&)>& done, std::chrono::seconds limit,
                                const std::string& what);
  // Quits the destination VM; it must end with exit status 0.
  Status quit_destination(std::chrono::seconds limit);

  // What the children said on stderr (tails), for error messages.
  std::string diagnostics() const;
  const std::string& dir() const { return dir_; }
  const std::string& source_api() const { return src_api_; }
  const std::string& destination_api() const { return dst_api_; }

 private:
  MigrationRig() = default;
  std::string dir_, src_api_, dst_api_, listen_;
  std::string psk_;  // the migration's pre-shared key file; empty: --insecure
  std::unique_ptr<FerryChild> src_, dst_;
};

// Shared by the demo and the benchmark: the total of the rounds that ran
// while the guest ran (every round but the final, paused one).
struct PrecopyFigures {
  std::uint64_t bytes = 0, pages = 0;
  double ms = 0;
  std::size_t rounds = 0;
  double throughput() const { return ms > 0 ? static_cast<double>(bytes) / (ms / 1000) : 0; }  // bytes/s
};
PrecopyFigures precopy_figures(const nlohmann::json& report);

// A fresh private directory $TMPDIR/ferry-NAME-XXXXXX (or under /tmp).
Result<std::string> make_temp_dir(std::string_view name);

// Where the demo and the benchmark run, for the people reading their output.
std::string where_text(bool in_sandbox);
// Whether this process runs inside tools/kvm-sandbox: `flag` (--in-sandbox,
// set by the re-exec), or the sandbox's command file exists (the command was
// started with `tools/kvm-sandbox -- ferry ...` directly).
bool inside_kvm_sandbox(bool flag);

}  // namespace ferry::cli

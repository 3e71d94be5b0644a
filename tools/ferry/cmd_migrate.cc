// `ferry migrate` and `ferry resolve`: clients of a running VM's control
// API (the migration itself runs inside the VM's process, which owns guest
// memory). migrate starts it, draws progress until it ends, prints the
// report; resolve settles a migration whose COMMIT was not confirmed.
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <memory>
#include <thread>

#include <fmt/format.h>

#include "userspace/control/api.hh"
#include "userspace/control/resolve.hh"
#include "tools/ferry/commands.hh"
#include "tools/ferry/security_flags.hh"
#include "userspace/migration/destination.hh"
#include "userspace/control/migration_follower.hh"
#include "userspace/migration/report_html.hh"
#include "userspace/migration/status.hh"

namespace ferry::cli {
namespace {

using nlohmann::json;

// "100M", "1.5G", "800K" (bytes per second, powers of 1024), or plain bytes.
Result<double> parse_rate(const std::string& s) {
  if (s.empty()) return fail("empty rate");
  std::size_t used = 0;
  double v = 0;
  try {
    v = std::stod(s, &used);
  } catch (...) {
    return fail("'{}' is not a rate (e.g. 100M for 100 MiB/s)", s);
  }
  std::string unit = s.substr(used);
  if (unit.ends_with("/s")) unit.resize(unit.size() - 2);
  if (unit.ends_with("iB") || unit.ends_with("ib")) unit.resize(unit.size() - 2);
  if (unit.ends_with("B")) unit.resize(unit.size() - 1);
  double mult = 1;
  if (unit == "K" || unit == "k") mult = 1024;
  else if (unit == "M" || unit == "m") mult = 1024.0 * 1024;
  else if (unit == "G" || unit == "g") mult = 1024.0 * 1024 * 1024;
  else if (!unit.empty()) return fail("'{}': unknown unit '{}' (K, M or G per second)", s, unit);
  if (v < 0) return fail("'{}': a rate cannot be negative", s);
  return v * mult;
}

int exit_code(migration::Phase p) {
  return p == migration::Phase::kMigrated ? 0 : p == migration::Phase::kOutcomeUnknown ? 3 : 1;
}

struct MigrateCli {
  std::string vm, to, max_bandwidth, on_timeout = "cancel", policy = "adaptive";
  std::string report;  // --report FILE.html, empty: none
  double downtime_limit_ms = 300;
  std::uint32_t streams = 1, timeout_s = 600;
  bool verify = false, json = false, no_zero_copy = false, no_ebpf = false;
  SecurityFlags security;
};

int run_migrate(const MigrateCli& o) {
  auto security = security_of(o.security, transport::TlsRole::kClient);
  if (!security) {
    fmt::print(stderr, "ferry migrate: {}\n", security.error());
    return 2;
  }
  json req{{"cmd", "migrate"},
           {"to", o.to},
           {"security", {{"mode", transport::security_mode_name(security->kind)}, {"path", security->path}}},
           {"downtime_limit_ms", o.downtime_limit_ms},
           {"streams", o.streams},
           {"timeout_s", o.timeout_s},
           {"on_timeout", o.on_timeout},
           {"verify", o.verify},
           {"zero_copy", !o.no_zero_copy},
           {"policy", o.policy},
           {"ebpf", !o.no_ebpf}};
  if (!o.max_bandwidth.empty()) {
    auto r = parse_rate(o.max_bandwidth);
    if (!r) {
      fmt::print(stderr, "ferry migrate: --max-bandwidth: {}\n", r.error());
      return 2;
    }
    req["max_bandwidth_bytes_per_s"] = *r;
  }
  // Checked before the migration starts: a typo in the report's directory
  // should cost nothing, not a finished migration's only report.
  if (!o.report.empty()) {
    const auto dir = std::filesystem::path(o.report).parent_path();
    std::error_code ec;
    if (!dir.empty() && !std::filesystem::is_directory(dir, ec)) {
      fmt::print(stderr, "ferry migrate: --report {}: no directory {}\n", o.report, dir.string());
      return 2;
    }
  }
  auto started = control::call(o.vm, req);
  if (!started) {
    fmt::print(stderr, "ferry migrate: {}\n", started.error());
    return 1;
  }
  const bool tty = ::isatty(STDERR_FILENO) && !o.json;
  std::uint32_t shown_rounds = 0;
  control::MigrationFollower follow(o.vm);
  for (;;) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    auto st = follow.poll();
    if (!st) {
      fmt::print(stderr, "\nferry migrate: lost the VM's control socket: {}\n", st.error());
      return 1;
    }
    const auto s = migration::status_from_json(*st);
    if (!o.json) {
      if (tty)
        fmt::print(stderr, "\r{}\x1b[K", migration::progress_line(s));
      else if (s.rounds.size() > shown_rounds)
        fmt::print(stderr, "{}\n", migration::progress_line(s));
      shown_rounds = static_cast<std::uint32_t>(s.rounds.size());
    }
    if (migration::phase_final(s.phase)) {
      if (tty) fmt::print(stderr, "\n");
      if (o.json)
        fmt::print("{}\n", st->dump());
      else
        fmt::print("{}", migration::report_text(s));
      // Every final phase gets its page: a failed or cancelled migration's
      // rounds are what someone will want to look at. A page that cannot be
      // written is reported but does not change the exit status, which says
      // where the VM runs.
      if (!o.report.empty()) {
        if (auto w = migration::write_report_html(o.report, *st); w)
          fmt::print(stderr, "ferry migrate: report written to {}\n", o.report);
        else
          fmt::print(stderr, "ferry migrate: --report: {}\n", w.error());
      }
      if (s.phase == migration::Phase::kOutcomeUnknown)
        fmt::print(stderr,
                   "ferry migrate: COMMIT was sent but not confirmed. The VM is paused here with its full state.\n"
                   "  Settle it with: ferry resolve --vm {}\n",
                   o.vm);
      return exit_code(s.phase);
    }
  }
}

struct ResolveCli {
  std::string vm, to;
  bool destination_gone = false, source_gone = false, json = false;
};

// The destination's side: a VM held there after READY whose source is
// gone for good is committed forward (nothing can resume the source's copy).
int run_resolve_source_gone(const ResolveCli& o) {
  auto r = control::call(o.vm, json{{"cmd", "resolve"}, {"source_gone", true}}, std::chrono::seconds(60));
  if (!r) {
    fmt::print(stderr, "ferry resolve: {}\n", r.error());
    return 1;
  }
  if (o.json)
    fmt::print("{}\n", r->dump());
  else
    fmt::print("session {} from {}: committed here (the source is gone); the VM runs on this host\n",
               r->value("session", "?"), r->value("source", "?"));
  return 0;
}

// Asks the destination, then tells the source (control::resolve_migration):
// exactly one side runs.
int run_resolve(const ResolveCli& o) {
  if (o.source_gone) return run_resolve_source_gone(o);
  auto r = control::resolve_migration(o.vm, o.to, o.destination_gone);
  if (!r) {
    fmt::print(stderr, "ferry resolve: {}\n", r.error());
    return 1;
  }
  if (o.json)
    fmt::print("{}\n", json{{"resolved", r->migrated ? "migrated" : "resumed"}, {"why", r->why}}.dump());
  else
    fmt::print("{}: {}\n", r->why,
               r->migrated ? "the VM runs there; the source VM is stopped" : "the VM was resumed on the source");
  return 0;
}

}  // namespace

void add_migrate(CLI::App& app, Globals& g) {
  auto o = std::make_shared<MigrateCli>();
  auto* cmd = app.add_subcommand("migrate", "Live-migrate a running VM to a `ferry receive` on another host.");
  cmd->footer(
      "Pre-copies memory in rounds while the guest runs (KVM dirty tracking says what changed), then pauses it,\n"
      "sends the last pages and the CPU/device state, and commits: the destination runs the VM only after\n"
      "COMMIT, and before READY any failure resumes it here. Shows live progress, ends with a report.\n"
      "Cancel with `ferry cancel --vm SOCKET`. Exit status: 0 migrated, 1 failed or cancelled (the VM runs\n"
      "here), 3 outcome unknown (COMMIT unconfirmed: the VM is paused here; run `ferry resolve`).\n"
      "--report FILE.html also writes the report as one self-contained page (charts of the rounds, predicted\n"
      "vs actual downtime, the rounds table) whatever the outcome; it fetches nothing and runs no scripts.");
  cmd->add_option("--vm", o->vm, "the VM's control socket")->required();
  cmd->add_option("--to", o->to, "the destination's ADDR:PORT (`ferry receive --listen`)")->required();
  cmd->add_option("--downtime-limit", o->downtime_limit_ms, "switch over once the expected downtime fits (ms)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--max-bandwidth", o->max_bandwidth, "cap for all streams together, e.g. 100M (bytes/s)");
  cmd->add_option("--streams", o->streams, "parallel TCP streams (1..16), each with its own io_uring and thread")
      ->check(CLI::Range(1, 16))
      ->capture_default_str();
  cmd->add_option("--timeout", o->timeout_s, "seconds before the timeout action")->capture_default_str();
  cmd->add_option("--on-timeout", o->on_timeout, "cancel (keep running here) or switchover (force it)")
      ->check(CLI::IsMember({"cancel", "switchover"}))
      ->capture_default_str();
  add_security_flags(cmd, o->security);
  cmd->add_flag("--verify", o->verify, "compare whole-memory digests of both sides before the destination resumes");
  cmd->add_flag("--no-zero-copy", o->no_zero_copy, "plain sends only (zero-copy is used where the kernel really avoids the copy)");
  cmd->add_option("--policy", o->policy,
                  "switchover rule: adaptive (predicts downtime from eBPF measurements of dirtying and of the link, "
                  "holds hot pages back, throttles the hottest vCPUs) or fixed (QEMU's: bytes pushed last round x limit)")
      ->check(CLI::IsMember({"adaptive", "fixed"}))
      ->capture_default_str();
  cmd->add_flag("--no-ebpf", o->no_ebpf, "adaptive policy on the engine's own counters only (as when eBPF is unavailable)");
  cmd->add_flag("--json", o->json, "print the final report as JSON (no progress display)");
  cmd->add_option("--report", o->report, "also write the final report as an HTML page to FILE.html")
      ->type_name("FILE.html");
  cmd->callback([o, &g] { g.rc = run_migrate(*o); });

  auto c = std::make_shared<std::string>();
  auto* cancel = app.add_subcommand("cancel", "Cancel a running migration; the VM keeps running on the source.");
  cancel->add_option("--vm", *c, "the VM's control socket")->required();
  cancel->callback([c, &g] {
    auto r = control::call(*c, json{{"cmd", "cancel"}});
    if (!r) {
      fmt::print(stderr, "ferry cancel: {}\n", r.error());
      g.rc = 1;
      return;
    }
    fmt::print("migration cancelling\n");
  });

  auto r = std::make_shared<ResolveCli>();
  auto* res = app.add_subcommand("resolve", "Settle a migration whose COMMIT was not confirmed (outcome unknown).");
  res->footer(
      "Asks the destination what became of the session. If it runs the VM, the source VM is stopped. If it\n"
      "holds it paused (READY sent, COMMIT never arrived), it is told to drop it and the source resumes. If it\n"
      "knows nothing of it, or dropped it, the source resumes; if it committed (its state directory's record\n"
      "says so, even after a restart) the source VM is stopped. Never both, never neither: if the destination\n"
      "cannot be reached nothing changes, unless --destination-gone says it is gone for good and COMMIT never\n"
      "left the source. With --source-gone, --vm is the destination's socket: a VM it holds after READY is\n"
      "committed there (recorded first), for when the source process is gone and cannot resume. See\n"
      "docs/protocol.md.");
  res->add_option("--vm", r->vm, "the source VM's control socket (with --source-gone: the destination's)")->required();
  res->add_option("--to", r->to, "ask the destination at ADDR:PORT (default: where the migration went)");
  res->add_flag("--destination-gone", r->destination_gone,
                "the destination process is known to be dead: resume here if it cannot be reached");
  auto* sg = res->add_flag("--source-gone", r->source_gone,
                           "the source process is known to be dead: commit the VM the destination at --vm holds");
  sg->excludes(res->get_option("--destination-gone"));
  sg->excludes(res->get_option("--to"));
  res->add_flag("--json", r->json, "print the decision as JSON");
  res->callback([r, &g] { g.rc = run_resolve(*r); });
}

}  // namespace ferry::cli

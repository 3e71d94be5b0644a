// `ferry demo`: the one-command showcase. A live migration as a user would
// run it, in real processes: `ferry run` starts the built-in guest, which
// dirties its working set and verifies every page before rewriting it;
// `ferry receive` waits on 127.0.0.1; `ferry migrate` moves the VM with live
// progress and prints its report; then the guest is shown going on at the
// destination, still verifying, and is told to quit. (`--guest linux` boots
// a Linux guest instead: cmd_demo_linux.cc.) Without /dev/kvm the demo
// re-runs itself inside tools/kvm-sandbox and says so.
//
// This file also holds the rig the demo and `ferry bench-migrate` share
// (demo.hh): child processes, their outputs, the waits.
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "userspace/base/unique_fd.hh"
#include "userspace/control/api.hh"
#include "userspace/control/migration_follower.hh"
#include "tools/ferry/commands.hh"
#include "tools/ferry/demo.hh"
#include "tools/ferry/sandbox_exec.hh"
#include "kvm/quirks.hh"

namespace ferry::cli {

using Clock = std::chrono::steady_clock;
using nlohmann::json;
using namespace std::chrono_literals;

// ---------------------------------------------------------------------------
// FerryChild

namespace {

std::string read_text(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::string tail(const std::string& s, std::size_t n) { return s.size() > n ? "..." + s.substr(s.size() - n) : s; }

// The first JSON line of `text` whose "event" is `name`, or null.
json find_event(const std::string& text, const std::string& name) {
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);)
    if (auto j = json::parse(line, nullptr, false); !j.is_discarded() && j.is_object() && j.value("event", "") == name)
      return j;
  return nullptr;
}

// The last line of `text` that is a JSON object, or null.
json last_json(const std::string& text) {
  json last;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);)
    if (auto j = json::parse(line, nullptr, false); !j.is_discarded() && j.is_object()) last = j;
  return last;
}

std::uint64_t u64(const json& j, const char* a, const char* b) {
  if (!j.is_object() || !j.contains(a) || !j[a].is_object()) return 0;
  return j[a].value(b, std::uint64_t{0});
}

}  // namespace

Result<std::unique_ptr<FerryChild>> FerryChild::start(const std::vector<std::string>& args, const std::string& out_path,
                                                      const std::string& err_path) {
  std::vector<std::string> argv{"ferry"};
  argv.insert(argv.end(), args.begin(), args.end());
  harness::ChildOptions o;
  o.stdout_path = out_path;
  o.stderr_path = err_path;
  // The running binary itself, even when a rebuild has replaced the file
  // since (the path then reads "... (deleted)").
  o.program = "/proc/self/exe";
  o.name = "ferry " + (args.empty() ? std::string() : args.front());
  o.die_with_parent = true;
  o.grace = 5s;
  auto c = harness::Child::spawn(argv, o);
  if (!c) return std::unexpected(c.error());
  return std::unique_ptr<FerryChild>(new FerryChild(std::move(*c)));
}

// ---------------------------------------------------------------------------
// MigrationRig

Result<std::string> make_temp_dir(std::string_view name) {
  const char* tmp = std::getenv("TMPDIR");
  std::string tmpl = fmt::format("{}/ferry-{}-XXXXXX", tmp && *tmp ? tmp : "/tmp", name);
  if (!::mkdtemp(tmpl.data())) {
    const int e = errno;
    return std::unexpected(sys_error(fmt::format("mkdtemp {}", tmpl), e));
  }
  return tmpl;
}

Result<std::unique_ptr<MigrationRig>> MigrationRig::create(bool tls) {
  auto dir = make_temp_dir("migration");
  if (!dir) return std::unexpected(dir.error());
  std::unique_ptr<MigrationRig> r(new MigrationRig);
  r->dir_ = *dir;
  r->src_api_ = r->dir_ + "/source.sock";
  r->dst_api_ = r->dir_ + "/destination.sock";
  // Over TLS 1.3 as users should, here with a fresh random pre-shared key
  // that both sides read (mode 600, in the rig's directory).
  if (tls) {
    r->psk_ = r->dir_ + "/migration.psk";
    std::random_device rd;
    std::string hex;
    for (int i = 0; i < 8; ++i) hex += fmt::format("{:08x}", rd());
    const UniqueFd fd(::open(r->psk_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
    if (!fd || ::write(fd.get(), hex.data(), hex.size()) != static_cast<ssize_t>(hex.size()))
      return fail_sys(fmt::format("writing the migration key {}", r->psk_));
  }
  return r;
}

MigrationRig::~MigrationRig() {
  // Children first: they own the sockets in the directory.
  src_.reset();
  dst_.reset();
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
}

Status MigrationRig::start_source(const SourceSpec& s) {
  auto c = FerryChild::start({"run", "--vcpus", std::to_string(s.vcpus), "--memory", s.memory, "--working-set",
                              std::to_string(s.working_set_mib), "--rate", fmt::format("{}", s.rate_mib_s), "--api",
                              src_api_, "--json"},
                             dir_ + "/source.out", dir_ + "/source.err");
  if (!c) return std::unexpected(c.error());
  src_ = std::move(*c);
  return {};
}

namespace {

// Polls a VM's control API until `done` holds. Before the VM's process
// has bound its socket, calls fail: that is waiting too.
Result<json> wait_vm(const std::string& api, FerryChild& child, const std::function<bool(const json&)>& done,
                     std::chrono::seconds limit, const std::string& what) {
  const auto end = Clock::now() + limit;
  std::string last_error = "no answer yet";
  for (;;) {
    if (!child.running())
      return fail("{} ended (exit status {}) while waiting for {}", child.name(), child.wait(0ms).value_or(-1), what);
    auto st = control::call(api, json{{"cmd", "status"}}, 10s);
    if (st) {
      if (done(*st)) return *st;
      last_error = "not yet";
    } else {
      last_error = st.error().what();
    }
    if (Clock::now() >= end)
      return fail("{} s without {} ({}: {})", limit.count(), what, child.name(), last_error);
    std::this_thread::sleep_for(100ms);
  }
}

}  // namespace

Result<json> MigrationRig::wait_source(const std::function<bool(const json&)>& done, std::chrono::seconds limit,
                                       const std::string& what) {
  if (!src_) return fail("no source VM");
  return wait_vm(src_api_, *src_, done, limit, what);
}

Result<std::string> MigrationRig::start_destination() {
  std::vector<std::string> args{"receive", "--listen", "127.0.0.1:0", "--api", dst_api_, "--json", "--state-dir",
                                dir_ + "/destination-state"};
  if (psk_.empty()) args.push_back("--insecure");
  else args.insert(args.end(), {"--tls-psk", psk_});
  auto c = FerryChild::start(args,
                             dir_ + "/destination.out", dir_ + "/destination.err");
  if (!c) return std::unexpected(c.error());
  dst_ = std::move(*c);
  const auto end = Clock::now() + 60s;
  for (;;) {
    const auto ev = find_event(read_text(dir_ + "/destination.out"), "listening");
    if (ev.is_object() && ev.contains("listen") && ev["listen"].is_string()) {
      listen_ = ev["listen"].get<std::string>();
      return listen_;
    }
    if (!dst_->running()) return fail("ferry receive ended before listening (exit status {})", dst_->wait(0ms).value_or(-1));
    if (Clock::now() >= end) return fail("ferry receive did not listen within 60 s");
    std::this_thread::sleep_for(20ms);
  }
}

Result<MigrationRig::Migration> MigrationRig::migrate(const std::vector<std::string>& extra, bool show_progress) {
  if (!src_ || !dst_ || listen_.empty()) return fail("migrate: start the source and the destination first");
  std::vector<std::string> args{"migrate", "--vm", src_api_, "--to", listen_};
  if (psk_.empty()) args.push_back("--insecure");
  else args.insert(args.end(), {"--tls-psk", psk_});
  args.insert(args.end(), extra.begin(), extra.end());
  if (!show_progress) args.push_back("--json");
  const std::string out = dir_ + "/migrate.out", err = dir_ + "/migrate.err";
  const auto t0 = Clock::now();
  auto c = FerryChild::start(args, show_progress ? "" : out, show_progress ? "" : err);
  if (!c) return std::unexpected(c.error());
  // `ferry migrate` ends by itself: its own --timeout (600 s) cancels a
  // migration that does not converge.
  auto rc = (*c)->wait(std::chrono::minutes(30));
  if (!rc) return std::unexpected(rc.error());
  Migration m;
  m.exit_code = *rc;
  m.wall_ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
  if (!show_progress) m.report = last_json(read_text(out));
  if (!m.report.is_object() && m.exit_code == 0) {
    // The source prints its final report once it has handed the VM over.
    if (auto ok = wait_source_migrated(60s); !ok) return std::unexpected(ok.error());
    const auto ev = find_event(read_text(dir_ + "/source.out"), "migrated");
    if (ev.is_object()) m.report = ev["migration"];
  }
  if (!m.report.is_object() && src_->running()) {
    // A failed or cancelled migration: the source still runs and has it.
    if (auto r = control::MigrationFollower(src_api_).poll(10s)) m.report = *r;
  }
  if (!m.report.is_object())
    return fail("ferry migrate exited with status {} and no report could be had", m.exit_code);
  return m;
}

Status MigrationRig::wait_source_migrated(std::chrono::seconds limit) {
  if (!src_) return fail("no source VM");
  auto rc = src_->wait(limit);
  if (!rc) return std::unexpected(rc.error());
  if (*rc != 0) return fail("the source process (ferry run) exited with status {} after the migration", *rc);
  if (find_event(read_text(dir_ + "/source.out"), "migrated").is_null())
    return fail("the source process (ferry run) ended without its \"migrated\" event");
  return {};
}

Result<json> MigrationRig::source_status() { return control::call(src_api_, json{{"cmd", "status"}}, 10s); }
Result<json> MigrationRig::destination_status() { return control::call(dst_api_, json{{"cmd", "status"}}, 10s); }

Result<json> MigrationRig::wait_destination(const std::function<bool(const json&)>& done, std::chrono::seconds limit,
                                            const std::string& what) {
  if (!dst_) return fail("no destination");
  return wait_vm(dst_api_, *dst_, done, limit, what);
}

Status MigrationRig::quit_destination(std::chrono::seconds limit) {
  if (!dst_) return fail("no destination");
  if (auto r = control::call(dst_api_, json{{"cmd", "quit"}}, 10s); !r)
    return std::unexpected(std::move(r.error()).context("quit the destination VM"));
  auto rc = dst_->wait(limit);
  if (!rc) return std::unexpected(rc.error());
  if (*rc != 0) return fail("the destination process (ferry receive) exited with status {}", *rc);
  return {};
}

std::string MigrationRig::diagnostics() const {
  std::string out;
  for (const char* name : {"source", "destination", "migrate"}) {
    const auto err = read_text(fmt::format("{}/{}.err", dir_, name));
    if (!err.empty()) out += fmt::format("--- ferry {} (stderr) ---\n{}\n", name == std::string("source") ? "run" :
                                         name == std::string("destination") ? "receive" : "migrate", tail(err, 2000));
  }
  return out;
}

PrecopyFigures precopy_figures(const json& report) {
  PrecopyFigures f;
  if (!report.is_object() || !report.contains("rounds")) return f;
  for (const auto& r : report["rounds"]) {
    if (r.value("decision", "") == "final") continue;
    f.bytes += r.value("bytes", std::uint64_t{0});
    f.pages += r.value("pages", std::uint64_t{0});
    f.ms += r.value("ms", 0.0);
    ++f.rounds;
  }
  return f;
}

bool inside_kvm_sandbox(bool flag) {
  std::error_code ec;
  return flag || std::filesystem::exists("/sandbox/cmd", ec);  // tools/sandbox/init runs it
}

std::string where_text(bool in_sandbox) {
  if (in_sandbox) return "inside tools/kvm-sandbox: nested KVM under QEMU emulation, 10-50x slower than native";
  if (kvm::kvm_is_pvm()) return "on native /dev/kvm, which is PVM here: guests run through its instruction emulator, slowly";
  return "on native /dev/kvm";
}

// ---------------------------------------------------------------------------
// The demo

namespace {

struct DemoOptions {
  bool json = false;
  bool in_sandbox = false;
  bool tls = true;
  std::uint64_t working_set_mib = 0;  // 0: chosen for this host
};

constexpr std::uint64_t kVerifiedBeforeMigrating = 100;
constexpr int kDestinationSamples = 3;  // one a second

int run_migration_demo(const DemoOptions& o) {
  // Inside the sandbox stdout and stderr arrive as one stream: with --json,
  // keep logs out of it so the output stays one JSON object.
  if (o.json && spdlog::default_logger()->level() < spdlog::level::warn) spdlog::set_level(spdlog::level::warn);
  auto say = [&](const std::string& text) {
    if (o.json) return;
    std::fputs(text.c_str(), stdout);
    std::fflush(stdout);
  };
  const auto t0 = Clock::now();
  auto secs = [&] { return std::chrono::duration<double>(Clock::now() - t0).count(); };

  SourceSpec spec;
  spec.vcpus = 2;
  spec.memory = "256M";
  std::string ws_note;
  if (o.working_set_mib) {
    spec.working_set_mib = o.working_set_mib;
  } else if (kvm::kvm_emulates_guests_reason()) {
    // About 60 page writes/s: 16 MiB would take a minute to start verifying.
    spec.working_set_mib = 2;
    ws_note = "2 MiB, not 16, because the guest writes only about 60 pages/s on this KVM; --working-set changes it";
  } else {
    spec.working_set_mib = 16;
  }

  json result{{"scenario", "live-migration"},
              {"where", o.in_sandbox ? "kvm-sandbox" : "native"},
              {"ok", false},
              {"error", ""},
              {"vm",
               {{"vcpus", spec.vcpus},
                {"memory_bytes", 256ull << 20},
                {"working_set_mib", spec.working_set_mib},
                {"dirty_rate_mib_s", spec.rate_mib_s}}}};
  std::unique_ptr<MigrationRig> rig;
  auto finish = [&](const std::string& error) {
    result["ok"] = error.empty();
    result["error"] = error;
    result["elapsed_s"] = secs();
    if (!error.empty()) {
      fmt::print(stderr, "ferry demo: {}\n", error);
      if (rig) fmt::print(stderr, "{}", rig->diagnostics());
    }
    if (o.json) fmt::print("{}\n", result.dump(2));
    return error.empty() ? 0 : 1;
  };

  say(fmt::format("Ferry demo: live migration of a running VM, {}\n", where_text(o.in_sandbox)));
  auto r = MigrationRig::create(o.tls);
  if (!r) return finish(r.error().what());
  rig = std::move(*r);
  result["tls"] = o.tls;

  // 1. The source VM.
  if (auto ok = rig->start_source(spec); !ok) return finish(ok.error().what());
  say(fmt::format("  1. Source: `ferry run` boots the built-in guest on {} vCPUs with 256 MiB. It rewrites a {} MiB\n"
                  "     working set and checks each page's previous contents before rewriting it.\n",
                  spec.vcpus, spec.working_set_mib));
  if (!ws_note.empty()) say(fmt::format("     ({})\n", ws_note));
  auto before = rig->wait_source(
      [](const json& s) {
        return u64(s, "totals", "verified") >= kVerifiedBeforeMigrating || u64(s, "totals", "failures") > 0;
      },
      180s, fmt::format("{} verified pages", kVerifiedBeforeMigrating));
  if (!before) return finish(before.error().what());
  result["source"] = {{"verified_before_migration", u64(*before, "totals", "verified")},
                      {"failures", u64(*before, "totals", "failures")},
                      {"heartbeats", u64(*before, "heartbeats", "received")}};
  if (u64(*before, "totals", "failures") > 0)
    return finish(fmt::format("the guest found a bad page before any migration: {}", before->dump()));
  say(fmt::format("     It runs: {} pages verified, 0 failures, {} heartbeats after {:.1f} s.\n",
                  u64(*before, "totals", "verified"), u64(*before, "heartbeats", "received"),
                  before->value("uptime_s", 0.0)));

  // 2. The destination.
  auto to = rig->start_destination();
  if (!to) return finish(to.error().what());
  say(fmt::format("  2. Destination: `ferry receive` listens on {} (another process; on another host in real life).\n",
                  *to));
  if (o.tls) {
    say("     The migration runs over TLS 1.3 with a fresh pre-shared key (--tls-psk; kernel TLS where the kernel\n"
        "     has it). Between hosts, certificates: --tls-dir (tools/tls-certs makes them).\n");
  } else {
    say(fmt::format("     The migration runs over plain TCP (--insecure){}.\n",
                    o.in_sandbox ? ": in this emulated sandbox AES-GCM costs about 6x the page path in clear\n"
                                   "     (ferry bench-transport), which would swamp the demo; `ferry demo --tls` uses it anyway"
                                 : ""));
  }

  // 3. The migration, with ferry migrate's own live progress and report.
  // The policy throttles a guest that dirties faster than the link carries
  // (it does, in the sandbox); should that still not converge on a loaded
  // machine, a forced switchover after 2 minutes beats a failed demo.
  const std::vector<std::string> migrate_args{"--timeout", "120", "--on-timeout", "switchover"};
  say(fmt::format("  3. Live migration: ferry migrate --vm SOURCE --to {} {}\n"
                  "     It copies memory while the guest runs, round after round, then pauses the guest, sends the\n"
                  "     last pages and the CPU and device state, and commits:\n\n",
                  *to, fmt::join(migrate_args, " ")));
  auto mig = rig->migrate(migrate_args, !o.json);
  if (!mig) return finish(mig.error().what());
  result["migration"] = mig->report;
  const auto phase = mig->report.value("phase", "");
  if (mig->exit_code != 0 || phase != "migrated")
    return finish(fmt::format("the migration did not complete: {} ({})", phase, mig->report.value("error", "")));
  if (auto ok = rig->wait_source_migrated(60s); !ok) return finish(ok.error().what());
  result["source"]["exit_code"] = 0;

  // 4. The guest goes on at the destination.
  auto d0 = rig->wait_destination([](const json& s) { return s.value("state", "") == "running"; }, 60s,
                                  "the destination VM running");
  if (!d0) return finish(d0.error().what());
  say(fmt::format("\n  4. The guest runs on at the destination, from where it was (its counters went on):\n"
                  "       before the migration  verified {:>8}\n"
                  "       at the destination    verified {:>8}  failures {}\n",
                  u64(*before, "totals", "verified"), u64(*d0, "totals", "verified"), u64(*d0, "totals", "failures")));
  json last = *d0;
  for (int i = 1; i <= kDestinationSamples; ++i) {
    std::this_thread::sleep_for(1s);
    auto s = rig->destination_status();
    if (!s) return finish(fmt::format("the destination VM stopped answering: {}", s.error()));
    say(fmt::format("       +{} s                  verified {:>8} (+{})  failures {}  heartbeats {}\n", i,
                    u64(*s, "totals", "verified"), u64(*s, "totals", "verified") - u64(last, "totals", "verified"),
                    u64(*s, "totals", "failures"), u64(*s, "heartbeats", "received")));
    last = *s;
    if (s->value("state", "") != "running") break;
  }
  const auto v0 = u64(*d0, "totals", "verified"), v1 = u64(last, "totals", "verified");
  result["destination"] = {{"restored_from", d0->value("restored_from", "")},
                           {"verified_at_start", v0},
                           {"verified_at_end", v1},
                           {"verified", v1 - v0},
                           {"failures", u64(last, "totals", "failures")},
                           {"heartbeats_received", u64(last, "heartbeats", "received")},
                           {"observed_s", kDestinationSamples},
                           {"state", last.value("state", "")}};
  if (u64(last, "totals", "failures") > 0 || last.value("state", "") != "running")
    return finish(fmt::format("the guest failed at the destination: {}", last.dump()));
  if (v1 <= v0) return finish("the guest verified no page at the destination: it is not running");
  if (v0 < u64(*before, "totals", "verified"))
    return finish("the guest's counters went back at the destination: it restarted instead of continuing");
  auto quit = rig->quit_destination(60s);
  result["destination"]["quit"] = quit ? "ok" : quit.error().what();
  if (!quit) return finish(quit.error().what());

  const double downtime = mig->report["downtime_ms"].is_number() ? mig->report["downtime_ms"].get<double>() : -1;
  const double guest = mig->report["guest_downtime_ms"].is_number() ? mig->report["guest_downtime_ms"].get<double>() : -1;
  say(fmt::format(
      "\n  The VM moved live: its vCPUs were paused {:.1f} ms (the guest itself saw {} without a heartbeat),\n"
      "  and it verified {} more pages at the destination, with no failure. The destination VM was then told to\n"
      "  quit. ({:.1f} s in all.) Try it by hand: `ferry receive --help`, `ferry migrate --help`.\n",
      downtime, guest >= 0 ? fmt::format("{:.1f} ms", guest) : std::string("an unknown time"), v1 - v0, secs()));
  return finish("");
}

}  // namespace

void add_demo(CLI::App& app, Globals& g) {
  struct Opts {
    bool json = false;
    bool in_sandbox = false;
    bool force_sandbox = false;
    std::string guest = "test";
    std::uint64_t working_set_mib = 0;
    bool tls = false, insecure = false;
  };
  auto opts = std::make_shared<Opts>();
  auto* cmd = app.add_subcommand("demo",
                                 "The showcase: live-migrates a running VM between two ferry processes on this host "
                                 "and shows the guest verifying its memory before and after. Uses /dev/kvm when "
                                 "present, otherwise re-runs itself inside tools/kvm-sandbox.");
  cmd->add_flag("--json", opts->json, "print the result as one JSON object");
  cmd->add_flag("--sandbox", opts->force_sandbox, "run inside tools/kvm-sandbox even when /dev/kvm exists");
  cmd->add_option("--guest", opts->guest,
                  "test: live-migrate the built-in guest (seconds natively, about a minute in the sandbox); "
                  "linux: boot a Linux guest, run its self-verifying workload, snapshot and restore it")
      ->check(CLI::IsMember({"test", "linux"}))
      ->capture_default_str();
  cmd->add_option("--working-set", opts->working_set_mib,
                  "MiB the built-in guest dirties (default 16; 2 where KVM emulates guests, e.g. PVM)")
      ->check(CLI::Range(1, 200));
  auto* tls = cmd->add_flag("--tls", opts->tls,
                            "migrate over TLS 1.3 even in the emulated sandbox (the default natively; there, plain "
                            "TCP, as emulated AES-GCM costs several times the page path)");
  cmd->add_flag("--insecure", opts->insecure, "migrate over plain TCP")->excludes(tls);
  cmd->add_flag("--in-sandbox", opts->in_sandbox, "(internal) we already are inside the sandbox")->group("");
  cmd->callback([opts, &g] {
    {
      std::vector<std::string> args{"demo", "--in-sandbox", "--guest", opts->guest};
      if (opts->working_set_mib) args.insert(args.end(), {"--working-set", std::to_string(opts->working_set_mib)});
      if (opts->json) args.push_back("--json");
      if (opts->tls) args.push_back("--tls");
      if (opts->insecure) args.push_back("--insecure");
      if (!run_here_or_in_sandbox({"demo", opts->in_sandbox, opts->force_sandbox, opts->json,
                                   "running the demo inside tools/kvm-sandbox (boots a nested KVM under QEMU, a few "
                                   "seconds)",
                                   std::move(args)})) {
        g.rc = 1;
        return;
      }
    }
    if (opts->guest == "linux") {
      g.rc = run_linux_demo(opts->json, opts->in_sandbox);
      return;
    }
    const bool sandboxed = inside_kvm_sandbox(opts->in_sandbox);
    // TLS natively (what users run); plain TCP in the emulated sandbox unless
    // asked, where AES costs several times the whole page path.
    const bool over_tls = opts->tls || (!opts->insecure && !sandboxed);
    g.rc = run_migration_demo({opts->json, sandboxed, over_tls, opts->working_set_mib});
  });
}

}  // namespace ferry::cli

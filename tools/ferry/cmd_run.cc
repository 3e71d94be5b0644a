// `ferry run` and `ferry restore`: one process per VM, serving the control
// API (docs/control-api.md) until the VM stops or is told to quit.
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <memory>
#include <mutex>
#include <condition_variable>
#include <optional>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "userspace/base/unique_fd.hh"
#include "userspace/control/api.hh"
#include "userspace/control/vm_service.hh"
#include "tools/ferry/commands.hh"
#include "tools/ferry/security_flags.hh"
#include "tools/ferry/sandbox_exec.hh"
#include "tools/ferry/vm_report.hh"
#include "kvm/machine.hh"
#include "userspace/migration/destination.hh"
#include "userspace/migration/incoming_control.hh"
#include "userspace/migration/session_records.hh"
#include "userspace/migration/source.hh"
#include "userspace/transport/connection.hh"

namespace ferry::cli {
namespace {

using nlohmann::json;


struct VmProcessOptions {
  std::string api;
  std::string huge_pages = "auto";
  bool console = false;
  std::string serial_log;
  bool json = false;
};

// What a process answers while its VM is still being made (received):
// the API's requests and the signals that would otherwise wait unread.
struct WhileMaking {
  control::ApiServer::Handler handler;
  std::function<void(int signo)> on_signal;
};

struct RunOptions : VmProcessOptions {
  std::string memory;
  std::uint32_t vcpus = 1;
  std::string workload = "dirty";
  std::string pattern = "sequential";
  std::uint64_t working_set_mib = 8;
  double rate_mib_s = 0;
  std::uint32_t hot_percent = 10;
  std::uint64_t max_rewrites = 0;
  bool poweroff_when_done = false;
  bool no_irqchip = false;
  std::string kernel, initrd, cmdline = "console=ttyS0 panic=-1 pci=off";
  std::vector<std::string> nets;
};

struct RestoreOptions : VmProcessOptions {
  std::string file;
  bool paused = false;
  std::vector<std::string> nets;
};

std::string default_api_path() {
  const char* dir = std::getenv("XDG_RUNTIME_DIR");
  return fmt::format("{}/ferry-{}.sock", dir && *dir ? dir : "/tmp", ::getpid());
}

// Where the guest's serial output goes: the terminal and/or a log file.
class ConsoleSink {
 public:
  static Result<std::shared_ptr<ConsoleSink>> open(const VmProcessOptions& o) {
    auto s = std::make_shared<ConsoleSink>();
    s->terminal_ = o.console;
    // With --json, stdout carries only JSON lines: the console goes to stderr.
    s->out_ = o.json ? stderr : stdout;
    if (!o.serial_log.empty()) {
      s->log_ = std::fopen(o.serial_log.c_str(), "a");
      if (!s->log_) {
        const int e = errno;
        return std::unexpected(sys_error(fmt::format("open serial log {}", o.serial_log), e));
      }
    }
    return s;
  }
  ~ConsoleSink() {
    if (log_) std::fclose(log_);
  }
  void write(std::string_view s) {
    std::lock_guard lock(mu_);
    if (terminal_) {
      std::fwrite(s.data(), 1, s.size(), out_);
      std::fflush(out_);
    }
    if (log_) {
      std::fwrite(s.data(), 1, s.size(), log_);
      std::fflush(log_);
    }
  }

 private:
  std::mutex mu_;
  bool terminal_ = false;
  std::FILE* out_ = stdout;
  std::FILE* log_ = nullptr;
};

// Serves the API for `m` (control::VmService) until it stops, is told to
// quit or migrated away, then prints the outcome; returns the process exit
// status (0: quit, powered off cleanly or migrated; 1: the guest or a vCPU
// failed).
int serve_vm(kvm::Machine& m, control::ApiServer& api, UniqueFd& stopped_fd, UniqueFd& signal_fd,
             const VmProcessOptions& o) {
  control::VmService::Outcome end;
  {
    control::VmService service(m, api, stopped_fd.get(), signal_fd.get());
    end = service.serve();
  }
  const auto& served = end.served;
  const auto& quit_reason = end.quit_reason;
  if (end.migrated) {
    if (o.json)
      fmt::print("{}\n", json{{"event", "migrated"}, {"ok", true}, {"migration", migration::to_json(*end.migrated)}}.dump());
    else
      fmt::print(stderr, "ferry: VM migrated to {}\n{}", end.migrated->to, migration::report_text(*end.migrated));
    return 0;
  }
  const auto before = m.status();
  const bool self_stopped = before.state == kvm::RunState::kStopped;
  auto result = m.stop(quit_reason.empty() ? "stopped" : quit_reason);
  auto final_status = status_json(m.status());
  const bool guest_failed =
      final_status.contains("totals") && final_status["totals"]["failures"].get<std::uint64_t>() > 0;
  const bool ok = result && !guest_failed && served;
  if (o.json) {
    fmt::print("{}\n", json{{"event", "stopped"},
                            {"ok", ok},
                            {"error", result ? "" : result.error().what()},
                            {"status", final_status}}
                           .dump());
  } else {
    fmt::print(stderr, "ferry: VM stopped: {}\n",
               self_stopped ? final_status["stop_reason"].get<std::string>() : quit_reason);
    if (!result) fmt::print(stderr, "ferry: {}\n", result.error());
    fmt::print(stderr, "{}", status_text(final_status));
  }
  return ok ? 0 : 1;
}

// Common to run and restore: the API socket first (a taken path fails
// before any VM exists), signals routed to a signalfd before any vCPU
// thread exists (threads inherit the mask), then the VM.
int run_vm_process(const VmProcessOptions& o,
                   const std::function<Result<std::unique_ptr<kvm::Machine>>(kvm::Serial::Sink, kvm::Machine::Notify)>& make,
                   const char* verb, const WhileMaking* while_making = nullptr) {
  if (auto ok = native_kvm_usable(); !ok) {
    fmt::print(stderr,
               "ferry {}: {}\n  This command needs /dev/kvm. Without it, run it inside the sandbox:\n"
               "  tools/kvm-sandbox -- build/tools/ferry {} ...   (see docs/sandbox.md)\n",
               verb, ok.error(), verb);
    return 1;
  }
  const std::string api_path = o.api.empty() ? default_api_path() : o.api;
  auto api = control::ApiServer::listen(api_path);
  if (!api) {
    fmt::print(stderr, "ferry {}: {}\n", verb, api.error());
    return 1;
  }
  auto signals = control::take_signals();
  if (!signals) {
    fmt::print(stderr, "ferry {}: {}\n", verb, signals.error());
    return 1;
  }
  UniqueFd signal_fd = std::move(*signals);
  UniqueFd stopped_fd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!stopped_fd) {
    fmt::print(stderr, "ferry {}: {}\n", verb, sys_error("eventfd"));
    return 1;
  }
  auto console = ConsoleSink::open(o);
  if (!console) {
    fmt::print(stderr, "ferry {}: {}\n", verb, console.error());
    return 1;
  }
  const int efd = stopped_fd.get();
  // Until the VM exists (a receive can take minutes, and hold a VM for an
  // operator after that), the API answers with while_making's handler and
  // signals go to its on_signal, on a thread of their own.
  std::thread early;
  if (while_making) {
    api->watch(signal_fd.get(), [&] {
      signalfd_siginfo si{};
      if (::read(signal_fd.get(), &si, sizeof si) == sizeof si) while_making->on_signal(static_cast<int>(si.ssi_signo));
    });
    early = std::thread([&] { (void)api->serve(while_making->handler); });
  }
  auto stop_early = [&] {
    if (!early.joinable()) return;
    api->stop();
    early.join();
    api->clear_watches();
  };
  auto m = make([c = *console](std::string_view s) { c->write(s); },
                [efd] {
                  const std::uint64_t one = 1;
                  [[maybe_unused]] const ssize_t n = ::write(efd, &one, sizeof one);
                });
  stop_early();
  if (!m) {
    fmt::print(stderr, "ferry {}: {}\n", verb, m.error());
    return 1;
  }
  const auto st = (*m)->status();
  if (o.json) {
    fmt::print("{}\n", json{{"event", "started"}, {"pid", ::getpid()}, {"api", api_path},
                            {"state", kvm::run_state_name(st.state)}}
                           .dump());
  } else {
    fmt::print(stderr, "ferry: VM {} (pid {}), {} vCPUs, {} MiB. Control it with:\n"
               "  ferry status --vm {}\n  ferry snapshot --vm {} FILE\n  ferry quit --vm {}\n",
               kvm::run_state_name(st.state), ::getpid(), st.vcpus, st.memory_bytes >> 20, api_path, api_path,
               api_path);
  }
  std::fflush(stdout);
  return serve_vm(**m, *api, stopped_fd, signal_fd, o);
}

void add_process_options(CLI::App* cmd, VmProcessOptions& o) {
  cmd->add_option("--api", o.api, "control API socket (default $XDG_RUNTIME_DIR/ferry-PID.sock, else /tmp)");
  cmd->add_flag("--console", o.console, "copy the guest's serial console to stdout");
  cmd->add_option("--serial-log", o.serial_log, "append the guest's serial console to FILE");
  cmd->add_flag("--json", o.json, "print a JSON line when the VM starts and one when it stops");
  cmd->add_option("--hugepages", o.huge_pages,
                  "guest RAM backing: auto (thp where /sys/kernel/mm/transparent_hugepage/shmem_enabled allows "
                  "it, else off), off (4 KiB), thp (transparent, where shmem THP is enabled) or hugetlb "
                  "(2 MiB pages reserved with vm.nr_hugepages)")
      ->check(CLI::IsMember({"auto", "off", "thp", "hugetlb"}))
      ->capture_default_str();
}

}  // namespace

void add_run(CLI::App& app, Globals& g) {
  auto opts = std::make_shared<RunOptions>();
  auto* cmd = app.add_subcommand("run", "Start a VM running the built-in test guest and serve its control API.");
  cmd->footer(
      "With --kernel, boots Linux (x86 64-bit boot protocol, ACPI, serial console on ttyS0;\n"
      "default 512M of RAM); its console is the serial port (--console, --serial-log, and the\n"
      "API's console command for input). Otherwise the built-in guest dirties its working set and verifies every page before rewriting it;\n"
      "a lost or corrupted page stops the VM with an error. Control the VM with\n"
      "`ferry status|pause|resume|snapshot|quit --vm SOCKET`. Exit status: 0 when it quit or\n"
      "powered off cleanly, 1 when the guest or a vCPU failed. See docs/control-api.md.");
  cmd->add_option("--memory", opts->memory, "guest RAM, e.g. 64M or 1G (default: what the working set needs)");
  cmd->add_option("--vcpus", opts->vcpus, "vCPUs (1..16)")->check(CLI::Range(1, 16))->capture_default_str();
  cmd->add_option("--workload", opts->workload, "idle or dirty")
      ->check(CLI::IsMember({"idle", "dirty"}))
      ->capture_default_str();
  cmd->add_option("--pattern", opts->pattern, "sequential, random or hotcold")
      ->check(CLI::IsMember({"sequential", "random", "hotcold"}))
      ->capture_default_str();
  cmd->add_option("--working-set", opts->working_set_mib, "MiB the guest dirties")->capture_default_str();
  cmd->add_option("--rate", opts->rate_mib_s, "dirty rate in MiB/s for the whole VM (0: as fast as it can)")
      ->capture_default_str();
  cmd->add_option("--hot-percent", opts->hot_percent, "hotcold: share of pages that are hot")
      ->check(CLI::Range(1, 99))
      ->capture_default_str();
  cmd->add_option("--max-rewrites", opts->max_rewrites, "stop dirtying after N page writes per vCPU (0: never)")
      ->capture_default_str();
  cmd->add_flag("--poweroff-when-done", opts->poweroff_when_done, "power off once every vCPU reached --max-rewrites");
  cmd->add_flag("--no-irqchip", opts->no_irqchip, "no in-kernel PIC/IOAPIC/LAPIC/PIT");
  auto* kernel = cmd->add_option("--kernel", opts->kernel, "boot this Linux bzImage instead of the built-in guest")
                     ->check(CLI::ExistingFile);
  cmd->add_option("--initrd", opts->initrd, "Linux: initramfs (cpio, optionally compressed)")
      ->check(CLI::ExistingFile)
      ->needs(kernel);
  cmd->add_option("--cmdline", opts->cmdline, "Linux: kernel command line")->needs(kernel)->capture_default_str();
  cmd->add_option("--net", opts->nets,
                  "Linux: a virtio-net device on the TAP interface NAME (made if missing; needs CAP_NET_ADMIN), with "
                  "this MAC or a random 52:54:00:xx:xx:xx one; repeatable (eth0, eth1, ...)")
      ->type_name("tap=NAME[,mac=MAC]")
      ->needs(kernel);
  add_process_options(cmd, *opts);
  cmd->callback([opts, &g] {
    kvm::MachineConfig c;
    if (!opts->memory.empty()) {
      auto mem = parse_size_mib_default(opts->memory);
      if (!mem) {
        fmt::print(stderr, "ferry run: --memory: {}\n", mem.error());
        g.rc = 2;
        return;
      }
      c.memory_bytes = *mem;
    }
    c.irqchip = !opts->no_irqchip;
    c.huge_pages = kvm::huge_pages_from_option(opts->huge_pages);
    if (!opts->kernel.empty()) {
      c.kind = kvm::GuestKind::kLinux;
      c.linux_boot = {opts->kernel, opts->initrd, opts->cmdline, opts->vcpus, {}};
    }
    auto nets = kvm::net::parse_nets(opts->nets);
    if (!nets) {
      fmt::print(stderr, "ferry run: {}\n", nets.error());
      g.rc = 2;
      return;
    }
    c.nets = std::move(*nets);
    auto& t = c.guest;
    t.vcpus = opts->vcpus;
    t.workload = opts->workload == "idle" ? FG_IDLE : FG_DIRTY;
    t.pattern = opts->pattern == "random" ? FG_RANDOM : opts->pattern == "hotcold" ? FG_HOTCOLD : FG_SEQUENTIAL;
    t.hot_percent = opts->hot_percent;
    t.working_set_mib = opts->working_set_mib;
    t.rate_mib_s = opts->rate_mib_s;
    t.max_rewrites = opts->max_rewrites;
    t.poweroff_when_done = opts->poweroff_when_done;
    g.rc = run_vm_process(
        *opts, [&](kvm::Serial::Sink console, kvm::Machine::Notify n) { return kvm::Machine::boot(c, console, n); }, "run");
  });
}

void add_restore(CLI::App& app, Globals& g) {
  auto opts = std::make_shared<RestoreOptions>();
  auto* cmd = app.add_subcommand("restore", "Start a VM from a snapshot file; the guest continues where it stopped.");
  cmd->footer("The snapshot is checked (format, version, CRC of state and memory) before anything runs.\n"
              "Same control API and exit status as `ferry run`.");
  cmd->add_option("FILE", opts->file, "snapshot written by `ferry snapshot`")->required()->check(CLI::ExistingFile);
  cmd->add_flag("--paused", opts->paused, "keep the vCPUs stopped until `ferry resume`");
  cmd->add_option("--net", opts->nets,
                  "the TAP for the snapshot's next network device, in order (the MAC comes from the snapshot)")
      ->type_name("tap=NAME");
  add_process_options(cmd, *opts);
  cmd->callback([opts, &g] {
    auto parsed = kvm::net::parse_nets(opts->nets);
    if (!parsed) {
      fmt::print(stderr, "ferry restore: {}\n", parsed.error());
      g.rc = 2;
      return;
    }
    const std::vector<kvm::net::NetConfig> nets = std::move(*parsed);
    auto snap = kvm::Snapshot::open(opts->file);
    if (!snap) {
      fmt::print(stderr, "ferry restore: {}\n", snap.error());
      g.rc = 1;
      return;
    }
    g.rc = run_vm_process(
        *opts,
        [&](kvm::Serial::Sink console, kvm::Machine::Notify n) {
          return kvm::Machine::restore(*snap, console, n, opts->paused, kvm::huge_pages_from_option(opts->huge_pages),
                                       nets);
        },
        "restore");
  });
}

}  // namespace ferry::cli

namespace ferry::cli {
namespace {

// Where `ferry receive` keeps its session records unless told: the
// system's state directory for root, the user's own otherwise.
std::string default_state_dir() {
  if (::geteuid() == 0) return "/var/lib/ferry/sessions";
  if (const char* x = std::getenv("XDG_STATE_HOME"); x && *x) return std::string(x) + "/ferry/sessions";
  if (const char* h = std::getenv("HOME"); h && *h) return std::string(h) + "/.local/state/ferry/sessions";
  return "/var/lib/ferry/sessions";
}

// The receiving process's API until the VM runs here: status says how far
// the incoming migration got, and a VM held after READY can be committed
// forward when its source is gone for good (`ferry resolve --vm SOCKET
// --source-gone`; the socket is its owner's only, mode 0600). A signal
// before READY gives the migration up (the source keeps the VM); from
// READY on it is refused, as COMMIT may be on its way or the only copy is
// here.
WhileMaking incoming_api(migration::IncomingControl& control) {
  WhileMaking w;
  w.handler = [&control](const std::string& cmd, const json& req) -> Result<json> {
    const auto v = control.view();
    const json in = {{"phase", migration::incoming_phase_name(v.phase)},
                     {"session", fmt::format("{:#018x}", v.session)},
                     {"source", v.source}};
    if (cmd == "status") return json{{"state", "incoming"}, {"incoming", in}};
    if (cmd == "resolve" && req.value("source_gone", false)) {
      if (auto ok = control.commit_forward(std::chrono::seconds(30)); !ok) return std::unexpected(ok.error());
      return json{{"resolved", "committed"}, {"session", in["session"]}, {"source", v.source}};
    }
    return fail("no VM runs here yet: the incoming migration is {} (status works, and `ferry resolve --vm SOCKET "
                "--source-gone` while it is holding)",
                migration::incoming_phase_name(v.phase));
  };
  w.on_signal = [&control](int signo) {
    using P = migration::IncomingPhase;
    const auto p = control.view().phase;
    if (p == P::kReady || p == P::kHolding || p == P::kRunning) {
      spdlog::warn("ignoring signal {}: the incoming migration is {}: ending now could lose the only copy of the VM; "
                   "settle it with `ferry resolve` first (SIGKILL still works)",
                   ::strsignal(signo), migration::incoming_phase_name(p));
      return;
    }
    fmt::print(stderr, "ferry receive: {} while the migration was {}: giving it up (the VM keeps running on the source)\n",
               ::strsignal(signo), migration::incoming_phase_name(p));
    std::fflush(stderr);
    std::_Exit(1);
  };
  return w;
}

}  // namespace

void add_receive(CLI::App& app, Globals& g) {
  struct ReceiveCliOptions : VmProcessOptions {
    std::string listen;
    std::string state_dir = default_state_dir();
    SecurityFlags security;
    std::vector<std::string> nets;
    bool no_announce = false;
  };
  auto opts = std::make_shared<ReceiveCliOptions>();
  auto* cmd = app.add_subcommand("receive", "Wait for one incoming live migration, then run the VM it brings.");
  cmd->footer(
      "Like `qemu -incoming`: listens on ADDR:PORT, checks the source's VM can run here (protocol version,\n"
      "memory layout, vCPUs, CPU features against this host's KVM, free memory) and refuses with the reason\n"
      "otherwise, receives memory straight into guest RAM on every stream, loads the CPU and device state,\n"
      "answers READY and runs the VM only when the source sends COMMIT. Then it serves the same control API\n"
      "as `ferry run` and keeps answering `ferry resolve` on ADDR:PORT. Exit status: as `ferry run`; 1 when\n"
      "the migration failed (the VM keeps running on the source). See docs/protocol.md.");
  cmd->add_option("--listen", opts->listen, "ADDR:PORT to listen on (port 0: any free port, printed)")->required();
  cmd->add_option("--net", opts->nets,
                  "the TAP here for the VM's next network device, in the source's order (its name may differ from "
                  "the source's; the MAC comes with the VM). Its carrier stays off until the VM runs here")
      ->type_name("tap=NAME");
  cmd->add_flag("--no-announce", opts->no_announce,
                "once the VM runs here, do not ask the guest to announce itself nor send RARPs from its MACs "
                "(switches then learn its new port only from its own traffic)");
  cmd->add_option("--state-dir", opts->state_dir,
                  "where COMMIT and discarded copies are recorded (fsync'd) before they are acted on; a receiver "
                  "restarted on the same directory answers `ferry resolve` from these records (default: "
                  "/var/lib/ferry/sessions for root, else $XDG_STATE_HOME/ferry/sessions or "
                  "~/.local/state/ferry/sessions)");
  add_security_flags(cmd, opts->security);
  add_process_options(cmd, *opts);
  cmd->callback([opts, &g] {
    auto security = security_of(opts->security, transport::TlsRole::kServer);
    if (!security) {
      fmt::print(stderr, "ferry receive: {}\n", security.error());
      g.rc = 2;
      return;
    }
    auto records = migration::SessionRecords::open(opts->state_dir);
    if (!records) {
      fmt::print(stderr, "ferry receive: --state-dir: {}\n", records.error());
      g.rc = 1;
      return;
    }
    auto parsed = kvm::net::parse_nets(opts->nets);
    if (!parsed) {
      fmt::print(stderr, "ferry receive: {}\n", parsed.error());
      g.rc = 2;
      return;
    }
    const std::vector<kvm::net::NetConfig> nets = std::move(*parsed);
    auto ep = transport::parse_endpoint(opts->listen);
    if (!ep) {
      fmt::print(stderr, "ferry receive: --listen: {}\n", ep.error());
      g.rc = 2;
      return;
    }
    auto listener = transport::listen(*ep, *security);
    if (!listener) {
      fmt::print(stderr, "ferry receive: {}\n", listener.error());
      g.rc = 1;
      return;
    }
    const std::string where = (*listener)->address();
    if (opts->json)
      fmt::print("{}\n", json{{"event", "listening"},
                              {"listen", where},
                              {"pid", ::getpid()},
                              {"security", security->describe()}}
                             .dump());
    else
      fmt::print(stderr, "ferry: waiting for a migration on {} (pid {}; {})\n", where, ::getpid(),
                 security->describe());
    std::fflush(stdout);
    std::unique_ptr<migration::ResolveResponder> responder;
    migration::ReceivedFigures figs;
    migration::IncomingControl control;
    const WhileMaking while_receiving = incoming_api(control);
    g.rc = run_vm_process(
        *opts,
        [&](kvm::Serial::Sink console, kvm::Machine::Notify n) -> Result<std::unique_ptr<kvm::Machine>> {
          migration::ReceiveOptions ro;
          ro.huge_pages = kvm::huge_pages_from_option(opts->huge_pages);
          ro.nets = nets;
          ro.announce = !opts->no_announce;
          ro.records = &*records;
          ro.control = &control;
          const bool json_out = opts->json;
          ro.progress = [json_out](const std::string& line) {
            if (!json_out) fmt::print(stderr, "ferry: {}\n", line);
          };
          auto r = migration::receive_vm(**listener, ro, console, n);
          if (!r) return std::unexpected(std::move(r.error()).context("migration"));
          figs = r->figures;
          responder = std::make_unique<migration::ResolveResponder>(**listener, figs.session, &*records, figs.secret);
          if (json_out)
            fmt::print("{}\n", json{{"event", "received"},
                                    {"session", fmt::format("{:#018x}", figs.session)},
                                    {"source", figs.source_host},
                                    {"streams", figs.streams},
                                    {"rounds", figs.rounds},
                                    {"pages", figs.pages},
                                    {"zero_pages", figs.zero_pages},
                                    {"zeroed_pages", figs.zeroed_pages},
                                    {"torn_pages", figs.torn_pages},
                                    {"refused_connections", figs.refused_connections},
                                    {"bytes", figs.bytes},
                                    {"receive_ms", figs.receive_ms},
                                    {"load_ms", figs.load_ms},
                                    {"guest_downtime_ms", figs.guest_downtime_ms},
                                    {"verified", figs.verified}}
                                   .dump());
          else
            fmt::print(stderr,
                       "ferry: VM received from {} in {} round(s): {} pages, {} zero markers ({} zeroed), {} copies "
                       "modified in flight (re-sent); state loaded in {:.1f} ms{}\n",
                       figs.source_host, figs.rounds, figs.pages, figs.zero_pages, figs.zeroed_pages, figs.torn_pages,
                       figs.load_ms,
                       figs.guest_downtime_ms >= 0 ? fmt::format("; the guest saw {:.1f} ms without a heartbeat",
                                                                 figs.guest_downtime_ms)
                                                   : "");
          return std::move(r->machine);
        },
        "receive", &while_receiving);
    responder.reset();
  });
}

}  // namespace ferry::cli

// `ferry trace`: the performance-tracing CLI. eBPF programs on KVM's dirty
// tracepoints and on tcp:tcp_probe aggregate in the kernel; this reads the
// totals every interval and shows, per KVM VM on the host (any VMM's: a VM
// is a process holding an anon_inode:kvm-vm fd), its dirty rate per vCPU,
// working set and re-dirty ratio, and per registered port the connections'
// RTT, congestion window and retransmissions.
#include <dirent.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <thread>

#include <fmt/format.h>

#include "bpf/dirty_tracer.hh"
#include "bpf/tcp_tracer.hh"
#include "tools/ferry/commands.hh"
#include "tools/ferry/trace_model.hh"

namespace ferry::cli {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

struct TraceCli {
  std::vector<int> pids;
  bool all = false;
  std::vector<std::uint16_t> ports;
  unsigned interval_ms = 1000;
  double duration_s = 0;
  double window_s = 10;
  unsigned top = 5;
  bool json = false;
  bool vcpus = true;
};

std::atomic<bool> g_stop{false};
extern "C" void on_stop_signal(int) { g_stop = true; }

bool holds_kvm_vm(int pid) {
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(fmt::format("/proc/{}/fd", pid), ec)) {
    std::error_code lec;
    if (fs::read_symlink(e.path(), lec).string() == "anon_inode:kvm-vm") return true;
  }
  return false;
}

std::string comm_of(int pid) {
  std::ifstream f(fmt::format("/proc/{}/comm", pid));
  std::string s;
  std::getline(f, s);
  return s.empty() ? "?" : s;
}

std::vector<int> all_vms() {
  std::vector<int> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator("/proc", ec)) {
    const auto name = e.path().filename().string();
    if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos) continue;
    const int pid = std::stoi(name);
    if (pid != ::getpid() && holds_kvm_vm(pid)) out.push_back(pid);
  }
  return out;
}

// Root, or the capabilities that loading tracing programs needs (CAP_BPF
// and CAP_PERFMON, or CAP_SYS_ADMIN on its own), read from CapEff.
bool can_load_bpf() {
  if (::geteuid() == 0) return true;
  std::ifstream f("/proc/self/status");
  for (std::string line; std::getline(f, line);) {
    if (!line.starts_with("CapEff:")) continue;
    const std::uint64_t eff = std::stoull(line.substr(7), nullptr, 16);
    auto has = [&](int cap) { return ((eff >> cap) & 1) != 0; };
    constexpr int kSysAdmin = 21, kPerfmon = 38, kBpf = 39;
    return has(kSysAdmin) || (has(kBpf) && has(kPerfmon));
  }
  return false;
}

// What stops eBPF tracing on this host, with the fix `ferry doctor` gives.
std::optional<std::string> preflight() {
  std::error_code ec;
  if (!can_load_bpf())
    return "loading eBPF programs needs root (or CAP_BPF + CAP_PERFMON): run `sudo ferry trace ...`; "
           "`ferry doctor` checks it (ebpf load_attach)";
  if (!fs::exists("/sys/kernel/btf/vmlinux", ec))
    return "this kernel has no BTF (/sys/kernel/btf/vmlinux), so CO-RE programs cannot load: use a kernel built "
           "with CONFIG_DEBUG_INFO_BTF=y; `ferry doctor` checks it (ebpf btf)";
  if (!fs::exists("/sys/kernel/tracing/events", ec) && !fs::exists("/sys/kernel/debug/tracing/events", ec))
    return "tracefs is not mounted, so tracepoints cannot be attached: run `mount -t tracefs nodev "
           "/sys/kernel/tracing`; `ferry doctor` checks it (ebpf tracefs)";
  return std::nullopt;
}

int run_trace(const TraceCli& o) {
  if (o.all == !o.pids.empty()) {
    fmt::print(stderr, "ferry trace: give --pid PID (one or more) or --all\n");
    return 2;
  }
  // Privileges first: without them /proc/PID/fd is unreadable and every
  // process would look like it holds no VM.
  if (auto why = preflight()) {
    fmt::print(stderr, "ferry trace: {}\n", *why);
    return 1;
  }
  for (int pid : o.pids) {
    if (!fs::exists(fmt::format("/proc/{}", pid))) {
      fmt::print(stderr, "ferry trace: no process {}\n", pid);
      return 1;
    }
    if (!holds_kvm_vm(pid)) {
      fmt::print(stderr, "ferry trace: process {} ({}) holds no KVM VM (no anon_inode:kvm-vm file descriptor)\n", pid,
                 comm_of(pid));
      return 1;
    }
  }
  bpf::DirtyTracer::Options dopt;
  if (o.pids.size() == 1) dopt.tgid = o.pids[0];  // one VM: filter in the kernel
  auto dirty = bpf::DirtyTracer::open(dopt);
  if (!dirty) {
    fmt::print(stderr, "ferry trace: {}\n(`ferry doctor` lists what this host lacks for eBPF)\n", dirty.error());
    return 1;
  }
  std::optional<bpf::TcpTracer> tcp;
  if (!o.ports.empty()) {
    auto t = bpf::TcpTracer::open();
    if (!t) {
      fmt::print(stderr, "ferry trace: {}\n(`ferry doctor` lists what this host lacks for eBPF)\n", t.error());
      return 1;
    }
    tcp.emplace(std::move(*t));
    for (auto p : o.ports)
      if (auto ok = tcp->watch_port(p); !ok) {
        fmt::print(stderr, "ferry trace: --port {}: {}\n", p, ok.error());
        return 1;
      }
  }
  ::signal(SIGINT, on_stop_signal);
  ::signal(SIGTERM, on_stop_signal);

  const bool tty = ::isatty(STDOUT_FILENO) && !o.json;
  const auto t0 = Clock::now();
  auto last = t0;
  std::map<std::pair<int, std::uint32_t>, trace::Rate> vcpu_rates;
  std::map<int, trace::Rate> vm_rates;
  std::map<int, trace::WindowHistory> windows;
  std::map<std::string, trace::Rate> acked_rates;
  std::map<std::string, std::uint64_t> retrans_last;
  std::set<std::string> notes_said;
  bool first = true;
  for (auto next = t0 + std::chrono::milliseconds(o.interval_ms);; next += std::chrono::milliseconds(o.interval_ms)) {
    while (Clock::now() < next && !g_stop) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    if (g_stop) break;
    const auto now = Clock::now();
    trace::Frame f;
    f.t_s = std::chrono::duration<double>(now - t0).count();
    f.interval_s = std::chrono::duration<double>(now - last).count();
    last = now;
    f.ports = o.ports;

    auto counts = dirty->vcpu_counts();
    if (!counts) {
      fmt::print(stderr, "ferry trace: {}\n", counts.error());
      return 1;
    }
    const std::uint64_t know = bpf::DirtyTracer::now_ns();
    for (int pid : o.all ? all_vms() : o.pids) {
      trace::VmRow v;
      v.pid = pid;
      v.name = comm_of(pid);
      const auto src = bpf::counting_source(*counts, pid);
      const std::uint64_t total = bpf::total_events(*counts, pid, src);
      if (total > 0) v.source = std::string(bpf::dirty_source_name(src));
      for (const auto& c : *counts) {
        if (c.tgid != pid || c.source != src) continue;
        trace::VcpuRate r{.vcpu = c.vcpu, .tid = c.tid, .events = c.events};
        r.pages_per_s = vcpu_rates[{pid, c.vcpu}].update(c.events, f.interval_s);
        v.vcpus.push_back(r);
      }
      v.pages_per_s = vm_rates[pid].update(total, f.interval_s);
      auto [in_window, eff] = windows[pid].add(f.t_s, total, o.window_s, o.interval_ms / 2000.0);
      v.events_in_window = in_window;
      v.window_s = eff;
      auto pages = dirty->pages(pid, src, know, static_cast<std::uint64_t>(eff * 1e9), std::size_t{o.top});
      if (pages) {
        v.working_set = pages->in_window;
        v.redirty_ratio = pages->redirty_ratio(in_window);
        for (const auto& h : pages->hottest) v.hottest.push_back(trace::HotPage{.slot = h.slot, .page = h.page, .count = h.count});
      }
      if (total == 0)
        v.note = "no dirty events yet: dirty logging is off (it is on during a migration or `ferry dirty-rate`), "
                 "or this host's KVM fires no tracepoint for it (dirty bitmap without write faults, e.g. PVM)";
      else if (v.pages_per_s == 0 && !first)
        v.note = "no dirty events this interval (dirty logging off, or nothing written)";
      f.vms.push_back(std::move(v));
    }
    if (tcp) {
      auto conns = tcp->connections();
      if (conns) {
        for (const auto& c : *conns) {
          trace::ConnRow r;
          r.local = c.local;
          r.remote = c.remote;
          r.srtt_ms = c.srtt_us / 1000.0;
          r.cwnd = c.cwnd_segments;
          r.ssthresh = c.ssthresh;
          r.mss = c.mss;
          r.snd_wnd = c.snd_wnd_bytes;
          r.capacity_bytes_per_s = c.capacity_bytes_per_s();
          const std::string key = c.local + ">" + c.remote + fmt::format("#{}", c.cookie);
          r.acked_bytes_per_s = acked_rates[key].update(c.bytes_acked, f.interval_s);
          r.retransmits = c.retransmits;
          r.retransmits_interval = c.retransmits - retrans_last[key];
          retrans_last[key] = c.retransmits;
          f.connections.push_back(std::move(r));
        }
      }
    }
    if (auto drops = dirty->drops(); drops && (drops->page_insert || drops->vcpu_map_full)) {
      f.notes.push_back(fmt::format("the kernel maps were full: {} page events and {} vCPU counts not recorded",
                                    drops->page_insert, drops->vcpu_map_full));
    }
    if (o.json) {
      fmt::print("{}\n", trace::to_json(f).dump());
    } else {
      if (tty) fmt::print("\x1b[H\x1b[2J");
      fmt::print("{}\n", trace::render(f, o.vcpus));
    }
    std::fflush(stdout);
    first = false;
    if (o.duration_s > 0 && f.t_s >= o.duration_s - 1e-3) break;
  }
  return 0;
}

}  // namespace

void add_trace(CLI::App& app, Globals& g) {
  auto o = std::make_shared<TraceCli>();
  auto* cmd = app.add_subcommand(
      "trace", "Trace KVM VMs' page dirtying (per VM and vCPU: rate, working set, re-dirty ratio, hottest pages) and "
               "migration connections (RTT, cwnd, retransmits) with eBPF, refreshing every interval.");
  cmd->footer(
      "Works for any KVM VM on this host (Ferry's, QEMU's, ...) while its dirty logging is on: during a\n"
      "migration, or `ferry dirty-rate --vm SOCKET --seconds N` for a Ferry VM. A VM with dirty logging off\n"
      "shows no events (the table says so). Dirty events come from kvm:kvm_dirty_ring_push (dirty-ring VMs)\n"
      "or kvmmmu:fast_page_fault write faults (bitmap VMs where KVM write-protects pages).\n"
      "Working set: distinct pages dirtied in the last --window seconds; re-dirty ratio: dirty events in that\n"
      "window per page of it (with the ring, how many harvest cycles a page was dirty again).\n"
      "Needs root (CAP_BPF + CAP_PERFMON), kernel BTF and tracefs: `ferry doctor` checks all three.\n"
      "--json prints one JSON object per interval (docs/tracing.md describes the fields).");
  cmd->add_option("--pid", o->pids, "trace this VM process (repeatable)");
  cmd->add_flag("--all", o->all, "trace every KVM VM on the host, including ones that start later");
  cmd->add_option("--port", o->ports, "show TCP connections with this local or remote port (repeatable)");
  cmd->add_option("--interval", o->interval_ms, "refresh every MS milliseconds")
      ->check(CLI::Range(50u, 60000u))
      ->capture_default_str();
  cmd->add_option("--duration", o->duration_s, "stop after S seconds (0: until Ctrl-C)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_option("--window", o->window_s, "working-set window, seconds")
      ->check(CLI::Range(0.1, 3600.0))
      ->capture_default_str();
  cmd->add_option("--top", o->top, "hottest pages to show per VM")->check(CLI::Range(0u, 100u))->capture_default_str();
  cmd->add_flag("--json", o->json, "one JSON object per interval instead of the table");
  cmd->callback([o, &g] { g.rc = run_trace(*o); });
}

}  // namespace ferry::cli

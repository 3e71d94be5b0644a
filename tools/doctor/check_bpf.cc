// eBPF checks: BTF (for CO-RE), tracefs, the tracepoints Ferry attaches to,
// and an actual load + attach of a tiny tracepoint program. eBPF feeds the
// tracing CLI and the adaptive switchover policy; migration itself works
// without it, so problems here are WARN, never FAIL.
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>

#include <fmt/format.h>

#include "tools/doctor/checks.hh"
#ifdef FERRY_HAVE_BPF
#include "bpf/doctor_probe_loader.hh"
#endif

namespace ferry::doctor {
namespace {

Check make(std::string name, Level level, std::string detail, std::string remedy, nlohmann::json value) {
  return Check{"ebpf", std::move(name), level, std::move(detail), std::move(remedy), std::move(value)};
}

}  // namespace

const std::vector<std::string>& required_tracepoints() {
  static const std::vector<std::string> tps = {
      "kvm/kvm_dirty_ring_push",   // page dirtying (dirty-ring VMs)
      "kvm/kvm_dirty_ring_reset",  // harvest cadence
      "kvm/kvm_dirty_ring_exit",   // ring-full stalls
      "kvmmmu/fast_page_fault",    // write-protect faults (dirty-bitmap VMs)
      "tcp/tcp_probe",             // RTT, cwnd, send window per connection
      "tcp/tcp_retransmit_skb",    // retransmissions
      "sock/inet_sock_set_state",  // TCP sockets as they connect (their MSS, on 6.1)
      "io_uring/io_uring_submit_req|io_uring_submit_sqe",  // renamed after 6.1
      "io_uring/io_uring_complete",  // send completion latency
  };
  return tps;
}

std::vector<Check> check_bpf(const std::string& tracefs) {
  namespace fs = std::filesystem;
  std::vector<Check> out;
  std::error_code ec;

  const bool btf = fs::exists("/sys/kernel/btf/vmlinux", ec);
  out.push_back(make("btf", btf ? Level::kOk : Level::kWarn,
                     btf ? "kernel BTF at /sys/kernel/btf/vmlinux (CO-RE works)" : "no kernel BTF: CO-RE programs cannot load",
                     btf ? "" : "use a kernel built with CONFIG_DEBUG_INFO_BTF=y", btf));

  const bool tracefs_ok = fs::exists(fs::path(tracefs) / "events", ec);
  out.push_back(make("tracefs", tracefs_ok ? Level::kOk : Level::kWarn,
                     tracefs_ok ? fmt::format("tracefs mounted at {}", tracefs) : fmt::format("tracefs not mounted at {}", tracefs),
                     tracefs_ok ? "" : fmt::format("mount -t tracefs nodev {}", tracefs), tracefs_ok));

  if (tracefs_ok) {
    for (const auto& spec : required_tracepoints()) {
      // "group/name|other_name": any of the names will do (kernels rename).
      const auto slash = spec.find('/');
      const std::string group = spec.substr(0, slash);
      std::vector<std::string> names;
      for (std::size_t pos = slash + 1;;) {
        const auto bar = spec.find('|', pos);
        names.push_back(spec.substr(pos, bar - pos));
        if (bar == std::string::npos) break;
        pos = bar + 1;
      }
      std::string tp = group + "/" + names.front();
      bool present = false;
      for (const auto& name : names) {
        if (fs::exists(fs::path(tracefs) / "events" / group / name / "id", ec)) {
          present = true;
          tp = group + "/" + name;
          break;
        }
      }
      std::string remedy;
      if (!present)
        remedy = tp.starts_with("kvm") ? "load the kvm module (its tracepoints come with it)"
                                       : "kernel lacks this tracepoint; `ferry trace` loses that measurement";
      out.push_back(make(fmt::format("tp:{}", spec.substr(0, spec.find('|'))), present ? Level::kOk : Level::kWarn,
                         present ? fmt::format("tracepoint {} present", tp) : fmt::format("tracepoint {} missing", tp), remedy,
                         present));
    }
  }

#ifdef FERRY_HAVE_BPF
  auto probe = bpf::run_attach_probe();
  if (probe) {
    // run_attach_probe() already fails unless every trigger was counted.
    out.push_back(make("load_attach", Level::kOk,
                       fmt::format("loaded and attached a program to {}: {} hits", probe->tracepoint, probe->hits), "",
                       probe->hits));
  } else {
    out.push_back(make("load_attach", Level::kWarn, probe.error().what(),
                       ::geteuid() == 0 ? "see the libbpf log above (ferry --log-level debug doctor)"
                                        : "run as root (CAP_BPF + CAP_PERFMON)",
                       false));
  }
#else
  out.push_back(make("load_attach", Level::kWarn, "this ferry was built without eBPF (FERRY_BPF=OFF)",
                     "rebuild with -DFERRY_BPF=ON", false));
#endif
  return out;
}

}  // namespace ferry::doctor

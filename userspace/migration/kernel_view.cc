#include "userspace/migration/kernel_view.hh"

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <map>
#include <mutex>
#include <set>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "bpf/dirty_tracer.hh"
#include "bpf/tcp_tracer.hh"

namespace ferry::migration {
namespace {

using Clock = std::chrono::steady_clock;

std::uint16_t local_port(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return 0;
  if (ss.ss_family == AF_INET) return ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
  if (ss.ss_family == AF_INET6) return ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port);
  return 0;
}

class EbpfView final : public KernelView {
 public:
  explicit EbpfView(bool use_ebpf) {
    if (!use_ebpf) {
      dirty_why_ = link_why_ = "eBPF not used (--no-ebpf)";
      return;
    }
    // Per-vCPU rates are all the policy reads: no per-page map (its 26 MiB
    // preallocation dominated the load, and updating it cost every dirtying).
    auto d = bpf::DirtyTracer::open({.tgid = ::getpid(), .count_pages = false});
    if (d) {
      dirty_.emplace(std::move(*d));
    } else {
      dirty_why_ = fmt::format("eBPF unavailable: {}", d.error().what());
    }
    auto t = bpf::TcpTracer::open();
    if (t) {
      tcp_.emplace(std::move(*t));
    } else {
      link_why_ = fmt::format("eBPF unavailable: {}", t.error().what());
    }
    if (!dirty_ || !tcp_) spdlog::warn("migration: adaptive policy without part of its kernel view: {}", describe());
  }

  void watch_socket(int fd) override {
    if (!tcp_) return;
    const std::uint16_t port = local_port(fd);
    if (port == 0) return;
    if (auto ok = tcp_->watch_port(port); !ok) {
      spdlog::warn("migration: cannot watch port {} with eBPF: {}", port, ok.error());
      return;
    }
    ports_.insert(port);
  }

  void round_begin() override {
    t_begin_ = Clock::now();
    begin_ = dirty_counts();
  }

  std::optional<KernelRound> round_end() override {
    if (!dirty_ && !tcp_) return std::nullopt;
    KernelRound k;
    const double secs = std::chrono::duration<double>(Clock::now() - t_begin_).count();
    if (dirty_ && secs > 0) {
      const auto end = dirty_counts();
      std::uint64_t total = 0;
      std::vector<double> rates;
      for (const auto& [vcpu, n] : end) {
        const auto it = begin_.find(vcpu);
        // The source (ring or write faults) can differ between readings,
        // or the first reading may have failed: never let a delta wrap.
        const std::uint64_t b = it == begin_.end() ? 0 : it->second;
        const std::uint64_t delta = n >= b ? n - b : 0;
        if (rates.size() <= vcpu) rates.resize(vcpu + 1, 0.0);
        rates[vcpu] = static_cast<double>(delta) / secs;
        total += delta;
      }
      // Silence is not "nothing dirtied": on hosts where KVM fires none of
      // our tracepoints for this VM, the harvest still finds pages. Only a
      // VM the tracepoints have seen counts as measured.
      if (total > 0 || seen_any_) {
        seen_any_ = true;
        k.dirty_pages_per_s = std::move(rates);
      }
    }
    if (tcp_) {
      auto conns = tcp_->connections();
      if (conns) {
        double rtt_sum = 0;
        int n = 0;
        for (const auto& c : *conns) {
          if (!ports_.contains(c.local_port)) continue;
          k.link_capacity_bytes_per_s += c.capacity_bytes_per_s();
          if (c.srtt_us > 0) {
            rtt_sum += c.srtt_us;
            ++n;
          }
        }
        if (n > 0) k.rtt = Millis(rtt_sum / n / 1000.0);
      } else {
        spdlog::debug("migration: reading TCP figures: {}", conns.error());
      }
    }
    return k;
  }

  std::string describe() const override {
    std::string dirty = dirty_ ? (seen_any_ || !dirty_->attached(bpf::DirtySource::kRing)
                                      ? "dirty rate: eBPF (kvm_dirty_ring_push / fast_page_fault)"
                                      : "dirty rate: eBPF attached, but harvests until KVM's tracepoints see this VM")
                               : fmt::format("dirty rate: harvests ({})", dirty_why_);
    if (dirty_ && !seen_any_ && used_) dirty = "dirty rate: harvests (no KVM dirty tracepoint fired for this VM: bitmap "
                                               "dirty logging on a host without write-fault events)";
    std::string link = tcp_ ? "link: eBPF tcp_probe (cwnd x mss / srtt)" : fmt::format("link: bytes pushed ({})", link_why_);
    return dirty + "; " + link;
  }

 private:
  // Events per vCPU of this process, from the source that counts them.
  std::map<std::uint32_t, std::uint64_t> dirty_counts() {
    std::map<std::uint32_t, std::uint64_t> out;
    if (!dirty_) return out;
    used_ = true;
    auto counts = dirty_->vcpu_counts();
    if (!counts) return out;
    const pid_t self = ::getpid();
    const auto src = bpf::counting_source(*counts, self);
    for (const auto& c : *counts)
      if (c.tgid == self && c.source == src) out[c.vcpu] += c.events;
    return out;
  }

  std::optional<bpf::DirtyTracer> dirty_;
  std::optional<bpf::TcpTracer> tcp_;
  std::string dirty_why_, link_why_;
  std::set<std::uint16_t> ports_;
  Clock::time_point t_begin_ = Clock::now();
  std::map<std::uint32_t, std::uint64_t> begin_;
  bool seen_any_ = false;
  bool used_ = false;
};

}  // namespace

std::unique_ptr<KernelView> KernelView::open(bool use_ebpf) { return std::make_unique<EbpfView>(use_ebpf); }

}  // namespace ferry::migration

#include "tools/ferry/trace_model.hh"

#include <fmt/format.h>

namespace ferry::cli::trace {

std::pair<std::uint64_t, double> WindowHistory::add(double t_s, std::uint64_t total, double window_s, double slack) {
  readings_.emplace_back(t_s, total);
  // Keep one reading at (about) the window's start.
  while (readings_.size() >= 2 && readings_[1].first <= t_s - window_s + slack) readings_.pop_front();
  const auto& [t0, n0] = readings_.front();
  return {total >= n0 ? total - n0 : 0, t_s - t0};
}

double Rate::update(std::uint64_t total, double interval_s) {
  const bool had = primed_;
  const std::uint64_t delta = total >= last_ ? total - last_ : 0;
  primed_ = true;
  last_ = total;
  return had && interval_s > 0 ? static_cast<double>(delta) / interval_s : 0.0;
}

nlohmann::json to_json(const Frame& f) {
  nlohmann::json vms = nlohmann::json::array();
  for (const auto& v : f.vms) {
    nlohmann::json vcpus = nlohmann::json::array(), hot = nlohmann::json::array();
    for (const auto& c : v.vcpus)
      vcpus.push_back({{"vcpu", c.vcpu}, {"tid", c.tid}, {"pages_per_s", c.pages_per_s}, {"events", c.events}});
    for (const auto& h : v.hottest) hot.push_back({{"slot", h.slot}, {"page", h.page}, {"count", h.count}});
    vms.push_back({{"pid", v.pid},
                   {"name", v.name},
                   {"source", v.source},
                   {"dirty_pages_per_s", v.pages_per_s},
                   {"dirty_bytes_per_s", v.pages_per_s * 4096},
                   {"working_set_pages", v.working_set},
                   {"working_set_bytes", v.working_set * 4096},
                   {"window_s", v.window_s},
                   {"events_in_window", v.events_in_window},
                   {"redirty_ratio", v.redirty_ratio},
                   {"vcpus", vcpus},
                   {"hottest_pages", hot},
                   {"note", v.note}});
  }
  nlohmann::json conns = nlohmann::json::array();
  for (const auto& c : f.connections)
    conns.push_back({{"local", c.local},
                     {"remote", c.remote},
                     {"srtt_ms", c.srtt_ms},
                     {"cwnd_segments", c.cwnd},
                     {"ssthresh", c.ssthresh},
                     {"mss", c.mss},
                     {"snd_wnd_bytes", c.snd_wnd},
                     {"capacity_bytes_per_s", c.capacity_bytes_per_s},
                     {"acked_bytes_per_s", c.acked_bytes_per_s},
                     {"retransmits", c.retransmits},
                     {"retransmits_interval", c.retransmits_interval}});
  return {{"t_s", f.t_s},        {"interval_s", f.interval_s}, {"vms", vms},
          {"connections", conns}, {"ports", f.ports},           {"notes", f.notes}};
}

namespace {
double mib(double b) { return b / 1048576.0; }
}  // namespace

std::string render(const Frame& f, bool show_vcpus) {
  std::string out = fmt::format("ferry trace  {:.1f} s  (interval {:.0f} ms)\n\n", f.t_s, f.interval_s * 1000);
  out += fmt::format("{:<24} {:>6} {:>11} {:>9} {:>14} {:>9}  {}\n", "VM (pid)", "src", "pages/s", "MiB/s",
                     "working set", "re-dirty", "");
  for (const auto& v : f.vms) {
    const std::string ws = fmt::format("{} ({:.0f}s)", v.working_set, v.window_s);
    out += fmt::format("{:<24} {:>6} {:>11.0f} {:>9.2f} {:>14} {:>9.2f}  {}\n",
                       fmt::format("{} ({})", v.name.substr(0, 15), v.pid), v.source.empty() ? "-" : v.source,
                       v.pages_per_s, mib(v.pages_per_s * 4096), ws, v.redirty_ratio, v.note);
    if (show_vcpus)
      for (const auto& c : v.vcpus)
        out += fmt::format("  vCPU {:<3} tid {:<8} {:>11.0f} {:>9.2f}\n", c.vcpu, c.tid, c.pages_per_s,
                           mib(c.pages_per_s * 4096));
    if (!v.hottest.empty()) {
      std::string hot;
      for (const auto& h : v.hottest) hot += fmt::format(" {:#x}x{}", h.page, h.count);
      out += fmt::format("  hottest pages (page x events):{}\n", hot);
    }
  }
  if (f.vms.empty()) out += "  (no KVM VM found)\n";
  if (!f.ports.empty()) {
    out += fmt::format("\n{:<22} {:<22} {:>9} {:>6} {:>6} {:>11} {:>11} {:>7}\n", "connection", "peer", "srtt ms",
                       "cwnd", "mss", "cap MiB/s", "acked MiB/s", "retrans");
    for (const auto& c : f.connections)
      out += fmt::format("{:<22} {:<22} {:>9.3f} {:>6} {:>6} {:>11.1f} {:>11.1f} {:>7}\n", c.local, c.remote, c.srtt_ms,
                         c.cwnd, c.mss, mib(c.capacity_bytes_per_s), mib(c.acked_bytes_per_s), c.retransmits);
    if (f.connections.empty()) out += "  (no traffic yet on the registered ports)\n";
  }
  for (const auto& n : f.notes) out += "note: " + n + "\n";
  return out;
}

}  // namespace ferry::cli::trace

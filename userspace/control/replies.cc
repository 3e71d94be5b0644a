#include "userspace/control/replies.hh"

#include "kvm/test_guest.hh"

namespace ferry::control {
namespace {

const char* workload_name(std::uint32_t w) { return w == FG_DIRTY ? "dirty" : w == FG_IDLE ? "idle" : "?"; }
const char* pattern_name(std::uint32_t p) {
  return p == FG_SEQUENTIAL ? "sequential" : p == FG_RANDOM ? "random" : p == FG_HOTCOLD ? "hotcold" : "?";
}
double ms(std::chrono::nanoseconds d) { return std::chrono::duration<double, std::milli>(d).count(); }

}  // namespace

json status_json(const kvm::MachineStatus& s) {
  json vcpus = json::array();
  std::uint64_t rewrites = 0, verified = 0, failures = 0;
  for (std::size_t i = 0; i < s.per_vcpu.size(); ++i) {
    const auto& v = s.per_vcpu[i];
    vcpus.push_back({{"id", i},
                     {"exits", v.exits},
                     {"rewrites", v.guest.rewrites},
                     {"verified", v.guest.verified},
                     {"failures", v.guest.failures}});
    rewrites += v.guest.rewrites;
    verified += v.guest.verified;
    failures += v.guest.failures;
  }
  const auto tsc_hz = s.tsc_khz * 1000.0;
  const double rate_mib_s = s.params.ticks_per_page && tsc_hz > 0
                                ? tsc_hz / static_cast<double>(s.params.ticks_per_page) * s.params.vcpus / 256.0
                                : 0.0;
  json out{{"kind", kvm::guest_kind_name(s.kind)},
           {"state", kvm::run_state_name(s.state)},
          {"stop_reason", s.stop_reason},
          {"vcpus", s.vcpus},
          {"memory_bytes", s.memory_bytes},
          {"irqchip", s.irqchip},
          {"huge_pages", kvm::huge_pages_name(s.huge_pages)},
          {"tsc_khz", s.tsc_khz},
          {"restored_from", s.restored_from},
          {"uptime_s", std::chrono::duration<double>(s.uptime).count()}};
  json nets = json::array();
  for (const auto& n : s.nets)
    nets.push_back({{"id", n.id},
                    {"tap", n.tap},
                    {"mac", n.mac},
                    {"rx_packets", n.figures.rx_packets},
                    {"rx_bytes", n.figures.rx_bytes},
                    {"rx_dropped", n.figures.rx_dropped},
                    {"tx_packets", n.figures.tx_packets},
                    {"tx_bytes", n.figures.tx_bytes},
                    {"tx_dropped", n.figures.tx_dropped},
                    {"rarps_sent", n.figures.rarps_sent}});
  out["nets"] = nets;
  if (s.kind != kvm::GuestKind::kTestGuest) {
    for (auto& v : vcpus) v = json{{"id", v["id"]}, {"exits", v["exits"]}};
    out["per_vcpu"] = vcpus;
    return out;
  }
  out.update(json{{"guest",
           {{"workload", workload_name(s.params.workload)},
            {"pattern", pattern_name(s.params.pattern)},
            {"working_set_pages", s.params.ws_pages},
            {"rate_mib_s", rate_mib_s},
            {"max_rewrites", s.params.max_rewrites},
            // The guest's own count, kept in its memory: it survives
            // snapshots and migrations, unlike the VMM-side figures below.
            {"heartbeats", s.per_vcpu.empty() ? 0 : s.per_vcpu[0].guest.heartbeats}}},
          {"heartbeats",
           {{"received", s.monitor.heartbeats},
            {"last_sequence", s.monitor.last_sequence},
            {"max_gap_ms", ms(s.monitor.max_gap)}}},
          {"totals", {{"rewrites", rewrites}, {"verified", verified}, {"failures", failures}}},
          {"per_vcpu", vcpus}});
  return out;
}

json snapshot_json(const kvm::SnapshotFigures& f, const std::string& path) {
  return {{"path", path},
          {"file_bytes", f.file.file_bytes},
          {"state_bytes", f.file.state_bytes},
          {"pages", f.file.pages},
          {"data_pages", f.file.data_pages},
          {"paused_ms", ms(f.paused_for)},
          {"was_running", f.was_running}};
}

json dirty_rate_json(const migration::DirtyRateResult& r, std::chrono::milliseconds harvest) {
  return json{{"seconds", r.seconds},
              {"harvests", r.harvests},
              {"harvest_ms", harvest.count()},
              {"backend", r.backend},
              {"harvested_pages", r.harvested_pages},
              {"pages_per_s", r.pages_per_s()},
              {"working_set_pages", r.distinct_pages},
              {"per_vcpu", r.per_vcpu}};
}

}  // namespace ferry::control

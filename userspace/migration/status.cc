#include "userspace/migration/status.hh"

#include <algorithm>

#include <fmt/format.h>

namespace ferry::migration {
namespace {

double mib(double bytes) { return bytes / 1048576.0; }

std::string ms_or_unknown(double ms) { return ms < 0 ? std::string("unknown") : fmt::format("{:.1f} ms", ms); }

}  // namespace

nlohmann::json to_json(const MigrationStatus& s) {
  auto j = to_json(s, 0, s.rounds.size());
  j.erase("rounds_total");
  j.erase("rounds_from");
  return j;
}

nlohmann::json to_json(const MigrationStatus& s, std::size_t from, std::size_t count) {
  nlohmann::json rounds = nlohmann::json::array();
  from = std::min(from, s.rounds.size());
  const std::size_t to = from + std::min(count, s.rounds.size() - from);
  for (std::size_t i = from; i < to; ++i) {
    const auto& r = s.rounds[i];
    rounds.push_back({{"round", r.round},
                      {"pages", r.pages},
                      {"zero_pages", r.zero_pages},
                      {"bytes", r.bytes},
                      {"ms", r.ms},
                      {"dirty_after", r.dirty_after},
                      {"dirty_rate_bytes_per_s", r.dirty_rate},
                      {"bandwidth_bytes_per_s", r.bandwidth},
                      {"expected_downtime_ms", r.expected_downtime_ms},
                      {"decision", r.decision},
                      {"reason", r.reason},
                      {"throttle", r.throttle},
                      {"dirtied_per_vcpu", r.dirtied_per_vcpu},
                      {"capacity_bytes_per_s", r.capacity},
                      {"link_capacity_bytes_per_s", r.link_capacity},
                      {"rtt_ms", r.rtt_ms},
                      {"kernel_dirty_pages_per_s", r.kernel_dirty_rate},
                      {"held_back_pages", r.held_back},
                      {"policy_sample",
                       {{"elapsed_ms", r.elapsed_ms},
                        {"hot_pages", r.hot_pages},
                        {"hot_set_pages", r.hot_set_pages},
                        {"state_bytes", r.state_bytes},
                        {"switch_costs_ms", r.switch_costs_ms}}},
                      {"guest_stall_ms", r.guest_stall_ms < 0 ? nlohmann::json(nullptr) : nlohmann::json(r.guest_stall_ms)}});
  }
  auto opt = [](double v) { return v < 0 ? nlohmann::json(nullptr) : nlohmann::json(v); };
  return {{"phase", phase_name(s.phase)},
          {"error", s.error},
          {"to", s.to},
          {"security", {{"mode", s.security_mode}, {"path", s.security_path}, {"channel", s.channel}}},
          {"session", fmt::format("{:#018x}", s.session)},
          {"commit_sent", s.commit_sent},
          {"streams", s.streams},
          {"dirty_backend", s.dirty_backend},
          {"memory_bytes", s.memory_bytes},
          {"round", s.round},
          {"remaining_pages", s.remaining_pages},
          {"dirty_rate_bytes_per_s", s.dirty_rate},
          {"bandwidth_bytes_per_s", s.bandwidth},
          {"max_bandwidth_bytes_per_s", s.max_bandwidth},
          {"expected_downtime_ms", s.expected_downtime_ms},
          {"downtime_limit_ms", s.downtime_limit_ms},
          {"elapsed_ms", s.elapsed_ms},
          {"rounds", rounds},
          {"rounds_from", from},
          {"rounds_total", s.rounds.size()},
          {"pages_sent", s.pages_sent},
          {"zero_pages", s.zero_pages},
          {"resent_pages", s.resent_pages},
          {"unallocated_pages", s.unallocated_pages},
          {"bytes_sent", s.bytes_sent},
          {"setup_ms", s.setup_ms},
          {"setup_breakdown",
           {{"connect_ms", s.connect_ms},
            {"precheck_ms", s.precheck_ms},
            {"tracking_ms", s.tracking_ms},
            {"scan_ms", s.scan_ms}}},
          {"downtime_ms", opt(s.downtime_ms)},
          {"downtime_breakdown",
           {{"final_pages_ms", s.final_pages_ms},
            {"final_pages", s.final_pages},
            {"state_ms", s.state_ms},
            {"state_bytes", s.state_bytes},
            {"ready_ms", s.ready_ms},
            {"destination_load_ms", s.dest_load_ms},
            {"commit_ms", s.commit_ms}}},
          {"guest_downtime_ms", opt(s.guest_downtime_ms)},
          {"precopy_guest_stall_ms", opt(s.precopy_guest_stall_ms)},
          {"verified", s.verified},
          {"zero_copy", s.zero_copy},
          {"zc_requests", s.zc_requests},
          {"zc_copied", s.zc_copied},
          {"throttle", s.throttle},
          {"throttled_ms", s.throttled_ms},
          {"policy",
           {{"rule", s.policy},
            {"inputs", s.policy_inputs},
            {"predicted_downtime_ms", opt(s.predicted_downtime_ms)},
            {"predicted_breakdown",
             {{"pages_ms", s.predict_pages_ms},
              {"state_ms", s.predict_state_ms},
              {"round_trips_ms", s.predict_rtt_ms},
              {"switch_costs_ms", s.predict_fixed_ms}}},
            {"calibration_pause_ms", opt(s.calibration_pause_ms)},
            {"calibration_pauses", s.calibration_pauses},
            {"held_back_pages", s.held_back_pages}}}};
}

Phase parse_phase(std::string_view p) {
  for (auto ph : {Phase::kConnecting, Phase::kPrecheck, Phase::kPrecopy,
                  Phase::kSwitchover, Phase::kCommitting, Phase::kMigrated,
                  Phase::kFailed, Phase::kCancelled, Phase::kOutcomeUnknown})
    if (phase_name(ph) == p) return ph;
  return Phase::kFailed;
}

MigrationStatus status_from_json(const nlohmann::json& j) {
  MigrationStatus s;
  s.phase = parse_phase(j.value("phase", std::string()));
  s.error = j.value("error", "");
  s.to = j.value("to", "");
  if (j.contains("security") && j["security"].is_object()) {
    s.security_mode = j["security"].value("mode", "");
    s.security_path = j["security"].value("path", "");
    s.channel = j["security"].value("channel", "");
  }
  s.commit_sent = j.value("commit_sent", false);
  s.streams = j.value("streams", 1u);
  s.dirty_backend = j.value("dirty_backend", "");
  s.memory_bytes = j.value("memory_bytes", std::uint64_t{0});
  s.round = j.value("round", 0u);
  s.remaining_pages = j.value("remaining_pages", std::uint64_t{0});
  s.dirty_rate = j.value("dirty_rate_bytes_per_s", 0.0);
  s.bandwidth = j.value("bandwidth_bytes_per_s", 0.0);
  s.expected_downtime_ms = j.value("expected_downtime_ms", 0.0);
  s.downtime_limit_ms = j.value("downtime_limit_ms", 0.0);
  s.elapsed_ms = j.value("elapsed_ms", 0.0);
  s.pages_sent = j.value("pages_sent", std::uint64_t{0});
  s.zero_pages = j.value("zero_pages", std::uint64_t{0});
  s.resent_pages = j.value("resent_pages", std::uint64_t{0});
  s.unallocated_pages = j.value("unallocated_pages", std::uint64_t{0});
  s.bytes_sent = j.value("bytes_sent", std::uint64_t{0});
  s.downtime_ms = j["downtime_ms"].is_number() ? j["downtime_ms"].get<double>() : -1;
  s.guest_downtime_ms = j["guest_downtime_ms"].is_number() ? j["guest_downtime_ms"].get<double>() : -1;
  s.precopy_guest_stall_ms =
      j.contains("precopy_guest_stall_ms") && j["precopy_guest_stall_ms"].is_number() ? j["precopy_guest_stall_ms"].get<double>() : -1;
  s.setup_ms = j.value("setup_ms", 0.0);
  if (j.contains("setup_breakdown") && j["setup_breakdown"].is_object()) {
    const auto& sb = j["setup_breakdown"];
    s.connect_ms = sb.value("connect_ms", 0.0);
    s.precheck_ms = sb.value("precheck_ms", 0.0);
    s.tracking_ms = sb.value("tracking_ms", 0.0);
    s.scan_ms = sb.value("scan_ms", 0.0);
  }
  const auto& b = j["downtime_breakdown"];
  s.final_pages_ms = b.value("final_pages_ms", 0.0);
  s.final_pages = b.value("final_pages", std::uint64_t{0});
  s.state_ms = b.value("state_ms", 0.0);
  s.state_bytes = b.value("state_bytes", std::uint64_t{0});
  s.ready_ms = b.value("ready_ms", 0.0);
  s.dest_load_ms = b.value("destination_load_ms", 0.0);
  s.commit_ms = b.value("commit_ms", 0.0);
  s.verified = j.value("verified", false);
  s.zero_copy = j.value("zero_copy", "");
  s.zc_requests = j.value("zc_requests", std::uint64_t{0});
  s.zc_copied = j.value("zc_copied", std::uint64_t{0});
  if (j.contains("policy") && j["policy"].is_object()) {
    const auto& p = j["policy"];
    s.policy = p.value("rule", "");
    s.policy_inputs = p.value("inputs", "");
    s.predicted_downtime_ms = p["predicted_downtime_ms"].is_number() ? p["predicted_downtime_ms"].get<double>() : -1;
    if (p.contains("predicted_breakdown")) {
      const auto& pb = p["predicted_breakdown"];
      s.predict_pages_ms = pb.value("pages_ms", 0.0);
      s.predict_state_ms = pb.value("state_ms", 0.0);
      s.predict_rtt_ms = pb.value("round_trips_ms", 0.0);
      s.predict_fixed_ms = pb.value("switch_costs_ms", 0.0);
    }
    s.calibration_pause_ms = p["calibration_pause_ms"].is_number() ? p["calibration_pause_ms"].get<double>() : -1;
    s.calibration_pauses = p.value("calibration_pauses", s.calibration_pause_ms >= 0 ? 1u : 0u);
    s.held_back_pages = p.value("held_back_pages", std::uint64_t{0});
  }
  for (const auto& r : j["rounds"]) {
    RoundFigures f;
    f.round = r.value("round", 0u);
    f.pages = r.value("pages", std::uint64_t{0});
    f.zero_pages = r.value("zero_pages", std::uint64_t{0});
    f.bytes = r.value("bytes", std::uint64_t{0});
    f.ms = r.value("ms", 0.0);
    f.dirty_after = r.value("dirty_after", std::uint64_t{0});
    f.decision = r.value("decision", "");
    f.reason = r.value("reason", "");
    f.capacity = r.value("capacity_bytes_per_s", 0.0);
    f.link_capacity = r.value("link_capacity_bytes_per_s", 0.0);
    f.rtt_ms = r.value("rtt_ms", 0.0);
    f.held_back = r.value("held_back_pages", std::uint64_t{0});
    if (r.contains("policy_sample") && r["policy_sample"].is_object()) {
      const auto& ps = r["policy_sample"];
      f.elapsed_ms = ps.value("elapsed_ms", 0.0);
      f.hot_pages = ps.value("hot_pages", std::uint64_t{0});
      f.hot_set_pages = ps.value("hot_set_pages", std::uint64_t{0});
      f.state_bytes = ps.value("state_bytes", std::uint64_t{0});
      f.switch_costs_ms = ps.value("switch_costs_ms", 0.0);
    }
    f.guest_stall_ms = r.contains("guest_stall_ms") && r["guest_stall_ms"].is_number() ? r["guest_stall_ms"].get<double>() : -1;
    if (r.contains("kernel_dirty_pages_per_s")) f.kernel_dirty_rate = r["kernel_dirty_pages_per_s"].get<std::vector<double>>();
    if (r.contains("dirtied_per_vcpu")) f.dirtied_per_vcpu = r["dirtied_per_vcpu"].get<std::vector<std::uint64_t>>();
    f.throttle = r.value("throttle", std::vector<double>{});
    f.bandwidth = r.value("bandwidth_bytes_per_s", 0.0);
    f.dirty_rate = r.value("dirty_rate_bytes_per_s", 0.0);
    f.expected_downtime_ms = r.value("expected_downtime_ms", 0.0);
    s.rounds.push_back(f);
  }
  return s;
}

std::string progress_line(const MigrationStatus& s) {
  const double total = static_cast<double>(s.memory_bytes);
  const double left = static_cast<double>(s.remaining_pages) * 4096;
  const double done = total > 0 ? std::clamp(1.0 - left / total, 0.0, 1.0) : 0;
  const int width = 24;
  const int fill = static_cast<int>(done * width);
  return fmt::format("[{}{}] {:<10} round {:>2}  remaining {:>8.1f} MiB  dirty {:>7.1f} MiB/s  bw {:>7.1f} MiB/s  "
                     "expected downtime {}  {:.1f} s",
                     std::string(fill, '#'), std::string(width - fill, '.'), phase_name(s.phase), s.round, mib(left),
                     mib(s.dirty_rate), mib(s.bandwidth),
                     s.expected_downtime_ms > 0 ? fmt::format("{:.0f} ms", s.expected_downtime_ms) : std::string("-"),
                     s.elapsed_ms / 1000);
}

std::string report_text(const MigrationStatus& s) {
  std::string out;
  auto line = [&]<class... A>(fmt::format_string<A...> f, A&&... args) {
    out += fmt::format(f, std::forward<A>(args)...) + "\n";
  };
  line("migration to {}: {}{}", s.to, phase_name(s.phase), s.error.empty() ? "" : " (" + s.error + ")");
  line("  total time      {:.1f} ms, {} round(s), {} stream(s), dirty tracking: {}", s.elapsed_ms, s.rounds.size(),
       s.streams, s.dirty_backend.empty() ? "-" : s.dirty_backend);
  if (!s.channel.empty() || !s.security_mode.empty())
    line("  channel         {}", !s.channel.empty()           ? s.channel
                                 : s.security_mode == "insecure" ? std::string("plain TCP (--insecure)")
                                                                 : s.security_mode);
  if (s.setup_ms > 0)
    line("  setup           {:.1f} ms before round 0 (connect {:.1f}, precheck {:.1f}, dirty tracking {:.1f}, extent "
         "scan {:.1f})",
         s.setup_ms, s.connect_ms, s.precheck_ms, s.tracking_ms, s.scan_ms);
  line("  sent            {:.1f} MiB: {} pages with data, {} zero-page markers, {} re-sent; {} never-touched pages "
       "skipped",
       mib(static_cast<double>(s.bytes_sent)), s.pages_sent, s.zero_pages, s.resent_pages, s.unallocated_pages);
  if (s.downtime_ms >= 0 || s.phase == Phase::kMigrated || s.phase == Phase::kOutcomeUnknown) {
    line("  downtime        {} (vCPUs paused here until they ran there; limit {:.0f} ms)", ms_or_unknown(s.downtime_ms),
         s.downtime_limit_ms);
    line("    final pages   {:.1f} ms ({} pages)", s.final_pages_ms, s.final_pages);
    line("    state         {:.1f} ms ({} bytes)", s.state_ms, s.state_bytes);
    line("    READY         {:.1f} ms (state sent to READY; the destination loaded it in {:.1f} ms)", s.ready_ms,
         s.dest_load_ms);
    line("    commit        {:.1f} ms (COMMIT to CONFIRMED, which waits for the guest's first heartbeat there)",
         s.commit_ms);
    line("  guest saw       {} without a heartbeat", ms_or_unknown(s.guest_downtime_ms));
  }
  if (s.precopy_guest_stall_ms >= 0)
    line("  pre-copy stalls longest {:.1f} ms without a heartbeat while the guest ran here (throttling and the "
         "calibration pause included)",
         s.precopy_guest_stall_ms);
  if (!s.policy.empty()) {
    line("  policy          {}; inputs: {}", s.policy, s.policy_inputs.empty() ? "-" : s.policy_inputs);
    if (s.predicted_downtime_ms >= 0)
      line("    predicted     {:.1f} ms downtime (pages {:.1f} + state {:.1f} + round trips {:.1f} + switch costs {:.1f})"
           "; actual {}",
           s.predicted_downtime_ms, s.predict_pages_ms, s.predict_state_ms, s.predict_rtt_ms, s.predict_fixed_ms,
           ms_or_unknown(s.downtime_ms));
    if (s.calibration_pause_ms >= 0)
      line("    calibration   {} during pre-copy measured the switch costs (the guest saw {})",
           s.calibration_pauses > 1 ? fmt::format("{} pauses, {:.1f} ms in all,", s.calibration_pauses, s.calibration_pause_ms)
                                    : fmt::format("one {:.1f} ms pause", s.calibration_pause_ms),
           s.calibration_pauses > 1 ? "them" : "it");
    if (s.held_back_pages > 0)
      line("    hot pages     {} re-dirtied every round, held back and sent once at switchover", s.held_back_pages);
  }
  for (const auto& r : s.rounds)
    line("  round {:>2}  {:>7} pages {:>7} zero  {:>8.1f} MiB in {:>8.1f} ms  dirty after {:>7}  {}{}", r.round, r.pages,
         r.zero_pages, mib(static_cast<double>(r.bytes)), r.ms, r.dirty_after, r.decision,
         r.reason.empty() ? "" : ": " + r.reason);
  line("  zero-copy       {} ({} requests, {} copied by the kernel)", s.zero_copy.empty() ? "-" : s.zero_copy,
       s.zc_requests, s.zc_copied);
  if (s.verified) line("  verified        memory digests matched on both sides");
  return out;
}

}  // namespace ferry::migration

// QEMU's switchover rule without auto-converge, the baseline the adaptive
// rule is measured against: it must stay what QEMU does, not get better.
//   bandwidth = bytes sent in the last round / its duration (QEMU measures
//               over ~100 ms windows and does not smooth)
//   switch over when dirty bytes <= bandwidth x downtime limit
// No fixed costs, no state size, no throttling, no kernel inputs.
#include <algorithm>
#include <limits>
#include <numeric>

#include <fmt/format.h>

#include "userspace/migration/policy.hh"

namespace ferry::migration {

Decision SwitchoverPolicy::fixed_threshold(const RoundSample& s) {
  Decision d;
  d.inputs = "userspace counters (fixed-threshold rule)";
  const double secs = std::max(s.duration.count() / 1000.0, 1e-6);
  const double bw = static_cast<double>(s.bytes_sent) / secs;
  const std::uint64_t dirtied = std::accumulate(s.dirtied_per_vcpu.begin(), s.dirtied_per_vcpu.end(), std::uint64_t{0});
  // The dirty rate plays no part in the rule; smoothed for display only.
  const double a = s.round == 0 || dirty_rate_ == 0 ? 1.0 : c_.smoothing;
  dirty_rate_ = a * static_cast<double>(dirtied * c_.page_bytes) / secs + (1 - a) * dirty_rate_;
  d.dirty_bytes_per_s = dirty_rate_;
  d.bandwidth_bytes_per_s = d.capacity_bytes_per_s = bw;
  d.throttle.assign(s.dirtied_per_vcpu.size(), 0.0);

  const double remaining = static_cast<double>(s.dirty_pages * c_.page_bytes);
  d.predict_pages = bw > 0 ? Millis(remaining / bw * 1000.0) : Millis(std::numeric_limits<double>::infinity());
  d.expected_downtime = d.predict_pages;
  const std::string expected = fmt::format("expected downtime {:.1f} ms (dirty bytes / the last round's {:.1f} MiB/s)",
                                           d.expected_downtime.count(), bw / 1048576);
  if (d.expected_downtime <= c_.downtime_limit) {
    d.action = Decision::Action::kSwitchover;
    d.reason = fmt::format("{} fits the {:.0f} ms limit", expected, c_.downtime_limit.count());
  } else if (s.elapsed >= c_.timeout) {
    on_timeout(s, d);
  } else {
    d.reason = fmt::format("{} > {:.0f} ms limit: another round", expected, c_.downtime_limit.count());
  }
  return d;
}

}  // namespace ferry::migration

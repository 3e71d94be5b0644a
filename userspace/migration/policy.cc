#include "migration/policy.hh"

#include <algorithm>
#include <limits>
#include <numeric>

#include <fmt/format.h>

namespace ferry::migration {

std::string_view action_name(Decision::Action a) {
  switch (a) {
    case Decision::Action::kContinue: return "continue";
    case Decision::Action::kSwitchover: return "switchover";
    case Decision::Action::kCancel: return "cancel";
  }
  return "?";
}

Decision SwitchoverPolicy::after_round(const RoundSample& s) {
  Decision d;
  const double secs = std::max(s.duration.count() / 1000.0, 1e-6);
  const double bw = static_cast<double>(s.bytes_sent) / secs;
  const std::uint64_t dirtied = std::accumulate(s.dirtied_per_vcpu.begin(), s.dirtied_per_vcpu.end(), std::uint64_t{0});
  const double dr = static_cast<double>(dirtied * c_.page_bytes) / secs;
  // The first round seeds the averages; later ones blend in.
  const double a = s.round == 0 || bandwidth_ == 0 ? 1.0 : c_.smoothing;
  if (s.bytes_sent > 0) bandwidth_ = a * bw + (1 - a) * bandwidth_;
  dirty_rate_ = a * dr + (1 - a) * dirty_rate_;
  d.bandwidth_bytes_per_s = bandwidth_;
  d.dirty_bytes_per_s = dirty_rate_;

  const double remaining = static_cast<double>(s.dirty_pages * c_.page_bytes);
  d.expected_downtime = bandwidth_ > 0 ? Millis(remaining / bandwidth_ * 1000.0) + c_.fixed_costs
                                       : Millis(std::numeric_limits<double>::infinity());
  throttle_.resize(s.dirtied_per_vcpu.size(), 0.0);

  if (d.expected_downtime <= c_.downtime_limit) {
    d.action = Decision::Action::kSwitchover;
    d.reason = fmt::format("expected downtime {:.1f} ms fits the {:.0f} ms limit", d.expected_downtime.count(),
                           c_.downtime_limit.count());
  } else if (s.elapsed >= c_.timeout) {
    d.action = c_.on_timeout == TimeoutAction::kCancel ? Decision::Action::kCancel : Decision::Action::kSwitchover;
    d.reason = fmt::format("timeout after {:.1f} s with {:.1f} ms of downtime expected: {}", s.elapsed.count() / 1000,
                           d.expected_downtime.count(),
                           c_.on_timeout == TimeoutAction::kCancel ? "cancelled, the VM stays on the source"
                                                                   : "switching over anyway");
  } else {
    d.action = Decision::Action::kContinue;
    // Dirtying close to what the link carries: more rounds send the same
    // pages again. Hold back the vCPU that dirtied most this round (one per
    // round, so a vCPU that is merely busy is not punished for a neighbour).
    // Round 0 copies all memory and says little about convergence; the
    // evidence is two later rounds in a row.
    if (s.round > 0 && bandwidth_ > 0 && dirty_rate_ > c_.throttle_when * bandwidth_) {
      ++outrun_rounds_;
      if (outrun_rounds_ >= 2 && !s.dirtied_per_vcpu.empty()) {
        std::size_t hot = 0;
        for (std::size_t i = 1; i < s.dirtied_per_vcpu.size(); ++i) {
          // Among vCPUs that can still be slowed, the one dirtying most.
          const bool can = throttle_[i] < c_.max_throttle;
          if (can && (throttle_[hot] >= c_.max_throttle || s.dirtied_per_vcpu[i] > s.dirtied_per_vcpu[hot])) hot = i;
        }
        if (throttle_[hot] < c_.max_throttle) {
          throttle_[hot] = std::min(c_.max_throttle, throttle_[hot] + c_.throttle_step);
          d.reason = fmt::format("dirtying {:.1f} MiB/s outruns the link's {:.1f} MiB/s: vCPU {} held back {:.0f}%",
                                 dirty_rate_ / 1048576, bandwidth_ / 1048576, hot, throttle_[hot] * 100);
        } else {
          d.reason = fmt::format("dirtying {:.1f} MiB/s outruns the link's {:.1f} MiB/s; every vCPU at the throttle limit",
                                 dirty_rate_ / 1048576, bandwidth_ / 1048576);
        }
      } else {
        d.reason = fmt::format("dirtying {:.1f} MiB/s is close to the link's {:.1f} MiB/s; watching one more round",
                               dirty_rate_ / 1048576, bandwidth_ / 1048576);
      }
    } else {
      outrun_rounds_ = 0;
      d.reason = fmt::format("expected downtime {:.1f} ms > {:.0f} ms limit: another round", d.expected_downtime.count(),
                             c_.downtime_limit.count());
    }
  }
  d.throttle = throttle_;
  return d;
}

}  // namespace ferry::migration

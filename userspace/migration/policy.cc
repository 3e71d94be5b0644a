// What both rules share: the dispatch and the timeout. The rules themselves
// are in policy_adaptive.cc and policy_fixed.cc.
#include "userspace/migration/policy.hh"

#include <algorithm>

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

bool SwitchCostEstimate::wants_sample(const Decision& last, Millis limit) const {
  if (samples_ == 0) return true;
  if (samples_ >= kMaxSamples) return false;
  return last.predict_fixed + last.predict_state + last.predict_rtt >= limit;
}

void SwitchCostEstimate::add(double ms) {
  ms_ = samples_ == 0 ? ms : std::min(ms_, ms);
  ++samples_;
}

Decision SwitchoverPolicy::after_round(const RoundSample& s) {
  return c_.kind == PolicyKind::kFixedThreshold ? fixed_threshold(s) : adaptive(s);
}

void SwitchoverPolicy::on_timeout(const RoundSample& s, Decision& d) const {
  const bool cancel = c_.on_timeout == TimeoutAction::kCancel;
  d.action = cancel ? Decision::Action::kCancel : Decision::Action::kSwitchover;
  d.reason = fmt::format("timeout after {:.1f} s with {:.1f} ms of downtime expected: {}", s.elapsed.count() / 1000,
                         d.expected_downtime.count(),
                         cancel ? "cancelled, the VM stays on the source" : "switching over anyway");
}

}  // namespace ferry::migration

// The adaptive rule: predict the downtime term by term from what the kernel
// saw (or, without eBPF, from the engine's counters), switch over when it
// fits, and otherwise throttle the hottest vCPUs just enough to converge.
//
// Without kernel inputs, a measured state size or measured switch costs, and
// with decision_gap = 0, the prediction is the rule Ferry used before:
// remaining / smoothed pushed bandwidth + fixed_costs (recorded traces from
// that time replay to the same decisions; throttling is sized differently).
#include <algorithm>
#include <limits>
#include <numeric>

#include <fmt/format.h>

#include "userspace/migration/policy.hh"

namespace ferry::migration {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kMiB = 1048576.0;

// Shares of time to hold each vCPU back so that together they dirty
// `reduction` bytes/s less. Water-filling from the top: every vCPU above a
// level L is brought down to L, each by at most `max_share` of its demand,
// and L is lowered until the reduction is found. So the hottest vCPU is slowed
// first, a vCPU is never slowed while a hotter one runs faster, and two
// equally hot vCPUs share the cut instead of one of them taking all of it.
// A vCPU at rate r held back by t dirties about r x (1 - t).
// A vCPU dirtying under 1% of the hottest one is left alone even when the
// hot ones reach max_share and the cut falls short: slowing it would gain
// almost nothing and cost that vCPU's work (an idle vCPU's timer ticks).
std::vector<double> size_throttle(std::vector<double> demand, double reduction, double max_share) {
  std::vector<double> t(demand.size(), 0.0);
  if (reduction <= 0) return t;
  double lo = 0, hi = 0;
  for (double r : demand) hi = std::max(hi, r);
  for (double& r : demand)
    if (r < hi / 100) r = 0;
  auto cut_at = [&](double level) {
    double sum = 0;
    for (double r : demand) sum += std::min(std::max(r - level, 0.0), max_share * r);
    return sum;
  };
  if (cut_at(0) > reduction) {
    // cut_at falls as the level rises: bisect for cut_at(level) == reduction.
    for (int i = 0; i < 100; ++i) {
      const double mid = (lo + hi) / 2;
      (cut_at(mid) > reduction ? lo : hi) = mid;
    }
  } else {
    hi = 0;  // even every vCPU at max_share is not enough: all of them there
  }
  for (std::size_t i = 0; i < demand.size(); ++i)
    if (demand[i] > 0) t[i] = std::min(std::max(demand[i] - hi, 0.0), max_share * demand[i]) / demand[i];
  return t;
}

// Seconds of further rounds until the final round's pages fit `budget`
// (seconds of transfer at `capacity`), if each round sends what the previous
// one left while the guest dirties at `rate`. `floor` is what the final round
// carries however many rounds run (hot pages, the decision gap). Infinite
// when rounds do not shrink the remainder or it cannot fit at all.
double seconds_to_fit(double remaining, double floor, double rate, double capacity, double budget) {
  const double fit = budget * capacity - floor;
  if (fit <= 0 || rate >= capacity) return kInf;
  double t = 0;
  for (int i = 0; i < 1000 && remaining > fit; ++i) {
    t += remaining / capacity;
    remaining *= rate / capacity;
  }
  return remaining > fit ? kInf : t;
}

std::string breakdown(const Decision& d) {
  return fmt::format("pages {:.1f} + state {:.1f} + round trips {:.1f} + switch costs {:.1f}", d.predict_pages.count(),
                     d.predict_state.count(), d.predict_rtt.count(), d.predict_fixed.count());
}

}  // namespace

Decision SwitchoverPolicy::adaptive(const RoundSample& s) {
  Decision d;
  const double page = static_cast<double>(c_.page_bytes);
  const double secs = std::max(s.duration.count() / 1000.0, 1e-6);
  // eBPF may see the connections but not the dirtying (a tracepoint that
  // failed to attach): the rates then come from the engine, with its rules.
  const bool kernel_rates = s.kernel && !s.kernel->dirty_pages_per_s.empty();
  d.inputs = !s.kernel       ? "userspace counters (eBPF unavailable)"
             : kernel_rates ? "kernel (eBPF)"
                            : "kernel (eBPF) for the link, userspace counters for dirtying";

  // Per-vCPU dirtying in bytes/s: the kernel's real-time count when there is
  // one; else what the final harvest attributed to each vCPU, which misses a
  // page written again after it was harvested.
  std::vector<double> rates;
  if (kernel_rates) {
    for (double r : s.kernel->dirty_pages_per_s) rates.push_back(r * page);
  } else {
    for (std::uint64_t n : s.dirtied_per_vcpu) rates.push_back(static_cast<double>(n) * page / secs);
  }
  const double dr = std::accumulate(rates.begin(), rates.end(), 0.0);
  // The first round seeds the averages; later ones blend in.
  const double a = s.round == 0 || bandwidth_ == 0 ? 1.0 : c_.smoothing;
  // A round measures bandwidth only if it carried enough to be limited by
  // it: a round of a few pages is a round trip, and its bytes/s (60 bytes in
  // 5 ms, seen in the sandbox) would make every prediction explode. Such a
  // round's rate is only a floor on what the engine can deliver.
  const double pushed = static_cast<double>(s.bytes_sent) / secs;
  const bool bandwidth_bound = s.bytes_sent >= c_.min_bandwidth_sample_bytes ||
                               (s.bytes_sent >= c_.min_bandwidth_sample_bytes / 16 && s.duration >= Millis(200));
  if (bandwidth_bound)
    bandwidth_ = a * pushed + (1 - a) * bandwidth_;
  else if (s.bytes_sent > 0)
    bandwidth_ = std::max(bandwidth_, pushed);
  dirty_rate_ = a * dr + (1 - a) * dirty_rate_;

  // What the engine delivers: bytes it pushed over the rounds' busy time
  // (a round sends without pause from start to end), smoothed. The link's
  // cwnd x mss / srtt only caps it: a window that would carry more does not
  // make the engine faster (in the sandbox it read 5-10x what was pushed,
  // and the final round took that much longer than predicted). Without a
  // delivered figure yet, the link's is the only estimate.
  double capacity = bandwidth_;
  if (s.kernel && s.kernel->link_capacity_bytes_per_s > 0)
    capacity = capacity > 0 ? std::min(capacity, s.kernel->link_capacity_bytes_per_s)
                            : s.kernel->link_capacity_bytes_per_s;
  if (c_.max_bandwidth_bytes_per_s > 0) capacity = std::min(capacity, c_.max_bandwidth_bytes_per_s);
  d.bandwidth_bytes_per_s = bandwidth_;
  d.capacity_bytes_per_s = capacity;
  d.dirty_bytes_per_s = dirty_rate_;

  // The prediction, term by term.
  const double remaining = static_cast<double>(s.dirty_pages) * page;
  const double hot = static_cast<double>(s.hot_pages) * page;
  const double gap = dirty_rate_ * c_.decision_gap.count() / 1000.0;
  auto transfer = [&](double bytes) {
    return capacity > 0 ? Millis(bytes / capacity * 1000.0) : Millis(bytes > 0 ? kInf : 0);
  };
  // No capacity measured yet: nothing can be predicted, not even an empty round.
  d.predict_pages = capacity > 0 ? transfer(remaining + hot + gap) : Millis(kInf);
  d.predict_state = transfer(static_cast<double>(s.state_bytes));
  d.predict_rtt = s.kernel ? 2 * s.kernel->rtt : Millis(0);
  d.predict_fixed = s.switch_costs > Millis(0) ? s.switch_costs : c_.fixed_costs;
  d.expected_downtime = d.predict_pages + d.predict_state + d.predict_rtt + d.predict_fixed;
  // What the final round's pages may take.
  const Millis budget = c_.downtime_limit - d.predict_state - d.predict_rtt - d.predict_fixed;

  // Holding the hot set back saves re-sending it every round but puts it all
  // in the downtime: only when it takes at most half of what the pages may
  // take. The engine reports no hot set while it holds none back, so the
  // last size seen decides; otherwise the answer would flip every round.
  if (const auto set = std::max(s.hot_set_pages, s.hot_pages); set > 0) hot_set_seen_ = set;
  d.hold_back_hot = capacity > 0 && budget > Millis(0) &&
                    transfer(static_cast<double>(hot_set_seen_) * page) <= budget / 2;

  throttle_.resize(rates.size(), 0.0);
  if (d.expected_downtime <= c_.downtime_limit) {
    d.action = Decision::Action::kSwitchover;
    d.reason = fmt::format("predicted downtime {:.1f} ms ({}) fits the {:.0f} ms limit", d.expected_downtime.count(),
                           breakdown(d), c_.downtime_limit.count());
    d.throttle = throttle_;
    return d;
  }
  if (s.elapsed >= c_.timeout) {
    on_timeout(s, d);
    d.throttle = throttle_;
    return d;
  }
  d.action = Decision::Action::kContinue;
  if (capacity <= 0) {
    pressure_rounds_ = 0;
    d.reason = "no bandwidth measured yet: another round";
    d.throttle = throttle_;
    return d;
  }

  // Does copying converge, and in time? The next round sends what is dirty
  // now, during which the guest dirties rate x its duration again.
  const double to_fit = seconds_to_fit(remaining, hot + gap, dirty_rate_, capacity, budget.count() / 1000.0);
  const double time_left = (c_.timeout - s.elapsed).count() / 1000.0;
  const bool outrun = dirty_rate_ >= c_.throttle_when * capacity;
  const bool too_slow = !outrun && budget > Millis(0) && to_fit > time_left;
  // The kernel's rate is measured in real time, so one round is evidence
  // enough. The engine's counters are not: round 0 copies everything and
  // says little, and a harvest can catch a burst, so it takes two later
  // rounds in a row.
  const bool pressure = (outrun || too_slow) && (kernel_rates || s.round > 0);
  pressure_rounds_ = pressure ? pressure_rounds_ + 1 : 0;
  const bool may_raise = pressure && (kernel_rates || pressure_rounds_ >= 2);

  // Size the shares on what each vCPU would dirty unthrottled (the rate seen
  // ran under the current shares), so the same demand keeps the same share.
  std::vector<double> demand(rates.size());
  for (std::size_t i = 0; i < rates.size(); ++i) demand[i] = rates[i] / std::max(1.0 - throttle_[i], 1e-3);
  const double total = std::accumulate(demand.begin(), demand.end(), 0.0);
  const auto need = size_throttle(demand, total - c_.throttle_target * capacity, c_.max_throttle);
  // Raise at once; release at most throttle_step a round. A share is only
  // ever released down to what keeps the estimated demand at the target
  // (half the capacity by default, well under the trigger), and gradually:
  // demand estimated under a heavy throttle (rate / (1 - share)) is noisy,
  // and a release that proves wrong costs a round of extra dirt and another
  // throttle.
  std::string raised, released;
  for (std::size_t i = 0; i < throttle_.size(); ++i) {
    const double before = throttle_[i];
    if (need[i] > before && may_raise) throttle_[i] = need[i];
    if (need[i] < before) throttle_[i] = std::max(need[i], before - c_.throttle_step);
    if (throttle_[i] > before)
      raised += fmt::format("{}vCPU {} held back {:.0f}%", raised.empty() ? "" : ", ", i, throttle_[i] * 100);
    if (throttle_[i] < before)
      released += fmt::format("{}vCPU {} released to {:.0f}%", released.empty() ? "; " : ", ", i, throttle_[i] * 100);
  }
  d.throttle = throttle_;

  const std::string why =
      outrun ? fmt::format("dirtying {:.1f} MiB/s outruns {:.0f}% of the link's {:.1f} MiB/s", dirty_rate_ / kMiB,
                           c_.throttle_when * 100, capacity / kMiB)
             : fmt::format("converging too slowly: {} of rounds to fit, {:.1f} s before the timeout",
                           to_fit == kInf ? std::string("endless") : fmt::format("~{:.1f} s", to_fit), time_left);
  if (!raised.empty()) {
    d.reason = fmt::format("{}: {}{}", why, raised, released);
  } else if (pressure && !may_raise) {
    d.reason = fmt::format("{}; watching one more round{}", why, released);
  } else if (pressure) {
    std::string held;
    for (std::size_t i = 0; i < throttle_.size(); ++i)
      if (throttle_[i] > 0) held += fmt::format(", vCPU {} at {:.0f}%", i, throttle_[i] * 100);
    d.reason = held.empty() ? fmt::format("{}; no vCPU dirties enough to slow", why)
                            : fmt::format("{}; throttles kept{}{}", why, held, released);
  } else if (budget <= Millis(0)) {
    d.reason = fmt::format("state, round trips and switch costs alone ({:.1f} ms) exceed the {:.0f} ms limit{}",
                           (d.predict_state + d.predict_rtt + d.predict_fixed).count(), c_.downtime_limit.count(),
                           released);
  } else {
    const double next = dirty_rate_ * remaining / capacity;
    const Millis next_downtime = transfer(next + hot + gap) + d.predict_state + d.predict_rtt + d.predict_fixed;
    d.reason = fmt::format("predicted downtime {:.1f} ms ({}) > {:.0f} ms limit: another round, the next predicted "
                           "at {:.1f} ms{}",
                           d.expected_downtime.count(), breakdown(d), c_.downtime_limit.count(),
                           next_downtime.count(), released);
  }
  return d;
}

}  // namespace ferry::migration

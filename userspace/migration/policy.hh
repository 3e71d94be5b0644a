#pragma once
// The switchover policy: after each pre-copy round, decide from what was
// measured whether to stop the VM and switch over now, go on copying, slow
// the vCPUs that dirty memory faster than the link can carry it, or give up.
//
// It is a pure function of its inputs (RoundSample), so it is tested on
// recorded traces, and its inputs come from eBPF measurements when the
// engine has them and from the engine's own counters when it has not.
//
// Two rules, chosen by PolicyConfig::kind:
//
// kAdaptive (the default) predicts the downtime term by term,
//   pages  = (dirty + hot + dirty rate x decision gap) x page / capacity
//   state  = CPU/device state image / capacity
//   rtt    = 2 x RTT (READY and COMMIT/CONFIRMED)
//   fixed  = measured pause + capture + load + resume (else a configured guess)
// where capacity is the connections' cwnd x mss / srtt as the kernel sees it
// (at least what was pushed, at most the user's cap): pushed bytes per round
// underestimate the link when rounds are small or bursty. It switches over
// when the sum fits the limit. When the guest dirties close to the capacity,
// or converges too slowly to fit before the timeout, it throttles only the
// vCPUs that dirty most (QEMU's dirty-limit, not its whole-VM auto-converge),
// sized to bring the rate to a target share of the capacity, so a guest with
// one hot thread keeps the others at full speed.
//
// kFixedThreshold is QEMU's rule without auto-converge, kept as the baseline
// that tests and benchmarks compare against: bandwidth = the last round's
// bytes / its duration, switch over when dirty bytes <= bandwidth x limit,
// never throttle.
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ferry::migration {

using Millis = std::chrono::duration<double, std::milli>;

enum class TimeoutAction { kCancel, kForceSwitchover };
enum class PolicyKind { kAdaptive, kFixedThreshold };

struct PolicyConfig {
  PolicyKind kind = PolicyKind::kAdaptive;
  Millis downtime_limit{300};
  Millis timeout{std::chrono::minutes(10)};
  TimeoutAction on_timeout = TimeoutAction::kCancel;
  // Pause + state capture + destination load + resume, used until the
  // engine has measured them (RoundSample::switch_costs). Without a state
  // size and an RTT it also stands for the state transfer and round trips.
  Millis fixed_costs{20};
  // Time between the last harvest and the pause: pages dirtied in it go in
  // the final round too. 0 reproduces the rule before it was counted.
  Millis decision_gap{5};
  double max_bandwidth_bytes_per_s = 0;  // user's cap, 0 = none
  // Rounds smaller than this (or than 1/16 of it when they took 200 ms or
  // more, as under a low cap) only raise the delivered-bandwidth estimate:
  // they are bound by round trips, not by bandwidth. Larger ones set it.
  std::uint64_t min_bandwidth_sample_bytes = 1 << 20;
  std::uint64_t page_bytes = 4096;
  // Weight of the newest round in the moving averages (0..1].
  double smoothing = 0.5;
  // Throttling (adaptive only): starts when the VM dirties at least
  // `throttle_when` x capacity (or converges too slowly for the timeout);
  // the shares are sized to bring the rate to `throttle_target` x capacity,
  // each at most `max_throttle`; a share falls by at most `throttle_step`
  // per round when the guest calms down.
  double throttle_when = 0.8;
  double throttle_target = 0.5;
  double throttle_step = 0.2;
  // 0.99 as QEMU's max-cpu-throttle: a vCPU dirtying far faster than the link
  // (the nested sandbox guest: ~170k pages/s) is only brought under it by
  // holding it back nearly all the time.
  double max_throttle = 0.99;
};

// What eBPF saw during the round; std::nullopt when eBPF is unavailable
// (the policy then uses the engine's own counters and says so).
struct KernelRound {
  // Per vCPU, pages/s dirtied in real time during the round (tracepoint
  // events between harvests), not only what the harvest at the end found.
  std::vector<double> dirty_pages_per_s;
  // The migration connections' capacity: sum over streams of cwnd x mss / srtt
  // (bytes/s; 0 = unknown), and their smoothed RTT.
  double link_capacity_bytes_per_s = 0;
  Millis rtt{0};
};

// What one pre-copy round measured.
struct RoundSample {
  std::uint32_t round = 0;
  Millis duration{0};             // wall time of the round
  std::uint64_t bytes_sent = 0;   // on the wire this round
  std::uint64_t dirty_pages = 0;  // still to send after this round's final harvest, less hot_pages
  // Pages each vCPU dirtied during the round (dirty-ring attribution; one
  // figure for the whole VM with the bitmap).
  std::vector<std::uint64_t> dirtied_per_vcpu;
  Millis elapsed{0};  // since the migration started
  std::optional<KernelRound> kernel;
  // Pages the engine held back from this round (re-dirtied every round);
  // they are still dirty and go in the final round. Counted once: held pages
  // the harvest found dirty again may be in dirty_pages instead. 0 when it
  // held none back.
  std::uint64_t hot_pages = 0;
  // The whole held-back set, wherever its pages are counted; what holding it
  // back costs the final round. 0 = hot_pages.
  std::uint64_t hot_set_pages = 0;
  std::uint64_t state_bytes = 0;  // size of the CPU/device state image
  Millis switch_costs{0};         // measured pause + capture + load + resume; 0 = not measured
};

struct Decision {
  enum class Action { kContinue, kSwitchover, kCancel };
  Action action = Action::kContinue;
  Millis expected_downtime{0};  // the prediction: the sum of the terms below
  Millis predict_pages{0}, predict_state{0}, predict_rtt{0}, predict_fixed{0};
  double bandwidth_bytes_per_s = 0;  // pushed (smoothed for adaptive), for display
  double capacity_bytes_per_s = 0;   // what the prediction divided by
  double dirty_bytes_per_s = 0;      // smoothed
  // Per vCPU, share of time to hold it back (0 = full speed). Sized like
  // the kernel's per-vCPU rates when present, else like dirtied_per_vcpu.
  std::vector<double> throttle;
  // Hold the pages dirtied in each of the last two rounds back to the final
  // round: true when sending them then is affordable.
  bool hold_back_hot = false;
  // What the rule ran on: "kernel (eBPF)", "userspace counters (eBPF
  // unavailable)", "kernel (eBPF) for the link, userspace counters for
  // dirtying" (no dirty tracepoint events), or the fixed-threshold rule's
  // "userspace counters (fixed-threshold rule)".
  std::string inputs;
  std::string reason;  // one line, for the progress display and the report
};

std::string_view action_name(Decision::Action a);

// Switch costs (pause, capture, load, resume) as calibration pauses
// measured them. A pause that caught a stall (a busy CPU, an RCU grace
// period under KVM_RUN) reads high, and a stall only ever adds: the
// smallest sample is the estimate. One sample after round 0; more, up to
// kMaxSamples, only while the fixed terms alone keep the prediction over
// the limit (otherwise the policy would never switch over on one bad
// sample). Each sample is a short pause the guest sees.
class SwitchCostEstimate {
 public:
  static constexpr int kMaxSamples = 3;
  // Whether the round that just ended should be followed by a pause:
  // `last` is the decision after the round before it (the first sample
  // comes after whichever round ends first).
  bool wants_sample(const Decision& last, Millis limit) const;
  void add(double ms);
  double ms() const { return ms_; }
  int samples() const { return samples_; }

 private:
  double ms_ = 0;
  int samples_ = 0;
};

class SwitchoverPolicy {
 public:
  explicit SwitchoverPolicy(PolicyConfig config) : c_(config) {}

  Decision after_round(const RoundSample& s);

  const PolicyConfig& config() const { return c_; }

 private:
  Decision fixed_threshold(const RoundSample& s);
  Decision adaptive(const RoundSample& s);
  // Cancels or forces the switchover, as configured; d's prediction is set.
  void on_timeout(const RoundSample& s, Decision& d) const;

  PolicyConfig c_;
  double bandwidth_ = 0;   // bytes/s pushed, smoothed
  double dirty_rate_ = 0;  // bytes/s, smoothed
  std::vector<double> throttle_;
  int pressure_rounds_ = 0;         // consecutive rounds that called for a throttle
  std::uint64_t hot_set_seen_ = 0;  // the hot set's last known size
};

}  // namespace ferry::migration

#pragma once
// The switchover policy: after each pre-copy round, decide from what was
// measured whether to stop the VM and switch over now, go on copying, slow
// the vCPUs that dirty memory faster than the link can carry it, or give up.
//
// It is a pure function of its inputs (RoundSample), so it is tested on
// recorded traces and its inputs can later come from eBPF measurements
// instead of the engine's own counters without touching the rule.
//
// The model (as in QEMU and vMotion):
//   expected downtime = bytes still dirty / link bandwidth + fixed costs
// where fixed costs cover CPU/device state transfer and the commit round
// trips. Switch over when that fits the limit. If the guest dirties memory
// faster than the link drains it, copying more rounds cannot converge:
// throttle, but only the vCPUs that dirty most (QEMU's dirty-limit, not its
// whole-VM auto-converge), so a guest with one hot thread keeps the others
// at full speed.
#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

namespace ferry::migration {

using Millis = std::chrono::duration<double, std::milli>;

enum class TimeoutAction { kCancel, kForceSwitchover };

struct PolicyConfig {
  Millis downtime_limit{300};
  Millis timeout{std::chrono::minutes(10)};
  TimeoutAction on_timeout = TimeoutAction::kCancel;
  // State transfer + READY/COMMIT round trips; measured by the engine when
  // it knows them (first migration to a host uses this guess).
  Millis fixed_costs{20};
  std::uint64_t page_bytes = 4096;
  // Weight of the newest round in the moving averages (0..1].
  double smoothing = 0.5;
  // Throttling: a vCPU is throttled when the VM dirties faster than
  // `throttle_when` times the bandwidth; each step adds `throttle_step` to
  // its share of time held back, up to `max_throttle`.
  double throttle_when = 0.8;
  double throttle_step = 0.2;
  double max_throttle = 0.9;
};

// What one pre-copy round measured.
struct RoundSample {
  std::uint32_t round = 0;
  Millis duration{0};             // wall time of the round
  std::uint64_t bytes_sent = 0;   // on the wire this round
  std::uint64_t dirty_pages = 0;  // still to send after this round's final harvest
  // Pages each vCPU dirtied during the round (dirty-ring attribution).
  std::vector<std::uint64_t> dirtied_per_vcpu;
  Millis elapsed{0};  // since the migration started
};

struct Decision {
  enum class Action { kContinue, kSwitchover, kCancel };
  Action action = Action::kContinue;
  Millis expected_downtime{0};
  double bandwidth_bytes_per_s = 0;
  double dirty_bytes_per_s = 0;
  // Per vCPU, share of time to hold it back (0 = full speed).
  std::vector<double> throttle;
  std::string reason;  // one line, for the progress display and the report
};

std::string_view action_name(Decision::Action a);

class SwitchoverPolicy {
 public:
  explicit SwitchoverPolicy(PolicyConfig config) : c_(config) {}

  Decision after_round(const RoundSample& s);

  const PolicyConfig& config() const { return c_; }

 private:
  PolicyConfig c_;
  double bandwidth_ = 0;  // bytes/s, smoothed
  double dirty_rate_ = 0; // bytes/s, smoothed
  std::vector<double> throttle_;
  int outrun_rounds_ = 0;  // consecutive rounds where dirtying outran the link
};

}  // namespace ferry::migration

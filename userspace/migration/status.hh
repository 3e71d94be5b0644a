#pragma once
// What a migration reports: live progress while it runs and the final
// report, one structure for both (the CLI renders it as a progress line,
// a text report, or JSON).
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace ferry::migration {

enum class Phase {
  kConnecting,
  kPrecheck,
  kPrecopy,
  kSwitchover,  // vCPUs paused: final pages, state, READY
  kCommitting,  // COMMIT sent: the source never resumes by itself from here
  kMigrated,    // the destination confirmed: the source VM is stopped
  kFailed,      // before READY: the VM runs on the source as before
  kCancelled,   // likewise, by request or by the timeout action
  kOutcomeUnknown,  // COMMIT sent, no confirmation: paused, see `ferry resolve`
};
std::string_view phase_name(Phase p);
bool phase_final(Phase p);
// The commit rule as a table (source.cc): whether a session may go from
// one phase to the other.
bool phase_transition_allowed(Phase from, Phase to);

struct RoundFigures {
  std::uint32_t round = 0;
  std::uint64_t pages = 0;       // sent with data
  std::uint64_t zero_pages = 0;  // sent as markers
  std::uint64_t bytes = 0;       // on the wire
  double ms = 0;
  std::uint64_t dirty_after = 0;  // pages dirty when the round ended
  double dirty_rate = 0;          // bytes/s, smoothed (policy)
  double bandwidth = 0;           // bytes/s, smoothed (policy)
  double expected_downtime_ms = 0;
  std::string decision;  // continue | switchover | cancel
  std::string reason;
  std::vector<double> throttle;  // per vCPU after the decision
  // Pages each vCPU dirtied during the round (dirty ring), or one figure for
  // the whole VM (bitmap): the policy's input, so reports can be replayed
  // as policy traces (tests/data/policy).
  std::vector<std::uint64_t> dirtied_per_vcpu;
  // Adaptive policy inputs and outputs for the round (0 / empty: unknown).
  double capacity = 0;                     // bytes/s the prediction used
  double link_capacity = 0;                // bytes/s from cwnd x mss / srtt (eBPF)
  double rtt_ms = 0;                       // smoothed RTT of the streams (eBPF)
  std::vector<double> kernel_dirty_rate;   // pages/s per vCPU seen by eBPF during the round
  std::uint64_t held_back = 0;             // hot pages held for the final round
  // The longest the guest went without a heartbeat during the round (built-in
  // guest; -1 unknown): stalls the engine or a throttle caused while it ran.
  double guest_stall_ms = -1;
  // The rest of what the policy was given (RoundSample), so a report can be
  // replayed as a policy trace exactly (tools/report-to-policy-trace).
  double elapsed_ms = 0;
  std::uint64_t hot_pages = 0, hot_set_pages = 0, state_bytes = 0;
  double switch_costs_ms = 0;
};

struct MigrationStatus {
  Phase phase = Phase::kConnecting;
  std::string error;  // why it failed / was cancelled / is unknown
  std::string to;
  // How its connections are secured: the mode and credentials it was given
  // (`ferry resolve` dials the destination the same way), and what the
  // first connection ended up with ("TLS 1.3 ... kernel TLS").
  std::string security_mode, security_path, channel;
  std::uint64_t session = 0;
  // COMMIT left in full (every byte handed to the kernel): from then on the
  // destination may have resumed the VM, so the source never resumes it
  // without the destination's word. A COMMIT whose send failed never
  // reached the destination whole, and a partial frame is never applied.
  // Kept in memory only: the source's copy of the VM lives in this process
  // and dies with it, so the record lasts exactly as long as that copy.
  bool commit_sent = false;
  std::uint32_t streams = 1;
  std::string dirty_backend;
  std::uint64_t memory_bytes = 0;
  std::uint32_t round = 0;         // current or last
  std::uint64_t remaining_pages = 0;  // dirty, not yet sent
  double dirty_rate = 0, bandwidth = 0, expected_downtime_ms = 0;
  double max_bandwidth = 0;  // the cap, 0: none
  double downtime_limit_ms = 0;
  double elapsed_ms = 0;
  std::vector<RoundFigures> rounds;
  // Totals.
  std::uint64_t pages_sent = 0, zero_pages = 0, resent_pages = 0, unallocated_pages = 0, bytes_sent = 0;
  // Switchover, when it happened. Downtime runs from the pause on the
  // source to the resume on the destination (wall clocks: exact on one
  // host, as good as clock sync across hosts).
  double downtime_ms = -1;
  // Before round 0: connecting the streams (HELLO answered), the precheck
  // round trip, starting dirty tracking and finding the memory's allocated
  // extents. (The eBPF programs load meanwhile and join when ready.)
  double setup_ms = 0, connect_ms = 0, precheck_ms = 0, tracking_ms = 0, scan_ms = 0;
  double final_pages_ms = 0, state_ms = 0, ready_ms = 0, dest_load_ms = 0, commit_ms = 0;
  // ready_ms: STATE sent until READY arrived (includes dest_load_ms).
  // commit_ms: COMMIT sent until CONFIRMED (the destination resumes first,
  // then waits up to 500 ms for the guest's first heartbeat to report it).
  std::uint64_t final_pages = 0, state_bytes = 0;
  double guest_downtime_ms = -1;  // heartbeat gap the built-in guest saw; -1: unknown
  bool verified = false;          // --verify digests matched
  // Transport.
  std::string zero_copy;  // "active" or why not
  std::uint64_t zc_requests = 0, zc_copied = 0;
  std::vector<double> throttle;  // per vCPU, last applied
  std::vector<double> throttled_ms;
  // The switchover policy: which rule, what it measured with, and what it
  // predicted the downtime would be when it switched over (-1: it did not).
  std::string policy;         // "adaptive" or "fixed-threshold"
  std::string policy_inputs;  // e.g. "dirty rate: eBPF kvm_dirty_ring_push; link: eBPF tcp_probe"
  double predicted_downtime_ms = -1;
  double predict_pages_ms = 0, predict_state_ms = 0, predict_rtt_ms = 0, predict_fixed_ms = 0;
  // The short pauses that measured switch costs: their total (the guest saw
  // every one) and how many (one, more when a stall inflated the first).
  double calibration_pause_ms = -1;
  std::uint32_t calibration_pauses = 0;
  std::uint64_t held_back_pages = 0;  // hot pages sent only in the final round
  // Guest-visible stalls while the guest still ran on the source (built-in
  // guest's heartbeats; -1 unknown): the longest heartbeat gap during
  // pre-copy, calibration pause and throttling included. Downtime is not the
  // only pause a migration costs the guest.
  double precopy_guest_stall_ms = -1;
};

nlohmann::json to_json(const MigrationStatus& s);
// The same with only rounds [from, from + count) in "rounds", plus
// "rounds_total" and "rounds_from": how the control API answers polls, so an
// answer never grows with the number of rounds (callers page through them;
// see control::MigrationFollower).
nlohmann::json to_json(const MigrationStatus& s, std::size_t from, std::size_t count);
// Rounds per API answer: ~1 KiB each with a few vCPUs, far under the line limit.
inline constexpr std::size_t kRoundsPerAnswer = 32;
// The inverse, for clients of the control API (`ferry migrate`, resolve);
// an unknown phase name reads as kFailed.
MigrationStatus status_from_json(const nlohmann::json& j);
Phase parse_phase(std::string_view name);
// The final report for people.
std::string report_text(const MigrationStatus& s);
// One line of live progress.
std::string progress_line(const MigrationStatus& s);

}  // namespace ferry::migration

// The switchover policy on traces of pre-copy rounds (tests/data/policy/):
// when it switches over, when it throttles and whom, and what it does at
// the timeout. Most traces are modelled on the rounds of a pre-copy engine;
// recorded_*.csv come from real migrations (their rounds[] in the report).
#include <gtest/gtest.h>

#include <iostream>

#include <algorithm>
#include <cmath>
#include <optional>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "userspace/migration/policy.hh"

namespace ferry::migration {
namespace {

// A trace is CSV, one pre-copy round per line. Without a header the columns
// are round,ms,bytes,dirty_after,elapsed_ms then one dirtied count per vCPU
// (the report's rounds[]). A "# columns: a,b,..." line names them instead:
// the same five plus kernel_capacity (bytes/s), rtt_ms, state_bytes,
// switch_costs_ms, hot_pages, hot_set_pages, vcpu_rate:N (kernel, pages/s)
// and dirtied:N. Any kernel column makes every row carry a KernelRound.
void set_column(RoundSample& s, const std::string& name, double v) {
  auto index = [&](const char* prefix) { return std::stoul(name.substr(std::string_view(prefix).size())); };
  auto at = [](auto& vec, std::size_t i) -> auto& {
    if (vec.size() <= i) vec.resize(i + 1);
    return vec[i];
  };
  auto kernel = [&]() -> KernelRound& { return s.kernel ? *s.kernel : s.kernel.emplace(); };
  if (name == "round") s.round = static_cast<std::uint32_t>(v);
  else if (name == "ms") s.duration = Millis(v);
  else if (name == "bytes") s.bytes_sent = static_cast<std::uint64_t>(v);
  else if (name == "dirty_after") s.dirty_pages = static_cast<std::uint64_t>(v);
  else if (name == "elapsed_ms") s.elapsed = Millis(v);
  else if (name == "state_bytes") s.state_bytes = static_cast<std::uint64_t>(v);
  else if (name == "switch_costs_ms") s.switch_costs = Millis(v);
  else if (name == "hot_pages") s.hot_pages = static_cast<std::uint64_t>(v);
  else if (name == "hot_set_pages") s.hot_set_pages = static_cast<std::uint64_t>(v);
  else if (name.starts_with("dirtied:")) at(s.dirtied_per_vcpu, index("dirtied:")) = static_cast<std::uint64_t>(v);
  else if (name == "kernel_capacity") kernel().link_capacity_bytes_per_s = v;
  else if (name == "rtt_ms") kernel().rtt = Millis(v);
  else if (name.starts_with("vcpu_rate:")) at(kernel().dirty_pages_per_s, index("vcpu_rate:")) = v;
  else ADD_FAILURE() << "unknown trace column " << name;
}

std::vector<RoundSample> load_trace(const std::string& name) {
  std::ifstream f(std::string(FERRY_POLICY_TRACES) + "/" + name);
  EXPECT_TRUE(f) << "missing trace " << name;
  const std::string header = "# columns: ";
  std::vector<std::string> columns;  // empty: the old positional layout
  std::vector<RoundSample> out;
  for (std::string line; std::getline(f, line);) {
    if (line.starts_with(header)) {
      std::stringstream ss(line.substr(header.size()));
      for (std::string col; std::getline(ss, col, ',');) columns.push_back(col);
    }
    if (line.empty() || line[0] == '#') continue;
    std::stringstream ss(line);
    std::vector<double> v;
    for (std::string cell; std::getline(ss, cell, ',');) v.push_back(std::stod(cell));
    RoundSample s;
    if (!columns.empty()) {
      EXPECT_EQ(v.size(), columns.size()) << line;
      for (std::size_t i = 0; i < std::min(v.size(), columns.size()); ++i) set_column(s, columns[i], v[i]);
      out.push_back(s);
      continue;
    }
    EXPECT_GE(v.size(), 6u) << line;
    s.round = static_cast<std::uint32_t>(v[0]);
    s.duration = Millis(v[1]);
    s.bytes_sent = static_cast<std::uint64_t>(v[2]);
    s.dirty_pages = static_cast<std::uint64_t>(v[3]);
    s.elapsed = Millis(v[4]);
    for (std::size_t i = 5; i < v.size(); ++i) s.dirtied_per_vcpu.push_back(static_cast<std::uint64_t>(v[i]));
    out.push_back(s);
  }
  return out;
}

std::vector<Decision> replay(SwitchoverPolicy& p, const std::vector<RoundSample>& trace) {
  std::vector<Decision> out;
  for (const auto& s : trace) {
    out.push_back(p.after_round(s));
    if (out.back().action != Decision::Action::kContinue) break;
  }
  return out;
}

// A real run replayed: the policy decides exactly as it did live, with the
// same predictions (the CSV rounds times to 0.1 ms). That run predated the
// kernel inputs and the decision-gap term: the adaptive rule on userspace
// counters with decision_gap = 0 is the rule it ran.
TEST(MigrationPolicy, ARecordedRunReplaysToTheDecisionsItMadeLive) {
  const auto trace = load_trace("recorded_pvm_capped.csv");
  ASSERT_EQ(trace.size(), 3u);
  PolicyConfig c;
  c.downtime_limit = Millis(2000);
  c.timeout = Millis(300000);
  c.decision_gap = Millis(0);
  SwitchoverPolicy p(c);
  const auto d = replay(p, trace);
  ASSERT_EQ(d.size(), 3u);
  EXPECT_EQ(d[0].action, Decision::Action::kContinue);
  EXPECT_EQ(d[1].action, Decision::Action::kContinue);
  EXPECT_EQ(d[2].action, Decision::Action::kSwitchover);
  EXPECT_NEAR(d[0].expected_downtime.count(), 2797.1, 2.0);
  EXPECT_NEAR(d[1].expected_downtime.count(), 2355.5, 2.0);
  EXPECT_NEAR(d[2].expected_downtime.count(), 1664.3, 2.0);
  for (const auto& x : d) {
    EXPECT_EQ(x.throttle, std::vector<double>{0.0}) << "no round outran the link";
    EXPECT_EQ(x.inputs, "userspace counters (eBPF unavailable)");
  }
}

// Real runs in tools/kvm-sandbox (nested KVM, dirty ring, eBPF inputs),
// recorded with tools/report-to-policy-trace from `ferry migrate --json`
// (every input the policy had is in the report's rounds[].policy_sample).
// Replayed, the policy switches over at the round it did live with the same
// prediction, and the prediction is checked against the downtime the run
// then measured: never below it, and within 40% (or 10 ms). Issue 12's target
// is 20%: both runs over-predict by 22% and 39%, the round trips (2 x an
// srtt measured under load: 7-34 ms against 9-14 ms of commit) and the
// switch costs (a calibration pause taken while the engine was busy) being
// the pessimistic terms; the pages term was within 1%.
struct RecordedRun {
  const char* file;
  double limit_ms, cap, predicted_live, actual;
  std::size_t rounds;
};

TEST(MigrationPolicy, RecordedSandboxRunsPredictTheirMeasuredDowntime) {
  const RecordedRun runs[] = {
      {"recorded_sandbox_capped.csv", 400, 16777216, 194.401, 158.980, 4},
      {"recorded_sandbox_default.csv", 300, 0, 219.839, 158.122, 2},
  };
  for (const auto& run : runs) {
    SCOPED_TRACE(run.file);
    const auto trace = load_trace(run.file);
    ASSERT_EQ(trace.size(), run.rounds);
    PolicyConfig c;
    c.downtime_limit = Millis(run.limit_ms);
    c.max_bandwidth_bytes_per_s = run.cap;
    SwitchoverPolicy p(c);
    const auto d = replay(p, trace);
    ASSERT_EQ(d.size(), run.rounds) << "it must switch over at the round it did live";
    EXPECT_EQ(d.back().action, Decision::Action::kSwitchover) << d.back().reason;
    for (std::size_t i = 0; i + 1 < d.size(); ++i) EXPECT_EQ(d[i].action, Decision::Action::kContinue) << d[i].reason;
    const double predicted = d.back().expected_downtime.count();
    EXPECT_NEAR(predicted, run.predicted_live, 0.5) << d.back().reason;
    EXPECT_GE(predicted, run.actual) << "an optimistic prediction overshoots the limit";
    EXPECT_LE(predicted - run.actual, std::max(10.0, 0.4 * run.actual)) << d.back().reason;
    std::cout << run.file << ": predicted " << predicted << " ms, measured " << run.actual << " ms ("
              << 100 * (predicted - run.actual) / run.actual << "% over)\n";
  }
}

TEST(MigrationPolicy, SwitchesOverOnTheFirstRoundWhoseDowntimeFits) {
  const auto trace = load_trace("converging.csv");
  ASSERT_EQ(trace.size(), 4u);
  PolicyConfig c;
  c.downtime_limit = Millis(30);
  SwitchoverPolicy p(c);
  const auto d = replay(p, trace);
  // ~1 GB/s: 24000 pages (~98 MB) need ~95 ms, 4100 pages ~17 ms + 20 ms of
  // fixed costs > 30 ms, 900 pages ~3.7 ms + 20 ms fits.
  ASSERT_EQ(d.size(), 3u);
  EXPECT_EQ(d[0].action, Decision::Action::kContinue);
  EXPECT_EQ(d[1].action, Decision::Action::kContinue);
  EXPECT_EQ(d[2].action, Decision::Action::kSwitchover) << d[2].reason;
  EXPECT_LT(d[2].expected_downtime.count(), 30.0);
  EXPECT_GT(d[1].expected_downtime.count(), 30.0);
  EXPECT_NEAR(d[0].bandwidth_bytes_per_s, 1073741824 / 1.05, 1e6);
  for (const auto& x : d)
    for (double t : x.throttle) EXPECT_EQ(t, 0.0) << "a converging guest is never throttled";
  EXPECT_NE(d[2].reason.find("fits the 30 ms limit"), std::string::npos) << d[2].reason;
}

TEST(MigrationPolicy, ALooserLimitSwitchesEarlier) {
  const auto trace = load_trace("converging.csv");
  PolicyConfig c;
  c.downtime_limit = Millis(150);
  SwitchoverPolicy p(c);
  const auto d = replay(p, trace);
  ASSERT_EQ(d.size(), 1u);  // 95 ms + 20 ms fixed fits after round 0
  EXPECT_EQ(d[0].action, Decision::Action::kSwitchover);
}

TEST(MigrationPolicy, ThrottlesOnlyTheVcpuThatOutrunsTheLink) {
  const auto trace = load_trace("hot_vcpu.csv");
  PolicyConfig c;
  c.downtime_limit = Millis(100);
  c.timeout = std::chrono::hours(1);
  SwitchoverPolicy p(c);
  const auto d = replay(p, trace);
  ASSERT_EQ(d.size(), trace.size());
  // Round 0 alone is no evidence (it copies everything); the outrun must
  // persist for two rounds before anyone is slowed.
  EXPECT_EQ(d[1].throttle, (std::vector<double>{0.0, 0.0})) << d[1].reason;
  double last = 0;
  for (std::size_t i = 2; i < d.size(); ++i) {
    EXPECT_EQ(d[i].action, Decision::Action::kContinue);
    EXPECT_EQ(d[i].throttle[0], 0.0) << "round " << i << ": the idle vCPU must not be slowed: " << d[i].reason;
    EXPECT_GE(d[i].throttle[1], last) << "round " << i;
    last = d[i].throttle[1];
  }
  EXPECT_GT(last, 0.0);
  EXPECT_LE(last, c.max_throttle);
  EXPECT_NE(d[2].reason.find("vCPU 1 held back"), std::string::npos) << d[2].reason;
}

TEST(MigrationPolicy, TimeoutCancelsByDefault) {
  const auto trace = load_trace("never_converges.csv");
  PolicyConfig c;
  c.downtime_limit = Millis(50);
  c.timeout = std::chrono::seconds(60);
  SwitchoverPolicy p(c);
  const auto d = replay(p, trace);
  ASSERT_EQ(d.size(), trace.size());
  for (std::size_t i = 0; i + 1 < d.size(); ++i) EXPECT_EQ(d[i].action, Decision::Action::kContinue);
  EXPECT_EQ(d.back().action, Decision::Action::kCancel);
  EXPECT_NE(d.back().reason.find("the VM stays on the source"), std::string::npos) << d.back().reason;
}

TEST(MigrationPolicy, TimeoutCanForceTheSwitchover) {
  const auto trace = load_trace("never_converges.csv");
  PolicyConfig c;
  c.downtime_limit = Millis(50);
  c.timeout = std::chrono::seconds(60);
  c.on_timeout = TimeoutAction::kForceSwitchover;
  SwitchoverPolicy p(c);
  const auto d = replay(p, trace);
  EXPECT_EQ(d.back().action, Decision::Action::kSwitchover);
  EXPECT_GT(d.back().expected_downtime.count(), 50.0) << "forced, so it did not fit";
  EXPECT_NE(d.back().reason.find("switching over anyway"), std::string::npos);
}

TEST(MigrationPolicy, NoBandwidthYetMeansNoSwitchover) {
  SwitchoverPolicy p(PolicyConfig{});
  RoundSample s;
  s.duration = Millis(100);
  s.dirty_pages = 10;
  s.dirtied_per_vcpu = {1};
  const auto d = p.after_round(s);
  EXPECT_EQ(d.action, Decision::Action::kContinue);
  EXPECT_TRUE(std::isinf(d.expected_downtime.count()));
}

// ---- The adaptive rule against QEMU's, and its parts ----

constexpr double kMiB = 1048576;

// One round as the engine reports it, with the kernel's view when given.
RoundSample sample(std::uint32_t round, double ms, double mib_sent, std::uint64_t dirty_pages,
                   std::vector<double> kernel_pages_per_s = {}, double kernel_capacity = 0) {
  RoundSample s;
  s.round = round;
  s.duration = Millis(ms);
  s.bytes_sent = static_cast<std::uint64_t>(mib_sent * kMiB);
  s.dirty_pages = dirty_pages;
  s.elapsed = Millis(1000.0 * (round + 1));
  if (!kernel_pages_per_s.empty() || kernel_capacity > 0) {
    s.kernel.emplace();
    s.kernel->dirty_pages_per_s = std::move(kernel_pages_per_s);
    s.kernel->link_capacity_bytes_per_s = kernel_capacity;
  }
  return s;
}

PolicyConfig fixed_threshold() {
  PolicyConfig c;
  c.kind = PolicyKind::kFixedThreshold;
  return c;
}

// The engine pushed 2 MiB/s while the connections' cwnd x mss / srtt said
// up to 20 MiB/s. The window is not what the engine delivers: switching
// over on it would have predicted ~100 ms for a final round that takes 1 s
// (what issue 12 measured in the sandbox: a 196 ms prediction, 1052 ms
// actual). So the adaptive rule divides by what was delivered, and neither
// rule switches over on this trace: QEMU's cancels at its timeout, the
// adaptive one keeps predicting ~1.05 s and throttles the vCPU that dirties.
TEST(MigrationPolicy, AWindowThatWouldCarryMoreIsNotCapacity) {
  const auto trace = load_trace("bursty_link.csv");
  ASSERT_EQ(trace.size(), 8u);
  ASSERT_TRUE(trace[0].kernel.has_value()) << "the named columns load the kernel's view";
  PolicyConfig c;
  c.downtime_limit = Millis(300);
  c.timeout = Millis(15000);

  PolicyConfig q = c;
  q.kind = PolicyKind::kFixedThreshold;
  SwitchoverPolicy qemu(q);
  const auto fixed = replay(qemu, trace);
  ASSERT_EQ(fixed.size(), trace.size()) << "QEMU's rule runs to the timeout";
  for (std::size_t i = 0; i + 1 < fixed.size(); ++i) {
    EXPECT_EQ(fixed[i].action, Decision::Action::kContinue) << fixed[i].reason;
    EXPECT_NEAR(fixed[i].expected_downtime.count(), 1000.0, 1e-6) << "2 MiB at the pushed 2 MiB/s";
  }
  EXPECT_EQ(fixed.back().action, Decision::Action::kCancel) << fixed.back().reason;

  SwitchoverPolicy adaptive(c);
  const auto d = replay(adaptive, trace);
  ASSERT_EQ(d.size(), trace.size()) << "no switchover on the window's word";
  for (std::size_t i = 1; i < d.size(); ++i) {
    EXPECT_NE(d[i].action, Decision::Action::kSwitchover) << d[i].reason;
    EXPECT_NEAR(d[i].capacity_bytes_per_s, 2 * kMiB, 1e-6) << "delivered, not the window: " << d[i].reason;
    EXPECT_EQ(d[i].inputs, "kernel (eBPF)");
  }
  // (512 pages + 5 ms of dirtying) / 2 MiB/s, 512 KiB of state / 2 MiB/s,
  // 2 x 1 ms, 18 ms measured.
  const double pages = (512 * 4096 + 514 * 4096 * 0.005) / (2 * kMiB) * 1000;
  EXPECT_NEAR(d[3].predict_pages.count(), pages, 1e-6);
  EXPECT_NEAR(d[3].expected_downtime.count(), pages + 250 + 2 + 18, 1e-6);
  // 2 MiB/s of dirtying is the whole delivered rate: vCPU 1, not the idle
  // vCPU 0, is held back.
  EXPECT_GT(d[3].throttle[1], 0.0) << d[3].reason;
  EXPECT_EQ(d[3].throttle[0], 0.0) << d[3].reason;
  // Round 0 is the only one that pushed at 2 MiB/s over 8 s; the window
  // (4 MiB/s) capped nothing there either.
  EXPECT_NEAR(d[0].capacity_bytes_per_s, 2 * kMiB, 1e-6);
}

// A closed loop, because a throttle changes what the guest dirties next and
// a fixed trace cannot show that: each vCPU rewrites its own region at a
// fixed rate (held back by the share the last decision asked for), the link
// carries a fixed rate, every round sends what the previous one left.
struct ModelGuest {
  std::vector<double> pages_per_s;  // per vCPU, unthrottled
  std::vector<double> region_pages;
  double memory_pages = 0;
  double link_bytes_per_s = 0;
};

std::vector<Decision> run_model(SwitchoverPolicy& p, const ModelGuest& g, bool with_kernel) {
  std::vector<Decision> out;
  std::vector<double> throttle(g.pages_per_s.size(), 0.0);
  double to_send = g.memory_pages;
  Millis elapsed{0};
  for (std::uint32_t round = 0; round < 1000; ++round) {
    RoundSample s;
    s.round = round;
    const double secs = to_send * 4096 / g.link_bytes_per_s;
    s.duration = Millis(secs * 1000);
    s.bytes_sent = static_cast<std::uint64_t>(to_send * 4096);
    elapsed += s.duration;
    s.elapsed = elapsed;
    s.state_bytes = 65536;
    KernelRound k;
    k.link_capacity_bytes_per_s = g.link_bytes_per_s;
    k.rtt = Millis(1);
    for (std::size_t i = 0; i < g.pages_per_s.size(); ++i) {
      const double rate = g.pages_per_s[i] * (1 - throttle[i]);
      const auto dirtied = static_cast<std::uint64_t>(std::min(g.region_pages[i], rate * secs));
      k.dirty_pages_per_s.push_back(rate);
      s.dirtied_per_vcpu.push_back(dirtied);
      s.dirty_pages += dirtied;
    }
    if (with_kernel) s.kernel = k;
    out.push_back(p.after_round(s));
    if (out.back().action != Decision::Action::kContinue) break;
    if (out.back().throttle.size() == throttle.size()) throttle = out.back().throttle;
    to_send = static_cast<double>(s.dirty_pages);
  }
  return out;
}

TEST(MigrationPolicy, AHotVcpuOutrunningTheLinkConvergesOnlyThroughItsThrottle) {
  // 64 MiB; vCPU 1 rewrites 16 MiB at 30 MiB/s, vCPU 0 1 MiB at 0.5 MiB/s;
  // the link carries 20 MiB/s.
  const ModelGuest g{{128, 7680}, {256, 4096}, 16384, 20 * kMiB};
  PolicyConfig c;
  c.downtime_limit = Millis(300);
  c.timeout = Millis(60000);

  SwitchoverPolicy qemu([&] {
    auto q = c;
    q.kind = PolicyKind::kFixedThreshold;
    return q;
  }());
  const auto fixed = run_model(qemu, g, true);
  EXPECT_GT(fixed.size(), 50u);
  for (std::size_t i = 0; i + 1 < fixed.size(); ++i) ASSERT_EQ(fixed[i].action, Decision::Action::kContinue);
  EXPECT_EQ(fixed.back().action, Decision::Action::kCancel) << "16 MiB stay dirty: " << fixed.back().reason;

  SwitchoverPolicy adaptive(c);
  const auto d = run_model(adaptive, g, true);
  ASSERT_EQ(d.size(), 3u);
  // 30.5 MiB/s seen in real time >= 80% of 20 MiB/s: throttled at once,
  // vCPU 1 alone, so that the VM dirties 10 MiB/s (half the link).
  EXPECT_NE(d[0].reason.find("vCPU 1 held back 68%"), std::string::npos) << d[0].reason;
  EXPECT_NEAR(d[0].throttle[1], (7808.0 - 2560) / 7680, 1e-9);
  EXPECT_EQ(d[2].action, Decision::Action::kSwitchover) << d[2].reason;
  EXPECT_LE(d[2].expected_downtime.count(), 300.0);
  for (const auto& x : d) EXPECT_EQ(x.throttle[0], 0.0) << "the cold vCPU keeps full speed: " << x.reason;
  EXPECT_EQ(d[1].throttle[1], d[0].throttle[1]) << "the same demand keeps the same share: " << d[1].reason;

  // Without eBPF it gets there too, later: round 0 is no evidence, a harvest
  // sees at most the 16 MiB region per round (not the 30 MiB/s of writes),
  // so the first share is too small and a second one follows.
  SwitchoverPolicy blind(c);
  const auto u = run_model(blind, g, false);
  ASSERT_EQ(u.size(), 7u);
  EXPECT_EQ(u[1].throttle[1], 0.0) << u[1].reason;
  EXPECT_EQ(u[2].throttle[1], 0.0) << u[2].reason;
  EXPECT_GT(u[3].throttle[1], 0.0) << u[3].reason;
  EXPECT_LT(u[3].throttle[1], d[0].throttle[1]) << u[3].reason;
  EXPECT_EQ(u.back().action, Decision::Action::kSwitchover) << u.back().reason;
  for (const auto& x : u) EXPECT_EQ(x.throttle[0], 0.0) << x.reason;
}

TEST(MigrationPolicy, PredictsTheDowntimeTermByTerm) {
  PolicyConfig c;
  SwitchoverPolicy p(c);
  auto s = sample(0, 100, 4, 1000, {1000, 3000}, 40 * kMiB);  // 4 MiB in 100 ms: delivered 40 MiB/s
  s.kernel->rtt = Millis(0.5);
  s.hot_pages = 24;
  s.state_bytes = 204800;
  s.switch_costs = Millis(12);
  const auto d = p.after_round(s);
  // 4000 pages/s x 5 ms = 20 pages dirtied after the harvest; with the 1000
  // dirty and 24 hot ones, 1044 pages at 40 MiB/s.
  EXPECT_NEAR(d.predict_pages.count(), 1044.0 * 4096 / (40 * kMiB) * 1000, 1e-9);
  EXPECT_NEAR(d.predict_state.count(), 204800 / (40 * kMiB) * 1000, 1e-9);
  EXPECT_NEAR(d.predict_rtt.count(), 1.0, 1e-12);
  EXPECT_NEAR(d.predict_fixed.count(), 12.0, 1e-12) << "measured switch costs replace the guess";
  EXPECT_NEAR(d.expected_downtime.count(), 101.953125 + 4.8828125 + 1 + 12, 1e-9);
  EXPECT_NEAR(d.dirty_bytes_per_s, 4000.0 * 4096, 1e-9);
  EXPECT_EQ(d.action, Decision::Action::kSwitchover);
  EXPECT_EQ(d.reason,
            "predicted downtime 119.8 ms (pages 102.0 + state 4.9 + round trips 1.0 + switch costs 12.0) fits the "
            "300 ms limit");

  // Not measured: the configured guess.
  SwitchoverPolicy q(c);
  s.switch_costs = Millis(0);
  EXPECT_NEAR(q.after_round(s).predict_fixed.count(), 20.0, 1e-12);
}

// Seen in the sandbox: the one calibration pause after round 0 caught a
// stall and read 649 ms against a 300 ms limit; every later round then
// said "switch costs alone exceed the limit" and the migration never
// converged (4206 rounds in 240 s). A stall only ever adds, so the policy
// samples again while the fixed terms alone block the switchover, keeps
// the smallest, and stops after kMaxSamples pauses.
TEST(MigrationPolicy, AStalledCalibrationIsMeasuredAgainAndTheSmallestSampleCounts) {
  PolicyConfig c;  // 300 ms limit
  SwitchoverPolicy p(c);
  SwitchCostEstimate est;
  Decision none;
  ASSERT_TRUE(est.wants_sample(none, c.downtime_limit)) << "the first sample comes after round 0";
  est.add(648.7);
  auto s = sample(1, 100, 4, 100, {1000}, 40 * kMiB);
  s.switch_costs = Millis(est.ms());
  const auto stuck = p.after_round(s);
  EXPECT_EQ(stuck.action, Decision::Action::kContinue);
  EXPECT_NE(stuck.reason.find("alone"), std::string::npos) << stuck.reason;
  EXPECT_TRUE(est.wants_sample(stuck, c.downtime_limit)) << "the fixed terms alone exceed the limit: measure again";

  est.add(61.4);
  est.add(90.0);  // a later, slower sample does not raise it
  EXPECT_DOUBLE_EQ(est.ms(), 61.4);
  EXPECT_EQ(est.samples(), 3);
  s = sample(2, 100, 4, 100, {1000}, 40 * kMiB);
  s.switch_costs = Millis(est.ms());
  const auto fits = p.after_round(s);
  EXPECT_EQ(fits.action, Decision::Action::kSwitchover) << fits.reason;
  EXPECT_FALSE(est.wants_sample(stuck, c.downtime_limit)) << "at most kMaxSamples pauses, whatever they read";

  // Switch costs that fit call for no more pauses than the first.
  SwitchCostEstimate calm;
  calm.add(40);
  EXPECT_FALSE(calm.wants_sample(fits, c.downtime_limit));
}

TEST(MigrationPolicy, CapacityIsWhatTheEngineDeliveredCappedByTheLinkAndTheUser) {
  PolicyConfig c;
  c.max_bandwidth_bytes_per_s = 8 * kMiB;
  SwitchoverPolicy capped(c);
  auto d = capped.after_round(sample(0, 1000, 40, 2048, {10}, 40 * kMiB));
  EXPECT_NEAR(d.capacity_bytes_per_s, 8 * kMiB, 1e-6) << "the user's cap";
  EXPECT_NEAR(d.predict_pages.count(), (2048.0 * 4096 + 10 * 4096 * 0.005) / (8 * kMiB) * 1000, 1e-9);

  // A window that would carry 40 MiB/s does not make 4 MiB/s delivered faster.
  SwitchoverPolicy window(PolicyConfig{});
  EXPECT_NEAR(window.after_round(sample(0, 1000, 4, 2048, {10}, 40 * kMiB)).capacity_bytes_per_s, 4 * kMiB, 1e-6);

  // The link carries less than the engine pushed last round (bytes still in
  // socket buffers): the link caps it.
  SwitchoverPolicy link(PolicyConfig{});
  d = link.after_round(sample(0, 1000, 10, 2048, {10}, 1 * kMiB));
  EXPECT_NEAR(d.capacity_bytes_per_s, 1 * kMiB, 1e-6);

  // Nothing delivered yet: the window is the only estimate there is.
  SwitchoverPolicy fresh(PolicyConfig{});
  EXPECT_NEAR(fresh.after_round(sample(0, 1000, 0, 2048, {10}, 6 * kMiB)).capacity_bytes_per_s, 6 * kMiB, 1e-6);
}

TEST(MigrationPolicy, WithoutEbpfItUsesTheEnginesCountersAndWaitsForTwoRoundsOfEvidence) {
  // 10 MiB/s pushed; vCPU 0 dirties 2560 pages (10 MiB) a second, vCPU 1 25.
  auto round = [](std::uint32_t r, bool kernel) {
    auto s = kernel ? sample(r, 1000, 10, 100000, {2560, 25}) : sample(r, 1000, 10, 100000);
    s.dirtied_per_vcpu = {2560, 25};
    return s;
  };
  SwitchoverPolicy p(PolicyConfig{});
  std::vector<Decision> d;
  for (std::uint32_t r = 0; r < 3; ++r) d.push_back(p.after_round(round(r, false)));
  for (const auto& x : d) {
    EXPECT_EQ(x.inputs, "userspace counters (eBPF unavailable)");
    EXPECT_NEAR(x.capacity_bytes_per_s, 10 * kMiB, 1e-6) << "the pushed rate";
    EXPECT_NEAR(x.dirty_bytes_per_s, 2585.0 * 4096, 1e-6) << "the harvested pages";
  }
  EXPECT_EQ(d[0].throttle, (std::vector<double>{0, 0})) << "round 0 is no evidence: " << d[0].reason;
  EXPECT_EQ(d[1].throttle, (std::vector<double>{0, 0})) << d[1].reason;
  EXPECT_NE(d[1].reason.find("watching one more round"), std::string::npos) << d[1].reason;
  // The second outrunning round: 10.1 MiB/s down to half the link's 10.
  EXPECT_NEAR(d[2].throttle[0], (2585.0 - 1280) / 2560, 1e-9) << d[2].reason;
  EXPECT_EQ(d[2].throttle[1], 0.0);

  // eBPF sees the link but not the dirtying: the engine's counters, its rule.
  SwitchoverPolicy link_only(PolicyConfig{});
  auto s0 = round(1, false);
  s0.kernel.emplace().link_capacity_bytes_per_s = 10 * kMiB;
  const auto half = link_only.after_round(s0);
  EXPECT_EQ(half.inputs, "kernel (eBPF) for the link, userspace counters for dirtying");
  EXPECT_EQ(half.throttle, (std::vector<double>{0, 0})) << half.reason;

  // The same rounds seen by the kernel: measured in real time, acted on at once.
  SwitchoverPolicy k(PolicyConfig{});
  const auto first = k.after_round(round(0, true));
  EXPECT_EQ(first.inputs, "kernel (eBPF)");
  EXPECT_NEAR(first.throttle[0], (2585.0 - 1280) / 2560, 1e-9) << first.reason;
}

TEST(MigrationPolicy, HoldsTheHotSetBackOnlyWhenTheFinalRoundCanAffordIt) {
  // 100 ms limit - 20 ms of switch costs: the hot set may take half of 80 ms,
  // 40 ms at 10 MiB/s = 102.4 pages.
  PolicyConfig c;
  c.downtime_limit = Millis(100);
  auto round = [](std::uint32_t r, std::uint64_t hot, double capacity_mib) {
    auto s = sample(r, 1000, capacity_mib, 10000, {1}, capacity_mib * kMiB);
    s.hot_pages = hot;
    s.switch_costs = Millis(20);
    return s;
  };
  SwitchoverPolicy affordable(c);
  EXPECT_TRUE(affordable.after_round(round(0, 100, 10)).hold_back_hot);

  SwitchoverPolicy p(c);
  EXPECT_TRUE(p.after_round(round(0, 0, 10)).hold_back_hot) << "nothing held back yet, nothing to fear";
  EXPECT_FALSE(p.after_round(round(1, 110, 10)).hold_back_hot) << "110 pages take 43 ms";
  EXPECT_FALSE(p.after_round(round(2, 0, 10)).hold_back_hot) << "re-sent now, but still as big: no flip-flop";
  EXPECT_TRUE(p.after_round(round(3, 0, 20)).hold_back_hot) << "at 20 MiB/s 110 pages take 21 ms";

  // Held pages the harvest found again are counted in dirty_pages, not in
  // hot_pages; the set's size is what the final round must carry.
  SwitchoverPolicy whole(c);
  auto s = round(0, 10, 10);
  s.hot_set_pages = 110;
  const auto d = whole.after_round(s);
  EXPECT_FALSE(d.hold_back_hot);
  // 10000 dirty + 10 hot pages, and 1 page/s for 5 ms.
  EXPECT_NEAR(d.predict_pages.count(), (10010 * 4096 + 4096 * 0.005) / (10 * kMiB) * 1000, 1e-9)
      << "the prediction counts each page once";

  c.fixed_costs = Millis(120);
  SwitchoverPolicy costly(c);
  EXPECT_FALSE(costly.after_round(sample(0, 1000, 10, 10000, {1}, 10 * kMiB)).hold_back_hot)
      << "switch costs alone exceed the limit";
}

TEST(MigrationPolicy, TheThrottleIsTakenFromTheHottestVcpusFirst) {
  // 20 MiB/s = 5120 pages/s; the target is half: 2560 pages/s.
  auto decide = [](std::vector<double> rates, double max_throttle = 0.9) {
    PolicyConfig c;
    c.max_throttle = max_throttle;
    SwitchoverPolicy p(c);
    return p.after_round(sample(0, 1000, 20, 100000, std::move(rates), 20 * kMiB)).throttle;
  };
  // One hot vCPU: it alone gives up 6528 - 2560 pages/s.
  const auto one = decide({64, 6400, 64});
  ASSERT_EQ(one.size(), 3u);
  EXPECT_NEAR(one[1], 0.62, 1e-9);
  EXPECT_EQ(one[0], 0.0);
  EXPECT_EQ(one[2], 0.0);
  // Two hot ones are both brought down to the same level (1230 pages/s),
  // the cold one is untouched.
  const auto two = decide({4000, 3000, 100});
  EXPECT_NEAR(two[0], 2770.0 / 4000, 1e-9);
  EXPECT_NEAR(two[1], 1770.0 / 3000, 1e-9);
  EXPECT_EQ(two[2], 0.0);
  // The hottest at its limit: the rest comes from the next one.
  const auto spill = decide({10000, 2000}, 0.8);
  EXPECT_NEAR(spill[0], 0.8, 1e-9);
  EXPECT_NEAR(spill[1], (12000.0 - 2560 - 8000) / 2000, 1e-9);
}

TEST(MigrationPolicy, ThrottlesAreReleasedGraduallyWhenTheGuestCalmsDown) {
  SwitchoverPolicy p(PolicyConfig{});
  // 6400 pages/s against 5120: 60% off vCPU 0.
  auto d = p.after_round(sample(0, 1000, 20, 100000, {6400}, 20 * kMiB));
  EXPECT_NEAR(d.throttle[0], 0.6, 1e-9);
  // Now it would dirty only 1000 pages/s unthrottled (400 seen at 60%).
  d = p.after_round(sample(1, 1000, 20, 100000, {400}, 20 * kMiB));
  EXPECT_NEAR(d.throttle[0], 0.4, 1e-9) << d.reason;
  EXPECT_NE(d.reason.find("vCPU 0 released to 40%"), std::string::npos) << d.reason;
  d = p.after_round(sample(2, 1000, 20, 100000, {600}, 20 * kMiB));
  EXPECT_NEAR(d.throttle[0], 0.2, 1e-9) << d.reason;
  d = p.after_round(sample(3, 1000, 20, 100000, {800}, 20 * kMiB));
  EXPECT_NEAR(d.throttle[0], 0.0, 1e-9) << d.reason;
}

TEST(MigrationPolicy, ThrottlesAGuestThatConvergesTooSlowlyForTheTimeout) {
  // 100 MiB left at 10 MiB/s while dirtying 7.5 MiB/s (75%, under the 80%
  // trigger): ~39 s of rounds to fit 300 ms. At 50%, ~20 s.
  auto round = [] {
    auto s = sample(1, 1000, 10, 25600, {1920}, 10 * kMiB);
    s.elapsed = Millis(30000);
    return s;
  };
  PolicyConfig c;
  c.timeout = Millis(60000);
  SwitchoverPolicy in_time(c);
  auto d = in_time.after_round(round());
  EXPECT_NEAR(d.throttle[0], 1.0 / 3, 1e-9) << d.reason;
  EXPECT_NE(d.reason.find("converging too slowly"), std::string::npos) << d.reason;

  c.timeout = Millis(80000);
  SwitchoverPolicy patient(c);
  d = patient.after_round(round());
  EXPECT_EQ(d.throttle[0], 0.0) << "50 s left is enough: " << d.reason;
}

TEST(MigrationPolicy, QemusRuleUsesTheLastRoundsBandwidthAloneAndNeverThrottles) {
  PolicyConfig c = fixed_threshold();
  c.downtime_limit = Millis(50);
  SwitchoverPolicy p(c);
  auto with_dirt = [](RoundSample s) {
    s.dirtied_per_vcpu = {0, 100000};  // far more than the link carries
    return s;
  };
  auto d = p.after_round(with_dirt(sample(0, 1000, 100, 2560)));
  EXPECT_NEAR(d.expected_downtime.count(), 100.0, 1e-9) << "10 MiB at 100 MiB/s, no fixed costs";
  d = p.after_round(with_dirt(sample(1, 100, 1, 2560)));
  EXPECT_NEAR(d.expected_downtime.count(), 1000.0, 1e-9) << "10 MiB/s this round, not smoothed";
  EXPECT_NEAR(d.bandwidth_bytes_per_s, 10 * kMiB, 1e-6);
  EXPECT_EQ(d.action, Decision::Action::kContinue);
  d = p.after_round(with_dirt(sample(2, 1000, 200, 2560)));
  EXPECT_EQ(d.action, Decision::Action::kSwitchover) << "50 ms fits 50 ms: " << d.reason;
  EXPECT_EQ(d.predict_fixed.count(), 0.0);
  EXPECT_EQ(d.throttle, (std::vector<double>{0, 0}));
  EXPECT_FALSE(d.hold_back_hot);
}

}  // namespace
}  // namespace ferry::migration

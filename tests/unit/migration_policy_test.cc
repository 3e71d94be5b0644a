// The switchover policy on traces of pre-copy rounds (tests/data/policy/):
// when it switches over, when it throttles and whom, and what it does at
// the timeout. Most traces are modelled on the rounds of a pre-copy engine;
// recorded_*.csv come from real migrations (their rounds[] in the report).
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "migration/policy.hh"

namespace ferry::migration {
namespace {

std::vector<RoundSample> load_trace(const std::string& name) {
  std::ifstream f(std::string(FERRY_POLICY_TRACES) + "/" + name);
  EXPECT_TRUE(f) << "missing trace " << name;
  std::vector<RoundSample> out;
  for (std::string line; std::getline(f, line);) {
    if (line.empty() || line[0] == '#') continue;
    std::stringstream ss(line);
    std::vector<double> v;
    for (std::string cell; std::getline(ss, cell, ',');) v.push_back(std::stod(cell));
    EXPECT_GE(v.size(), 6u) << line;
    RoundSample s;
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
// same predictions (the CSV rounds times to 0.1 ms).
TEST(MigrationPolicy, ARecordedRunReplaysToTheDecisionsItMadeLive) {
  const auto trace = load_trace("recorded_pvm_capped.csv");
  ASSERT_EQ(trace.size(), 3u);
  PolicyConfig c;
  c.downtime_limit = Millis(2000);
  c.timeout = Millis(300000);
  SwitchoverPolicy p(c);
  const auto d = replay(p, trace);
  ASSERT_EQ(d.size(), 3u);
  EXPECT_EQ(d[0].action, Decision::Action::kContinue);
  EXPECT_EQ(d[1].action, Decision::Action::kContinue);
  EXPECT_EQ(d[2].action, Decision::Action::kSwitchover);
  EXPECT_NEAR(d[0].expected_downtime.count(), 2797.1, 2.0);
  EXPECT_NEAR(d[1].expected_downtime.count(), 2355.5, 2.0);
  EXPECT_NEAR(d[2].expected_downtime.count(), 1664.3, 2.0);
  for (const auto& x : d) EXPECT_EQ(x.throttle, std::vector<double>{0.0}) << "no round outran the link";
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

}  // namespace
}  // namespace ferry::migration

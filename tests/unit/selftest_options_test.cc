// The self-test validates its plan before touching /dev/kvm, so bad plans
// fail the same way on every host.
#include <gtest/gtest.h>

#include "kvm/selftest.hh"

namespace ferry::kvm {
namespace {

TEST(SelftestOptions, RejectsCodePagesAndOutOfRangePages) {
  DirtyRingSelftestOptions o;
  o.kvm_path = "/nonexistent/kvm";  // never reached when the plan is bad
  o.rounds = {{3}};
  auto r = run_dirty_ring_selftest(o);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message().find("gfn 3 outside 8..255"), std::string::npos) << r.error().what();
  o.rounds = {{256}};
  EXPECT_FALSE(run_dirty_ring_selftest(o));
}

TEST(SelftestOptions, RejectsEmptyAndTooManyRounds) {
  DirtyRingSelftestOptions o;
  o.kvm_path = "/nonexistent/kvm";
  EXPECT_NE(run_dirty_ring_selftest(o).error().message().find("no rounds"), std::string::npos);
  o.rounds.assign(9, {10});
  EXPECT_NE(run_dirty_ring_selftest(o).error().message().find("at most 8 rounds"), std::string::npos);
}

TEST(SelftestOptions, MissingDeviceIsReportedWithItsPath) {
  DirtyRingSelftestOptions o;
  o.kvm_path = "/nonexistent/kvm";
  o.rounds = {{10}};
  auto r = run_dirty_ring_selftest(o);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().sys_errno(), ENOENT);
  EXPECT_NE(r.error().what().find("open /nonexistent/kvm failed"), std::string::npos) << r.error().what();
}

}  // namespace
}  // namespace ferry::kvm

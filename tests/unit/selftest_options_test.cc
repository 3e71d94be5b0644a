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
  auto none = run_dirty_ring_selftest(o);
  ASSERT_FALSE(none);
  EXPECT_NE(none.error().message().find("no rounds"), std::string::npos) << none.error().what();
  o.rounds.assign(9, {10});
  auto many = run_dirty_ring_selftest(o);
  ASSERT_FALSE(many);
  EXPECT_NE(many.error().message().find("at most 8 rounds"), std::string::npos) << many.error().what();
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

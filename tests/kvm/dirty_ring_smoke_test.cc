// KVM smoke test: a real VM with the dirty ring on runs real guest code that
// writes known pages; the ring must report exactly those pages, and
// KVM_RESET_DIRTY_RINGS must return the harvested count. Needs /dev/kvm (run
// natively or through tools/kvm-sandbox by tests/run-kvm-test): it never skips.
#include <gtest/gtest.h>

#include <algorithm>
#include <set>

#include "kvm/selftest.hh"

namespace ferry::kvm {
namespace {

std::multiset<std::uint64_t> reported_gfns(const DirtyRingRound& r) {
  std::multiset<std::uint64_t> out;
  for (const auto& g : r.reported) out.insert(g.offset);
  return out;
}

std::multiset<std::uint64_t> as_set(const std::vector<std::uint64_t>& v) { return {v.begin(), v.end()}; }

TEST(DirtyRingSmoke, RingReportsExactlyTheWrittenPages) {
  DirtyRingSelftestOptions o;
  o.rounds = {{8, 9, 17, 100, 200, 255}};
  auto rep = run_dirty_ring_selftest(o);
  ASSERT_TRUE(rep) << rep.error().what();
  ASSERT_EQ(rep->rounds.size(), 1u);
  const auto& r = rep->rounds[0];
  EXPECT_TRUE(r.memory_matches) << "the guest's writes did not reach guest memory: did it run?";
  EXPECT_EQ(reported_gfns(r), as_set(o.rounds[0]));  // exactly, each once
  for (const auto& g : r.reported) EXPECT_EQ(g.slot, 0u) << "page " << g.offset << " reported in wrong slot";
  EXPECT_EQ(r.harvested, r.reported.size());
  EXPECT_EQ(r.reset, r.harvested) << "KVM_RESET_DIRTY_RINGS must return the harvested count";
  EXPECT_EQ(r.ring_full_exits, 0u);
  EXPECT_NE(rep->mode, DirtyRingMode::kOff);
  EXPECT_EQ(rep->ring_entries, o.ring_bytes / sizeof(kvm_dirty_gfn));
}

TEST(DirtyRingSmoke, ResetRearmsTrackingForTheNextRound) {
  // Round 2 rewrites a subset of round 1's pages. They are reported again only
  // if the reset re-protected them, and nothing else from round 1 reappears.
  DirtyRingSelftestOptions o;
  o.rounds = {{10, 11, 12, 13, 50, 51}, {11, 50}, {60}};
  auto rep = run_dirty_ring_selftest(o);
  ASSERT_TRUE(rep) << rep.error().what();
  ASSERT_EQ(rep->rounds.size(), 3u);
  for (std::size_t i = 0; i < o.rounds.size(); ++i) {
    const auto& r = rep->rounds[i];
    EXPECT_EQ(reported_gfns(r), as_set(o.rounds[i])) << "round " << i;
    EXPECT_EQ(r.reset, r.harvested) << "round " << i;
    EXPECT_TRUE(r.memory_matches) << "round " << i;
  }
}

TEST(DirtyRingSmoke, RingFullExitsAreHandledWithoutLosingPages) {
  // 4 KiB = 256 entries, the smallest ring; KVM reserves some entries and
  // exits with DIRTY_RING_FULL before the ring is truly full, so 248 pages
  // force at least one ring-full exit mid-run.
  DirtyRingSelftestOptions o;
  o.ring_bytes = 4096;
  std::vector<std::uint64_t> all;
  for (std::uint64_t g = kSelftestCodePages; g < 256; ++g) all.push_back(g);
  o.rounds = {all};
  auto rep = run_dirty_ring_selftest(o);
  ASSERT_TRUE(rep) << rep.error().what();
  const auto& r = rep->rounds[0];
  EXPECT_GE(r.ring_full_exits, 1u);
  EXPECT_EQ(reported_gfns(r), as_set(all));
  EXPECT_EQ(r.reset, r.harvested);
}

}  // namespace
}  // namespace ferry::kvm

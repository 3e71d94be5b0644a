// The source's round planner (migration/round_planner.hh): round 0 is the
// memory file's data, later rounds the harvests, hot pages held back for
// the final round when asked and never lost, re-sends counted.
#include <gtest/gtest.h>

#include <cstring>

#include "userspace/migration/round_planner.hh"

namespace ferry::migration {
namespace {

using Pages = std::vector<std::uint64_t>;

TEST(RoundPlanner, PlansRoundsFromTheMemoryFileAndTheHarvests) {
  constexpr std::uint64_t kPages = 2048;
  auto ram = kvm::GuestRegion::create(0, 0, kPages * kPageSize, "planner");
  ASSERT_TRUE(ram) << ram.error().what();
  // Data in two 2 MiB chunks (one per stream); the rest are holes.
  for (std::uint64_t p : {0, 1, 2, 600, 601}) std::memset(ram->host() + p * kPageSize, 0x5a, kPageSize);
  RoundPlanner planner(0, 0, kPages, 2);

  auto r0 = planner.first_round(*ram);
  EXPECT_EQ(planner.allocated(), 5u);
  EXPECT_EQ(r0[0], (Pages{0, 1, 2}));
  EXPECT_EQ(r0[1], (Pages{600, 601}));
  EXPECT_EQ(planner.record_sent(r0), 0u);

  // Harvest 1: pages 1 and 700; nothing is hot yet.
  auto& h1_log = planner.harvest_log();  // emptied for the harvest
  h1_log.mark_gpa(1 * kPageSize);
  h1_log.mark_gpa(700 * kPageSize);
  auto h1 = planner.observe();
  EXPECT_EQ(h1.dirty_pages, 2u);
  EXPECT_EQ(h1.hot_set_pages, 0u);
  auto r1 = planner.next_round(/*hold_back_hot=*/true);
  EXPECT_EQ(r1[0], (Pages{1}));
  EXPECT_EQ(r1[1], (Pages{700}));
  EXPECT_EQ(planner.record_sent(r1), 1u) << "page 1 went out in round 0 too";

  // Harvest 2: page 1 again (hot: dirty in two harvests in a row) and 5.
  auto& h2_log = planner.harvest_log();
  h2_log.mark_gpa(1 * kPageSize);
  h2_log.mark_gpa(5 * kPageSize);
  auto h2 = planner.observe();
  EXPECT_EQ(h2.dirty_pages, 2u);
  EXPECT_EQ(h2.hot_set_pages, 1u);
  auto r2 = planner.next_round(/*hold_back_hot=*/true);
  EXPECT_EQ(r2[0], (Pages{5})) << "the hot page waits for the final round";
  EXPECT_EQ(planner.withheld(), 1u);

  // Harvest 3 does not find page 1 again: it is still unsent, and counted.
  planner.harvest_log().mark_gpa(7 * kPageSize);
  auto h3 = planner.observe();
  EXPECT_EQ(h3.held_only, 1u);
  EXPECT_EQ(h3.hot_set_pages, 1u);

  // The final harvest adds to the unsent one; the final round sends both
  // and every held page.
  planner.final_log().mark_gpa(9 * kPageSize);
  std::uint64_t held = 0;
  auto fin = planner.final_round(held);
  EXPECT_EQ(held, 1u);
  EXPECT_EQ(fin[0], (Pages{1, 7, 9}));
  EXPECT_TRUE(fin[1].empty());
}

}  // namespace
}  // namespace ferry::migration

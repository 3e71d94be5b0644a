// The userspace side of dirty tracking: bitmaps and per-slot logs.
#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>
#include <vector>

#include <fmt/format.h>

#include "kvm/dirty_bitmap.hh"
#include "kvm/dirty_tracker.hh"
#include "kvm/quirks.hh"

namespace ferry::kvm {
namespace {

TEST(DirtyBitmap, SetsCountsAndIteratesInOrderAcrossWords) {
  DirtyBitmap b(130);  // three words, the last one partial
  EXPECT_EQ(b.word_count(), 3u);
  for (std::uint64_t p : {129u, 0u, 63u, 64u, 65u}) b.set(p);
  EXPECT_EQ(b.count(), 5u);
  EXPECT_TRUE(b.test(64));
  EXPECT_FALSE(b.test(66));
  std::vector<std::uint64_t> seen;
  b.for_each([&](std::uint64_t p) { seen.push_back(p); });
  EXPECT_EQ(seen, (std::vector<std::uint64_t>{0, 63, 64, 65, 129}));
  // KVM's layout: page i is bit i%64 of word i/64.
  EXPECT_EQ(b.words()[1], 0b11u);  // pages 64, 65
  EXPECT_EQ(b.words()[2], 0b10u);  // page 129
  b.clear();
  EXPECT_FALSE(b.any());
}

TEST(DirtyBitmap, MergeIsUnion) {
  DirtyBitmap a(64), b(64);
  a.set(1);
  b.set(1);
  b.set(2);
  a.merge(b);
  EXPECT_EQ(a.count(), 2u);
  EXPECT_EQ(b.count(), 2u);
}

TEST(DirtyLog, MapsGuestAddressesToTheRightSlotAndPage) {
  DirtyLog log({{0, 0x0, 16}, {3, 0x100000, 4}});
  EXPECT_TRUE(log.mark_gpa(0x1fff));      // slot 0 page 1
  EXPECT_TRUE(log.mark_gpa(0x103000));    // slot 3 page 3 (last)
  EXPECT_FALSE(log.mark_gpa(0x104000));   // just past slot 3
  EXPECT_FALSE(log.mark_gpa(0x10000));    // hole between slots
  ASSERT_NE(log.find(3), nullptr);
  EXPECT_TRUE(log.find(3)->test(3));
  EXPECT_TRUE(log.find(0)->test(1));
  EXPECT_EQ(log.find(7), nullptr);
  std::vector<std::uint64_t> gpas;
  log.for_each_gpa([&](std::uint64_t g) { gpas.push_back(g); });
  EXPECT_EQ(gpas, (std::vector<std::uint64_t>{0x1000, 0x103000}));
  DirtyLog other(log.slots());
  other.mark_gpa(0x2000);
  log.merge(other);
  EXPECT_EQ(log.count(), 3u);
  log.clear();
  EXPECT_EQ(log.count(), 0u);
}

TEST(DirtyBackendNames, ParseRoundTripsAndRejectsUnknown) {
  for (auto b : {DirtyBackend::kAuto, DirtyBackend::kRing, DirtyBackend::kBitmap}) {
    auto parsed = parse_dirty_backend(dirty_backend_name(b));
    ASSERT_TRUE(parsed);
    EXPECT_EQ(*parsed, b);
  }
  auto bad = parse_dirty_backend("pml");
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().message(), "unknown dirty-tracking backend 'pml' (expected auto, ring or bitmap)");
}

TEST(KvmQuirks, PvmDirtyRingIsNotTrusted) {
  namespace fs = std::filesystem;
  const fs::path root = fs::temp_directory_path() / fmt::format("ferry-sysfs-{}", ::getpid());
  fs::remove_all(root);
  fs::create_directories(root / "module/kvm");
  EXPECT_FALSE(dirty_ring_unreliable_reason(root.string()));
  EXPECT_FALSE(kvm_is_pvm(root.string()));
  fs::create_directories(root / "module/kvm_pvm");
  EXPECT_TRUE(kvm_is_pvm(root.string()));
  EXPECT_TRUE(kvm_emulates_guests_reason(root.string()));
  auto why = dirty_ring_unreliable_reason(root.string());
  fs::remove_all(root);
  ASSERT_TRUE(why);
  EXPECT_NE(why->find("PVM"), std::string::npos) << *why;
}

}  // namespace
}  // namespace ferry::kvm

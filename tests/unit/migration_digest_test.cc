// The --verify digest (userspace/migration/digest.hh): the destination's,
// folded from the checksums of pages as they arrived, equals the source's,
// read from memory on several threads, for the same contents; and any
// difference the tracking could miss (a page changed, zeroed, or never
// sent) makes them differ.
#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "kvm/guest_memory.hh"
#include "userspace/migration/digest.hh"
#include "userspace/migration/payloads.hh"

namespace ferry::migration {
namespace {

constexpr std::uint64_t kPage = 4096;

struct Fixture {
  kvm::GuestRegion ram;
  PageDigests dst;
};

// A region with every third page written with random bytes (the rest never
// touched: memfd holes), and the destination's digests as if each written
// page had arrived.
Fixture make(std::uint64_t pages) {
  auto r = kvm::GuestRegion::create(0, 0, pages * kPage, "ram");
  EXPECT_TRUE(r) << r.error().what();
  Fixture f{std::move(*r), PageDigests(pages)};
  std::mt19937_64 rng(7);
  for (std::uint64_t p = 0; p < pages; p += 3) {
    auto* page = f.ram.host() + p * kPage;
    for (std::uint64_t w = 0; w < kPage / 8; ++w) {
      const std::uint64_t v = rng();
      std::memcpy(page + w * 8, &v, 8);
    }
    f.dst.set(p, page_checksum(p, {page, kPage}));
  }
  return f;
}

TEST(MigrationDigest, TheDestinationsFoldEqualsTheSourcesReadOnAnyThreadCount) {
  auto f = make(1000);
  const auto d = f.dst.digest();
  for (unsigned threads : {1u, 2u, 3u, 8u}) EXPECT_EQ(memory_digest(f.ram, threads), d) << threads << " threads";
  EXPECT_EQ(data_bytes(f.ram) % kPage, 0u);
  EXPECT_GE(data_bytes(f.ram), 334 * kPage);
  EXPECT_GT(checksum_rate(f.ram, 1 << 20), 0.0);
}

TEST(MigrationDigest, AnyPageThatDiffersChangesIt) {
  auto f = make(300);
  const auto before = memory_digest(f.ram, 2);
  ASSERT_EQ(before, f.dst.digest());
  // A write the destination never got (a page the tracking missed).
  f.ram.host()[150 * kPage + 17] ^= std::byte{1};
  EXPECT_NE(memory_digest(f.ram, 2), f.dst.digest());
  f.ram.host()[150 * kPage + 17] ^= std::byte{1};
  EXPECT_EQ(memory_digest(f.ram, 2), f.dst.digest());
  // A page zeroed at the source: equal once the destination got the marker.
  std::memset(f.ram.host() + 30 * kPage, 0, kPage);
  EXPECT_NE(memory_digest(f.ram, 2), f.dst.digest());
  f.dst.zero(30);
  EXPECT_EQ(memory_digest(f.ram, 2), f.dst.digest());
  // Where the page sits counts, not only its bytes: the same page at
  // another index is another entry.
  std::memcpy(f.ram.host() + 31 * kPage, f.ram.host() + 33 * kPage, kPage);
  f.dst.set(31, page_checksum(33, {f.ram.host() + 33 * kPage, kPage}));
  EXPECT_NE(memory_digest(f.ram, 2), f.dst.digest());
}

TEST(MigrationDigest, SourceDigestRunsOnItsOwnThread) {
  auto f = make(500);
  SourceDigest sd(f.ram, 2);
  EXPECT_EQ(sd.get(), f.dst.digest());
}

}  // namespace
}  // namespace ferry::migration

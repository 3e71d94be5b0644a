// Guest memory is plain memfd + mmap: testable without KVM.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>

#include "kvm/guest_memory.hh"

namespace ferry::kvm {
namespace {

TEST(GuestRegion, IsZeroedSharedMemfdOfTheRequestedSize) {
  auto r = GuestRegion::create(2, 0x100000, 16 * kPageSize, "ram");
  ASSERT_TRUE(r) << r.error().what();
  EXPECT_EQ(r->slot(), 2u);
  EXPECT_EQ(r->pages(), 16u);
  struct stat st{};
  ASSERT_EQ(::fstat(r->memfd(), &st), 0);
  EXPECT_EQ(st.st_size, static_cast<off_t>(16 * kPageSize));
  for (std::uint64_t i = 0; i < r->size(); ++i) ASSERT_EQ(r->host()[i], std::byte{0});
  // Shared mapping: a write through the mapping is visible through the fd,
  // which is what lets another process receive guest memory without a copy.
  std::memcpy(r->host_at(0x100000 + kPageSize), "ferry", 5);
  char buf[5];
  ASSERT_EQ(::pread(r->memfd(), buf, 5, kPageSize), 5);
  EXPECT_EQ(std::memcmp(buf, "ferry", 5), 0);
}

TEST(GuestRegion, TranslatesGuestAddresses) {
  auto r = GuestRegion::create(0, 0x200000, 4 * kPageSize, "ram");
  ASSERT_TRUE(r);
  EXPECT_TRUE(r->contains(0x200000));
  EXPECT_TRUE(r->contains(0x203fff));
  EXPECT_FALSE(r->contains(0x204000));
  EXPECT_FALSE(r->contains(0x1fffff));
  EXPECT_EQ(r->host_at(0x201000), r->host() + kPageSize);
}

TEST(GuestRegion, RejectsUnalignedLayout) {
  auto a = GuestRegion::create(0, 0, 5000, "ram");
  ASSERT_FALSE(a);
  EXPECT_NE(a.error().message().find("multiples of 4096"), std::string::npos) << a.error().what();
  EXPECT_FALSE(GuestRegion::create(0, 0x123, kPageSize, "ram"));
  EXPECT_FALSE(GuestRegion::create(0, 0, 0, "ram"));
}

TEST(GuestRegion, HugetlbNeedsTwoMiBAlignment) {
  auto a = GuestRegion::create(0, 0, 3ull << 20, "ram", HugePages::kHugetlb);
  ASSERT_FALSE(a);
  EXPECT_NE(a.error().message().find("multiples of 2 MiB"), std::string::npos) << a.error().what();
  auto b = GuestRegion::create(0, 1ull << 20, 2ull << 20, "ram", HugePages::kHugetlb);
  ASSERT_FALSE(b);
  EXPECT_NE(b.error().message().find("multiples of 2 MiB"), std::string::npos) << b.error().what();
}

TEST(GuestRegion, TransparentHugePagesAreAdviceAndAlwaysWork) {
  // MADV_HUGEPAGE on shmem is accepted whatever shmem_enabled says; the
  // region behaves like any other.
  auto r = GuestRegion::create(0, 0, 4ull << 20, "ram", HugePages::kTransparent);
  ASSERT_TRUE(r) << r.error().what();
  EXPECT_EQ(r->huge_pages(), HugePages::kTransparent);
  std::memset(r->host(), 0x5a, r->size());
  EXPECT_EQ(r->host()[r->size() - 1], std::byte{0x5a});
}

TEST(GuestRegion, ShmemThpIsAllowedOnlyByTheSettingsThatHonourAdvice) {
  EXPECT_TRUE(shmem_thp_allowed("always within_size [advise] never deny force"));
  EXPECT_TRUE(shmem_thp_allowed("[always] within_size advise never deny force"));
  EXPECT_TRUE(shmem_thp_allowed("always [within_size] advise never deny force"));
  EXPECT_TRUE(shmem_thp_allowed("always within_size advise never deny [force]"));
  EXPECT_FALSE(shmem_thp_allowed("always within_size advise [never] deny force"));
  EXPECT_FALSE(shmem_thp_allowed("always within_size advise never [deny] force"));
  EXPECT_FALSE(shmem_thp_allowed(""));  // no sysfs file: no THP (kernel without it)
  EXPECT_FALSE(shmem_thp_allowed("advise"));
}

TEST(GuestRegion, HugePagesOptionWordsMapToTheirBacking) {
  EXPECT_EQ(huge_pages_from_option("off"), HugePages::kOff);
  EXPECT_EQ(huge_pages_from_option("thp"), HugePages::kTransparent);
  EXPECT_EQ(huge_pages_from_option("hugetlb"), HugePages::kHugetlb);
  EXPECT_EQ(huge_pages_from_option("auto"), default_huge_pages());
}

}  // namespace
}  // namespace ferry::kvm

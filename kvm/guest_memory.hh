#pragma once
// Guest RAM. Each region is its own memfd so that it can later be shared
// with another process (snapshot, migration receive) without copying, and
// is registered with KVM as one memory slot.
#include <cstdint>
#include <functional>
#include <string>

#include "userspace/base/error.hh"
#include "userspace/base/page.hh"
#include "userspace/base/unique_fd.hh"
#include "kvm/mapping.hh"

namespace ferry::kvm {

using ferry::kPageSize;  // userspace/base/page.hh
inline constexpr std::uint64_t kHugePageSize = 2ull << 20;

// How guest RAM is backed. Huge pages cut TLB misses for the guest (EPT/NPT
// walks) and page-table memory for the host; dirty tracking stays at 4 KiB
// either way, because KVM logs at the guest page size it maps.
enum class HugePages {
  kOff,          // 4 KiB shmem pages
  kTransparent,  // madvise(MADV_HUGEPAGE): shmem THP where the host allows
                 // it (/sys/kernel/mm/transparent_hugepage/shmem_enabled),
                 // silently 4 KiB otherwise
  kHugetlb,      // MFD_HUGETLB 2 MiB pages, reserved up front: creation
                 // fails unless enough are free (vm.nr_hugepages)
};
std::string_view huge_pages_name(HugePages h);

// Whether shmem THP can back a memfd after MADV_HUGEPAGE, from the text of
// /sys/kernel/mm/transparent_hugepage/shmem_enabled ("always within_size
// [advise] never deny force": the bracketed word is the setting).
bool shmem_thp_allowed(std::string_view shmem_enabled);
// The default backing (`--hugepages auto`): THP where this host's
// shmem_enabled allows it, as QEMU's anonymous RAM gets THP where the
// host's THP setting does; 4 KiB pages otherwise. A destination with 4 KiB
// pages takes a nested page fault on every first touch after resume.
HugePages default_huge_pages();
// The `--hugepages` option's words: auto (default_huge_pages()), off, thp,
// hugetlb; the CLI checks the word, anything else reads as off.
HugePages huge_pages_from_option(std::string_view word);

class GuestRegion {
 public:
  // size must be a multiple of the page size.
  // With kHugetlb, size and gpa must be multiples of 2 MiB.
  static Result<GuestRegion> create(std::uint32_t slot, std::uint64_t gpa, std::uint64_t size,
                                    const std::string& name, HugePages huge = HugePages::kOff);

  GuestRegion(GuestRegion&&) noexcept = default;
  GuestRegion& operator=(GuestRegion&&) noexcept = default;

  std::uint32_t slot() const { return slot_; }
  std::uint64_t gpa() const { return gpa_; }
  std::uint64_t size() const { return mapping_.size(); }
  std::uint64_t pages() const { return size() / kPageSize; }
  std::byte* host() const { return static_cast<std::byte*>(mapping_.data()); }
  bool contains(std::uint64_t gpa) const { return gpa >= gpa_ && gpa - gpa_ < size(); }
  std::byte* host_at(std::uint64_t gpa) const { return host() + (gpa - gpa_); }
  int memfd() const { return memfd_.get(); }
  HugePages huge_pages() const { return huge_; }

 private:
  GuestRegion(std::uint32_t slot, std::uint64_t gpa, UniqueFd fd, Mapping m, HugePages huge)
      : slot_(slot), gpa_(gpa), memfd_(std::move(fd)), mapping_(std::move(m)), huge_(huge) {}
  std::uint32_t slot_ = 0;
  std::uint64_t gpa_ = 0;
  UniqueFd memfd_;
  Mapping mapping_;
  HugePages huge_ = HugePages::kOff;
};

// Whether a 4 KiB page is all zero.
bool page_is_zero(const std::byte* page);

// Calls fn(start, end) for each byte range of [begin, end) of `memfd` that
// may hold data, skipping holes (SEEK_DATA/SEEK_HOLE). Reading a hole of a
// memfd through its mapping would allocate it, so snapshots and migration
// scan only these extents: a hole is a zero page nobody touched. Without
// SEEK_DATA support the whole range is one extent.
void for_each_data_extent(int memfd, std::uint64_t begin, std::uint64_t end,
                          const std::function<void(std::uint64_t, std::uint64_t)>& fn);

}  // namespace ferry::kvm

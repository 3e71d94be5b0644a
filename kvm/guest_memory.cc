#include <cerrno>

#include "kvm/guest_memory.hh"

#include <algorithm>

#include <cstring>
#include <fstream>
#include <string>

#include <linux/memfd.h>
#include <sys/mman.h>
#include <unistd.h>

namespace ferry::kvm {

std::string_view huge_pages_name(HugePages h) {
  switch (h) {
    case HugePages::kOff: return "off";
    case HugePages::kTransparent: return "thp";
    case HugePages::kHugetlb: return "hugetlb";
  }
  return "?";
}

bool shmem_thp_allowed(std::string_view text) {
  const auto open = text.find('[');
  const auto close = text.find(']', open);
  if (open == std::string_view::npos || close == std::string_view::npos) return false;
  const auto setting = text.substr(open + 1, close - open - 1);
  return setting == "always" || setting == "within_size" || setting == "advise" || setting == "force";
}

HugePages default_huge_pages() {
  std::ifstream f("/sys/kernel/mm/transparent_hugepage/shmem_enabled");
  std::string text;
  std::getline(f, text);
  return shmem_thp_allowed(text) ? HugePages::kTransparent : HugePages::kOff;
}

HugePages huge_pages_from_option(std::string_view word) {
  if (word == "auto") return default_huge_pages();
  if (word == "thp") return HugePages::kTransparent;
  if (word == "hugetlb") return HugePages::kHugetlb;
  return HugePages::kOff;
}

Result<GuestRegion> GuestRegion::create(std::uint32_t slot, std::uint64_t gpa, std::uint64_t size,
                                        const std::string& name, HugePages huge) {
  if (size == 0 || size % kPageSize != 0 || gpa % kPageSize != 0)
    return fail("guest region {}: gpa {:#x} / size {:#x} must be non-zero multiples of {}", name, gpa, size, kPageSize);
  if (huge == HugePages::kHugetlb && (size % kHugePageSize || gpa % kHugePageSize))
    return fail("guest region {}: with hugetlb pages, gpa {:#x} and size {:#x} must be multiples of 2 MiB", name, gpa,
                size);
  const unsigned flags = MFD_CLOEXEC | (huge == HugePages::kHugetlb ? MFD_HUGETLB | MFD_HUGE_2MB : 0u);
  UniqueFd fd(::memfd_create(name.c_str(), flags));
  if (!fd) {
    const int e = errno;
    return std::unexpected(sys_error(fmt::format("memfd_create {}", name), e));
  }
  if (::ftruncate(fd.get(), static_cast<off_t>(size)) < 0)
    {
    const int e = errno;
    return std::unexpected(sys_error(fmt::format("ftruncate {} to {} bytes", name, size), e));
  }
  // For hugetlb, a shared mapping reserves its huge pages here, so a host
  // without enough free ones fails now with ENOMEM instead of SIGBUS later.
  auto m = Mapping::map(size, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0, name);
  if (!m) {
    if (huge == HugePages::kHugetlb)
      return std::unexpected(std::move(m.error()).context(fmt::format(
          "{} MiB of 2 MiB huge pages (reserve them: sysctl vm.nr_hugepages=N; `ferry doctor` shows how many are free)",
          size >> 20)));
    return std::unexpected(m.error());
  }
  if (huge == HugePages::kTransparent && ::madvise(m->data(), size, MADV_HUGEPAGE) < 0) {
    const int e = errno;
    return std::unexpected(sys_error(fmt::format("madvise(MADV_HUGEPAGE) on {}", name), e));
  }
  return GuestRegion(slot, gpa, std::move(fd), std::move(*m), huge);
}

bool page_is_zero(const std::byte* p) {
  // Compare against the page's own first word: memcmp of overlapping ranges
  // is the fastest portable zero test (glibc vectorises it).
  std::uint64_t first;
  std::memcpy(&first, p, sizeof(first));
  return first == 0 && std::memcmp(p, p + sizeof(first), kPageSize - sizeof(first)) == 0;
}

void for_each_data_extent(int fd, std::uint64_t begin, std::uint64_t end,
                          const std::function<void(std::uint64_t, std::uint64_t)>& fn) {
  std::uint64_t pos = begin;
  while (pos < end) {
    const off_t data = ::lseek(fd, static_cast<off_t>(pos), SEEK_DATA);
    if (data < 0 && errno == ENXIO) return;  // only holes from here on
    if (data < 0) {
      fn(pos, end);
      return;
    }
    const auto d = static_cast<std::uint64_t>(data);
    if (d >= end) return;
    const off_t hole = ::lseek(fd, data, SEEK_HOLE);
    const std::uint64_t h = hole < 0 ? end : std::min<std::uint64_t>(static_cast<std::uint64_t>(hole), end);
    fn(d, h);
    pos = h;
  }
}

}  // namespace ferry::kvm

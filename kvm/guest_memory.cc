#include <cerrno>

#include "kvm/guest_memory.hh"

#include <sys/mman.h>
#include <unistd.h>

namespace ferry::kvm {

Result<GuestRegion> GuestRegion::create(std::uint32_t slot, std::uint64_t gpa, std::uint64_t size,
                                        const std::string& name) {
  if (size == 0 || size % kPageSize != 0 || gpa % kPageSize != 0)
    return fail("guest region {}: gpa {:#x} / size {:#x} must be non-zero multiples of {}", name, gpa, size, kPageSize);
  UniqueFd fd(::memfd_create(name.c_str(), MFD_CLOEXEC));
  if (!fd) {
    const int e = errno;
    return std::unexpected(sys_error(fmt::format("memfd_create {}", name), e));
  }
  if (::ftruncate(fd.get(), static_cast<off_t>(size)) < 0)
    {
    const int e = errno;
    return std::unexpected(sys_error(fmt::format("ftruncate {} to {} bytes", name, size), e));
  }
  auto m = Mapping::map(size, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0, name);
  if (!m) return std::unexpected(m.error());
  return GuestRegion(slot, gpa, std::move(fd), std::move(*m));
}

}  // namespace ferry::kvm

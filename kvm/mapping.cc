#include <cerrno>

#include "kvm/mapping.hh"

#include <sys/mman.h>

namespace ferry::kvm {

Result<Mapping> Mapping::map(std::size_t size, int prot, int flags, int fd, off_t offset,
                             std::string_view what) {
  void* p = ::mmap(nullptr, size, prot, flags, fd, offset);
  if (p == MAP_FAILED) {
    const int e = errno;
    return std::unexpected(sys_error(fmt::format("mmap {} ({} bytes)", what, size), e));
  }
  return Mapping(p, size);
}

void Mapping::reset() {
  if (addr_) ::munmap(addr_, size_);
  addr_ = nullptr;
  size_ = 0;
}

}  // namespace ferry::kvm

#include "kvm/dirty_ring.hh"

#include <sys/mman.h>
#include <unistd.h>

namespace ferry::kvm {

Result<DirtyRing> DirtyRing::map(int vcpu_fd, std::uint32_t bytes, std::uint32_t vcpu_id) {
  // The ring lives at a fixed page offset of the vCPU fd.
  const off_t offset = static_cast<off_t>(KVM_DIRTY_LOG_PAGE_OFFSET) * ::getpagesize();
  auto m = Mapping::map(bytes, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu_fd, offset,
                        fmt::format("dirty ring of vCPU {}", vcpu_id));
  if (!m) return std::unexpected(m.error());
  return DirtyRing(std::move(*m), bytes / static_cast<std::uint32_t>(sizeof(kvm_dirty_gfn)));
}

}  // namespace ferry::kvm

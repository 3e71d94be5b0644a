#include "kvm/devices/guest_access.hh"

#include <cstring>

namespace ferry::kvm {

Result<std::byte*> GuestAccess::host_range(std::uint64_t gpa, std::uint64_t len) const {
  if (len == 0) return fail("guest memory at {:#x}: empty access", gpa);
  for (GuestRegion* r : regions_) {
    if (!r->contains(gpa)) continue;
    // Written so that no sum can wrap: gpa - base < size is known.
    if (len > r->size() - (gpa - r->gpa()))
      return fail("guest memory {:#x}+{:#x}: runs past the end of RAM region {:#x}..{:#x}", gpa, len, r->gpa(),
                  r->gpa() + r->size());
    return r->host_at(gpa);
  }
  return fail("guest memory at {:#x}: not RAM (the VM's RAM ends at {:#x})", gpa,
              regions_.empty() ? 0 : regions_.back()->gpa() + regions_.back()->size());
}

Status GuestAccess::read(std::uint64_t gpa, std::span<std::byte> out) const {
  auto p = host_range(gpa, out.size());
  if (!p) return std::unexpected(p.error());
  std::memcpy(out.data(), *p, out.size());
  return {};
}

Status GuestAccess::write(std::uint64_t gpa, std::span<const std::byte> bytes) const {
  auto p = host_range(gpa, bytes.size());
  if (!p) return std::unexpected(p.error());
  std::memcpy(*p, bytes.data(), bytes.size());
  // After the copy: a harvest that runs between the two reports the page
  // now and again at the next harvest, never not at all.
  if (tracker_) tracker_->mark_vmm_write(gpa, bytes.size());
  return {};
}

}  // namespace ferry::kvm

#pragma once
// How the VMM itself reads and writes guest memory: devices doing DMA into
// the buffers a guest's descriptors name (virtio), and the `memory-read` /
// `memory-write` diagnostics. Every address is checked against the VM's
// RAM (a malicious descriptor gets an error, never a host pointer outside
// guest memory), and every write is marked in the dirty tracker, because
// KVM logs only what vCPUs write: without the mark a live migration would
// leave the destination with the page as it was before the write.
#include <cstdint>
#include <span>
#include <vector>

#include "kvm/dirty_tracker.hh"
#include "kvm/guest_memory.hh"
#include "userspace/base/error.hh"

namespace ferry::kvm {

class GuestAccess {
 public:
  // Borrows the regions and the tracker (the Machine owns them). `tracker`
  // may be null (a VM that is not tracked, unit tests).
  GuestAccess(std::vector<GuestRegion*> regions, DirtyTracker* tracker)
      : regions_(std::move(regions)), tracker_(tracker) {}

  // The whole range [gpa, gpa + len) must lie in one RAM region.
  Status read(std::uint64_t gpa, std::span<std::byte> out) const;
  Status write(std::uint64_t gpa, std::span<const std::byte> bytes) const;

  // Where [gpa, gpa + len) is in this process, checked as above, for
  // structures a device keeps using in place (virtqueue rings). A device
  // that writes through the pointer calls mark_written itself.
  Result<std::byte*> host_range(std::uint64_t gpa, std::uint64_t len) const;
  void mark_written(std::uint64_t gpa, std::uint64_t len) const {
    if (tracker_) tracker_->mark_vmm_write(gpa, len);
  }

 private:
  std::vector<GuestRegion*> regions_;
  DirtyTracker* tracker_;
};

}  // namespace ferry::kvm

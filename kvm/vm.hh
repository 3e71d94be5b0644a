#pragma once
// One KVM virtual machine (the fd from KVM_CREATE_VM). Owns VM-wide setup:
// memory slots, the dirty-ring mode, and vCPU creation.
#include <cstdint>

#include "userspace/base/error.hh"
#include "userspace/base/unique_fd.hh"
#include "kvm/vcpu.hh"

namespace ferry::kvm {

class GuestRegion;

enum class DirtyRingMode { kOff, kPlain, kAcqRel };

class Vm {
 public:
  Vm(Vm&&) noexcept = default;
  Vm& operator=(Vm&&) noexcept = default;

  // KVM_CHECK_EXTENSION on the VM fd. Some caps (the dirty ring among them)
  // are only meaningful per VM, so ask here rather than on /dev/kvm.
  int check_extension(unsigned cap) const;

  // Enables the per-vCPU dirty ring. The kernel only accepts this before the
  // first vCPU exists; `bytes` must be a power of two, at least one page, at
  // most the advertised maximum, and large enough for KVM's reserved entries
  // (64 plus the CPU's own log: 512 with Intel PML, so 16 KiB is the smallest
  // size every x86 host accepts; AMD and PVM accept 4 KiB). Prefers the
  // ACQ_REL flavour (explicit memory ordering) when offered.
  Status enable_dirty_ring(std::uint32_t bytes);
  // The smallest ring this host accepts, found by asking (the reserve is not
  // exposed); enables it. For tests that must overflow a ring.
  Result<std::uint32_t> enable_smallest_dirty_ring();
  DirtyRingMode dirty_ring_mode() const { return ring_mode_; }
  std::uint32_t dirty_ring_bytes() const { return ring_bytes_; }

  // Registers `region` as memory slot region.slot(). With log_dirty the
  // kernel tracks writes (ring or bitmap) for that slot.
  Status set_memory_region(const GuestRegion& region, bool log_dirty);

  // KVM_CREATE_IRQCHIP: in-kernel PIC, IOAPIC and a LAPIC per vCPU. Like
  // the dirty ring, the kernel only accepts it before the first vCPU.
  Status create_irqchip();
  bool has_irqchip() const { return irqchip_; }
  // KVM_CREATE_PIT2 (8254 timer at ports 0x40-0x43, IRQ 0 into the
  // irqchip, which must exist). The PC speaker port is left to userspace.
  Status create_pit();
  // KVM_IRQ_LINE: drives an ISA/IOAPIC input (a GSI of the default
  // routing) to `level`. Needs the irqchip.
  Status set_irq_line(std::uint32_t gsi, bool level);
  bool has_pit() const { return pit_; }

  Result<Vcpu> create_vcpu(std::uint32_t id);

  // KVM_RESET_DIRTY_RINGS: re-arms write protection for every harvested
  // (flag = RESET) entry in every ring; returns how many were reset.
  Result<std::uint32_t> reset_dirty_rings();

  int fd() const { return fd_.get(); }

 private:
  friend class Kvm;
  Vm(UniqueFd fd, std::size_t vcpu_mmap_size) : fd_(std::move(fd)), vcpu_mmap_size_(vcpu_mmap_size) {}
  UniqueFd fd_;
  std::size_t vcpu_mmap_size_ = 0;
  DirtyRingMode ring_mode_ = DirtyRingMode::kOff;
  std::uint32_t ring_bytes_ = 0;
  std::uint32_t vcpus_created_ = 0;
  bool irqchip_ = false;
  bool pit_ = false;
};

}  // namespace ferry::kvm

#pragma once
// One virtual CPU: its fd, its kvm_run page (the kernel's exit report) and,
// when the VM uses the dirty ring, its ring.
#include <linux/kvm.h>

#include <cstdint>
#include <optional>
#include <utility>

#include "userspace/base/error.hh"
#include "userspace/base/unique_fd.hh"
#include "kvm/dirty_ring.hh"
#include "kvm/mapping.hh"

namespace ferry::kvm {

class Vcpu {
 public:
  Vcpu(Vcpu&&) noexcept = default;
  Vcpu& operator=(Vcpu&&) noexcept = default;

  std::uint32_t id() const { return id_; }
  int fd() const { return fd_.get(); }

  // One KVM_RUN. On success the exit is described by run(). EINTR (a signal
  // asked us to stop) is reported as success with exit_reason KVM_EXIT_INTR.
  Status run_once();
  kvm_run& run() const { return *run_.as<kvm_run>(); }

  Result<kvm_regs> get_regs() const;
  Status set_regs(const kvm_regs& r);
  Result<kvm_sregs> get_sregs() const;
  Status set_sregs(const kvm_sregs& s);

  // The vCPU's TSC offset (KVM_VCPU_TSC_CTRL / KVM_VCPU_TSC_OFFSET, Linux
  // 5.16+): guest TSC = host TSC (scaled) + offset, applied verbatim, unlike
  // an IA32_TSC write. has_tsc_offset() is false where KVM lacks it (PVM).
  bool has_tsc_offset() const;
  Result<std::uint64_t> tsc_offset() const;
  Status set_tsc_offset(std::uint64_t offset);

  // Bytes KVM_GET_XSAVE2/KVM_SET_XSAVE move for this vCPU: 4096, or more
  // when the process enabled dynamic xfeatures (AMX) before creating it.
  std::size_t xsave_bytes() const { return xsave_bytes_; }

  // Finishes an exit the kernel has not completed yet without running guest
  // code: KVM_RUN with immediate_exit set. After KVM_EXIT_IO or _MMIO the
  // instruction completes (RIP advances, IN data lands in RAX) only on the
  // next KVM_RUN, so state captured before that would replay the access.
  Status complete_pending_exit();

  DirtyRing* dirty_ring() { return ring_ ? &*ring_ : nullptr; }
  // Hands the ring to a DirtyTracker, which then owns the harvest cursor.
  std::optional<DirtyRing> take_dirty_ring() { return std::exchange(ring_, std::nullopt); }

 private:
  friend class Vm;
  Vcpu(std::uint32_t id, UniqueFd fd, Mapping run, std::optional<DirtyRing> ring)
      : id_(id), fd_(std::move(fd)), run_(std::move(run)), ring_(std::move(ring)) {}
  std::uint32_t id_ = 0;
  UniqueFd fd_;
  Mapping run_;
  std::optional<DirtyRing> ring_;
  std::size_t xsave_bytes_ = 4096;
};

}  // namespace ferry::kvm

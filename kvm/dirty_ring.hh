#pragma once
// One vCPU's KVM dirty ring: a shared array of kvm_dirty_gfn that the kernel
// fills as the guest first writes each page, and userspace harvests.
//
// Protocol (Documentation/virt/kvm/api.rst, KVM_CAP_DIRTY_LOG_RING):
//   1. Read entries from our fetch index while flags has DIRTY (acquire load,
//      so slot/offset written before the flag are visible).
//   2. Mark each harvested entry RESET (release store) and advance.
//   3. KVM_RESET_DIRTY_RINGS on the VM fd re-protects those pages.
// The caller must copy a page only after step 3: a write racing with the
// copy then lands in the ring again instead of being lost.
#include <linux/kvm.h>

#include <atomic>
#include <cstdint>
#include <utility>

#include "userspace/base/error.hh"
#include "kvm/mapping.hh"

namespace ferry::kvm {

struct DirtyGfn {
  std::uint32_t slot;    // as_id << 16 | slot id
  std::uint64_t offset;  // page index within the slot
  friend bool operator==(const DirtyGfn&, const DirtyGfn&) = default;
};

class DirtyRing {
 public:
  static Result<DirtyRing> map(int vcpu_fd, std::uint32_t bytes, std::uint32_t vcpu_id);

  // Hand-written moves: a moved-from ring must harvest nothing, not walk a
  // null mapping with a stale entry count.
  DirtyRing(DirtyRing&& o) noexcept
      : mapping_(std::move(o.mapping_)), entries_(std::exchange(o.entries_, 0)), fetch_(std::exchange(o.fetch_, 0)) {}
  DirtyRing& operator=(DirtyRing&& o) noexcept {
    mapping_ = std::move(o.mapping_);
    entries_ = std::exchange(o.entries_, 0);
    fetch_ = std::exchange(o.fetch_, 0);
    return *this;
  }

  std::uint32_t entries() const { return entries_; }

  // Calls on_gfn(DirtyGfn) for each newly dirtied entry and marks it for
  // reset. Returns how many were harvested. Safe while the vCPU runs.
  template <class F>
  std::uint32_t harvest(F&& on_gfn) {
    auto* ring = mapping_.as<kvm_dirty_gfn>();
    std::uint32_t n = 0;
    if (ring == nullptr || entries_ == 0) return 0;
    for (;;) {
      kvm_dirty_gfn& e = ring[fetch_ & (entries_ - 1)];
      std::atomic_ref<std::uint32_t> flags(e.flags);
      if ((flags.load(std::memory_order_acquire) & KVM_DIRTY_GFN_F_DIRTY) == 0) break;
      on_gfn(DirtyGfn{e.slot, e.offset});
      flags.store(KVM_DIRTY_GFN_F_RESET, std::memory_order_release);
      ++fetch_;
      ++n;
    }
    return n;
  }

 private:
  DirtyRing(Mapping m, std::uint32_t entries) : mapping_(std::move(m)), entries_(entries) {}
  Mapping mapping_;
  std::uint32_t entries_ = 0;
  std::uint64_t fetch_ = 0;  // free-running; masked on access
};

}  // namespace ferry::kvm

#pragma once
// Dirty-page tracking: one interface, two kernel backends.
//
//   ring   KVM_CAP_DIRTY_LOG_RING: per-vCPU rings of dirtied gfns. Cost is
//          proportional to what was dirtied; the default when offered.
//   bitmap KVM_GET_DIRTY_LOG + KVM_CLEAR_DIRTY_LOG with manual protect: a
//          bitmap per slot. Cost is proportional to memory size; the fallback.
//
// The contract shared by both: harvest() collects every page dirtied since the
// previous harvest and re-arms write tracking for those pages BEFORE it
// returns. The caller then reads the pages; a guest write that races with the
// read is caught by the next harvest instead of being lost.
#include <cstdint>
#include <memory>
#include <mutex>
#include <string_view>
#include <vector>

#include "userspace/base/error.hh"
#include "kvm/dirty_bitmap.hh"
#include "kvm/dirty_ring.hh"

namespace ferry::kvm {

class Vm;

enum class DirtyBackend { kAuto, kRing, kBitmap };
std::string_view dirty_backend_name(DirtyBackend b);
Result<DirtyBackend> parse_dirty_backend(std::string_view name);  // "auto", "ring", "bitmap"

// kAuto resolves to the ring when this VM's KVM offers it and the ring is
// trustworthy here (see kvm/quirks.hh), else the bitmap. An explicit choice
// is returned as is.
DirtyBackend resolve_dirty_backend(const Vm& vm, DirtyBackend requested);

struct TrackedSlot {
  std::uint32_t slot = 0;
  std::uint64_t gpa = 0;
  std::uint64_t pages = 0;
};

// Dirty pages per tracked slot.
class DirtyLog {
 public:
  explicit DirtyLog(const std::vector<TrackedSlot>& slots);
  DirtyBitmap* find(std::uint32_t slot);
  const DirtyBitmap* find(std::uint32_t slot) const;
  // Marks the page holding `gpa`; false when no tracked slot holds it.
  bool mark_gpa(std::uint64_t gpa);
  std::uint64_t count() const;
  void clear();
  void merge(const DirtyLog& other);
  const std::vector<TrackedSlot>& slots() const { return slots_; }
  // Calls f(gpa) for every dirty page, slot by slot, ascending.
  template <class F>
  void for_each_gpa(F&& f) const {
    for (std::size_t i = 0; i < slots_.size(); ++i)
      bitmaps_[i].for_each([&](std::uint64_t page) { f(slots_[i].gpa + page * 4096); });
  }

 private:
  std::vector<TrackedSlot> slots_;
  std::vector<DirtyBitmap> bitmaps_;
};

class DirtyTracker {
 public:
  virtual ~DirtyTracker() = default;
  DirtyTracker(const DirtyTracker&) = delete;
  DirtyTracker& operator=(const DirtyTracker&) = delete;

  virtual DirtyBackend backend() const = 0;

  // ORs the pages dirtied since the last harvest into `out` and re-arms
  // tracking for them. Thread-safe: vCPU threads call it on ring-full exits
  // while the migration thread calls it between rounds.
  Status harvest(DirtyLog& out);

  // The VMM itself wrote guest memory (device emulation, loaders): KVM does
  // not see such writes, so they are recorded here and reported by the next
  // harvest like any guest write.
  void mark_vmm_write(std::uint64_t gpa, std::uint64_t len);

  const std::vector<TrackedSlot>& slots() const { return slots_; }
  std::uint64_t harvests() const { return harvests_; }
  // Entries each vCPU's ring reported since the tracker was made (ring
  // backend; empty for the bitmap, which cannot attribute writes). For the
  // switchover policy, which slows the vCPUs that dirty most.
  std::vector<std::uint64_t> dirtied_per_vcpu();

 protected:
  explicit DirtyTracker(std::vector<TrackedSlot> slots) : slots_(std::move(slots)), vmm_writes_(slots_) {}
  virtual Status harvest_kernel(DirtyLog& out) = 0;  // called with mu_ held

  std::vector<TrackedSlot> slots_;
  std::vector<std::uint64_t> per_vcpu_;  // guarded by mu_; filled by harvest_kernel

 private:
  std::mutex mu_;
  DirtyLog vmm_writes_;
  std::uint64_t harvests_ = 0;
};

// The ring backend takes ownership of every vCPU's ring (Vcpu::take_dirty_ring)
// so that the harvest cursors live in one place, whatever happens to the
// Vcpu objects. The tracker borrows the VM's fd: the Vm may be moved, but
// must outlive the tracker.
Result<std::unique_ptr<DirtyTracker>> make_ring_tracker(Vm& vm, std::vector<DirtyRing> rings,
                                                        std::vector<TrackedSlot> slots);

// The bitmap backend enables KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 so that
// KVM_GET_DIRTY_LOG only reads and KVM_CLEAR_DIRTY_LOG re-protects exactly
// what was harvested. The slots must have been registered with log_dirty.
Result<std::unique_ptr<DirtyTracker>> make_bitmap_tracker(Vm& vm, std::vector<TrackedSlot> slots);

}  // namespace ferry::kvm

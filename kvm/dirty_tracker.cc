#include <cerrno>

#include "kvm/dirty_tracker.hh"

#include <linux/kvm.h>
#include <sys/ioctl.h>

#include <spdlog/spdlog.h>

#include "kvm/guest_memory.hh"
#include "kvm/quirks.hh"
#include "kvm/vm.hh"

namespace ferry::kvm {

std::string_view dirty_backend_name(DirtyBackend b) {
  switch (b) {
    case DirtyBackend::kAuto: return "auto";
    case DirtyBackend::kRing: return "ring";
    case DirtyBackend::kBitmap: return "bitmap";
  }
  return "?";
}

Result<DirtyBackend> parse_dirty_backend(std::string_view name) {
  if (name == "auto") return DirtyBackend::kAuto;
  if (name == "ring") return DirtyBackend::kRing;
  if (name == "bitmap") return DirtyBackend::kBitmap;
  return fail("unknown dirty-tracking backend '{}' (expected auto, ring or bitmap)", name);
}

DirtyBackend resolve_dirty_backend(const Vm& vm, DirtyBackend requested) {
  if (requested != DirtyBackend::kAuto) return requested;
  const bool ring = vm.check_extension(KVM_CAP_DIRTY_LOG_RING_ACQ_REL) > 0 || vm.check_extension(KVM_CAP_DIRTY_LOG_RING) > 0;
  if (!ring) return DirtyBackend::kBitmap;
  if (auto why = dirty_ring_unreliable_reason()) {
    spdlog::debug("dirty tracking: using the bitmap, not the ring: {}", *why);
    return DirtyBackend::kBitmap;
  }
  return DirtyBackend::kRing;
}

// ---------------------------------------------------------------- DirtyLog

DirtyLog::DirtyLog(const std::vector<TrackedSlot>& slots) : slots_(slots) {
  bitmaps_.reserve(slots_.size());
  for (const auto& s : slots_) bitmaps_.emplace_back(s.pages);
}

DirtyBitmap* DirtyLog::find(std::uint32_t slot) {
  for (std::size_t i = 0; i < slots_.size(); ++i)
    if (slots_[i].slot == slot) return &bitmaps_[i];
  return nullptr;
}

const DirtyBitmap* DirtyLog::find(std::uint32_t slot) const { return const_cast<DirtyLog*>(this)->find(slot); }

bool DirtyLog::mark_gpa(std::uint64_t gpa) {
  for (std::size_t i = 0; i < slots_.size(); ++i) {
    const auto& s = slots_[i];
    if (gpa >= s.gpa && (gpa - s.gpa) / kPageSize < s.pages) {
      bitmaps_[i].set((gpa - s.gpa) / kPageSize);
      return true;
    }
  }
  return false;
}

std::uint64_t DirtyLog::count() const {
  std::uint64_t n = 0;
  for (const auto& b : bitmaps_) n += b.count();
  return n;
}

void DirtyLog::clear() {
  for (auto& b : bitmaps_) b.clear();
}

void DirtyLog::merge(const DirtyLog& other) {
  for (std::size_t i = 0; i < other.slots_.size(); ++i)
    if (auto* mine = find(other.slots_[i].slot)) mine->merge(other.bitmaps_[i]);
}

// ------------------------------------------------------------ DirtyTracker

Status DirtyTracker::harvest(DirtyLog& out) {
  std::lock_guard lock(mu_);
  if (auto ok = harvest_kernel(out); !ok) return std::unexpected(std::move(ok.error()).context("dirty harvest"));
  out.merge(vmm_writes_);
  vmm_writes_.clear();
  ++harvests_;
  return {};
}

std::vector<std::uint64_t> DirtyTracker::dirtied_per_vcpu() {
  std::lock_guard lock(mu_);
  return per_vcpu_;
}

void DirtyTracker::mark_vmm_write(std::uint64_t gpa, std::uint64_t len) {
  if (len == 0) return;
  std::lock_guard lock(mu_);
  for (std::uint64_t page = gpa & ~(kPageSize - 1); page < gpa + len; page += kPageSize) vmm_writes_.mark_gpa(page);
}

namespace {

class RingTracker final : public DirtyTracker {
 public:
  RingTracker(int vm_fd, std::vector<DirtyRing> rings, std::vector<TrackedSlot> slots)
      : DirtyTracker(std::move(slots)), vm_fd_(vm_fd), rings_(std::move(rings)) {
    per_vcpu_.assign(rings_.size(), 0);
  }
  DirtyBackend backend() const override { return DirtyBackend::kRing; }

 protected:
  Status harvest_kernel(DirtyLog& out) override {
    // Collect from every ring first, then one reset for all of them: KVM
    // re-protects exactly the entries we marked RESET.
    std::uint64_t stray = 0;
    DirtyGfn first_stray{};
    for (std::size_t i = 0; i < rings_.size(); ++i) {
      per_vcpu_[i] += rings_[i].harvest([&](const DirtyGfn& g) {
        auto* bits = out.find(g.slot & 0xffff);
        if ((g.slot >> 16) != 0 || !bits || g.offset >= bits->pages()) {
          if (stray++ == 0) first_stray = g;
          return;
        }
        bits->set(g.offset);
      });
    }
    if (::ioctl(vm_fd_, KVM_RESET_DIRTY_RINGS, 0) < 0) return fail_sys("KVM_RESET_DIRTY_RINGS");
    if (stray)
      return fail("dirty ring reported {} page(s) outside tracked memory (first: slot {:#x} offset {})", stray,
                  first_stray.slot, first_stray.offset);
    return {};
  }

 private:
  int vm_fd_;  // borrowed: the Vm owns it (and may move; the fd does not)
  std::vector<DirtyRing> rings_;
};

class BitmapTracker final : public DirtyTracker {
 public:
  BitmapTracker(int vm_fd, std::vector<TrackedSlot> slots) : DirtyTracker(std::move(slots)), vm_fd_(vm_fd) {
    for (const auto& s : slots_) scratch_.emplace_back(s.pages);
  }
  DirtyBackend backend() const override { return DirtyBackend::kBitmap; }

 protected:
  Status harvest_kernel(DirtyLog& out) override {
    for (std::size_t i = 0; i < slots_.size(); ++i) {
      const auto& s = slots_[i];
      auto& bits = scratch_[i];
      bits.clear();
      // With manual protect, GET only copies the bitmap out...
      kvm_dirty_log get{};
      get.slot = s.slot;
      get.dirty_bitmap = bits.words();
      if (::ioctl(vm_fd_, KVM_GET_DIRTY_LOG, &get) < 0)
        {
    const int e = errno;
    return std::unexpected(sys_error(fmt::format("KVM_GET_DIRTY_LOG slot {}", s.slot), e));
  }
      if (!bits.any()) continue;
      // ...and CLEAR re-protects exactly those pages. The whole slot in one
      // call is valid: num_pages may be any size when it reaches the end.
      kvm_clear_dirty_log clear{};
      clear.slot = s.slot;
      clear.first_page = 0;
      clear.num_pages = static_cast<std::uint32_t>(s.pages);
      clear.dirty_bitmap = bits.words();
      if (::ioctl(vm_fd_, KVM_CLEAR_DIRTY_LOG, &clear) < 0)
        {
    const int e = errno;
    return std::unexpected(sys_error(fmt::format("KVM_CLEAR_DIRTY_LOG slot {}", s.slot), e));
  }
      if (auto* o = out.find(s.slot)) o->merge(bits);
    }
    return {};
  }

 private:
  int vm_fd_;  // borrowed, as above
  std::vector<DirtyBitmap> scratch_;
};

}  // namespace

Result<std::unique_ptr<DirtyTracker>> make_ring_tracker(Vm& vm, std::vector<DirtyRing> rings,
                                                        std::vector<TrackedSlot> slots) {
  if (vm.dirty_ring_mode() == DirtyRingMode::kOff) return fail("ring tracker: the VM has no dirty ring enabled");
  if (rings.empty()) return fail("ring tracker: no vCPU rings given");
  return std::unique_ptr<DirtyTracker>(new RingTracker(vm.fd(), std::move(rings), std::move(slots)));
}

Result<std::unique_ptr<DirtyTracker>> make_bitmap_tracker(Vm& vm, std::vector<TrackedSlot> slots) {
  if (vm.dirty_ring_mode() != DirtyRingMode::kOff)
    return fail("bitmap tracker: the VM uses the dirty ring (KVM forbids KVM_GET_DIRTY_LOG then)");
  if (vm.check_extension(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2) == 0)
    return fail("bitmap tracker: KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 not supported (Linux >= 5.3 needed)");
  kvm_enable_cap cap{};
  cap.cap = KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2;
  // No KVM_DIRTY_LOG_INITIALLY_SET: the first harvest reports real writes
  // only; pre-copy's round 0 sends everything anyway.
  cap.args[0] = KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE;
  if (::ioctl(vm.fd(), KVM_ENABLE_CAP, &cap) < 0) return fail_sys("KVM_ENABLE_CAP MANUAL_DIRTY_LOG_PROTECT2");
  return std::unique_ptr<DirtyTracker>(new BitmapTracker(vm.fd(), std::move(slots)));
}

}  // namespace ferry::kvm

#pragma once
// The driver's side of a split virtqueue, for the device-side unit tests:
// it writes descriptors and rings into real guest memory (a memfd region)
// as a guest's virtio driver would, and reads back what the device wrote.
// Its dirty tracker has no kernel part (there is no VM): it reports only
// the VMM's own writes, which is what these tests check.
#include <cstring>
#include <set>
#include <stdexcept>

#include "kvm/devices/guest_access.hh"
#include "kvm/devices/virtio/queue.hh"
#include "kvm/dirty_tracker.hh"
#include "kvm/guest_memory.hh"

namespace ferry::kvm::virtio::testing {

inline constexpr std::uint16_t kDescNext = 1, kDescWrite = 2, kDescIndirect = 4;

class VmmWritesTracker final : public DirtyTracker {
 public:
  explicit VmmWritesTracker(std::vector<TrackedSlot> slots) : DirtyTracker(std::move(slots)) {}
  DirtyBackend backend() const override { return DirtyBackend::kBitmap; }

 protected:
  Status harvest_kernel(DirtyLog&) override { return {}; }
};

struct OpenOptions {
  bool event_idx = false;
  bool indirect = false;
};

class Driver {
 public:
  static constexpr std::uint64_t kRamBytes = 64 * kPageSize;
  static constexpr std::uint64_t kDesc = 0x1000, kAvail = 0x2000, kUsed = 0x3000, kTable = 0x4000, kData = 0x10000;
  static constexpr std::uint16_t kSize = 8;

  GuestRegion ram = make_ram();
  VmmWritesTracker tracker{{{.slot = 0, .gpa = 0, .pages = kRamBytes / kPageSize}}};
  GuestAccess mem{{&ram}, &tracker};

  QueueLayout layout() const { return {kSize, kDesc, kAvail, kUsed}; }
  Result<SplitQueue> open(OpenOptions o = {}) {
    return SplitQueue::open("test queue", mem, layout(), kSize, o.event_idx, o.indirect);
  }

  std::byte* at(std::uint64_t gpa) { return ram.host_at(gpa); }
  void put(std::uint64_t gpa, const std::vector<std::byte>& b) { std::memcpy(at(gpa), b.data(), b.size()); }
  void table_desc(std::uint64_t table, std::uint16_t i, std::uint64_t addr, std::uint32_t len, std::uint16_t flags,
                  std::uint16_t next) {
    std::byte* p = at(table + 16ull * i);
    std::memcpy(p, &addr, 8);
    std::memcpy(p + 8, &len, 4);
    std::memcpy(p + 12, &flags, 2);
    std::memcpy(p + 14, &next, 2);
  }
  void desc(std::uint16_t i, std::uint64_t addr, std::uint32_t len, std::uint16_t flags, std::uint16_t next) {
    table_desc(kDesc, i, addr, len, flags, next);
  }
  void make_available(std::uint16_t head) {
    put16(kAvail + 4 + 2 * (avail_idx_ % kSize), head);
    put16(kAvail + 2, ++avail_idx_);
  }
  void set_avail_idx(std::uint16_t v) { put16(kAvail + 2, avail_idx_ = v); }
  void set_avail_flags(std::uint16_t v) { put16(kAvail, v); }
  void set_used_event(std::uint16_t v) { put16(kAvail + 4 + 2 * kSize, v); }
  std::uint16_t used_flags() { return get16(kUsed); }
  std::uint16_t used_idx() { return get16(kUsed + 2); }
  std::uint16_t avail_event() { return get16(kUsed + 4 + 8 * kSize); }
  std::pair<std::uint32_t, std::uint32_t> used_elem(std::uint16_t i) {
    std::uint32_t id = 0, len = 0;
    std::memcpy(&id, at(kUsed + 4 + 8ull * i), 4);
    std::memcpy(&len, at(kUsed + 8 + 8ull * i), 4);
    return {id, len};
  }
  // The pages the VMM wrote since the last call (page-aligned addresses).
  std::set<std::uint64_t> harvest() {
    DirtyLog log(tracker.slots());
    if (!tracker.harvest(log)) throw std::runtime_error("harvest failed");
    std::set<std::uint64_t> pages;
    log.for_each_gpa([&](std::uint64_t gpa) { pages.insert(gpa); });
    return pages;
  }

 private:
  static GuestRegion make_ram() {
    auto r = GuestRegion::create(0, 0, kRamBytes, "ferry-virtio-test");
    if (!r) throw std::runtime_error(r.error().what());
    return std::move(*r);
  }
  void put16(std::uint64_t gpa, std::uint16_t v) { std::memcpy(at(gpa), &v, 2); }
  std::uint16_t get16(std::uint64_t gpa) {
    std::uint16_t v = 0;
    std::memcpy(&v, at(gpa), 2);
    return v;
  }
  std::uint16_t avail_idx_ = 0;
};

}  // namespace ferry::kvm::virtio::testing

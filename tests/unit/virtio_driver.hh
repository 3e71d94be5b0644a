#pragma once
// The driver's side of virtio, for the device-side unit tests: guest RAM
// (a real memfd region), split rings written into it as a guest's driver
// would (Ring), and the virtio-mmio register sequence of Linux's
// virtio_mmio probe (MmioDriver). The RAM's dirty tracker has no kernel
// part (there is no VM): it reports only the VMM's own writes, which is
// what these tests check.
#include <array>
#include <atomic>
#include <cstring>
#include <set>
#include <stdexcept>
#include <vector>

#include "kvm/devices/guest_access.hh"
#include "kvm/devices/virtio/mmio.hh"
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

class GuestRam {
 public:
  explicit GuestRam(std::uint64_t bytes)
      : ram(make_ram(bytes)), tracker({{.slot = 0, .gpa = 0, .pages = bytes / kPageSize}}), mem({&ram}, &tracker) {}
  GuestRegion ram;
  VmmWritesTracker tracker;
  GuestAccess mem;

  std::byte* at(std::uint64_t gpa) { return ram.host_at(gpa); }
  void put(std::uint64_t gpa, const std::vector<std::byte>& b) { std::memcpy(at(gpa), b.data(), b.size()); }
  void put16(std::uint64_t gpa, std::uint16_t v) { std::memcpy(at(gpa), &v, 2); }
  std::uint16_t get16(std::uint64_t gpa) {
    std::uint16_t v = 0;
    std::memcpy(&v, at(gpa), 2);
    return v;
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
  static GuestRegion make_ram(std::uint64_t bytes) {
    auto r = GuestRegion::create(0, 0, bytes, "ferry-virtio-test");
    if (!r) throw std::runtime_error(r.error().what());
    return std::move(*r);
  }
};

// One split queue's rings: descriptors at base, the available ring a page
// above, the used ring two pages above.
class Ring {
 public:
  Ring(GuestRam& ram, std::uint64_t base, std::uint16_t size)
      : ram_(ram), desc_(base), avail_(base + 0x1000), used_(base + 0x2000), size_(size) {}

  QueueLayout layout() const { return {size_, desc_, avail_, used_}; }
  void table_desc(std::uint64_t table, std::uint16_t i, std::uint64_t addr, std::uint32_t len, std::uint16_t flags,
                  std::uint16_t next) {
    std::byte* p = ram_.at(table + 16ull * i);
    std::memcpy(p, &addr, 8);
    std::memcpy(p + 8, &len, 4);
    std::memcpy(p + 12, &flags, 2);
    std::memcpy(p + 14, &next, 2);
  }
  void desc(std::uint16_t i, std::uint64_t addr, std::uint32_t len, std::uint16_t flags, std::uint16_t next) {
    table_desc(desc_, i, addr, len, flags, next);
  }
  void make_available(std::uint16_t head) {
    ram_.put16(avail_ + 4 + 2 * (avail_idx_ % size_), head);
    std::atomic_thread_fence(std::memory_order_release);
    ram_.put16(avail_ + 2, ++avail_idx_);
  }
  // As a driver does after a device reset: empty rings.
  void reset() {
    avail_idx_ = 0;
    ram_.put16(avail_ + 2, 0);
    ram_.put16(used_, 0);
    ram_.put16(used_ + 2, 0);
  }
  void set_avail_idx(std::uint16_t v) { ram_.put16(avail_ + 2, avail_idx_ = v); }
  void set_avail_flags(std::uint16_t v) { ram_.put16(avail_, v); }
  void set_used_event(std::uint16_t v) { ram_.put16(avail_ + 4 + 2 * size_, v); }
  std::uint16_t used_flags() { return ram_.get16(used_); }
  std::uint16_t used_idx() {
    const std::uint16_t v = ram_.get16(used_ + 2);
    std::atomic_thread_fence(std::memory_order_acquire);
    return v;
  }
  std::uint16_t avail_event() { return ram_.get16(used_ + 4 + 8 * size_); }
  std::pair<std::uint32_t, std::uint32_t> used_elem(std::uint16_t i) {
    std::uint32_t id = 0, len = 0;
    std::memcpy(&id, ram_.at(used_ + 4 + 8ull * (i % size_)), 4);
    std::memcpy(&len, ram_.at(used_ + 8 + 8ull * (i % size_)), 4);
    return {id, len};
  }

 private:
  GuestRam& ram_;
  std::uint64_t desc_, avail_, used_;
  std::uint16_t size_;
  std::uint16_t avail_idx_ = 0;
};

struct OpenOptions {
  bool event_idx = false;
  bool indirect = false;
};

// RAM with one queue's rings at fixed places, for the queue tests.
class Driver : public GuestRam, public Ring {
 public:
  static constexpr std::uint64_t kRamBytes = 64 * kPageSize;
  static constexpr std::uint64_t kDesc = 0x1000, kAvail = 0x2000, kUsed = 0x3000, kTable = 0x4000, kData = 0x10000;
  static constexpr std::uint16_t kSize = 8;

  Driver() : GuestRam(kRamBytes), Ring(static_cast<GuestRam&>(*this), kDesc, kSize) {}
  Result<SplitQueue> open(OpenOptions o = {}) {
    return SplitQueue::open("test queue", mem, layout(), kSize, o.event_idx, o.indirect);
  }
};

// The register side of Linux's virtio_mmio probe and virtio_dev_probe.
struct MmioDriver {
  MmioTransport& t;
  IoRange range = t.ranges().at(0);

  std::uint32_t rd(std::uint64_t off) {
    std::array<std::uint8_t, 4> b{};
    t.read(range, off, b);
    std::uint32_t v;
    std::memcpy(&v, b.data(), 4);
    return v;
  }
  void wr(std::uint64_t off, std::uint32_t v) {
    std::array<std::uint8_t, 4> b;
    std::memcpy(b.data(), &v, 4);
    t.write(range, off, b);
  }
  // Reset, negotiate `features`, set up each queue with a layout (size 0:
  // left disabled), DRIVER_OK.
  void bring_up(std::uint64_t features, const std::vector<QueueLayout>& queues) {
    wr(0x070, 0);
    wr(0x070, kStatusAcknowledge);
    wr(0x070, kStatusAcknowledge | kStatusDriver);
    wr(0x024, 0);
    wr(0x020, static_cast<std::uint32_t>(features));
    wr(0x024, 1);
    wr(0x020, static_cast<std::uint32_t>(features >> 32));
    wr(0x070, kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk);
    for (std::uint32_t i = 0; i < queues.size(); ++i) {
      const QueueLayout& l = queues[i];
      if (l.size == 0) continue;
      wr(0x030, i);
      wr(0x038, l.size);
      wr(0x080, static_cast<std::uint32_t>(l.desc));
      wr(0x084, static_cast<std::uint32_t>(l.desc >> 32));
      wr(0x090, static_cast<std::uint32_t>(l.avail));
      wr(0x094, static_cast<std::uint32_t>(l.avail >> 32));
      wr(0x0a0, static_cast<std::uint32_t>(l.used));
      wr(0x0a4, static_cast<std::uint32_t>(l.used >> 32));
      wr(0x044, 1);
    }
    wr(0x070, kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk | kStatusDriverOk);
  }
  void notify(std::uint32_t queue) { wr(0x050, queue); }
};

}  // namespace ferry::kvm::virtio::testing

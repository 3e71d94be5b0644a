#include "kvm/devices/virtio/mmio.hh"

#include <cstring>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "userspace/base/bytes.hh"

namespace ferry::kvm::virtio {
namespace {

// Register offsets (4.2.2).
enum Reg : std::uint64_t {
  kMagic = 0x000,
  kVersion = 0x004,
  kDeviceId = 0x008,
  kVendorId = 0x00c,
  kDeviceFeatures = 0x010,
  kDeviceFeaturesSel = 0x014,
  kDriverFeatures = 0x020,
  kDriverFeaturesSel = 0x024,
  kQueueSel = 0x030,
  kQueueNumMax = 0x034,
  kQueueNum = 0x038,
  kQueueReady = 0x044,
  kQueueNotify = 0x050,
  kInterruptStatus = 0x060,
  kInterruptAck = 0x064,
  kStatus = 0x070,
  kQueueDescLow = 0x080,
  kQueueDescHigh = 0x084,
  kQueueDriverLow = 0x090,
  kQueueDriverHigh = 0x094,
  kQueueDeviceLow = 0x0a0,
  kQueueDeviceHigh = 0x0a4,
  kShmSel = 0x0ac,
  kShmLenLow = 0x0b0,
  kShmLenHigh = 0x0b4,
  kShmBaseLow = 0x0b8,
  kShmBaseHigh = 0x0bc,
  kConfigGeneration = 0x0fc,
  kConfig = 0x100,
};

constexpr std::uint32_t kMagicValue = 0x74726976;  // "virt"
constexpr std::uint32_t kVendor = 0x59524546;      // "FERY"

void set_low(std::uint64_t& v, std::uint32_t low) { v = (v & ~0xffffffffull) | low; }
void set_high(std::uint64_t& v, std::uint32_t high) { v = (v & 0xffffffffull) | (std::uint64_t{high} << 32); }

}  // namespace

MmioTransport::MmioTransport(Config config, const GuestAccess& mem, std::unique_ptr<VirtioDevice> dev,
                             std::function<void()> raise)
    : config_(std::move(config)), mem_(mem), dev_(std::move(dev)), raise_(std::move(raise)) {
  for (std::uint16_t max : dev_->queue_max_sizes()) queues_.push_back(QueueRegs::fresh(max));
}

MmioTransport::~MmioTransport() {
  std::lock_guard lock(mu_);
  if (active_) dev_->reset();
}

DeviceDescription MmioTransport::describe() const {
  return {dev_->kind(), config_.id, fmt::format("mmio={:#x} irq={}", config_.base, config_.gsi)};
}

std::uint64_t MmioTransport::offered() const {
  return dev_->features() | bit(kFeatureVersion1) | bit(kFeatureEventIdx) | bit(kFeatureIndirectDesc);
}

std::uint32_t MmioTransport::status() const {
  std::lock_guard lock(mu_);
  return status_ | (broken_ ? kStatusNeedsReset : 0);
}

std::string MmioTransport::failure() const {
  std::lock_guard lock(failure_mu_);
  return failure_;
}

IoOutcome MmioTransport::read(const IoRange&, std::uint64_t offset, std::span<std::uint8_t> data) {
  std::memset(data.data(), 0, data.size());
  std::lock_guard lock(mu_);
  if (offset >= kConfig) {
    const std::uint64_t at = offset - kConfig;
    if (at + data.size() <= dev_->config_size()) dev_->read_config(static_cast<std::uint32_t>(at), data);
    return IoOutcome::kDone;
  }
  // Registers are 32 bits wide and read as such (4.2.2.2); anything else
  // reads as zero.
  if (data.size() != 4 || offset % 4) return IoOutcome::kDone;
  const std::uint32_t v = read_reg(offset);
  std::memcpy(data.data(), &v, 4);
  return IoOutcome::kDone;
}

std::uint32_t MmioTransport::read_reg(std::uint64_t offset) const {
  const QueueRegs* q = queue_sel_ < queues_.size() ? &queues_[queue_sel_] : nullptr;
  switch (offset) {
    case kMagic: return kMagicValue;
    case kVersion: return 2;
    case kDeviceId: return dev_->device_id();
    case kVendorId: return kVendor;
    case kDeviceFeatures:
      return device_features_sel_ == 0   ? static_cast<std::uint32_t>(offered())
             : device_features_sel_ == 1 ? static_cast<std::uint32_t>(offered() >> 32)
                                         : 0;
    case kQueueNumMax: return q ? q->max : 0;
    case kQueueNum: return q ? q->layout.size : 0;
    case kQueueReady: return q && q->ready ? 1 : 0;
    case kInterruptStatus: return interrupt_status_.load();
    case kStatus: return status_ | (broken_ ? kStatusNeedsReset : 0);
    case kQueueDescLow: return q ? static_cast<std::uint32_t>(q->layout.desc) : 0;
    case kQueueDescHigh: return q ? static_cast<std::uint32_t>(q->layout.desc >> 32) : 0;
    case kQueueDriverLow: return q ? static_cast<std::uint32_t>(q->layout.avail) : 0;
    case kQueueDriverHigh: return q ? static_cast<std::uint32_t>(q->layout.avail >> 32) : 0;
    case kQueueDeviceLow: return q ? static_cast<std::uint32_t>(q->layout.used) : 0;
    case kQueueDeviceHigh: return q ? static_cast<std::uint32_t>(q->layout.used >> 32) : 0;
    case kShmLenLow:
    case kShmLenHigh: return 0xffffffff;  // no shared memory regions (length -1)
    case kShmBaseLow:
    case kShmBaseHigh: return 0xffffffff;
    case kConfigGeneration: return config_generation_.load();
    default: return 0;
  }
}

IoOutcome MmioTransport::write(const IoRange&, std::uint64_t offset, std::span<const std::uint8_t> data) {
  std::optional<std::uint16_t> kick;
  {
    std::lock_guard lock(mu_);
    if (offset >= kConfig) {
      const std::uint64_t at = offset - kConfig;
      if (at + data.size() <= dev_->config_size()) dev_->write_config(static_cast<std::uint32_t>(at), data);
      return IoOutcome::kDone;
    }
    if (data.size() != 4 || offset % 4) return IoOutcome::kDone;
    std::uint32_t v = 0;
    std::memcpy(&v, data.data(), 4);
    if (offset == kQueueNotify) {
      // Only a running device takes kicks; a kick for a queue it does not
      // have is the driver's bug, ignored.
      if (active_ && v < queues_.size() && queues_[v].queue) kick = static_cast<std::uint16_t>(v);
    } else {
      write_reg(offset, v);
    }
  }
  if (kick) dev_->kick(*kick);
  return IoOutcome::kDone;
}

void MmioTransport::write_reg(std::uint64_t offset, std::uint32_t v) {
  QueueRegs* q = queue_sel_ < queues_.size() ? &queues_[queue_sel_] : nullptr;
  // Queue registers are the driver's to set while the queue is disabled
  // and the device not yet running (4.2.3.2).
  const bool queue_writable = q && !q->ready && !(status_ & kStatusDriverOk);
  switch (offset) {
    case kDeviceFeaturesSel: device_features_sel_ = v; break;
    case kDriverFeatures:
      if (status_ & kStatusFeaturesOk) break;  // final once FEATURES_OK is set
      if (driver_features_sel_ == 0) set_low(driver_features_, v);
      if (driver_features_sel_ == 1) set_high(driver_features_, v);
      break;
    case kDriverFeaturesSel: driver_features_sel_ = v; break;
    case kQueueSel: queue_sel_ = v; break;
    case kQueueNum:
      if (queue_writable) q->layout.size = static_cast<std::uint16_t>(std::min<std::uint32_t>(v, 0xffff));
      break;
    case kQueueReady:
      if (q && !(status_ & kStatusDriverOk)) q->ready = v == 1;
      break;
    case kInterruptAck: interrupt_status_.fetch_and(~v); break;
    case kStatus: write_status(v); break;
    case kQueueDescLow:
      if (queue_writable) set_low(q->layout.desc, v);
      break;
    case kQueueDescHigh:
      if (queue_writable) set_high(q->layout.desc, v);
      break;
    case kQueueDriverLow:
      if (queue_writable) set_low(q->layout.avail, v);
      break;
    case kQueueDriverHigh:
      if (queue_writable) set_high(q->layout.avail, v);
      break;
    case kQueueDeviceLow:
      if (queue_writable) set_low(q->layout.used, v);
      break;
    case kQueueDeviceHigh:
      if (queue_writable) set_high(q->layout.used, v);
      break;
    default: break;  // read-only and reserved registers
  }
}

void MmioTransport::write_status(std::uint32_t v) {
  if (v == 0) {
    reset_locked();
    return;
  }
  // The driver sets bits one step at a time and never clears one but by
  // a reset; NEEDS_RESET is the device's to set.
  std::uint32_t next = status_ | (v & ~kStatusNeedsReset);
  if ((next & kStatusFeaturesOk) && !(status_ & kStatusFeaturesOk)) {
    const std::uint64_t unknown = driver_features_ & ~offered();
    if (unknown || !(driver_features_ & bit(kFeatureVersion1))) {
      // Left clear: the driver reads Status back and gives up (3.1.1).
      next &= ~kStatusFeaturesOk;
      spdlog::warn("{}: features refused (acked {:#x}, offered {:#x}{})", config_.id, driver_features_, offered(),
                   unknown ? "" : "; VERSION_1 is required");
    }
  }
  const bool driver_ok = (next & kStatusDriverOk) && !(status_ & kStatusDriverOk);
  status_ = next;
  if (driver_ok && !(status_ & kStatusNeedsReset) && !broken_) {
    if (!(status_ & kStatusFeaturesOk))
      needs_reset_locked(Error("DRIVER_OK without FEATURES_OK"));
    else if (auto ok = activate_locked(); !ok)
      needs_reset_locked(ok.error());
  }
}

Status MmioTransport::activate_locked() {
  const bool event_idx = driver_features_ & bit(kFeatureEventIdx);
  const bool indirect = driver_features_ & bit(kFeatureIndirectDesc);
  std::vector<SplitQueue*> queues;
  for (std::size_t i = 0; i < queues_.size(); ++i) {
    QueueRegs& r = queues_[i];
    if (!r.ready) {
      queues.push_back(nullptr);
      continue;
    }
    auto q = SplitQueue::open(fmt::format("{} queue {}", config_.id, i), mem_, r.layout, r.max, event_idx, indirect,
                              r.restored);
    if (!q) return std::unexpected(q.error());
    r.queue.emplace(std::move(*q));
    queues.push_back(&*r.queue);
  }
  if (auto ok = dev_->activate(driver_features_, queues, irq_); !ok) {
    for (auto& r : queues_) r.queue.reset();
    return ok;
  }
  active_ = true;
  return {};
}

void MmioTransport::needs_reset_locked(const Error& why) {
  status_ |= kStatusNeedsReset;
  device_failed(why);
}

void MmioTransport::device_failed(const Error& why) {
  {
    std::lock_guard lock(failure_mu_);
    if (broken_.exchange(true)) return;  // the first reason is the one that matters
    failure_ = why.what();
  }
  spdlog::error("{} ({}): the device needs a reset: {}", config_.id, dev_->kind(), why.what());
  interrupt(2);
}

void MmioTransport::reset_locked() {
  if (active_) dev_->reset();
  active_ = false;
  status_ = 0;
  device_features_sel_ = driver_features_sel_ = queue_sel_ = 0;
  driver_features_ = 0;
  interrupt_status_ = 0;
  {
    std::lock_guard lock(failure_mu_);
    broken_ = false;
    failure_.clear();
  }
  for (auto& r : queues_) r = QueueRegs::fresh(r.max);
}

void MmioTransport::interrupt(std::uint32_t bit) {
  if (bit == 2) config_generation_.fetch_add(1);
  interrupt_status_.fetch_or(bit);
  if (raise_) raise_();
}

void MmioTransport::pause() { dev_->pause(); }

void MmioTransport::resume() {
  dev_->resume();
  std::vector<std::uint16_t> kicks;
  {
    std::lock_guard lock(mu_);
    if (!active_) return;
    for (std::size_t i = 0; i < queues_.size(); ++i)
      if (queues_[i].queue) kicks.push_back(static_cast<std::uint16_t>(i));
  }
  // Whatever the driver queued while the device was paused (or before a
  // snapshot was taken) is picked up now.
  for (auto k : kicks) dev_->kick(k);
}

// v1: u32 status, u64 driver features, u32 device/driver features select,
// u32 queue select, u32 interrupt status, u32 config generation, u32 queue
// count, then per queue u16 size, u64 desc, u64 avail, u64 used, u8 ready,
// u16 next_avail, u16 next_used, u16 signalled_used; then u32 length and
// the device type's state.
std::vector<std::byte> MmioTransport::save_state() const {
  std::lock_guard lock(mu_);
  ByteWriter w;
  w.put_u32(status_ | (broken_ ? kStatusNeedsReset : 0));
  w.put_u64(driver_features_);
  w.put_u32(device_features_sel_);
  w.put_u32(driver_features_sel_);
  w.put_u32(queue_sel_);
  w.put_u32(interrupt_status_.load());
  w.put_u32(config_generation_.load());
  w.put_u32(static_cast<std::uint32_t>(queues_.size()));
  for (const auto& r : queues_) {
    const QueuePosition at = r.queue ? r.queue->position() : r.restored;
    w.put_u16(r.layout.size);
    w.put_u64(r.layout.desc);
    w.put_u64(r.layout.avail);
    w.put_u64(r.layout.used);
    w.put_u8(r.ready ? 1 : 0);
    w.put_u16(at.next_avail);
    w.put_u16(at.next_used);
    w.put_u16(at.signalled_used);
  }
  const auto blob = dev_->save();
  w.put_u32(static_cast<std::uint32_t>(blob.size()));
  w.put_bytes(blob);
  return std::move(w).take();
}

Status MmioTransport::restore_state(std::uint32_t version, std::span<const std::byte> payload) {
  const auto ctx = fmt::format("{} ({}) state", config_.id, dev_->kind());
  if (version != kMmioStateVersion)
    return fail("{}: version {} is not supported (this build reads {})", ctx, version, kMmioStateVersion);
  ByteReader r(payload);
  std::uint32_t status = 0, dsel = 0, drsel = 0, qsel = 0, istatus = 0, gen = 0, nq = 0;
  std::uint64_t features = 0;
  if (auto ok = r.get(status, features, dsel, drsel, qsel, istatus, gen, nq); !ok)
    return std::unexpected(std::move(ok.error()).context(ctx));
  if (nq != queues_.size()) return fail("{}: {} queues, this device has {}", ctx, nq, queues_.size());
  std::vector<QueueRegs> regs;
  for (const auto& q : queues_) {
    QueueRegs n = QueueRegs::fresh(q.max);
    std::uint8_t ready = 0;
    if (auto ok = r.get(n.layout.size, n.layout.desc, n.layout.avail, n.layout.used, ready, n.restored.next_avail,
                        n.restored.next_used, n.restored.signalled_used);
        !ok)
      return std::unexpected(std::move(ok.error()).context(ctx));
    if (n.layout.size > n.max) return fail("{}: queue size {} above the device's {}", ctx, n.layout.size, n.max);
    n.ready = ready != 0;
    regs.push_back(std::move(n));
  }
  auto len = r.get_u32();
  if (!len) return std::unexpected(std::move(len.error()).context(ctx));
  auto blob = r.get_bytes(*len);
  if (!blob) return std::unexpected(std::move(blob.error()).context(ctx));
  if (auto ok = r.expect_end(); !ok) return std::unexpected(std::move(ok.error()).context(ctx));
  if (features & ~offered()) return fail("{}: features {:#x} this device does not offer", ctx, features & ~offered());

  std::lock_guard lock(mu_);
  reset_locked();
  if (auto ok = dev_->restore(*blob); !ok) return std::unexpected(std::move(ok.error()).context(ctx));
  status_ = status;
  driver_features_ = features;
  device_features_sel_ = dsel;
  driver_features_sel_ = drsel;
  queue_sel_ = qsel;
  interrupt_status_ = istatus;
  config_generation_ = gen;
  queues_ = std::move(regs);
  // Restored paused: it starts when the VM does (resume(), which kicks
  // every queue), so a migration's destination moves no traffic before.
  dev_->pause();
  if ((status_ & kStatusDriverOk) && !(status_ & kStatusNeedsReset))
    if (auto ok = activate_locked(); !ok) return std::unexpected(std::move(ok.error()).context(ctx));
  return {};
}

}  // namespace ferry::kvm::virtio

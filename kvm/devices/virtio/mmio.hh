#pragma once
// The virtio-mmio transport, version 2 (virtio v1.2, 4.2.2): a 512-byte
// register window on the MMIO bus and one interrupt line, in front of one
// virtio device type. Modern only: the driver must accept VERSION_1, or
// FEATURES_OK is refused.
//
// The driver's queue registers become SplitQueues at DRIVER_OK (the
// features, and so EVENT_IDX and INDIRECT_DESC, are final by then); a
// layout that does not fit guest RAM, or an activation that fails, sets
// DEVICE_NEEDS_RESET and raises a configuration interrupt, as 2.1.2 asks:
// the guest sees a broken device, the VMM carries on. Writing 0 to Status
// resets the device.
//
// Kicks arrive as writes to QueueNotify (an exit), or through an
// ioeventfd the device registers on notify_address(); interrupts set a bit
// in InterruptStatus and put an edge on the line through `raise`.
//
// State (version 1): the registers, each queue's layout and position, and
// the device type's own blob. A restored device that was running is
// activated again with its queues where they were, and every queue is
// kicked on resume.
#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "kvm/devices/device.hh"
#include "kvm/devices/guest_access.hh"
#include "kvm/devices/virtio/queue.hh"
#include "kvm/devices/virtio/virtio.hh"

namespace ferry::kvm::virtio {

inline constexpr std::uint64_t kMmioWindow = 0x200;
inline constexpr std::uint64_t kMmioNotify = 0x050;  // QueueNotify
inline constexpr std::uint32_t kMmioStateVersion = 1;

class MmioTransport final : public kvm::Device {
 public:
  struct Config {
    std::string id;          // unique in the VM: "net0"
    std::uint64_t base = 0;  // guest-physical, kMmioWindow bytes
    std::uint32_t gsi = 0;
    StateKey key;  // where its state goes in the image
  };
  // `mem` and `dev` are the VM's and the transport's; `raise` puts one edge
  // on the interrupt line (IrqFd::trigger in a VM; a counter in tests).
  MmioTransport(Config config, const GuestAccess& mem, std::unique_ptr<VirtioDevice> dev, std::function<void()> raise);
  ~MmioTransport() override;

  DeviceDescription describe() const override;
  std::vector<IoRange> ranges() const override { return {{Space::kMmio, config_.base, kMmioWindow}}; }
  IoOutcome read(const IoRange& range, std::uint64_t offset, std::span<std::uint8_t> data) override;
  IoOutcome write(const IoRange& range, std::uint64_t offset, std::span<const std::uint8_t> data) override;
  void pause() override;
  void resume() override;

  std::optional<StateKey> state_key() const override { return config_.key; }
  std::uint32_t state_version() const override { return kMmioStateVersion; }
  std::vector<std::byte> save_state() const override;
  Status restore_state(std::uint32_t version, std::span<const std::byte> payload) override;

  std::uint64_t notify_address() const { return config_.base + kMmioNotify; }
  std::uint32_t status() const;
  // Why the device went to NEEDS_RESET, if it did (for `ferry status`).
  std::string failure() const;
  VirtioDevice& device() { return *dev_; }

 private:
  struct QueueRegs {
    std::uint16_t max = 0;
    QueueLayout layout;
    bool ready = false;
    QueuePosition restored;  // where a restored queue resumes
    std::optional<SplitQueue> queue;  // from DRIVER_OK to reset
    static QueueRegs fresh(std::uint16_t max) {
      QueueRegs r;
      r.max = max;
      return r;
    }
  };
  class Irq final : public Interrupt {
   public:
    explicit Irq(MmioTransport& t) : t_(t) {}
    void used_buffers() override { t_.interrupt(1); }
    void config_changed() override { t_.interrupt(2); }
    void needs_reset(const Error& why) override { t_.device_failed(why); }

   private:
    MmioTransport& t_;
  };

  std::uint32_t read_reg(std::uint64_t offset) const;
  void write_reg(std::uint64_t offset, std::uint32_t value);
  void write_status(std::uint32_t value);
  void reset_locked();
  Status activate_locked();
  void needs_reset_locked(const Error& why);
  void interrupt(std::uint32_t bit);
  void device_failed(const Error& why);
  std::uint64_t offered() const;

  const Config config_;
  const GuestAccess& mem_;
  std::unique_ptr<VirtioDevice> dev_;
  std::function<void()> raise_;
  Irq irq_{*this};
  mutable std::mutex mu_;
  std::uint32_t status_ = 0, device_features_sel_ = 0, driver_features_sel_ = 0, queue_sel_ = 0;
  std::uint64_t driver_features_ = 0;
  // Atomic, not under mu_: the device's thread raises interrupts while the
  // transport may be waiting for it to stop (reset, pause).
  std::atomic<std::uint32_t> interrupt_status_{0}, config_generation_{0};
  bool active_ = false;
  // NEEDS_RESET as the device thread sets it (device_failed), without mu_,
  // which reset holds while it waits for that thread; Status reads it in.
  std::atomic<bool> broken_{false};
  mutable std::mutex failure_mu_;
  std::string failure_;
  std::vector<QueueRegs> queues_;
};

}  // namespace ferry::kvm::virtio

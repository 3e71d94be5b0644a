#pragma once
// virtio 1.x (modern only), the parts every transport and device shares:
// the feature and status bits of the specification (virtio v1.2, sections
// 2.1 and 6), and the seam between a transport (virtio-mmio today,
// virtio-pci later) and a device type (net, block).
//
// A transport owns the registers the driver programs (status, features,
// queue addresses) and the split queues built from them; a device type
// owns its configuration space and what its queues carry. The transport
// hands the device its queues when the driver sets DRIVER_OK and takes them
// back on reset.
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "userspace/base/error.hh"

namespace ferry::kvm::virtio {

// Device IDs (virtio v1.2, 5).
inline constexpr std::uint32_t kDeviceNet = 1;
inline constexpr std::uint32_t kDeviceBlock = 2;

// Device status bits (2.1).
inline constexpr std::uint32_t kStatusAcknowledge = 1;
inline constexpr std::uint32_t kStatusDriver = 2;
inline constexpr std::uint32_t kStatusDriverOk = 4;
inline constexpr std::uint32_t kStatusFeaturesOk = 8;
inline constexpr std::uint32_t kStatusNeedsReset = 64;
inline constexpr std::uint32_t kStatusFailed = 128;

// Reserved feature bits (6) a transport or queue implements.
inline constexpr unsigned kFeatureIndirectDesc = 28;
inline constexpr unsigned kFeatureEventIdx = 29;
inline constexpr unsigned kFeatureVersion1 = 32;

constexpr std::uint64_t bit(unsigned feature) { return std::uint64_t{1} << feature; }

class SplitQueue;

// How a device tells the driver something happened; the transport decides
// how (an interrupt status bit and an edge on the device's GSI for MMIO).
class Interrupt {
 public:
  virtual ~Interrupt() = default;
  // Buffers were used on a queue (and the queue's suppression allows it).
  virtual void used_buffers() = 0;
  // The configuration space changed (link status, announce request).
  virtual void config_changed() = 0;
  // The driver broke the device (a malformed chain): DEVICE_NEEDS_RESET
  // and a configuration interrupt. The device stops using its queues
  // until reset. Callable from the device's own thread.
  virtual void needs_reset(const Error& why) = 0;
};

// A device type, as its transport sees it. Threading: config reads and
// writes come from vCPU threads under the transport's lock; activate,
// reset and the kicks come from the transport too, never concurrently with
// each other. After activate the device may use the queues from its own
// thread until reset() returns.
class VirtioDevice {
 public:
  virtual ~VirtioDevice() = default;
  virtual std::string kind() const = 0;  // "virtio-net"
  virtual std::uint32_t device_id() const = 0;
  // Device-type feature bits it offers; the transport adds VERSION_1,
  // EVENT_IDX and INDIRECT_DESC, which it and the queues implement.
  virtual std::uint64_t features() const = 0;
  // One entry per queue: its largest size (a power of 2).
  virtual std::vector<std::uint16_t> queue_max_sizes() const = 0;
  virtual std::uint32_t config_size() const = 0;
  // `offset + data.size() <= config_size()` is checked by the transport.
  virtual void read_config(std::uint32_t offset, std::span<std::uint8_t> data) const = 0;
  virtual void write_config(std::uint32_t offset, std::span<const std::uint8_t> data) = 0;
  // DRIVER_OK: the driver accepted `features` and set up the queues (a
  // queue it left disabled is null). An error puts the device in
  // NEEDS_RESET; the guest sees a broken device, the VMM keeps running.
  virtual Status activate(std::uint64_t features, std::vector<SplitQueue*> queues, Interrupt& irq) = 0;
  // The driver wrote the queue's index to the notify register (a kick that
  // did not go through an ioeventfd).
  virtual void kick(std::uint16_t queue) = 0;
  // Stop using the queues and guest memory; back to the state before
  // activate.
  virtual void reset() = 0;
  // Quiesce (vCPUs are parked): finish or park in-flight work and stop
  // touching guest memory; resume undoes it. The transport kicks every
  // queue after resume, so work that arrived meanwhile is picked up.
  virtual void pause() {}
  virtual void resume() {}
  // The device type's own state (the transport saves queues and
  // registers); restore runs before activate on a restored device.
  virtual std::vector<std::byte> save() const { return {}; }
  virtual Status restore(std::span<const std::byte> state) {
    if (!state.empty()) return fail("{}: unexpected device state ({} bytes)", kind(), state.size());
    return {};
  }
};

}  // namespace ferry::kvm::virtio

#pragma once
// One interface for every device the VMM emulates (kvmtool's device bus,
// Cloud Hypervisor's BusDevice + Migratable, Firecracker's persist): a
// device claims I/O ranges on the bus, serves the accesses a vCPU exit
// carries, can be quiesced, and saves and restores its state as a
// versioned section of the state image. The DeviceManager owns devices.
//
// Threading: read/write run on vCPU threads, possibly several at once; a
// device serialises its own registers. pause/resume/save/restore run on
// the controlling thread while every vCPU is parked.
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "kvm/state/format.hh"
#include "userspace/base/error.hh"

namespace ferry::kvm {

enum class Space { kPio, kMmio };
std::string_view space_name(Space s);

struct IoRange {
  Space space = Space::kPio;
  std::uint64_t base = 0;
  std::uint64_t size = 0;
  std::uint64_t end() const { return base + size; }
  friend bool operator==(const IoRange&, const IoRange&) = default;
};

// What an access asks of the VM beyond the registers it touched.
enum class IoOutcome { kDone, kPowerOff, kReboot };

// What a destination must build before it loads the device's state, and
// what `ferry status` can name: kind ("uart-16550a"), an id unique in the
// VM ("com1"), and the configuration that shapes the guest's view of it
// ("port=0x3f8 irq=4").
struct DeviceDescription {
  std::string kind;
  std::string id;
  std::string config;
  friend bool operator==(const DeviceDescription&, const DeviceDescription&) = default;
};

// Where a device's state lives in the state image. (type, instance) is
// unique per VM; the DeviceManager refuses a second device with the same.
struct StateKey {
  state::SectionType type = state::SectionType::kInvalid;
  std::uint32_t instance = 0;
  friend bool operator==(const StateKey&, const StateKey&) = default;
};

// kDeviceOther instances: one number per device kind, on disk, never reused.
enum class OtherDevice : std::uint32_t { kAcpiPm = 1 };

class Device {
 public:
  virtual ~Device() = default;
  Device() = default;
  Device(const Device&) = delete;
  Device& operator=(const Device&) = delete;

  virtual DeviceDescription describe() const = 0;
  virtual std::vector<IoRange> ranges() const = 0;
  // `offset` counts from the base of `range` (one of ranges()); `data` is
  // the whole access (1, 2, 4 or 8 bytes), little-endian as on x86.
  virtual IoOutcome read(const IoRange& range, std::uint64_t offset, std::span<std::uint8_t> data) = 0;
  virtual IoOutcome write(const IoRange& range, std::uint64_t offset, std::span<const std::uint8_t> data) = 0;

  // Quiesce: finish or park in-flight work and stop touching guest memory
  // (vCPUs are already parked); resume undoes it. Register-only devices
  // have nothing in flight.
  virtual void pause() {}
  virtual void resume() {}

  // Devices without state return nullopt. A section the image lacks is
  // an error when state_required() (the device's state has always been in
  // every image), else the device keeps its reset state (an image written
  // before the device's state was carried).
  virtual std::optional<StateKey> state_key() const { return std::nullopt; }
  virtual bool state_required() const { return true; }
  virtual std::uint32_t state_version() const { return 0; }
  virtual std::vector<std::byte> save_state() const { return {}; }
  // `version` is the section's; a device rejects versions it does not know.
  virtual Status restore_state(std::uint32_t version, std::span<const std::byte> payload) {
    (void)version, (void)payload;
    return {};
  }
};

}  // namespace ferry::kvm

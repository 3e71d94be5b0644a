#pragma once
// The ACPI PM1a register blocks the FADT points a Linux guest at (see
// kvm/linux/acpi.hh): PM1_STS/PM1_EN at 0x600 and PM1_CNT at 0x604.
// Writing SLP_TYP=S5 with SLP_EN powers the VM off. No fixed event ever
// fires (no power button, no PM timer, no global lock owner), so status
// reads 0; PM1_EN reads back as written, which ACPICA verifies, and it
// travels with the VM (a kDeviceOther section) so a migrated guest reads
// back what it wrote.
#include <cstdint>
#include <mutex>

#include "kvm/devices/device.hh"

namespace ferry::kvm {

inline constexpr std::uint32_t kAcpiPmStateVersion = 1;

class AcpiPm final : public Device {
 public:
  DeviceDescription describe() const override;
  std::vector<IoRange> ranges() const override;
  IoOutcome read(const IoRange& range, std::uint64_t offset, std::span<std::uint8_t> data) override;
  IoOutcome write(const IoRange& range, std::uint64_t offset, std::span<const std::uint8_t> data) override;

  std::optional<StateKey> state_key() const override {
    return StateKey{state::SectionType::kDeviceOther, static_cast<std::uint32_t>(OtherDevice::kAcpiPm)};
  }
  // Images written before this device carried its state lack the section:
  // PM1_EN then starts at 0, as it did after every restore before.
  bool state_required() const override { return false; }
  std::uint32_t state_version() const override { return kAcpiPmStateVersion; }
  std::vector<std::byte> save_state() const override;
  Status restore_state(std::uint32_t version, std::span<const std::byte> payload) override;

  std::uint16_t pm1_enable() const;

 private:
  mutable std::mutex mu_;
  std::uint16_t pm1_enable_ = 0;
};

}  // namespace ferry::kvm

#pragma once
// The ways a PC guest asks for a reset, each a single port: the FADT's
// ACPI reset register (0x3c2, value 0xfe), the 8042 keyboard controller's
// "pulse reset line" command (0x64, value 0xfe), and the PCI reset control
// register (0xcf9, bit 2). The 8042's status register reads "input buffer
// empty", so a kernel rebooting through it (reboot=k) writes its command at
// once instead of polling 65536 times; the FADT says there is no 8042, so
// nothing else probes it. No state: a reset ends the VM.
#include "kvm/devices/device.hh"

namespace ferry::kvm {

class ResetPorts final : public Device {
 public:
  DeviceDescription describe() const override;
  std::vector<IoRange> ranges() const override;
  IoOutcome read(const IoRange& range, std::uint64_t offset, std::span<std::uint8_t> data) override;
  IoOutcome write(const IoRange& range, std::uint64_t offset, std::span<const std::uint8_t> data) override;
};

}  // namespace ferry::kvm

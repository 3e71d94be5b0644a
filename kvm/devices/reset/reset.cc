#include "kvm/devices/reset/reset.hh"

#include <algorithm>

#include "kvm/linux/acpi.hh"

namespace ferry::kvm {
namespace {

constexpr std::uint16_t kI8042Command = 0x64;      // 0xfe: pulse the CPU reset line
constexpr std::uint8_t kI8042PulseReset = 0xfe;
constexpr std::uint16_t kPciResetControl = 0xcf9;  // bit 2: reset
constexpr std::uint8_t kPciResetCpu = 1 << 2;

}  // namespace

DeviceDescription ResetPorts::describe() const {
  return {"reset", "reset", "acpi=0x3c2 i8042=0x64 pci=0xcf9"};
}

std::vector<IoRange> ResetPorts::ranges() const {
  return {{Space::kPio, kAcpiResetPort, 1}, {Space::kPio, kI8042Command, 1}, {Space::kPio, kPciResetControl, 1}};
}

IoOutcome ResetPorts::read(const IoRange& range, std::uint64_t, std::span<std::uint8_t> data) {
  // The 8042's status: nothing pending. The other two are write-only.
  std::fill(data.begin(), data.end(), range.base == kI8042Command ? 0x00 : 0xff);
  return IoOutcome::kDone;
}

IoOutcome ResetPorts::write(const IoRange& range, std::uint64_t, std::span<const std::uint8_t> data) {
  std::uint32_t v = 0;  // the value written, however wide the access
  for (std::size_t i = 0; i < data.size() && i < 4; ++i) v |= static_cast<std::uint32_t>(data[i]) << (8 * i);
  if ((range.base == kAcpiResetPort && v == kAcpiResetValue) || (range.base == kI8042Command && v == kI8042PulseReset) ||
      (range.base == kPciResetControl && (v & kPciResetCpu)))
    return IoOutcome::kReboot;
  return IoOutcome::kDone;
}

}  // namespace ferry::kvm

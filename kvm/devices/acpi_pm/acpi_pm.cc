#include "kvm/devices/acpi_pm/acpi_pm.hh"

#include <algorithm>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "kvm/linux/acpi.hh"
#include "userspace/base/bytes.hh"

namespace ferry::kvm {

DeviceDescription AcpiPm::describe() const {
  return {"acpi-pm", "pm", fmt::format("pm1a_evt={:#x} pm1a_cnt={:#x}", kAcpiPm1aEventPort, kAcpiPm1aControlPort)};
}

std::vector<IoRange> AcpiPm::ranges() const {
  return {{Space::kPio, kAcpiPm1aEventPort, 4}, {Space::kPio, kAcpiPm1aControlPort, 2}};
}

std::uint16_t AcpiPm::pm1_enable() const {
  std::lock_guard lock(mu_);
  return pm1_enable_;
}

IoOutcome AcpiPm::read(const IoRange& range, std::uint64_t offset, std::span<std::uint8_t> data) {
  std::fill(data.begin(), data.end(), 0);
  if (range.base == kAcpiPm1aControlPort) {
    if (offset == 0) data[0] = kAcpiSciEnable;  // ACPI mode, always
    return IoOutcome::kDone;
  }
  std::lock_guard lock(mu_);
  for (std::size_t b = 0; b < data.size(); ++b) {
    const auto reg = offset + b;
    if (reg >= 4)
      data[b] = 0xff;  // a wide access running past the block
    else if (reg >= 2)
      data[b] = static_cast<std::uint8_t>(pm1_enable_ >> ((reg - 2) * 8));
    // PM1_STS (reg 0, 1): no event is ever pending
  }
  return IoOutcome::kDone;
}

IoOutcome AcpiPm::write(const IoRange& range, std::uint64_t offset, std::span<const std::uint8_t> data) {
  if (range.base == kAcpiPm1aControlPort) {
    if (offset != 0) return IoOutcome::kDone;
    std::uint16_t value = data[0];
    if (data.size() > 1) value |= static_cast<std::uint16_t>(data[1] << 8);
    if (value & kAcpiSleepEnable) {
      const auto type = (value >> 10) & 7;
      if (type == kAcpiS5SleepType) return IoOutcome::kPowerOff;
      spdlog::warn("guest asked for ACPI sleep type {}: only S5 (off) is supported; ignored", type);
    }
    return IoOutcome::kDone;
  }
  std::lock_guard lock(mu_);
  for (std::size_t b = 0; b < data.size(); ++b) {
    const auto reg = offset + b;
    if (reg < 2 || reg >= 4) continue;  // status bits: write-1-to-clear of nothing
    const int shift = static_cast<int>(reg - 2) * 8;
    pm1_enable_ = static_cast<std::uint16_t>((pm1_enable_ & ~(0xff << shift)) | (data[b] << shift));
  }
  return IoOutcome::kDone;
}

// v1: u16 PM1_EN.
std::vector<std::byte> AcpiPm::save_state() const {
  ByteWriter w;
  w.put_u16(pm1_enable());
  return std::move(w).take();
}

Status AcpiPm::restore_state(std::uint32_t version, std::span<const std::byte> payload) {
  if (version != kAcpiPmStateVersion)
    return fail("pm: ACPI PM state version {} is not supported (this build reads {})", version, kAcpiPmStateVersion);
  ByteReader r(payload);
  std::uint16_t en = 0;
  if (auto ok = r.get(en); !ok) return std::unexpected(std::move(ok.error()).context("pm: ACPI PM state"));
  if (auto ok = r.expect_end(); !ok) return std::unexpected(std::move(ok.error()).context("pm: ACPI PM state"));
  std::lock_guard lock(mu_);
  pm1_enable_ = en;
  return {};
}

}  // namespace ferry::kvm

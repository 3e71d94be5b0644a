#pragma once
// Minimal ACPI for a Linux guest without firmware: RSDP -> XSDT -> FADT,
// DSDT (\_S5 so Linux offers power-off, and the virtio-mmio devices), MADT (one LAPIC per vCPU,
// the IOAPIC with ISA IRQs on pins 0-15 as KVM routes them, LINT1 as NMI).
//
// The FADT describes a PC with fixed ACPI hardware (PM1 event and control
// blocks, SCI on IRQ 9), not a "hardware-reduced" platform: Linux drops the
// legacy PIC and the identity ISA IRQ -> IOAPIC pin mappings on reduced
// hardware, and COM1's IRQ 4 would then reach nothing (seen: console output
// from user space never appeared).
//
// Power-off and reset are I/O ports the VMM traps:
//   kAcpiPm1aControlPort  guest writes SLP_TYP << 10 | SLP_EN (1 << 13); S5 = off
//   kAcpiResetPort        guest writes kAcpiResetValue to reboot
#include <cstdint>
#include <span>
#include <vector>

#include "userspace/base/error.hh"
#include "kvm/guest_memory.hh"

namespace ferry::kvm {

inline constexpr std::uint64_t kAcpiTablesGpa = 0xe0000;  // where legacy scans look too
inline constexpr std::uint16_t kAcpiPm1aEventPort = 0x600;    // PM1_STS (2 bytes), PM1_EN (2 bytes)
inline constexpr std::uint16_t kAcpiPm1aControlPort = 0x604;  // PM1_CNT (2 bytes)
inline constexpr std::uint16_t kAcpiResetPort = 0x3c2;
inline constexpr std::uint8_t kAcpiResetValue = 0xfe;
inline constexpr std::uint8_t kAcpiS5SleepType = 5;
inline constexpr std::uint16_t kAcpiSciEnable = 1;          // PM1_CNT.SCI_EN: ACPI mode is always on
inline constexpr std::uint16_t kAcpiSleepEnable = 1 << 13;  // PM1_CNT.SLP_EN
inline constexpr std::uint32_t kAcpiSciIrq = 9;

// A virtio-mmio device, described in the DSDT as Linux's virtio_mmio
// driver looks for it: \_SB.VRnn with _HID "LNRO0005", its register window
// (Memory32Fixed) and its interrupt (an edge-triggered, active-high GSI:
// the VMM raises it through an irqfd, one edge per interrupt).
struct AcpiMmioDevice {
  std::uint64_t base = 0;  // below 4 GiB
  std::uint32_t size = 0;
  std::uint32_t gsi = 0;
};

// Writes the tables at kAcpiTablesGpa; returns the RSDP's address.
Result<std::uint64_t> write_acpi_tables(GuestRegion& ram, std::uint32_t vcpus,
                                        std::span<const AcpiMmioDevice> mmio = {});

// The DSDT's AML body: \_S5 and one device per `mmio` entry (exposed for
// its unit test).
std::vector<std::uint8_t> dsdt_aml(std::span<const AcpiMmioDevice> mmio);

// ACPI's checksum rule: all bytes of a table sum to 0 (mod 256).
std::uint8_t acpi_checksum(const std::uint8_t* p, std::size_t n);

}  // namespace ferry::kvm

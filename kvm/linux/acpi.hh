#pragma once
// Minimal ACPI for a Linux guest without firmware: RSDP -> XSDT -> FADT
// (hardware-reduced: no PM1 blocks, no SCI hardware, no legacy PIC
// reliance), DSDT (just \_S5 so Linux offers power-off), MADT (one LAPIC
// per vCPU, the IOAPIC, IRQ0 -> GSI2 override, LINT1 as NMI).
//
// Power-off and reset are I/O ports the VMM traps:
//   kAcpiSleepControlPort  guest writes SLP_TYP << 2 | SLP_EN (0x20); S5 = off
//   kAcpiResetPort         guest writes kAcpiResetValue to reboot
#include <cstdint>

#include "base/error.hh"
#include "kvm/guest_memory.hh"

namespace ferry::kvm {

inline constexpr std::uint64_t kAcpiTablesGpa = 0xe0000;  // where legacy scans look too
inline constexpr std::uint16_t kAcpiSleepControlPort = 0x3c0;
inline constexpr std::uint16_t kAcpiSleepStatusPort = 0x3c1;
inline constexpr std::uint16_t kAcpiResetPort = 0x3c2;
inline constexpr std::uint8_t kAcpiResetValue = 0xfe;
inline constexpr std::uint8_t kAcpiS5SleepType = 5;
inline constexpr std::uint8_t kAcpiSleepEnable = 0x20;

// Writes the tables at kAcpiTablesGpa; returns the RSDP's address.
Result<std::uint64_t> write_acpi_tables(GuestRegion& ram, std::uint32_t vcpus);

// ACPI's checksum rule: all bytes of a table sum to 0 (mod 256).
std::uint8_t acpi_checksum(const std::uint8_t* p, std::size_t n);

}  // namespace ferry::kvm

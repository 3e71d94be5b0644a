#pragma once
// Booting a Linux kernel: the x86 64-bit boot protocol
// (Documentation/arch/x86/boot.rst), as Firecracker and Cloud Hypervisor do
// it. No firmware: the VMM loads the bzImage's protected-mode kernel, fills
// in boot_params (setup header, e820 map, command line, initrd, ACPI RSDP)
// and starts vCPU 0 at the kernel's 64-bit entry with identity paging.
// The other vCPUs wait for INIT/SIPI from the kernel, as on hardware.
//
// Guest-physical layout (RAM is one slot at 0, at most 3 GiB: the 32-bit
// MMIO hole above it holds the IOAPIC and LAPICs):
//   0x00500  GDT                       0x07000  boot_params (zero page)
//   0x09000  PML4, PDPT, 4 PDs: identity map of 0..4 GiB in 2 MiB pages
//   0xffff0  the reset vector: code that asks the VMM to reset
//   0x20000  command line              0x9fc00-0xfffff  reserved (ACPI at 0xe0000)
//   16 MiB   the kernel (its preferred address), initrd at the top of RAM
#include <linux/kvm.h>

#include <cstdint>
#include <string>
#include <vector>

#include "userspace/base/error.hh"
#include "kvm/guest_memory.hh"
#include "kvm/linux/acpi.hh"

namespace ferry::kvm {

class Kvm;
class Vcpu;

struct LinuxBootConfig {
  std::string kernel;   // bzImage
  std::string initrd;   // optional
  std::string cmdline;
  std::uint32_t vcpus = 1;
  std::vector<AcpiMmioDevice> mmio;  // virtio-mmio devices, for the DSDT
};

struct LinuxBootInfo {
  std::uint64_t entry = 0;        // the 64-bit entry point
  std::uint64_t boot_params = 0;  // gpa, passed in RSI
  std::uint64_t kernel_bytes = 0;
  std::uint64_t initrd_gpa = 0, initrd_bytes = 0;
  std::uint16_t protocol = 0;     // boot protocol version, e.g. 0x20f
};

inline constexpr std::uint64_t kLinuxLowRamEnd = 0x9fc00;   // then the EBDA/BIOS hole
inline constexpr std::uint64_t kLinuxHighRamStart = 0x100000;
inline constexpr std::uint64_t kLinuxMinMemory = 128ull << 20;

// Loads kernel and initrd into `ram` (slot at gpa 0) and writes boot_params,
// the command line, GDT, page tables and ACPI tables for `vcpus` CPUs.
// Refuses kernels that are not bzImages with a 64-bit entry (protocol 2.12+).
Result<LinuxBootInfo> load_linux(GuestRegion& ram, const LinuxBootConfig& config);

// The CPUID table a Linux guest's vCPU `index` gets: what KVM supports,
// with this vCPU's APIC ID (leaves 1, 0xb, 0x1f) and the hypervisor bit.
std::vector<kvm_cpuid_entry2> linux_vcpu_cpuid(std::vector<kvm_cpuid_entry2> supported, std::uint32_t index,
                                               std::uint32_t vcpus);

// Per vCPU, before it first runs: CPUID, the MSRs firmware would leave
// (fast strings, MTRRs on with write-back default), LAPIC LINT0 = ExtINT and
// LINT1 = NMI. vCPU 0 also gets the 64-bit entry state (the others stay in
// wait-for-SIPI).
Status setup_linux_vcpu(const Kvm& kvm, Vcpu& vcpu, const LinuxBootInfo& info, std::uint32_t vcpus);

}  // namespace ferry::kvm

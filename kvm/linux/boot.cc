#include "kvm/linux/boot.hh"

#include <linux/kvm.h>
#include <sys/ioctl.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "kvm/linux/acpi.hh"
#include "kvm/long_mode.hh"
#include "kvm/system.hh"
#include "kvm/vcpu.hh"
#include "kvm/vcpu_state.hh"

namespace ferry::kvm {
namespace {

constexpr std::uint64_t kGdtGpa = 0x500;
constexpr std::uint64_t kBootParamsGpa = 0x7000;
constexpr std::uint64_t kPml4Gpa = 0x9000;
constexpr std::uint64_t kPdptGpa = 0xa000;
constexpr std::uint64_t kPdGpa = 0xb000;  // 4 pages
constexpr std::uint64_t kCmdlineGpa = 0x20000;

// The boot protocol's selectors: __BOOT_CS = 0x10, __BOOT_DS = 0x18.
constexpr LongModeLayout kLayout{kGdtGpa, 0x10, 0x18, kPml4Gpa, kPdptGpa, kPdGpa};

// boot_params offsets (arch/x86/include/uapi/asm/bootparam.h).
constexpr std::size_t kAcpiRsdpAddr = 0x070;
constexpr std::size_t kE820Entries = 0x1e8;
constexpr std::size_t kSetupHeader = 0x1f1;
constexpr std::size_t kE820Table = 0x2d0;
// setup_header fields, as offsets in boot_params / the bzImage.
constexpr std::size_t kSetupSects = 0x1f1;
constexpr std::size_t kHeaderMagic = 0x202;
constexpr std::size_t kVersion = 0x206;
constexpr std::size_t kTypeOfLoader = 0x210;
constexpr std::size_t kLoadflags = 0x211;
constexpr std::size_t kRamdiskImage = 0x218;
constexpr std::size_t kRamdiskSize = 0x21c;
constexpr std::size_t kHeapEndPtr = 0x224;
constexpr std::size_t kCmdLinePtr = 0x228;
constexpr std::size_t kInitrdAddrMax = 0x22c;
constexpr std::size_t kRelocatable = 0x234;
constexpr std::size_t kCmdlineSize = 0x238;
constexpr std::size_t kXloadflags = 0x236;
constexpr std::size_t kPrefAddress = 0x258;
constexpr std::size_t kInitSize = 0x260;

constexpr std::uint8_t kLoadedHigh = 0x01, kCanUseHeap = 0x80;
constexpr std::uint16_t kXlfKernel64 = 0x01;

template <class T>
T get(const std::vector<std::uint8_t>& b, std::size_t off) {
  T v{};
  std::memcpy(&v, b.data() + off, sizeof v);
  return v;
}
template <class T>
void put(GuestRegion& ram, std::uint64_t gpa, T v) {
  std::memcpy(ram.host_at(gpa), &v, sizeof v);
}

Result<std::vector<std::uint8_t>> read_file(const std::string& path, const char* what) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return fail("{} {}: cannot open", what, path);
  std::vector<std::uint8_t> out((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  if (f.bad()) return fail("{} {}: read error", what, path);
  return out;
}

void write_e820(GuestRegion& ram, std::uint64_t bp) {
  struct Entry {
    std::uint64_t addr, size;
    std::uint32_t type;  // 1 RAM, 2 reserved
  };
  const Entry map[] = {{0, kLinuxLowRamEnd, 1},
                       {kLinuxLowRamEnd, kLinuxHighRamStart - kLinuxLowRamEnd, 2},
                       {kLinuxHighRamStart, ram.size() - kLinuxHighRamStart, 1}};
  for (std::size_t i = 0; i < std::size(map); ++i) {
    const std::uint64_t at = bp + kE820Table + i * 20;  // packed: u64 addr, u64 size, u32 type
    put(ram, at, map[i].addr);
    put(ram, at + 8, map[i].size);
    put(ram, at + 16, map[i].type);
  }
  put<std::uint8_t>(ram, bp + kE820Entries, static_cast<std::uint8_t>(std::size(map)));
}

Status set_lint(Vcpu& vcpu) {
  kvm_lapic_state lapic{};
  if (::ioctl(vcpu.fd(), KVM_GET_LAPIC, &lapic) < 0) return fail_sys("KVM_GET_LAPIC");
  auto set_reg = [&](std::size_t off, std::uint32_t mode) {
    std::uint32_t v;
    std::memcpy(&v, lapic.regs + off, 4);
    v = (v & ~0x700u & ~(1u << 16)) | (mode << 8);  // delivery mode, unmasked
    std::memcpy(lapic.regs + off, &v, 4);
  };
  set_reg(0x350, 7);  // LVT LINT0: ExtINT (the 8259's output)
  set_reg(0x360, 4);  // LVT LINT1: NMI
  if (::ioctl(vcpu.fd(), KVM_SET_LAPIC, &lapic) < 0) return fail_sys("KVM_SET_LAPIC");
  return {};
}

}  // namespace

Result<LinuxBootInfo> load_linux(GuestRegion& ram, const LinuxBootConfig& c) {
  if (ram.gpa() != 0) return fail("Linux: RAM must start at gpa 0");
  if (ram.size() < kLinuxMinMemory) return fail("Linux: needs at least {} MiB of RAM", kLinuxMinMemory >> 20);
  auto image = read_file(c.kernel, "kernel");
  if (!image) return std::unexpected(image.error());
  const auto& k = *image;
  if (k.size() < 0x1000 || get<std::uint32_t>(k, kHeaderMagic) != 0x53726448)  // "HdrS"
    return fail("kernel {}: not a bzImage (no \"HdrS\" setup header)", c.kernel);
  LinuxBootInfo info;
  info.protocol = get<std::uint16_t>(k, kVersion);
  if (info.protocol < 0x20c || !(get<std::uint16_t>(k, kXloadflags) & kXlfKernel64))
    return fail("kernel {}: boot protocol {:x}.{:02x} without a 64-bit entry (needs 2.12+ and XLF_KERNEL_64)",
                c.kernel, info.protocol >> 8, info.protocol & 0xff);
  std::uint32_t setup_sects = k[kSetupSects];
  if (setup_sects == 0) setup_sects = 4;
  const std::size_t pm_offset = (setup_sects + 1) * 512;
  if (pm_offset >= k.size()) return fail("kernel {}: truncated (setup of {} bytes)", c.kernel, pm_offset);
  const std::uint64_t load = get<std::uint64_t>(k, kPrefAddress);
  const std::uint64_t init_size = get<std::uint32_t>(k, kInitSize);
  info.kernel_bytes = k.size() - pm_offset;
  // Both values come from the file: compare without letting the sum wrap.
  const std::uint64_t need = std::max<std::uint64_t>(init_size, info.kernel_bytes);
  if (load < kLinuxHighRamStart || load > ram.size() || need > ram.size() - load)
    return fail("kernel {}: needs {:#x} bytes from {:#x} (its decompression area), RAM ends at {:#x}", c.kernel, need,
                load, ram.size());
  const std::uint64_t kernel_end = load + need;
  std::memcpy(ram.host_at(load), k.data() + pm_offset, info.kernel_bytes);
  info.entry = load + 0x200;  // startup_64

  const std::uint64_t bp = kBootParamsGpa;
  std::memset(ram.host_at(bp), 0, kPageSize);
  // The setup header as the kernel left it, then the loader's fields.
  const std::size_t hdr_end = 0x202 + k[0x201];
  std::memcpy(ram.host_at(bp + kSetupHeader), k.data() + kSetupHeader, hdr_end - kSetupHeader);
  put<std::uint8_t>(ram, bp + kTypeOfLoader, 0xff);  // "undefined" loader
  put<std::uint8_t>(ram, bp + kLoadflags, static_cast<std::uint8_t>(k[kLoadflags] | kLoadedHigh | kCanUseHeap));
  put<std::uint16_t>(ram, bp + kHeapEndPtr, 0xfe00);

  // The kernel's own limit, and the room below the EBDA where it goes.
  const std::uint64_t cmdline_max =
      std::min<std::uint64_t>(get<std::uint32_t>(k, kCmdlineSize), kLinuxLowRamEnd - kCmdlineGpa - 1);
  if (c.cmdline.size() > cmdline_max) return fail("command line of {} bytes exceeds the kernel's {}", c.cmdline.size(), cmdline_max);
  std::memset(ram.host_at(kCmdlineGpa), 0, c.cmdline.size() + 1);
  std::memcpy(ram.host_at(kCmdlineGpa), c.cmdline.data(), c.cmdline.size());
  put<std::uint32_t>(ram, bp + kCmdLinePtr, static_cast<std::uint32_t>(kCmdlineGpa));

  if (!c.initrd.empty()) {
    auto rd = read_file(c.initrd, "initrd");
    if (!rd) return std::unexpected(rd.error());
    const std::uint64_t max = std::min<std::uint64_t>(get<std::uint32_t>(k, kInitrdAddrMax), ram.size() - 1);
    const std::uint64_t at = (max + 1 - rd->size()) & ~(kPageSize - 1);
    if (rd->size() > max || at < kernel_end)
      return fail("initrd {} ({} MiB) does not fit between the kernel and the end of RAM; give the VM more memory",
                  c.initrd, rd->size() >> 20);
    std::memcpy(ram.host_at(at), rd->data(), rd->size());
    put<std::uint32_t>(ram, bp + kRamdiskImage, static_cast<std::uint32_t>(at));
    put<std::uint32_t>(ram, bp + kRamdiskSize, static_cast<std::uint32_t>(rd->size()));
    info.initrd_gpa = at;
    info.initrd_bytes = rd->size();
  }
  write_e820(ram, bp);
  auto rsdp = write_acpi_tables(ram, c.vcpus, c.mmio);
  if (!rsdp) return std::unexpected(rsdp.error());
  put<std::uint64_t>(ram, bp + kAcpiRsdpAddr, *rsdp);
  write_long_mode_tables(ram, kLayout);
  // No firmware, but the reset vector (F000:FFF0) is where a kernel that
  // reboots "through the BIOS" (reboot=bios, and what this Debian kernel
  // picked after a panic) ends up. Put the PC's reset request there:
  // mov al, 0xfe; out 0x64, al (the 8042 reset line the VMM traps); hlt.
  const std::uint8_t reset_vector_code[] = {0xb0, 0xfe, 0xe6, 0x64, 0xf4, 0xeb, 0xfd};
  std::memcpy(ram.host_at(0xffff0), reset_vector_code, sizeof reset_vector_code);
  info.boot_params = bp;
  (void)kRelocatable;
  spdlog::debug("Linux {:x}.{:02x}: kernel {} KiB at {:#x}, initrd {} KiB at {:#x}", info.protocol >> 8,
                info.protocol & 0xff, info.kernel_bytes >> 10, load, info.initrd_bytes >> 10, info.initrd_gpa);
  return info;
}

std::vector<kvm_cpuid_entry2> linux_vcpu_cpuid(std::vector<kvm_cpuid_entry2> t, std::uint32_t index,
                                               std::uint32_t vcpus) {
  for (auto& e : t) {
    if (e.function == 1) {
      // EBX[31:24] initial APIC ID, [23:16] logical processors per package.
      e.ebx = (e.ebx & 0x0000ffffu) | (index << 24) | ((vcpus & 0xff) << 16);
      e.ecx |= 1u << 31;  // running under a hypervisor
    } else if (e.function == 0xb || e.function == 0x1f) {
      e.edx = index;  // x2APIC ID, in every sub-leaf
    } else if (e.function == 0xd && e.index == 0) {
      // EBX is "XSAVE size for the features XCR0 enables now". Linux enables
      // every supported feature and then checks EBX against its own sum;
      // the sandbox's nested KVM never refreshes EBX after XSETBV, so start
      // it at the size for all supported features (ECX), which is what it
      // becomes once Linux has set XCR0.
      e.ebx = e.ecx;
    } else if (e.function == 0xd && e.index == 1) {
      // No XSAVES for the guest. Nested under TCG (the sandbox), KVM offers
      // XSAVES but reports a compacted size for supervisor state the guest
      // cannot enable, and Linux warns "XSAVE consistency problem" at boot.
      // XSAVEC/XSAVEOPT remain; user state is what a guest migrates.
      e.eax &= ~(1u << 3);
    }
  }
  return t;
}

Status setup_linux_vcpu(const Kvm& kvm, Vcpu& vcpu, const LinuxBootInfo& info, std::uint32_t vcpus) {
  auto ctx = [&](Error e) { return std::unexpected(std::move(e).context(fmt::format("Linux vCPU {} setup", vcpu.id()))); };
  auto supported = kvm.supported_cpuid();
  if (!supported) return ctx(supported.error());
  if (auto ok = set_vcpu_cpuid(vcpu, linux_vcpu_cpuid(std::move(*supported), vcpu.id(), vcpus)); !ok)
    return ctx(ok.error());
  // What firmware leaves: fast strings on; MTRRs enabled, default
  // write-back (Linux otherwise treats memory as uncached until PAT).
  // One at a time, so a host that lacks one (PVM has no MTRRs) only warns.
  constexpr std::uint32_t kMiscEnable = 0x1a0, kMtrrDefType = 0x2ff;
  for (const auto& [index, value] : {std::pair{kMiscEnable, 1ull}, std::pair{kMtrrDefType, 0x806ull}}) {
    kvm_msr_entry e{};
    e.index = index;
    e.data = value;
    if (auto ok = set_vcpu_msrs(vcpu, {e}); !ok) spdlog::debug("vCPU {}: MSR {:#x} not set: {}", vcpu.id(), index, ok.error());
  }
  if (auto ok = set_lint(vcpu); !ok) return ctx(ok.error());
  if (vcpu.id() != 0) return {};  // waits for INIT/SIPI

  kvm_regs regs{};
  regs.rip = info.entry;
  regs.rsi = info.boot_params;
  regs.rflags = 0x2;
  if (auto ok = enter_long_mode(vcpu, kLayout, regs); !ok) return ctx(ok.error());
  return {};
}

}  // namespace ferry::kvm

#include "userspace/migration/precheck.hh"

#include <fmt/format.h>

namespace ferry::migration {
namespace {

struct FeatureReg {
  std::uint32_t function, index;
  int reg;  // 0 eax, 1 ebx, 2 ecx, 3 edx
  std::uint32_t ignore;  // bits the guest's own state sets
};

// The leaves that hold feature flags (Intel SDM vol. 2A, AMD APM vol. 3).
constexpr FeatureReg kFeatureRegs[] = {
    {1, 0, 2, (1u << 27) | (1u << 31)},  // ECX; OSXSAVE mirrors CR4.OSXSAVE; bit 31 is the
                                         // hypervisor bit the VMM sets, not a KVM capability
    {1, 0, 3, 0},                // EDX
    {7, 0, 1, 0},                // EBX
    {7, 0, 2, 1u << 4},          // ECX; OSPKE mirrors CR4.PKE
    {7, 0, 3, 0},                // EDX
    {7, 1, 0, 0},                // EAX
    {0xd, 1, 0, 0},              // XSAVE features
    {0x80000001, 0, 2, 0},       // ECX
    {0x80000001, 0, 3, 0},       // EDX
};

constexpr const char* kRegNames[] = {"EAX", "EBX", "ECX", "EDX"};

std::uint32_t reg_of(std::uint32_t eax, std::uint32_t ebx, std::uint32_t ecx, std::uint32_t edx, int r) {
  return r == 0 ? eax : r == 1 ? ebx : r == 2 ? ecx : edx;
}

}  // namespace

std::vector<std::string> missing_cpu_features(const std::vector<CpuidEntry>& guest,
                                              const std::vector<kvm_cpuid_entry2>& supported) {
  std::vector<std::string> out;
  for (const auto& fr : kFeatureRegs) {
    const CpuidEntry* g = nullptr;
    for (const auto& e : guest)
      if (e.function == fr.function && e.index == fr.index) g = &e;
    if (!g) continue;
    std::uint32_t have = 0;
    for (const auto& s : supported)
      if (s.function == fr.function && s.index == fr.index) have = reg_of(s.eax, s.ebx, s.ecx, s.edx, fr.reg);
    const std::uint32_t want = reg_of(g->eax, g->ebx, g->ecx, g->edx, fr.reg) & ~fr.ignore;
    const std::uint32_t lacking = want & ~have;
    for (int bit = 0; bit < 32; ++bit)
      if (lacking & (1u << bit))
        out.push_back(fmt::format("CPUID {:#x}.{} {} bit {}", fr.function, fr.index, kRegNames[fr.reg], bit));
  }
  return out;
}

PrecheckResult evaluate_precheck(const Precheck& p, const HostResources& host) {
  std::vector<std::string> why;
  if (p.guest_kind != 1 && p.guest_kind != 2) why.push_back(fmt::format("unknown guest kind {}", p.guest_kind));
  if (host.max_vcpus && p.vcpus > host.max_vcpus)
    why.push_back(fmt::format("{} vCPUs, this host's KVM allows {}", p.vcpus, host.max_vcpus));
  if (p.regions.size() != 1 || p.regions[0].gpa != 0)
    why.push_back("memory layout: this version of Ferry takes one region at guest address 0");
  std::uint64_t mem = 0;
  for (const auto& r : p.regions) mem += r.size;
  if (host.mem_available && mem > host.mem_available)
    why.push_back(fmt::format("the VM needs {} MiB of RAM, this host has {} MiB available", mem >> 20,
                              host.mem_available >> 20));
  const auto missing = missing_cpu_features(p.cpuid, host.supported_cpuid);
  if (!missing.empty()) {
    std::string list;
    for (std::size_t i = 0; i < missing.size() && i < 8; ++i) list += (i ? ", " : "") + missing[i];
    if (missing.size() > 8) list += fmt::format(" and {} more", missing.size() - 8);
    why.push_back(fmt::format("the guest uses CPU features this host's KVM does not offer: {}", list));
  }
  PrecheckResult r;
  r.ok = why.empty();
  for (std::size_t i = 0; i < why.size(); ++i) r.reason += (i ? "; " : "") + why[i];
  if (r.ok && host.tsc_khz && p.tsc_khz != host.tsc_khz)
    r.reason = fmt::format("TSC runs at {} kHz here and {} kHz on the source (not scaled): guest timing drifts",
                           host.tsc_khz, p.tsc_khz);
  if (r.reason.size() > kMaxReason) r.reason.resize(kMaxReason);
  return r;
}

}  // namespace ferry::migration

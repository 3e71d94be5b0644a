#pragma once
// The destination's pre-migration checks: can this host run the VM the
// source describes? Each refusal names what is missing, and the source
// prints the same reason.
#include <linux/kvm.h>

#include <optional>
#include <string>
#include <vector>

#include "userspace/migration/payloads.hh"

namespace ferry::migration {

// Feature bits the guest was given that this host's KVM cannot offer
// (KVM_GET_SUPPORTED_CPUID), as "CPUID 0x7.0 EBX bit 12" lines; empty when
// every feature leaf is a subset. Only feature-flag registers are
// compared; bits the guest itself toggles (OSXSAVE, OSPKE) are ignored.
std::vector<std::string> missing_cpu_features(const std::vector<CpuidEntry>& guest,
                                              const std::vector<kvm_cpuid_entry2>& supported);

struct HostResources {
  std::uint64_t mem_available = 0;  // bytes (/proc/meminfo MemAvailable)
  std::uint32_t max_vcpus = 0;      // KVM_CAP_MAX_VCPUS
  std::uint32_t tsc_khz = 0;
  std::vector<kvm_cpuid_entry2> supported_cpuid;
};

// ok=false with the reasons joined by "; ", or ok=true with notes (a TSC
// frequency difference, which Ferry does not scale).
PrecheckResult evaluate_precheck(const Precheck& p, const HostResources& host);

}  // namespace ferry::migration

// The destination's prechecks: what the source describes against what this
// host can run, each refusal naming the reason.
#include <gtest/gtest.h>

#include "userspace/migration/precheck.hh"

namespace ferry::migration {
namespace {

kvm_cpuid_entry2 entry(std::uint32_t fn, std::uint32_t idx, std::uint32_t eax, std::uint32_t ebx, std::uint32_t ecx,
                       std::uint32_t edx) {
  kvm_cpuid_entry2 e{};
  e.function = fn;
  e.index = idx;
  e.eax = eax;
  e.ebx = ebx;
  e.ecx = ecx;
  e.edx = edx;
  return e;
}

HostResources host() {
  HostResources h;
  h.mem_available = 1ull << 30;
  h.max_vcpus = 8;
  h.supported_cpuid = {entry(1, 0, 0, 0, 0x00f0f0f0, 0x0f0f0f0f), entry(7, 0, 0, 0x000000ff, 0, 0)};
  return h;
}

Precheck vm() {
  Precheck p;
  p.vcpus = 2;
  p.regions = {{0, 0, 256ull << 20}};
  p.guest_kind = 1;
  p.tsc_khz = 2000000;
  p.cpuid = {{1, 0, 0, 0, 0x00f00000, 0x0000000f}, {7, 0, 0, 0x0000000f, 0, 0}};
  return p;
}

TEST(MigrationPrecheck, AcceptsAGuestWhoseFeaturesAreASubset) {
  const auto r = evaluate_precheck(vm(), host());
  EXPECT_TRUE(r.ok) << r.reason;
  EXPECT_EQ(r.reason, "");
}

TEST(MigrationPrecheck, NamesEveryCpuFeatureTheHostLacks) {
  auto p = vm();
  p.cpuid[1].ebx |= 1u << 12;  // 7.0 EBX bit 12: not offered
  p.cpuid[0].edx |= 1u << 4;   // 1.0 EDX bit 4: not offered
  const auto missing = missing_cpu_features(p.cpuid, host().supported_cpuid);
  ASSERT_EQ(missing.size(), 2u);
  EXPECT_EQ(missing[0], "CPUID 0x1.0 EDX bit 4");
  EXPECT_EQ(missing[1], "CPUID 0x7.0 EBX bit 12");
  const auto r = evaluate_precheck(p, host());
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.reason,
            "the guest uses CPU features this host's KVM does not offer: CPUID 0x1.0 EDX bit 4, CPUID 0x7.0 EBX bit 12");
}

TEST(MigrationPrecheck, IgnoresBitsTheGuestOrTheVmmSetsItself) {
  auto p = vm();
  p.cpuid[0].ecx |= (1u << 27) | (1u << 31);  // OSXSAVE, hypervisor
  EXPECT_TRUE(missing_cpu_features(p.cpuid, host().supported_cpuid).empty());
  // A leaf the host does not list at all offers nothing.
  p.cpuid.push_back({0x80000001, 0, 0, 0, 1, 0});
  EXPECT_EQ(missing_cpu_features(p.cpuid, host().supported_cpuid),
            std::vector<std::string>{"CPUID 0x80000001.0 ECX bit 0"});
}

TEST(MigrationPrecheck, RefusesWhatDoesNotFitAndSaysAllOfIt) {
  auto p = vm();
  p.vcpus = 9;
  p.regions = {{0, 0, 2ull << 30}};
  const auto r = evaluate_precheck(p, host());
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.reason,
            "9 vCPUs, this host's KVM allows 8; the VM needs 2048 MiB of RAM, this host has 1024 MiB available");
  auto two = vm();
  two.regions.push_back({1, 1ull << 32, 4096});
  EXPECT_EQ(evaluate_precheck(two, host()).reason,
            "memory layout: this version of Ferry takes one region at guest address 0");
}

}  // namespace
}  // namespace ferry::migration

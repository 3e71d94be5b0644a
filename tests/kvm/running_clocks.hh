#pragma once
// vCPU state that is a running clock cannot round-trip exactly: IA32_TSC
// and Hyper-V's per-vCPU run time count on from the restored value while a
// test captures it again. Tests bound how far they moved and compare
// everything else exactly.
#include <algorithm>
#include <iterator>
#include <optional>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "kvm/vcpu_state.hh"

namespace ferry::test {

struct RunningClock {
  std::uint32_t index;
  std::uint64_t max_advance;
  bool required;  // captured on every host (IA32_TSC); Hyper-V's only where KVM lists it
};
inline constexpr RunningClock kRunningClocks[] = {
    {kvm::msr::kTsc, 1ull << 38, true},                  // ~100 s at 2.6 GHz
    {kvm::msr::kHvVpRuntime, 1'000'000'000, false}};  // 100 s in 100 ns units

inline std::optional<std::uint64_t> msr_value(const kvm::VcpuState& s, std::uint32_t index) {
  for (const auto& e : s.msrs)
    if (e.index == index) return e.data;
  return std::nullopt;
}

// Problems with the clocks between a capture and a later one of the
// restored vCPU: missing, went backwards, jumped ahead. Empty when fine.
inline std::vector<std::string> running_clock_problems(const kvm::VcpuState& before, const kvm::VcpuState& after) {
  std::vector<std::string> out;
  for (const auto& c : kRunningClocks) {
    const auto b = msr_value(before, c.index), a = msr_value(after, c.index);
    if (b.has_value() != a.has_value()) out.push_back(fmt::format("MSR {:#x} captured only once", c.index));
    else if (!b && c.required) out.push_back(fmt::format("MSR {:#x} was not captured", c.index));
    else if (b && *a < *b) out.push_back(fmt::format("MSR {:#x} went backwards: {:#x} -> {:#x}", c.index, *b, *a));
    else if (b && *a - *b >= c.max_advance)
      out.push_back(fmt::format("MSR {:#x} jumped ahead by {:#x}", c.index, *a - *b));
  }
  return out;
}

inline kvm::VcpuState without_running_clocks(kvm::VcpuState s) {
  std::erase_if(s.msrs, [](const kvm_msr_entry& e) {
    return std::any_of(std::begin(kRunningClocks), std::end(kRunningClocks),
                       [&](const RunningClock& c) { return c.index == e.index; });
  });
  return s;
}

}  // namespace ferry::test

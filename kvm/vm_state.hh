#pragma once
// VM-wide state that is not any one vCPU's: the KVM clock and, when the VM
// has them, the in-kernel PIC pair + IOAPIC and the PIT. Each is its own
// section of the state format (kClock, kIrqchip, kPit) so a VM without an
// irqchip simply has no such section.
//
// Restore order (see restore_vm_state): irqchip and PIT after every vCPU's
// state, the clock last of all. Writing MSR_IA32_TSC on a vCPU makes KVM
// resynchronise its TSC and may rebuild the masterclock the kvmclock is
// computed from, so a clock set before the vCPUs could drift by that step;
// QEMU applies kvmclock at VM start for the same reason.
#include <linux/kvm.h>

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "userspace/base/error.hh"

namespace ferry::kvm {

class Vm;

inline constexpr std::uint32_t kClockStateVersion = 1;
inline constexpr std::uint32_t kIrqchipStateVersion = 1;
inline constexpr std::uint32_t kPitStateVersion = 1;

struct IrqchipState {
  kvm_pic_state pic_master{};
  kvm_pic_state pic_slave{};
  kvm_ioapic_state ioapic{};
};

struct VmState {
  // KVM_GET_CLOCK: guest kvmclock nanoseconds (and, where the host offers
  // them, the host realtime/TSC it was sampled at; informational only).
  kvm_clock_data clock{};
  std::optional<IrqchipState> irqchip;  // iff Vm::has_irqchip()
  std::optional<kvm_pit_state2> pit;    // iff Vm::has_pit()
};

// Reads the VM-wide state. Call with every vCPU paused: the PIT and IOAPIC
// change as the guest programs them.
Result<VmState> capture_vm_state(const Vm& vm);

// Writes `s` into `vm`, whose vCPU states must already be restored (see the
// order above). The VM must have an irqchip/PIT exactly when `s` does.
// The clock is set to the captured value: the guest sees no time pass while
// it was stopped (a snapshot on disk for a day resumes as if paused for an
// instant), which is what both QEMU and Firecracker do; wall-clock catch-up
// is the guest's NTP's job.
Status restore_vm_state(Vm& vm, const VmState& s);

// Explicit little-endian encodings (layouts in vm_state.cc). Decoders reject
// unknown versions, truncation, trailing bytes and values KVM never produces.
std::vector<std::byte> encode_clock_state(const kvm_clock_data& c);
Result<kvm_clock_data> decode_clock_state(std::span<const std::byte> bytes);
std::vector<std::byte> encode_irqchip_state(const IrqchipState& s);
Result<IrqchipState> decode_irqchip_state(std::span<const std::byte> bytes);
std::vector<std::byte> encode_pit_state(const kvm_pit_state2& s);
Result<kvm_pit_state2> decode_pit_state(std::span<const std::byte> bytes);

// Every carried field that differs, one line each; empty means equal. The
// running clocks (kvmclock, the PIT's load time) are left to the caller.
std::vector<std::string> vm_state_differences(const VmState& a, const VmState& b);

}  // namespace ferry::kvm

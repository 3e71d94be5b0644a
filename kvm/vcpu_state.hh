#pragma once
// Everything an x86 vCPU has that KVM lets userspace read and write, as one
// plain value: captured from a stopped vCPU, restored into a fresh one (same
// VM shape: memory slots registered, in-kernel irqchip or not), and encoded
// for the wire / snapshot (a kVcpu section of kvm/state/format.hh).
//
// The kernel's ordering rules live where they matter: capture order at the
// top of capture_vcpu_state, restore order at the top of restore_vcpu_state
// (kvm/vcpu_state.cc), MSR order in msr_restore_rank.
//
// Not carried (each is a separate, explicit decision):
//  - nested virtualization state (KVM_GET_NESTED_STATE): Ferry guests do not
//    run hypervisors of their own; one that did would lose its L2 guests.
//  - TSC frequency (KVM_GET_TSC_KHZ): belongs to VM/host compatibility
//    checks, not to one vCPU's registers.
//  - kvmclock (KVM_GET_CLOCK) and the irqchip's PIC/IOAPIC/PIT: VM-wide,
//    their own sections.
//  - kvm_sregs2 (PDPTRs): plain kvm_sregs is what every KVM since 2.6
//    accepts and what PVM implements; the PDPTRs only matter to a guest
//    paused in 32-bit PAE paging between a CR3 load and its next use, which
//    Ferry's 64-bit guests never are.
#include <linux/kvm.h>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "userspace/base/error.hh"

namespace ferry::kvm {

class Vcpu;

// The layout version encode_vcpu_state writes (the first u32); decode
// accepts exactly this one. Bump it for any change to the encoding.
inline constexpr std::uint32_t kVcpuStateVersion = 1;

// Decoder sanity limits, far above what any KVM reports (it has ~100 MSRs to
// save, KVM_MAX_CPUID_ENTRIES = 256 and an AMX XSAVE area is ~11 KiB).
inline constexpr std::size_t kMaxVcpuMsrs = 4096;
inline constexpr std::size_t kMaxCpuidEntries = 256;
inline constexpr std::size_t kMinXsaveBytes = 4096;  // the legacy struct kvm_xsave
inline constexpr std::size_t kMaxXsaveBytes = 64 * 1024;
inline constexpr std::size_t kLapicBytes = sizeof(kvm_lapic_state);  // 1024

struct VcpuState {
  kvm_regs regs{};
  kvm_sregs sregs{};
  kvm_xcrs xcrs{};
  // The XSAVE area as KVM_GET_XSAVE(2) returns it (standard, uncompacted
  // format): 4096 bytes, more with dynamic xfeatures. Carries x87, SSE, AVX,
  // AVX-512, PKRU...: a superset of kvm_fpu, which is therefore not kept.
  std::vector<std::byte> xsave;
  // In capture order, which is not the restore order (see msr_restore_rank).
  std::vector<kvm_msr_entry> msrs;
  // Present iff the VM has an in-kernel LAPIC (KVM_CREATE_IRQCHIP).
  std::optional<kvm_lapic_state> lapic;
  kvm_vcpu_events events{};
  kvm_mp_state mp_state{};
  kvm_debugregs debugregs{};
  // The vCPU's CPUID table (KVM_GET_CPUID2); empty if none was ever set.
  std::vector<kvm_cpuid_entry2> cpuid;
};

// Reads the state of a vCPU that is not running (its thread is parked, e.g.
// by VcpuRunner::pause). Refuses a vCPU whose last exit was KVM_EXIT_IO,
// _MMIO (and the other exits KVM completes on the next KVM_RUN): call
// Vcpu::complete_pending_exit() first, or RIP may still point at the I/O
// instruction and the destination would execute it a second time.
//
// msr_indices is normally Kvm::msr_index_list(): every MSR this KVM can save.
// Capture drops (logged at debug level):
//  - MSRs the vCPU does not let the host read: KVM_GET_MSRS stops at the
//    first index it refuses (typically an MSR of a feature absent from this
//    vCPU's CPUID or from the host), and a value the kernel will not read is
//    not guest state that can move;
//  - HV_X64_MSR_TIME_REF_COUNT: a view of the VM-wide kvmclock (time since
//    VM creation), not vCPU state; KVM ignores host writes to it, and it
//    moves with the VM's clock (KVM_SET_CLOCK).
// Duplicate indices are read once.
Result<VcpuState> capture_vcpu_state(Vcpu& vcpu, const std::vector<std::uint32_t>& msr_indices);

// Writes `state` into `vcpu`, which should be freshly created in a VM of the
// same shape: guest memory already registered (kvmclock, steal-time and
// async-PF MSRs name guest pages, which KVM looks up when they are written),
// and an in-kernel irqchip exactly when the state has a LAPIC.
// An MSR the destination refuses is an error unless the destination already
// holds the same value (e.g. MSR_KVM_ASYNC_PF_INT = 0 without an in-kernel
// LAPIC: KVM refuses any write but reads 0).
Status restore_vcpu_state(Vcpu& vcpu, const VcpuState& state);

// The pieces restore uses, for a VMM setting up a fresh vCPU (boot): the
// CPUID table (KVM_SET_CPUID2), and MSRs in msr_restore_rank order (a
// refused write is an error naming the MSR).
Status set_vcpu_cpuid(Vcpu& vcpu, const std::vector<kvm_cpuid_entry2>& cpuid);
// KVM_GET_CPUID2: the table the vCPU was given (empty if none was set).
Result<std::vector<kvm_cpuid_entry2>> vcpu_cpuid(const Vcpu& vcpu);
Status set_vcpu_msrs(Vcpu& vcpu, const std::vector<kvm_msr_entry>& msrs);

// The order restore writes MSRs in: lower rank first, capture order within
// a rank. Exposed for tests.
int msr_restore_rank(std::uint32_t index);

// Explicit little-endian, field by field (userspace/base/bytes.hh); the XSAVE
// area and the LAPIC register page as length-prefixed blobs (their layouts
// are defined by the CPU, not by KVM's C structs). Layout in vcpu_state_codec.cc.
std::vector<std::byte> encode_vcpu_state(const VcpuState& state);
// Rejects an unknown version, truncation, trailing bytes, counts above the
// limits, duplicate MSRs and values KVM never produces (unknown flags,
// mp_state, segment attributes), each with a message naming the field.
Result<VcpuState> decode_vcpu_state(std::span<const std::byte> bytes);

// Every carried field that differs between a and b, one line each
// ("regs.rip: 0x1000 != 0x1004"), padding and reserved fields ignored.
// Empty means equal in everything the state carries.
std::vector<std::string> vcpu_state_differences(const VcpuState& a, const VcpuState& b);

// MSR indices Ferry names (Intel SDM / KVM's msr-index.h values).
namespace msr {
inline constexpr std::uint32_t kTsc = 0x10;
inline constexpr std::uint32_t kFeatureControl = 0x3a;
inline constexpr std::uint32_t kTscAdjust = 0x3b;
inline constexpr std::uint32_t kSysenterCs = 0x174;
inline constexpr std::uint32_t kSysenterEsp = 0x175;
inline constexpr std::uint32_t kSysenterEip = 0x176;
inline constexpr std::uint32_t kPat = 0x277;
inline constexpr std::uint32_t kTscDeadline = 0x6e0;
inline constexpr std::uint32_t kStar = 0xc0000081;
inline constexpr std::uint32_t kLstar = 0xc0000082;
inline constexpr std::uint32_t kCstar = 0xc0000083;
inline constexpr std::uint32_t kSyscallMask = 0xc0000084;
inline constexpr std::uint32_t kKernelGsBase = 0xc0000102;
inline constexpr std::uint32_t kTscAux = 0xc0000103;
inline constexpr std::uint32_t kKvmAsyncPfEn = 0x4b564d02;
inline constexpr std::uint32_t kKvmAsyncPfInt = 0x4b564d06;
inline constexpr std::uint32_t kHvVpRuntime = 0x40000010;     // Hyper-V: this vCPU's run time (100 ns)
inline constexpr std::uint32_t kHvTimeRefCount = 0x40000020;  // Hyper-V: VM-wide reference counter
}  // namespace msr

}  // namespace ferry::kvm

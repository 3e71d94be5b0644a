// Capture and restore of x86 vCPU state: the ioctls and, above all, their
// order. Encoding and comparison are in vcpu_state_codec.cc.
#include "kvm/vcpu_state.hh"

#include <sys/ioctl.h>
#include <x86intrin.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstring>
#include <memory>
#include <string_view>
#include <unordered_set>

#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include "kvm/exit_reason.hh"
#include "kvm/uapi.hh"
#include "kvm/vcpu.hh"

namespace ferry::kvm {
namespace {

// KVM refuses KVM_GET/SET_MSRS with nmsrs >= MAX_IO_MSRS (256).
constexpr std::size_t kMsrsPerIoctl = 255;

// struct kvm_msrs / kvm_cpuid2 with room for the entries, laid out exactly as
// the kernel reads them (uapi.hh explains why not the <linux/kvm.h> structs).
struct MsrBatch {
  uapi::MsrsHeader header;
  kvm_msr_entry entries[kMsrsPerIoctl];
};
static_assert(offsetof(MsrBatch, entries) == sizeof(uapi::MsrsHeader));
struct CpuidTable {
  uapi::Cpuid2Header header;
  kvm_cpuid_entry2 entries[kMaxCpuidEntries];
};
static_assert(offsetof(CpuidTable, entries) == sizeof(uapi::Cpuid2Header));

// One vCPU ioctl; the error names it and the vCPU. Returns the ioctl's
// non-negative result (a count for the MSR ioctls).
Result<int> vcpu_ioctl(const Vcpu& vcpu, unsigned long request, void* arg, std::string_view name) {
  const int r = ::ioctl(vcpu.fd(), request, arg);
  if (r < 0) {
    const int e = errno;
    return std::unexpected(sys_error(fmt::format("{} on vCPU {}", name, vcpu.id()), e));
  }
  return r;
}

template <class T>
Status get(const Vcpu& vcpu, unsigned long request, T& out, std::string_view name) {
  auto r = vcpu_ioctl(vcpu, request, &out, name);
  if (!r) return std::unexpected(r.error());
  return {};
}

template <class T>
Status set(const Vcpu& vcpu, unsigned long request, const T& in, std::string_view name) {
  // The kernel only reads through the pointer (these are _IOW ioctls).
  auto r = vcpu_ioctl(vcpu, request, const_cast<T*>(&in), name);
  if (!r) return std::unexpected(r.error());
  return {};
}

// ---- MSRs ----

// KVM_GET_MSRS / KVM_SET_MSRS return how many entries they processed; they
// stop at the first index they refuse, so entries[r] is the culprit.
Result<std::size_t> msr_io(const Vcpu& vcpu, unsigned long request, MsrBatch& batch, std::size_t n,
                           std::string_view name) {
  batch.header.nmsrs = static_cast<std::uint32_t>(n);
  batch.header.pad = 0;
  auto r = vcpu_ioctl(vcpu, request, &batch, name);
  if (!r) return std::unexpected(r.error());
  return static_cast<std::size_t>(*r);
}

// MSRs in KVM's save list that are not vCPU state (see capture_vcpu_state).
constexpr std::uint32_t kNotVcpuState[] = {msr::kHvTimeRefCount};

Result<std::vector<kvm_msr_entry>> capture_msrs(const Vcpu& vcpu, const std::vector<std::uint32_t>& indices) {
  std::vector<std::uint32_t> todo;
  std::unordered_set<std::uint32_t> seen(std::begin(kNotVcpuState), std::end(kNotVcpuState));
  for (auto i : indices)
    if (seen.insert(i).second) todo.push_back(i);

  auto batch = std::make_unique<MsrBatch>();
  std::vector<kvm_msr_entry> got;
  std::vector<std::uint32_t> dropped;
  for (std::size_t pos = 0; pos < todo.size();) {
    const std::size_t n = std::min(kMsrsPerIoctl, todo.size() - pos);
    for (std::size_t k = 0; k < n; ++k)
      batch->entries[k] = kvm_msr_entry{.index = todo[pos + k], .reserved = 0, .data = 0};
    auto r = msr_io(vcpu, uapi::kGetMsrs, *batch, n, "KVM_GET_MSRS");
    if (!r) return std::unexpected(r.error());
    if (*r > n) return fail("KVM_GET_MSRS on vCPU {}: kernel read {} of {} MSRs", vcpu.id(), *r, n);
    got.insert(got.end(), batch->entries, batch->entries + *r);
    pos += *r;
    if (*r < n) dropped.push_back(todo[pos++]);  // refused: retry from the next one
  }
  if (!dropped.empty())
    spdlog::debug("vCPU {}: {} MSRs not readable, not captured: {:#x}", vcpu.id(), dropped.size(),
                  fmt::join(dropped, " "));
  return got;
}

Result<std::uint64_t> read_one_msr(const Vcpu& vcpu, std::uint32_t index) {
  auto batch = std::make_unique<MsrBatch>();
  batch->entries[0] = kvm_msr_entry{.index = index, .reserved = 0, .data = 0};
  auto r = msr_io(vcpu, uapi::kGetMsrs, *batch, 1, "KVM_GET_MSRS");
  if (!r) return std::unexpected(r.error());
  if (*r != 1) return fail("KVM_GET_MSRS on vCPU {}: MSR {:#x} not readable", vcpu.id(), index);
  return batch->entries[0].data;
}

// Sets the guest TSC to `value` through the vCPU's TSC offset attribute
// (Linux 5.16+). false: this KVM lacks the attribute (PVM does), and the
// caller writes IA32_TSC instead.
//
// Why not simply write IA32_TSC: KVM treats a host write that lands within
// one second of the TSC it expects ("last write + elapsed") as an attempt
// to synchronise vCPUs and substitutes the VM's current offset, silently
// discarding the value. A fresh VM expects about 0, so restoring a guest
// whose TSC is under a second (a VM snapshotted or migrated right after it
// started) came back with its TSC rewound (seen on the 6.1 sandbox kernel;
// Linux 6.5 stopped matching userspace writes). The offset attribute is
// applied verbatim.
Result<bool> restore_tsc_offset(Vcpu& vcpu, std::uint64_t value) {
  if (!vcpu.has_tsc_offset()) return false;
  // guest TSC = host TSC * ratio + offset. Ferry never sets a TSC frequency
  // (KVM_SET_TSC_KHZ), so the ratio is 1, and this rdtsc reads the clock
  // KVM offsets from (the host's; in the sandbox, its kernel's).
  if (auto ok = vcpu.set_tsc_offset(value - __rdtsc()); !ok) return std::unexpected(ok.error());
  return true;
}

Status restore_msrs(Vcpu& vcpu, const std::vector<kvm_msr_entry>& msrs) {
  std::vector<kvm_msr_entry> ordered = msrs;
  // The TSC first and through its offset where possible (see above); the
  // MSRs that depend on it (TSC_DEADLINE) follow in the batch.
  if (auto tsc = std::find_if(ordered.begin(), ordered.end(), [](const kvm_msr_entry& e) { return e.index == msr::kTsc; });
      tsc != ordered.end()) {
    auto done = restore_tsc_offset(vcpu, tsc->data);
    if (!done) return std::unexpected(done.error());
    if (*done) ordered.erase(tsc);
  }
  std::stable_sort(ordered.begin(), ordered.end(), [](const kvm_msr_entry& a, const kvm_msr_entry& b) {
    return msr_restore_rank(a.index) < msr_restore_rank(b.index);
  });
  auto batch = std::make_unique<MsrBatch>();
  for (std::size_t pos = 0; pos < ordered.size();) {
    const std::size_t n = std::min(kMsrsPerIoctl, ordered.size() - pos);
    std::copy_n(ordered.begin() + static_cast<std::ptrdiff_t>(pos), n, batch->entries);
    auto r = msr_io(vcpu, uapi::kSetMsrs, *batch, n, "KVM_SET_MSRS");
    if (!r) return std::unexpected(r.error());
    if (*r > n) return fail("KVM_SET_MSRS on vCPU {}: kernel wrote {} of {} MSRs", vcpu.id(), *r, n);
    pos += *r;
    if (*r == n) continue;
    // Refused. Fine only if the destination already holds the value.
    const kvm_msr_entry& bad = ordered[pos];
    auto now = read_one_msr(vcpu, bad.index);
    if (now && *now == bad.data) {
      ++pos;
      continue;
    }
    return fail("KVM_SET_MSRS on vCPU {}: MSR {:#x} refused value {:#x} (destination {})", vcpu.id(), bad.index,
                bad.data, now ? fmt::format("holds {:#x}", *now) : now.error().what());
  }
  return {};
}

// ---- CPUID ----

Result<std::vector<kvm_cpuid_entry2>> capture_cpuid(const Vcpu& vcpu) {
  // KVM_GET_CPUID2 reports the table's size badly: a failing call (E2BIG,
  // "buffer too small") never copies the count back, and before Linux 6.4 a
  // successful one leaves nent as the caller's capacity (Debian 12's 6.1
  // answered "256" for a 30-entry table). So ask with room for the maximum
  // and mark every slot first: the table ends at the first unwritten slot
  // (a real entry never has flag bits beyond the three KVM defines).
  auto table = std::make_unique<CpuidTable>();
  kvm_cpuid_entry2 unwritten{};
  std::memset(&unwritten, 0xff, sizeof unwritten);
  std::fill(std::begin(table->entries), std::end(table->entries), unwritten);
  table->header.nent = kMaxCpuidEntries;
  if (auto r = vcpu_ioctl(vcpu, uapi::kGetCpuid2, table.get(), "KVM_GET_CPUID2"); !r) return std::unexpected(r.error());
  const kvm_cpuid_entry2* first = table->entries;
  const kvm_cpuid_entry2* end = std::find_if(first, first + std::min<std::size_t>(table->header.nent, kMaxCpuidEntries),
                                             [&](const kvm_cpuid_entry2& e) {
                                               return std::memcmp(&e, &unwritten, sizeof e) == 0;
                                             });
  return std::vector<kvm_cpuid_entry2>(first, end);
}

Status restore_cpuid(const Vcpu& vcpu, const std::vector<kvm_cpuid_entry2>& cpuid) {
  if (cpuid.size() > kMaxCpuidEntries) return fail("CPUID: {} entries (limit {})", cpuid.size(), kMaxCpuidEntries);
  auto table = std::make_unique<CpuidTable>();
  table->header.nent = static_cast<std::uint32_t>(cpuid.size());
  std::copy(cpuid.begin(), cpuid.end(), table->entries);
  auto r = vcpu_ioctl(vcpu, uapi::kSetCpuid2, table.get(), "KVM_SET_CPUID2");
  if (!r) return std::unexpected(r.error());
  return {};
}

// ---- XSAVE ----

Result<std::vector<std::byte>> capture_xsave(const Vcpu& vcpu) {
  const std::size_t size = vcpu.xsave_bytes();
  std::vector<std::uint32_t> buf((size + 3) / 4);  // 4-aligned, as the kernel's u32 region[]
  // Up to 4 KiB KVM_GET_XSAVE says the same as KVM_GET_XSAVE2 and exists on
  // every kernel; KVM_GET_XSAVE refuses (EINVAL) vCPUs with larger areas.
  const bool big = size > sizeof(uapi::XsaveRegion);
  auto r = big ? vcpu_ioctl(vcpu, uapi::kGetXsave2, buf.data(), "KVM_GET_XSAVE2")
               : vcpu_ioctl(vcpu, uapi::kGetXsave, buf.data(), "KVM_GET_XSAVE");
  if (!r) return std::unexpected(r.error());
  std::vector<std::byte> out(size);
  std::memcpy(out.data(), buf.data(), size);
  return out;
}

Status restore_xsave(const Vcpu& vcpu, std::span<const std::byte> area) {
  // KVM_SET_XSAVE reads the destination vCPU's size, whatever the ioctl
  // number says: give it exactly that many bytes. A smaller area (from a
  // host without dynamic features) is zero-extended: those components stay
  // in their init state. A larger one fits only if the excess is unused.
  const std::size_t size = vcpu.xsave_bytes();
  if (area.size() < kMinXsaveBytes)
    return fail("XSAVE area of {} bytes is below the {}-byte minimum", area.size(), kMinXsaveBytes);
  const auto excess = area.size() > size ? area.subspan(size) : std::span<const std::byte>{};
  if (std::any_of(excess.begin(), excess.end(), [](std::byte b) { return b != std::byte{0}; }))
    return fail("XSAVE area of {} bytes holds state beyond vCPU {}'s {}-byte area (dynamic xfeatures missing here)",
                area.size(), vcpu.id(), size);
  std::vector<std::uint32_t> buf((size + 3) / 4);
  std::memcpy(buf.data(), area.data(), std::min(size, area.size()));
  auto r = vcpu_ioctl(vcpu, uapi::kSetXsave, buf.data(), "KVM_SET_XSAVE");
  if (!r) return std::unexpected(r.error());
  return {};
}

// ---- LAPIC ----

// KVM_GET_LAPIC fails with EINVAL exactly when the vCPU has no in-kernel
// LAPIC (the VM has no irqchip), which is how capture learns whether it has.
Result<std::optional<kvm_lapic_state>> capture_lapic(const Vcpu& vcpu) {
  kvm_lapic_state lapic{};
  if (::ioctl(vcpu.fd(), KVM_GET_LAPIC, &lapic) == 0) return std::optional(lapic);
  if (errno == EINVAL) return std::optional<kvm_lapic_state>{};
  const int e = errno;
  return std::unexpected(sys_error(fmt::format("KVM_GET_LAPIC on vCPU {}", vcpu.id()), e));
}

Status restore_lapic(const Vcpu& vcpu, const std::optional<kvm_lapic_state>& lapic) {
  auto here = capture_lapic(vcpu);
  if (!here) return std::unexpected(here.error());
  if (lapic && !*here)
    return fail("vCPU {}: the state has an in-kernel LAPIC but this VM has none (Vm::create_irqchip before the vCPUs)",
                vcpu.id());
  if (!lapic && *here)
    return fail("vCPU {}: the state has no in-kernel LAPIC but this VM has one (the source VM had no irqchip)",
                vcpu.id());
  if (lapic) return set(vcpu, KVM_SET_LAPIC, *lapic, "KVM_SET_LAPIC");
  return {};
}

// Exits whose instruction KVM finishes only when KVM_RUN is next entered
// (api.rst, struct kvm_run): until then RIP may still point at it (kvm-amd
// leaves it on an OUT; PVM's emulator has already moved past).
bool exit_is_incomplete(std::uint32_t reason) {
  switch (reason) {
    case KVM_EXIT_IO:
    case KVM_EXIT_MMIO:
    case KVM_EXIT_HYPERCALL:
    case KVM_EXIT_X86_RDMSR:
    case KVM_EXIT_X86_WRMSR:
    case KVM_EXIT_XEN:
      return true;
    default:
      return false;
  }
}

}  // namespace

Result<std::vector<kvm_cpuid_entry2>> vcpu_cpuid(const Vcpu& vcpu) { return capture_cpuid(vcpu); }

int msr_restore_rank(std::uint32_t index) {
  switch (index) {
    // QEMU writes it first: it decides whether VMX MSRs and nested state
    // are accepted at all.
    case msr::kFeatureControl: return 0;
    // Enabling MSR_KVM_ASYNC_PF_EN queues a "wake up all" notification that
    // KVM delivers through the vector in MSR_KVM_ASYNC_PF_INT, so the vector
    // goes first (as QEMU writes them); KVM's index list has them reversed.
    case msr::kKvmAsyncPfEn: return 2;
    // The deadline is an absolute guest-TSC value that KVM turns into a host
    // timer when it is written: after IA32_TSC, or it is measured against
    // the new vCPU's near-zero TSC. Last, to be after anything else too.
    case msr::kTscDeadline: return 3;
    default: return 1;
  }
}

Result<VcpuState> capture_vcpu_state(Vcpu& vcpu, const std::vector<std::uint32_t>& msr_indices) {
  // Capture order (reads are not side-effect free):
  //  1. MP_STATE first: KVM_GET_MP_STATE runs kvm_apic_accept_events(), which
  //     may deliver a latched INIT/SIPI and so rewrite registers and the
  //     LAPIC; everything read after it is consistent with the state it
  //     returned (Firecracker documents the same rule).
  //  2. Registers, XCRs, XSAVE, debug registers: plain reads.
  //  3. LAPIC: with APICv/AVIC the read first syncs posted interrupts into
  //     the IRR, so do it after MP_STATE and before VCPU_EVENTS.
  //  4. MSRs, CPUID: plain reads (IA32_TSC keeps counting; see the test).
  //  5. VCPU_EVENTS last: pending/injected exception, interrupt and NMI
  //     state is what the other reads may have changed; the last word wins.
  VcpuState s;
  auto ctx = [&](Error e) { return std::unexpected(std::move(e).context("capture vCPU state")); };
  if (const auto reason = vcpu.run().exit_reason; exit_is_incomplete(reason))
    return ctx(Error(fmt::format("vCPU {} stopped at a KVM_EXIT_{} that KVM completes only on the next KVM_RUN: "
                                 "call Vcpu::complete_pending_exit() first",
                                 vcpu.id(), exit_reason_name(reason))));
  if (auto ok = get(vcpu, KVM_GET_MP_STATE, s.mp_state, "KVM_GET_MP_STATE"); !ok) return ctx(ok.error());
  if (auto ok = get(vcpu, KVM_GET_REGS, s.regs, "KVM_GET_REGS"); !ok) return ctx(ok.error());
  if (auto ok = get(vcpu, KVM_GET_SREGS, s.sregs, "KVM_GET_SREGS"); !ok) return ctx(ok.error());
  if (auto ok = get(vcpu, KVM_GET_XCRS, s.xcrs, "KVM_GET_XCRS"); !ok) return ctx(ok.error());
  auto xsave = capture_xsave(vcpu);
  if (!xsave) return ctx(xsave.error());
  s.xsave = std::move(*xsave);
  if (auto ok = get(vcpu, KVM_GET_DEBUGREGS, s.debugregs, "KVM_GET_DEBUGREGS"); !ok) return ctx(ok.error());
  auto lapic = capture_lapic(vcpu);
  if (!lapic) return ctx(lapic.error());
  s.lapic = *lapic;
  auto msrs = capture_msrs(vcpu, msr_indices);
  if (!msrs) return ctx(msrs.error());
  s.msrs = std::move(*msrs);
  auto cpuid = capture_cpuid(vcpu);
  if (!cpuid) return ctx(cpuid.error());
  s.cpuid = std::move(*cpuid);
  if (auto ok = get(vcpu, KVM_GET_VCPU_EVENTS, s.events, "KVM_GET_VCPU_EVENTS"); !ok) return ctx(ok.error());
  return s;
}

Status set_vcpu_cpuid(Vcpu& vcpu, const std::vector<kvm_cpuid_entry2>& cpuid) { return restore_cpuid(vcpu, cpuid); }
Status set_vcpu_msrs(Vcpu& vcpu, const std::vector<kvm_msr_entry>& msrs) { return restore_msrs(vcpu, msrs); }

Status restore_vcpu_state(Vcpu& vcpu, const VcpuState& s) {
  // Restore order. Each step names what must already be in place:
  //  1. CPUID first: KVM validates nearly everything below against it: CR4
  //     and EFER bits (SREGS), XCR0 and the XSAVE components, the LAPIC timer
  //     modes (TSC-deadline exists only if CPUID says so) and many MSRs.
  //     Skipped when the source never had a table (KVM's default is none).
  //  2. REGS: KVM_SET_REGS drops any pending exception, so it must precede
  //     VCPU_EVENTS; and SREGS below looks at RIP (step 8).
  //  3. SREGS: restores EFER, CRs and IA32_APIC_BASE. KVM_SET_LAPIC derives
  //     the LAPIC's mode (xAPIC/x2APIC, its ID) from APIC_BASE, so SREGS
  //     comes before the LAPIC. Its interrupt_bitmap queues an external
  //     interrupt that VCPU_EVENTS later restates.
  //  4. XCRS before XSAVE: the kernel checks both against CPUID, not each
  //     other, but loading XCR0 first mirrors the architecture (XRSTOR only
  //     restores components XCR0 enables).
  //  5. XSAVE, then DEBUGREGS (no dependencies beyond CPUID).
  //  6. LAPIC: after SREGS (APIC_BASE, above) and before MSRs, because KVM
  //     silently drops an IA32_TSC_DEADLINE write unless the LVT timer is
  //     already in TSC-deadline mode, which the LAPIC registers set.
  //  7. MSRs, in msr_restore_rank order (IA32_TSC before TSC_DEADLINE,
  //     ASYNC_PF_INT before ASYNC_PF_EN).
  //  8. MP_STATE late (Firecracker sets it first; we follow QEMU): on the
  //     BSP, KVM_SET_SREGS forces RUNNABLE when CS:RIP is the reset vector,
  //     which would overwrite a restored HALTED/INIT_RECEIVED; and it must
  //     precede VCPU_EVENTS, after which KVM refuses INIT_RECEIVED/
  //     SIPI_RECEIVED for a vCPU the events put in SMM (INIT latched).
  //  9. VCPU_EVENTS last: the authoritative pending/injected exception,
  //     interrupt, NMI and interrupt-shadow state, after every call above
  //     that clears or queues events.
  // Guest memory must already be registered (step 7: kvmclock, steal time
  // and async-PF MSRs are guest addresses that KVM resolves when written).
  auto ctx = [&](Error e) {
    return std::unexpected(std::move(e).context(fmt::format("restore vCPU {} state", vcpu.id())));
  };
  if (!s.cpuid.empty())
    if (auto ok = restore_cpuid(vcpu, s.cpuid); !ok) return ctx(ok.error());
  if (auto ok = set(vcpu, KVM_SET_REGS, s.regs, "KVM_SET_REGS"); !ok) return ctx(ok.error());
  if (auto ok = set(vcpu, KVM_SET_SREGS, s.sregs, "KVM_SET_SREGS"); !ok) return ctx(ok.error());
  if (auto ok = set(vcpu, KVM_SET_XCRS, s.xcrs, "KVM_SET_XCRS"); !ok) return ctx(ok.error());
  if (auto ok = restore_xsave(vcpu, s.xsave); !ok) return ctx(ok.error());
  if (auto ok = set(vcpu, KVM_SET_DEBUGREGS, s.debugregs, "KVM_SET_DEBUGREGS"); !ok) return ctx(ok.error());
  if (auto ok = restore_lapic(vcpu, s.lapic); !ok) return ctx(ok.error());
  if (auto ok = restore_msrs(vcpu, s.msrs); !ok) return ctx(ok.error());
  if (auto ok = set(vcpu, KVM_SET_MP_STATE, s.mp_state, "KVM_SET_MP_STATE"); !ok) return ctx(ok.error());
  if (auto ok = set(vcpu, KVM_SET_VCPU_EVENTS, s.events, "KVM_SET_VCPU_EVENTS"); !ok) return ctx(ok.error());
  return {};
}

}  // namespace ferry::kvm

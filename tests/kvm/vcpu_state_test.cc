// vCPU state capture/restore against the real kernel, and its encoding.
//  - RoundTrip*: distinctive values in every part of the state survive
//    capture -> restore into a vCPU of a NEW VM -> capture, exactly.
//  - Resume*: a guest stopped mid-computation continues on a new VM exactly
//    as the original continues (registers, x87/SSE state, memory).
//  - Codec*: encode/decode round trip and every rejection path (no KVM).
// Needs /dev/kvm (natively, or inside tools/kvm-sandbox): it never skips.
#include <gtest/gtest.h>

#include <pthread.h>
#include <signal.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <thread>

#include "kvm/guest_memory.hh"
#include "kvm/real_mode_code.hh"
#include "kvm/system.hh"
#include "kvm/vcpu_state.hh"
#include "tests/kvm/running_clocks.hh"
#include "kvm/vm.hh"

namespace ferry::kvm {
namespace {

constexpr std::uint64_t kMemBytes = 64 * 1024;

std::string joined(const std::vector<std::string>& lines) {
  std::string out;
  for (const auto& l : lines) out += "\n  " + l;
  return out;
}

// Guest memory first: members are destroyed in reverse, so the memory is
// unmapped only after the VM that points at it is gone.
struct Machine {
  GuestRegion mem;
  Vm vm;
  Vcpu vcpu;
};

Result<Machine> make_machine(const Kvm& kvm, bool irqchip) {
  auto mem = GuestRegion::create(0, 0, kMemBytes, "vcpu-state-test-ram");
  if (!mem) return std::unexpected(mem.error());
  auto vm = kvm.create_vm();
  if (!vm) return std::unexpected(vm.error());
  if (irqchip)
    if (auto ok = vm->create_irqchip(); !ok) return std::unexpected(ok.error());
  if (auto ok = vm->set_memory_region(*mem, false); !ok) return std::unexpected(ok.error());
  auto vcpu = vm->create_vcpu(0);
  if (!vcpu) return std::unexpected(vcpu.error());
  return Machine{std::move(*mem), std::move(*vm), std::move(*vcpu)};
}

kvm_msr_entry* find_msr(VcpuState& s, std::uint32_t index) {
  auto it = std::find_if(s.msrs.begin(), s.msrs.end(), [&](const kvm_msr_entry& e) { return e.index == index; });
  return it == s.msrs.end() ? nullptr : &*it;
}

const kvm_cpuid_entry2* find_cpuid(const std::vector<kvm_cpuid_entry2>& t, std::uint32_t fn, std::uint32_t idx) {
  for (const auto& e : t)
    if (e.function == fn && e.index == idx) return &e;
  return nullptr;
}

template <class T>
T load(const std::vector<std::byte>& b, std::size_t off) {
  T v{};
  std::memcpy(&v, b.data() + off, sizeof v);
  return v;
}
template <class T>
void store(std::vector<std::byte>& b, std::size_t off, T v) {
  std::memcpy(b.data() + off, &v, sizeof v);
}
std::uint32_t lapic_reg(const kvm_lapic_state& l, std::size_t off) {
  std::uint32_t v;
  std::memcpy(&v, l.regs + off, 4);
  return v;
}
void set_lapic_reg(kvm_lapic_state& l, std::size_t off, std::uint32_t v) { std::memcpy(l.regs + off, &v, 4); }

// XSAVE standard-format offsets (Intel SDM vol. 1, 13.4).
constexpr std::size_t kFcw = 0, kMxcsr = 24, kXmm0 = 160, kXstateBv = 512;

// ---------------------------------------------------------------------------
// (1) Every field, through a new VM.

// The state we write into the source vCPU: a 64-bit kernel-like vCPU with
// distinctive values everywhere. It never runs, so nothing here must be
// backed by guest memory. Returns the XCR0 it chose.
std::uint64_t make_distinctive(VcpuState& s, const std::vector<kvm_cpuid_entry2>& supported, bool tsc_deadline) {
  s.cpuid = supported;
  for (auto& e : s.cpuid)
    if (e.function == 1 && tsc_deadline) e.ecx |= 1u << 24;  // TSC-deadline timer (KVM_CAP_TSC_DEADLINE_TIMER)

  __u64* gprs[] = {&s.regs.rax, &s.regs.rbx, &s.regs.rcx, &s.regs.rdx, &s.regs.rsi, &s.regs.rdi,
                   &s.regs.rsp, &s.regs.rbp, &s.regs.r8,  &s.regs.r9,  &s.regs.r10, &s.regs.r11,
                   &s.regs.r12, &s.regs.r13, &s.regs.r14, &s.regs.r15};
  for (std::size_t i = 0; i < std::size(gprs); ++i) *gprs[i] = (0x0101010101010101ull * (i + 1)) ^ 0xa5;
  s.regs.rip = 0xffffffff81001234;
  s.regs.rflags = 0x2d7;  // CF PF AF ZF SF IF + reserved bit 1

  // Long mode: PG|AM|WP|NE|ET|MP|PE, PAE|PGE|OSFXSR|OSXMMEXCPT|OSXSAVE, LME|LMA|SCE|NXE.
  s.sregs.cr0 = 0x80050033;
  s.sregs.cr2 = 0xdead000;
  s.sregs.cr3 = 0x8000;
  s.sregs.cr4 = 0x406a0;
  s.sregs.cr8 = 3;  // = LAPIC TPR >> 4 below: KVM keeps the two in one place
  s.sregs.efer = 0xd01;
  auto seg = [](std::uint16_t sel, std::uint8_t type, bool code, std::uint64_t base) {
    kvm_segment g{};
    g.base = base;
    g.limit = 0xffffffff;
    g.selector = sel;
    g.type = type;
    g.present = 1;
    g.s = 1;
    g.l = code ? 1 : 0;
    g.db = code ? 0 : 1;
    g.g = 1;
    return g;
  };
  s.sregs.cs = seg(0x10, 0xb, true, 0);
  s.sregs.ds = s.sregs.es = s.sregs.ss = seg(0x18, 0x3, false, 0);
  s.sregs.fs = seg(0, 0x3, false, 0x7f0012345000);
  s.sregs.gs = seg(0, 0x3, false, 0xffff888000001000);
  s.sregs.tr = kvm_segment{.base = 0xfffffe0000003000, .limit = 0x67, .selector = 0x28, .type = 0xb, .present = 1,
                           .dpl = 0, .db = 0, .s = 0, .l = 0, .g = 0, .avl = 0, .unusable = 0, .padding = 0};
  s.sregs.gdt = {.base = 0xfffffe0000001000, .limit = 0x7f, .padding = {}};
  s.sregs.idt = {.base = 0xfffffe0000000000, .limit = 0xfff, .padding = {}};

  // XCR0: x87|SSE, plus AVX and the AVX-512 trio when this KVM offers them.
  const auto* d0 = find_cpuid(supported, 0xd, 0);
  const std::uint64_t offered = d0 ? d0->eax : 0x3;
  std::uint64_t xcr0 = 0x3;
  if (offered & 0x4) xcr0 |= 0x4;
  if ((xcr0 & 0x4) && (offered & 0xe0) == 0xe0) xcr0 |= 0xe0;
  s.xcrs.nr_xcrs = 1;
  s.xcrs.xcrs[0] = {.xcr = 0, .reserved = 0, .value = xcr0};

  // XSAVE: x87 control word, MXCSR (round toward zero), XMM0-15, and every
  // extended component XCR0 enables, filled with patterns.
  store<std::uint16_t>(s.xsave, kFcw, 0x027f);
  store<std::uint32_t>(s.xsave, kMxcsr, 0x7f80);
  for (std::size_t i = 0; i < 256; ++i) s.xsave[kXmm0 + i] = std::byte(0x40 + i);
  std::uint64_t bv = load<std::uint64_t>(s.xsave, kXstateBv) | 0x3;
  for (unsigned c = 2; c < 8; ++c) {
    if (!(xcr0 & (1u << c))) continue;
    const auto* d = find_cpuid(supported, 0xd, c);
    if (!d || d->ebx + d->eax > s.xsave.size()) continue;
    for (std::size_t i = 0; i < d->eax; ++i) s.xsave[d->ebx + i] = std::byte(c * 31 + i);
    bv |= 1u << c;
  }
  store<std::uint64_t>(s.xsave, kXstateBv, bv);

  s.debugregs.db[0] = 0x1000;
  s.debugregs.db[1] = 0x2000;
  s.debugregs.db[2] = 0xffffffff81000000;
  s.debugregs.db[3] = 0x7fff00001000;
  s.debugregs.dr6 = 0xffff0ff1;  // B0
  s.debugregs.dr7 = 0xd0409;     // L0 G1, DR0 = 4-byte write watchpoint

  if (s.lapic) {
    kvm_lapic_state& l = *s.lapic;
    set_lapic_reg(l, 0x80, 0x30);        // TPR
    set_lapic_reg(l, 0xd0, 0x01000000);  // LDR
    set_lapic_reg(l, 0xf0, 0x1ff);       // SVR: enabled, spurious vector 0xff
    set_lapic_reg(l, 0x320, (tsc_deadline ? 0x40000 : 0) | 0xec);  // LVTT: TSC-deadline mode, vector 0xec
    set_lapic_reg(l, 0x350, 0x10700);    // LINT0: ExtINT, masked
    set_lapic_reg(l, 0x360, 0x400);      // LINT1: NMI
    set_lapic_reg(l, 0x370, 0xfe);       // LVT error
    set_lapic_reg(l, 0x3e0, 0xb);        // divide by 1
  }

  s.events.exception.injected = 1;  // a #GP(0x18) on its way into the guest
  s.events.exception.nr = 13;
  s.events.exception.has_error_code = 1;
  s.events.exception.error_code = 0x18;
  s.events.interrupt.shadow = KVM_X86_SHADOW_INT_MOV_SS;
  s.events.nmi.masked = 1;
  // A vCPU can only be HALTED etc. with an in-kernel LAPIC.
  s.mp_state.mp_state = s.lapic ? KVM_MP_STATE_HALTED : KVM_MP_STATE_RUNNABLE;
  return xcr0;
}

struct MsrValue {
  std::uint32_t index;
  std::uint64_t value;
  bool required;  // in every KVM's save list (the others depend on CPU/host)
};

// SYSENTER_ESP/EIP are 32-bit values: on AMD, KVM keeps only the low half
// unless the guest CPUID claims Intel.
const MsrValue kMsrValues[] = {
    {msr::kSysenterCs, 0x10, true},
    {msr::kSysenterEsp, 0x80001000, true},
    {msr::kSysenterEip, 0x81002000, true},
    {msr::kStar, 0x0023001000000000, true},
    {msr::kLstar, 0xffffffff81000000, true},
    {msr::kCstar, 0xffffffff81000040, true},
    {msr::kSyscallMask, 0x47700, true},
    {msr::kKernelGsBase, 0xffff888012340000, true},
    {msr::kPat, 0x0007010600070106, true},
    {msr::kTscAux, 0x2a, false},
};
constexpr std::uint64_t kTscValue = 1ull << 40;          // far from any real TSC: not "synchronized" by KVM
constexpr std::uint64_t kDeadline = kTscValue + (1ull << 38);  // ~100 s ahead: never fires during the test

using test::msr_value;

void round_trip(bool irqchip) {
  auto kvm = Kvm::open();
  ASSERT_TRUE(kvm) << kvm.error().what();
  auto msrs = kvm->msr_index_list();
  ASSERT_TRUE(msrs) << msrs.error().what();
  auto supported = kvm->supported_cpuid();
  ASSERT_TRUE(supported) << supported.error().what();
  const bool tsc_deadline = irqchip && kvm->check_extension(KVM_CAP_TSC_DEADLINE_TIMER) > 0;

  auto src = make_machine(*kvm, irqchip);
  ASSERT_TRUE(src) << src.error().what();
  auto initial = capture_vcpu_state(src->vcpu, *msrs);
  ASSERT_TRUE(initial) << initial.error().what();
  EXPECT_EQ(initial->lapic.has_value(), irqchip);
  EXPECT_TRUE(initial->cpuid.empty()) << "a new vCPU has no CPUID table";

  VcpuState want = *initial;
  const std::uint64_t xcr0 = make_distinctive(want, *supported, tsc_deadline);
  std::vector<std::uint32_t> set_msrs;
  for (const auto& m : kMsrValues) {
    auto* e = find_msr(want, m.index);
    if (!e) {
      EXPECT_FALSE(m.required) << fmt::format("MSR {:#x} is not in the captured list", m.index);
      continue;
    }
    e->data = m.value;
    set_msrs.push_back(m.index);
  }
  ASSERT_NE(find_msr(want, msr::kTsc), nullptr);
  find_msr(want, msr::kTsc)->data = kTscValue;
  if (tsc_deadline) {
    ASSERT_NE(find_msr(want, msr::kTscDeadline), nullptr);
    find_msr(want, msr::kTscDeadline)->data = kDeadline;
  }

  // Restore is also the setter: the source vCPU takes the distinctive state...
  auto set_src = restore_vcpu_state(src->vcpu, want);
  ASSERT_TRUE(set_src) << set_src.error().what();
  auto a = capture_vcpu_state(src->vcpu, *msrs);
  ASSERT_TRUE(a) << a.error().what();

  // ...and really holds it (else the comparison below would be vacuous).
  // Values KVM normalizes (segment attributes, see svm_get_segment) are
  // checked only through the exact A/B comparison further down.
  EXPECT_EQ(a->regs.rbx, want.regs.rbx);
  EXPECT_EQ(a->regs.rip, want.regs.rip);
  EXPECT_EQ(a->regs.rflags, want.regs.rflags);
  EXPECT_EQ(a->sregs.fs.base, want.sregs.fs.base);
  EXPECT_EQ(a->sregs.gs.base, want.sregs.gs.base);
  EXPECT_EQ(a->sregs.efer, want.sregs.efer);
  EXPECT_EQ(a->sregs.cr4, want.sregs.cr4);
  EXPECT_EQ(a->sregs.gdt.base, want.sregs.gdt.base);
  EXPECT_EQ(a->xcrs.xcrs[0].value, xcr0);
  EXPECT_EQ(load<std::uint16_t>(a->xsave, kFcw), 0x027f);
  EXPECT_EQ(load<std::uint32_t>(a->xsave, kMxcsr), 0x7f80u);
  EXPECT_EQ(std::memcmp(a->xsave.data() + kXmm0, want.xsave.data() + kXmm0, 256), 0) << "XMM0-15";
  EXPECT_EQ(a->debugregs.db[2], want.debugregs.db[2]);
  EXPECT_EQ(a->debugregs.dr7, want.debugregs.dr7);
  for (auto index : set_msrs)
    EXPECT_EQ(msr_value(*a, index), msr_value(want, index)) << fmt::format("MSR {:#x}", index);
  if (tsc_deadline) {
    EXPECT_EQ(msr_value(*a, msr::kTscDeadline), kDeadline) << "needs LAPIC before MSRs, TSC before deadline";
  }
  EXPECT_EQ(a->cpuid.size(), want.cpuid.size());
  if (irqchip) {
    EXPECT_EQ(lapic_reg(*a->lapic, 0x80), 0x30u);
    EXPECT_EQ(lapic_reg(*a->lapic, 0x320), lapic_reg(*want.lapic, 0x320));
  }
  EXPECT_EQ(a->mp_state.mp_state, want.mp_state.mp_state);
  EXPECT_EQ(a->events.exception.nr, 13);
  EXPECT_EQ(a->events.exception.error_code, 0x18u);
  EXPECT_EQ(a->events.nmi.masked, 1);
  EXPECT_NE(a->events.interrupt.shadow, 0);

  // Through the wire format, into a vCPU of a new VM, and back out.
  auto decoded = decode_vcpu_state(encode_vcpu_state(*a));
  ASSERT_TRUE(decoded) << decoded.error().what();
  auto dst = make_machine(*kvm, irqchip);
  ASSERT_TRUE(dst) << dst.error().what();
  auto restored = restore_vcpu_state(dst->vcpu, *decoded);
  ASSERT_TRUE(restored) << restored.error().what();
  auto b = capture_vcpu_state(dst->vcpu, *msrs);
  ASSERT_TRUE(b) << b.error().what();

  // Clocks count on from the restored value while we capture (running_clocks.hh).
  const auto clock_problems = test::running_clock_problems(*a, *b);
  EXPECT_TRUE(clock_problems.empty()) << joined(clock_problems);
  EXPECT_FALSE(msr_value(*a, msr::kHvTimeRefCount)) << "a VM-wide clock, not vCPU state: capture drops it";
  const auto diffs = vcpu_state_differences(test::without_running_clocks(*a), test::without_running_clocks(*b));
  EXPECT_TRUE(diffs.empty()) << "restored state differs from the captured one:" << joined(diffs);
}

TEST(VcpuStateRoundTrip, EveryFieldSurvivesANewVmWithIrqchip) { round_trip(/*irqchip=*/true); }
TEST(VcpuStateRoundTrip, EveryFieldSurvivesANewVmWithoutIrqchip) { round_trip(/*irqchip=*/false); }

TEST(VcpuStateCapture, UnreadableMsrIsDroppedAndTheRestKept) {
  // KVM_GET_MSRS stops at the first index it refuses: capture must skip that
  // one and still read everything after it.
  auto kvm = Kvm::open();
  ASSERT_TRUE(kvm) << kvm.error().what();
  auto m = make_machine(*kvm, true);
  ASSERT_TRUE(m) << m.error().what();
  const std::vector<std::uint32_t> list = {msr::kStar, 0xdead0001, msr::kLstar, msr::kStar, 0xdead0002, msr::kPat};
  auto s = capture_vcpu_state(m->vcpu, list);
  ASSERT_TRUE(s) << s.error().what();
  std::vector<std::uint32_t> got;
  for (const auto& e : s->msrs) got.push_back(e.index);
  EXPECT_EQ(got, (std::vector<std::uint32_t>{msr::kStar, msr::kLstar, msr::kPat}));
}

TEST(VcpuStateRestore, RefusedMsrIsAnErrorNamingIt) {
  // A non-canonical KERNEL_GS_BASE: every KVM refuses it, host write or not.
  // (An invalid PAT memory type would do on kvm-amd, but PVM accepts it.)
  auto kvm = Kvm::open();
  ASSERT_TRUE(kvm) << kvm.error().what();
  auto m = make_machine(*kvm, true);
  ASSERT_TRUE(m) << m.error().what();
  auto s = capture_vcpu_state(m->vcpu, {msr::kStar, msr::kKernelGsBase, msr::kLstar});
  ASSERT_TRUE(s) << s.error().what();
  ASSERT_EQ(s->msrs.size(), 3u);
  find_msr(*s, msr::kKernelGsBase)->data = 0x8000000000001000;
  find_msr(*s, msr::kLstar)->data = 0xffffffff81000000;
  auto st = restore_vcpu_state(m->vcpu, *s);
  ASSERT_FALSE(st);
  EXPECT_NE(st.error().message().find("MSR 0xc0000102 refused value 0x8000000000001000 (destination holds 0x0)"),
            std::string::npos)
      << st.error().what();
  // KVM_SET_MSRS stopped at the refused entry: the one after it was not written.
  auto after = capture_vcpu_state(m->vcpu, {msr::kLstar});
  ASSERT_TRUE(after) << after.error().what();
  EXPECT_EQ(after->msrs.at(0).data, 0u);
}

TEST(VcpuStateRestore, IrqchipMismatchIsRefusedBothWays) {
  auto kvm = Kvm::open();
  ASSERT_TRUE(kvm) << kvm.error().what();
  auto with = make_machine(*kvm, true);
  auto without = make_machine(*kvm, false);
  ASSERT_TRUE(with && without);
  auto s_with = capture_vcpu_state(with->vcpu, {});
  auto s_without = capture_vcpu_state(without->vcpu, {});
  ASSERT_TRUE(s_with && s_without);
  auto a = restore_vcpu_state(without->vcpu, *s_with);
  ASSERT_FALSE(a);
  EXPECT_NE(a.error().message().find("Vm::create_irqchip"), std::string::npos) << a.error().what();
  auto b = restore_vcpu_state(with->vcpu, *s_without);
  ASSERT_FALSE(b);
  EXPECT_NE(b.error().message().find("has no in-kernel LAPIC"), std::string::npos) << b.error().what();
}

TEST(VcpuStateRestore, MsrOrderPutsDependenciesFirst) {
  EXPECT_LT(msr_restore_rank(msr::kTsc), msr_restore_rank(msr::kTscDeadline));
  EXPECT_LT(msr_restore_rank(msr::kKvmAsyncPfInt), msr_restore_rank(msr::kKvmAsyncPfEn));
  EXPECT_LT(msr_restore_rank(msr::kFeatureControl), msr_restore_rank(msr::kStar));
}

// ---------------------------------------------------------------------------
// (2) A guest stopped mid-computation continues exactly.

constexpr std::uint64_t kCodeGpa = 0x1000;
constexpr std::uint32_t kSegment = 1000;  // inner iterations between stops
constexpr std::uint64_t kCounterGpa = 0x500, kXmmInGpa = 0x600, kXmmOutGpa = 0x610;

// Real mode. ECX counts iterations and EDX sums them; every kSegment
// iterations the guest stores ECX and XMM0 to memory and stops (HLT, or OUT
// to port 0x80), then goes on. XMM0 is loaded from memory once, before the
// first stop; the test then wipes that memory, so after the migration XMM0
// can only come from the restored XSAVE area. (SSE moves, not arithmetic and
// no x87: PVM runs real mode in KVM's instruction emulator, which implements
// only a few SSE/x87 instructions and fails the others with an internal error.)
std::vector<std::uint8_t> counting_guest(bool stop_with_out) {
  const auto n = kSegment;
  auto lo = [](std::uint64_t v) { return static_cast<std::uint8_t>(v); };
  auto hi = [](std::uint64_t v) { return static_cast<std::uint8_t>(v >> 8); };
  std::vector<std::uint8_t> c = {
      0x66, 0x31, 0xC9,                                     // xor ecx, ecx
      0x66, 0x31, 0xD2,                                     // xor edx, edx
      0xF3, 0x0F, 0x6F, 0x06, lo(kXmmInGpa), hi(kXmmInGpa),  // movdqu xmm0, [0x600]
      // outer (offset 12):
      0x66, 0xBB, lo(n), hi(n), lo(n >> 16), hi(n >> 16),  // mov ebx, n
      // inner (offset 18):
      0x66, 0x41,        // inc ecx
      0x66, 0x01, 0xCA,  // add edx, ecx
      0x66, 0x4B,        // dec ebx
      0x75, 0xF7,        // jnz inner (-9)
      0x66, 0x89, 0x0E, lo(kCounterGpa), hi(kCounterGpa),    // mov [0x500], ecx
      0xF3, 0x0F, 0x7F, 0x06, lo(kXmmOutGpa), hi(kXmmOutGpa),  // movdqu [0x610], xmm0
  };
  if (stop_with_out) c.insert(c.end(), {0xE6, 0x80});  // out 0x80, al
  else c.push_back(0xF4);                               // hlt
  const auto back = static_cast<std::int8_t>(12 - static_cast<int>(c.size() + 2));
  c.insert(c.end(), {0xEB, static_cast<std::uint8_t>(back)});  // jmp outer
  return c;
}

std::array<std::uint8_t, 16> xmm_pattern() {
  std::array<std::uint8_t, 16> p;
  for (std::size_t i = 0; i < p.size(); ++i) p[i] = static_cast<std::uint8_t>(0xc0 + i * 3);
  return p;
}

Status start_guest(Machine& m, bool stop_with_out) {
  const auto code = counting_guest(stop_with_out);
  std::memcpy(m.mem.host_at(kCodeGpa), code.data(), code.size());
  const auto xmm = xmm_pattern();
  std::memcpy(m.mem.host_at(kXmmInGpa), xmm.data(), xmm.size());
  if (auto ok = real_mode_enter(m.vcpu, kCodeGpa); !ok) return ok;
  auto sregs = m.vcpu.get_sregs();
  if (!sregs) return std::unexpected(sregs.error());
  sregs->cr4 |= 0x200;  // OSFXSR: SSE instructions are allowed (also in real mode)
  return m.vcpu.set_sregs(*sregs);
}

// Kicks the calling thread out of KVM_RUN if the guest has not stopped in
// time (as VcpuRunner does: immediate_exit, then a signal), so a guest that
// runs away fails the test with its RIP instead of hanging it.
class Watchdog {
 public:
  Watchdog(Vcpu& vcpu, std::chrono::seconds limit) : target_(::pthread_self()) {
    static const bool installed = [] {
      struct sigaction sa {};
      sa.sa_handler = [](int) {};
      ::sigemptyset(&sa.sa_mask);
      return ::sigaction(SIGUSR1, &sa, nullptr) == 0;  // no SA_RESTART: KVM_RUN returns EINTR
    }();
    EXPECT_TRUE(installed);
    thread_ = std::thread([this, &vcpu, limit] {
      std::unique_lock lock(mu_);
      if (cv_.wait_for(lock, limit, [&] { return done_; })) return;
      fired_ = true;
      vcpu.run().immediate_exit = 1;
      ::pthread_kill(target_, SIGUSR1);
    });
  }
  ~Watchdog() {
    {
      std::lock_guard lock(mu_);
      done_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  bool fired() {
    std::lock_guard lock(mu_);
    return fired_;
  }

 private:
  pthread_t target_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false, fired_ = false;
  std::thread thread_;
};

// Runs to the guest's next stop; returns the exit reason.
Result<std::uint32_t> run_to_stop(Vcpu& v) {
  Watchdog dog(v, std::chrono::seconds(30));
  for (;;) {
    if (auto ok = v.run_once(); !ok) return std::unexpected(ok.error());
    const auto reason = v.run().exit_reason;
    auto where = [&] {
      auto regs = v.get_regs();
      return regs ? fmt::format("rip {:#x} ecx {:#x} ebx {:#x}", regs->rip, regs->rcx, regs->rbx) : regs.error().what();
    };
    if (reason == KVM_EXIT_INTERNAL_ERROR)
      return fail("KVM_EXIT_INTERNAL_ERROR suberror {} at {}", v.run().internal.suberror, where());
    if (reason != KVM_EXIT_INTR) return reason;
    if (dog.fired()) {
      v.run().immediate_exit = 0;
      return fail("the guest did not stop within 30 s: {}", where());
    }
  }
}

std::uint32_t mem32(const Machine& m, std::uint64_t gpa) {
  std::uint32_t v;
  std::memcpy(&v, m.mem.host_at(gpa), 4);
  return v;
}

void expect_segment_done(const Machine& m, std::uint32_t segments, const char* who) {
  const std::uint64_t n = std::uint64_t{kSegment} * segments;
  auto regs = m.vcpu.get_regs();
  ASSERT_TRUE(regs) << regs.error().what();
  EXPECT_EQ(regs->rcx & 0xffffffff, n) << who << ": iteration counter (ECX)";
  EXPECT_EQ(regs->rdx & 0xffffffff, (n * (n + 1) / 2) & 0xffffffff) << who << ": running sum (EDX)";
  EXPECT_EQ(mem32(m, kCounterGpa), n) << who << ": counter in memory";
  const auto xmm = xmm_pattern();
  EXPECT_EQ(std::memcmp(m.mem.host_at(kXmmOutGpa), xmm.data(), xmm.size()), 0)
      << who << ": XMM0 as stored by the guest";
}

void resume_on_new_vm(bool irqchip) {
  const bool use_out = irqchip;  // with an in-kernel LAPIC, HLT would block inside KVM_RUN
  const std::uint32_t stop = use_out ? KVM_EXIT_IO : KVM_EXIT_HLT;
  auto kvm = Kvm::open();
  ASSERT_TRUE(kvm) << kvm.error().what();
  auto msrs = kvm->msr_index_list();
  ASSERT_TRUE(msrs) << msrs.error().what();
  auto src = make_machine(*kvm, irqchip);
  ASSERT_TRUE(src) << src.error().what();
  ASSERT_TRUE(start_guest(*src, use_out));

  auto r = run_to_stop(src->vcpu);
  ASSERT_TRUE(r) << r.error().what();
  ASSERT_EQ(*r, stop) << "exit reason";
  expect_segment_done(*src, 1, "source, first stop");
  if (use_out) {
    // The OUT is not finished until KVM_RUN is entered again: kvm-amd still
    // has RIP on it (PVM's emulator has moved on). Capture refuses; finish
    // it without running guest code, then capture.
    auto early = capture_vcpu_state(src->vcpu, *msrs);
    ASSERT_FALSE(early);
    EXPECT_NE(early.error().message().find("KVM_EXIT_IO that KVM completes only on the next KVM_RUN"),
              std::string::npos)
        << early.error().what();
    auto done = src->vcpu.complete_pending_exit();
    ASSERT_TRUE(done) << done.error().what();
    auto regs = src->vcpu.get_regs();
    ASSERT_TRUE(regs) << regs.error().what();
    const std::uint64_t after_out = kCodeGpa + counting_guest(true).size() - 2;  // the jmp after the OUT
    EXPECT_EQ(regs->rip, after_out) << "RIP must be past the completed OUT";
  }
  auto state = capture_vcpu_state(src->vcpu, *msrs);
  ASSERT_TRUE(state) << state.error().what();
  EXPECT_EQ(state->lapic.has_value(), irqchip);
  // From here on XMM0's value lives only in the vCPU.
  std::memset(src->mem.host_at(kXmmInGpa), 0, 16);
  std::memset(src->mem.host_at(kXmmOutGpa), 0, 16);

  // The destination: a new VM, memory copied, state through the wire format.
  auto dst = make_machine(*kvm, irqchip);
  ASSERT_TRUE(dst) << dst.error().what();
  std::memcpy(dst->mem.host(), src->mem.host(), kMemBytes);
  auto decoded = decode_vcpu_state(encode_vcpu_state(*state));
  ASSERT_TRUE(decoded) << decoded.error().what();
  auto restored = restore_vcpu_state(dst->vcpu, *decoded);
  ASSERT_TRUE(restored) << restored.error().what();

  // Both continue to the next stop and must agree in everything.
  for (Machine* m : {&*src, &*dst}) {
    auto again = run_to_stop(m->vcpu);
    ASSERT_TRUE(again) << again.error().what();
    ASSERT_EQ(*again, stop) << (m == &*src ? "source" : "destination") << " exit reason";
  }
  expect_segment_done(*dst, 2, "destination, after migration");
  expect_segment_done(*src, 2, "source, continued");
  auto rs = src->vcpu.get_regs(), rd = dst->vcpu.get_regs();
  ASSERT_TRUE(rs && rd);
  VcpuState regs_s, regs_d;  // compare all GPRs, RIP and RFLAGS
  regs_s.regs = *rs;
  regs_d.regs = *rd;
  const auto diffs = vcpu_state_differences(regs_s, regs_d);
  EXPECT_TRUE(diffs.empty()) << "source and destination diverged:" << joined(diffs);
  EXPECT_EQ(std::memcmp(src->mem.host(), dst->mem.host(), kMemBytes), 0) << "guest memory diverged";
}

TEST(VcpuStateResume, HaltedGuestContinuesOnANewVm) { resume_on_new_vm(/*irqchip=*/false); }
TEST(VcpuStateResume, GuestStoppedAtPortIoContinuesOnANewVmWithIrqchip) { resume_on_new_vm(/*irqchip=*/true); }

// ---------------------------------------------------------------------------
// (3) Encoding. No KVM needed.

// A state with every encoded field set to something distinct and valid.
VcpuState synthetic_state() {
  VcpuState s;
  std::uint64_t v = 0x1122334455667700;
  auto next = [&] { return ++v; };
  for (auto* f : {&s.regs.rax, &s.regs.rbx, &s.regs.rcx, &s.regs.rdx, &s.regs.rsi, &s.regs.rdi, &s.regs.rsp,
                  &s.regs.rbp, &s.regs.r8, &s.regs.r9, &s.regs.r10, &s.regs.r11, &s.regs.r12, &s.regs.r13,
                  &s.regs.r14, &s.regs.r15, &s.regs.rip, &s.regs.rflags})
    *f = next();
  std::uint8_t k = 0;
  for (auto* g : {&s.sregs.cs, &s.sregs.ds, &s.sregs.es, &s.sregs.fs, &s.sregs.gs, &s.sregs.ss, &s.sregs.tr,
                  &s.sregs.ldt}) {
    g->base = next();
    g->limit = static_cast<std::uint32_t>(next());
    g->selector = static_cast<std::uint16_t>(next());
    g->type = ++k % 16;
    g->present = k & 1;
    g->dpl = k % 4;
    g->db = (k >> 1) & 1;
    g->s = 1;
    g->l = (k >> 2) & 1;
    g->g = 1;
    g->avl = k & 1;
    g->unusable = (k >> 3) & 1;
  }
  s.sregs.gdt = {.base = next(), .limit = 0x7f, .padding = {}};
  s.sregs.idt = {.base = next(), .limit = 0xfff, .padding = {}};
  for (auto* f : {&s.sregs.cr0, &s.sregs.cr2, &s.sregs.cr3, &s.sregs.cr4, &s.sregs.cr8, &s.sregs.efer,
                  &s.sregs.apic_base})
    *f = next();
  s.sregs.interrupt_bitmap[2] = 1ull << 5;  // vector 133 injected
  s.xcrs.nr_xcrs = 2;
  s.xcrs.xcrs[0] = {.xcr = 0, .reserved = 0, .value = 0xe7};
  s.xcrs.xcrs[1] = {.xcr = 1, .reserved = 0, .value = 0x3};
  s.xsave.resize(4096 + 64 * 3);
  for (std::size_t i = 0; i < s.xsave.size(); ++i) s.xsave[i] = std::byte(i * 7 + 3);
  for (auto& db : s.debugregs.db) db = next();
  s.debugregs.dr6 = 0xffff0ff1;
  s.debugregs.dr7 = 0xd0409;
  for (std::uint32_t i = 0; i < 100; ++i)
    s.msrs.push_back({.index = 0xc0000000 + i * 3, .reserved = 0, .data = next()});
  s.lapic.emplace();
  for (std::size_t i = 0; i < kLapicBytes; ++i) s.lapic->regs[i] = static_cast<char>(i * 13);
  s.events.exception = {.injected = 1, .nr = 14, .has_error_code = 1, .pending = 0, .error_code = 0x7};
  s.events.interrupt = {.injected = 1, .nr = 0x31, .soft = 0, .shadow = 3};
  s.events.nmi = {.injected = 0, .pending = 2, .masked = 1, .pad = 0};
  s.events.sipi_vector = 0x9a;
  s.events.flags = KVM_VCPUEVENT_VALID_NMI_PENDING | KVM_VCPUEVENT_VALID_SHADOW | KVM_VCPUEVENT_VALID_SMM |
                   KVM_VCPUEVENT_VALID_PAYLOAD;
  s.events.smi = {.smm = 1, .pending = 0, .smm_inside_nmi = 1, .latched_init = 1};
  s.events.triple_fault.pending = 1;
  s.events.exception_has_payload = 1;
  s.events.exception_payload = 0xdeadbeef000;
  s.mp_state.mp_state = KVM_MP_STATE_INIT_RECEIVED;
  for (std::uint32_t i = 0; i < 40; ++i)
    s.cpuid.push_back({.function = i, .index = i % 3, .flags = i % 2, .eax = i * 11, .ebx = i * 13, .ecx = i * 17,
                       .edx = i * 19, .padding = {}});
  return s;
}

TEST(VcpuStateCodec, RoundTripKeepsEveryField) {
  const VcpuState s = synthetic_state();
  const auto bytes = encode_vcpu_state(s);
  auto d = decode_vcpu_state(bytes);
  ASSERT_TRUE(d) << d.error().what();
  const auto diffs = vcpu_state_differences(s, *d);
  EXPECT_TRUE(diffs.empty()) << joined(diffs);
  EXPECT_EQ(encode_vcpu_state(*d), bytes) << "re-encoding must give the same bytes";
  // And the differ does see a change in each kind of field.
  VcpuState t = *d;
  t.regs.r13 ^= 1;
  t.sregs.tr.dpl ^= 1;
  t.xsave[4000] ^= std::byte{1};
  t.msrs[50].data ^= 1;
  t.lapic->regs[0x80] ^= 1;
  t.events.smi.latched_init = 0;
  t.cpuid[7].edx ^= 1;
  const auto seen = vcpu_state_differences(s, t);
  EXPECT_EQ(seen.size(), 7u) << joined(seen);
}

TEST(VcpuStateCodec, EveryTruncationIsRejected) {
  const auto bytes = encode_vcpu_state(synthetic_state());
  for (std::size_t n = 0; n < bytes.size(); ++n) {
    auto d = decode_vcpu_state(std::span(bytes).first(n));
    ASSERT_FALSE(d) << "accepted a " << n << "-byte prefix of " << bytes.size();
    ASSERT_NE(d.error().message().find("truncated"), std::string::npos) << n << ": " << d.error().what();
  }
}

// Decodes bytes that must be rejected; returns the message.
std::string rejection(const std::vector<std::byte>& bytes) {
  auto d = decode_vcpu_state(bytes);
  if (d) return "ACCEPTED";
  return d.error().message();
}
std::string rejection(const VcpuState& s) { return rejection(encode_vcpu_state(s)); }

// Byte offsets of the v1 layout (see vcpu_state_codec.cc).
constexpr std::size_t kSregsAt = 4 + 18 * 8;
constexpr std::size_t kXcrsAt = kSregsAt + 8 * 23 + 2 * 10 + 7 * 8 + 4 * 8;
constexpr std::size_t kEventsBytes = 37;

TEST(VcpuStateCodec, RejectsWithMessagesNamingTheField) {
  const VcpuState good = synthetic_state();
  const auto good_bytes = encode_vcpu_state(good);
  auto expect_msg = [](const std::string& got, const std::string& want) {
    EXPECT_NE(got.find(want), std::string::npos) << "got: " << got << "\nwant: " << want;
  };

  expect_msg(rejection(std::vector<std::byte>{}), "vCPU state: version: truncated at offset 0");
  {
    auto b = good_bytes;
    b[0] = std::byte{2};
    expect_msg(rejection(b), "vCPU state: version 2 is not supported (this build reads version 1)");
    b[0] = std::byte{0};
    expect_msg(rejection(b), "version 0 is not supported");
  }
  {
    auto b = good_bytes;
    b.push_back(std::byte{0});
    expect_msg(rejection(b), "1 unexpected trailing bytes");
  }
  {
    VcpuState s = good;
    s.sregs.cs.dpl = 4;
    expect_msg(rejection(s), "vCPU state: sregs: cs.dpl is 4 (at most 3)");
    s = good;
    s.sregs.ldt.unusable = 2;
    expect_msg(rejection(s), "sregs: ldt.unusable is 2 (at most 1)");
    s = good;
    s.sregs.interrupt_bitmap[0] = 0x3;
    expect_msg(rejection(s), "sregs: interrupt_bitmap has 3 bits set (at most 1)");
  }
  {
    auto b = good_bytes;
    b[kXcrsAt] = std::byte{17};
    expect_msg(rejection(b), "vCPU state: xcrs: count 17 exceeds KVM_MAX_XCRS (16)");
  }
  {
    VcpuState s = good;
    s.xsave.resize(100);
    expect_msg(rejection(s), "vCPU state: xsave: area is 100 bytes (must be 4096..65536)");
    s.xsave.resize(kMaxXsaveBytes + 4);
    expect_msg(rejection(s), "xsave: area is 65540 bytes");
  }
  {
    VcpuState s = good;
    s.debugregs.dr7 = 1ull << 32;
    expect_msg(rejection(s), "vCPU state: debugregs: dr7 0x100000000 has bits above 31");
    s = good;
    s.debugregs.dr6 = 1ull << 40;
    expect_msg(rejection(s), "debugregs: dr6 0x10000000000 has bits above 31");
  }
  {
    VcpuState s = good;
    s.msrs.clear();
    for (std::uint32_t i = 0; i <= kMaxVcpuMsrs; ++i) s.msrs.push_back({.index = i, .reserved = 0, .data = 0});
    expect_msg(rejection(s), "vCPU state: msrs: count 4097 exceeds the limit of 4096");
    s = good;
    s.msrs[60].index = s.msrs[10].index;
    expect_msg(rejection(s), fmt::format("msrs: MSR {:#x} appears twice", s.msrs[10].index));
  }
  {
    // An MSR count the remaining input cannot hold: refused before reading on.
    VcpuState s = good;
    s.msrs.clear();
    s.lapic.reset();
    s.cpuid.clear();
    auto b = encode_vcpu_state(s);
    const std::size_t count_at = b.size() - (kEventsBytes + 4 + 4) - 1 - 4;
    b[count_at] = std::byte{0xa0};
    b[count_at + 1] = std::byte{0x0f};  // 4000
    expect_msg(rejection(b), "msrs: truncated: count 4000 needs 48000 bytes, 46 left");
  }
  {
    VcpuState s = good;
    s.lapic.reset();
    s.cpuid.clear();
    auto b = encode_vcpu_state(s);
    const std::size_t present_at = b.size() - (kEventsBytes + 4 + 4) - 1;
    ASSERT_EQ(b[present_at], std::byte{0});
    b[present_at] = std::byte{2};
    expect_msg(rejection(b), "vCPU state: lapic: present is 2 (must be 0 or 1)");
    // present = 1 and a length that is not the LAPIC page's.
    b[present_at] = std::byte{1};
    const std::vector<std::byte> len = {std::byte{0xe8}, std::byte{0x03}, std::byte{0}, std::byte{0}};  // 1000
    b.insert(b.begin() + static_cast<std::ptrdiff_t>(present_at) + 1, len.begin(), len.end());
    expect_msg(rejection(b), "lapic: registers is 1000 bytes (must be 1024)");
  }
  {
    VcpuState s = good;
    s.events.flags |= 0x400;
    expect_msg(rejection(s), "vCPU state: events: flags 0x41d has unknown bits 0x400");
    s = good;
    s.events.exception.nr = 40;
    expect_msg(rejection(s), "events: exception.nr 40 is not an exception vector");
    s = good;
    s.events.interrupt.shadow = 4;
    expect_msg(rejection(s), "events: interrupt.shadow 0x4 has unknown bits");
  }
  {
    VcpuState s = good;
    s.mp_state.mp_state = 7;
    expect_msg(rejection(s), "vCPU state: mp_state: 7 is not an x86 KVM_MP_STATE value");
  }
  {
    VcpuState s = good;
    s.cpuid.resize(kMaxCpuidEntries + 1);
    expect_msg(rejection(s), "vCPU state: cpuid: count 257 exceeds the limit of 256");
    s = good;
    s.cpuid[3].flags = 0x10;
    expect_msg(rejection(s), "cpuid: [3].flags 0x10 has unknown bits");
  }
}

}  // namespace
}  // namespace ferry::kvm

// VcpuState on the wire, and field-by-field comparison. Both walk the same
// field tables, so whatever is encoded is also compared.
//
// Layout, version 1 (little-endian; "bool" is a u8 that must be 0 or 1):
//   u32 version                          kVcpuStateVersion
//   regs       18 x u64                  rax rbx rcx rdx rsi rdi rsp rbp r8..r15 rip rflags
//   sregs      8 segments: cs ds es fs gs ss tr ldt, each
//                u64 base, u32 limit, u16 selector,
//                u8 type present dpl db s l g avl unusable
//              gdt, idt: u64 base, u16 limit
//              u64 cr0 cr2 cr3 cr4 cr8 efer apic_base
//              4 x u64 interrupt_bitmap  (at most one bit set)
//   xcrs       u32 count (<= 16), count x {u32 xcr, u64 value}
//   xsave      u32 length (4096 ..= kMaxXsaveBytes), bytes
//   debugregs  u64 db0 db1 db2 db3 dr6 dr7  (dr6/dr7 < 2^32)
//   msrs       u32 count (<= kMaxVcpuMsrs), count x {u32 index, u64 data}; indices unique
//   lapic      bool present; if present: u32 length (= 1024), bytes
//   events     u8 exception.{injected nr has_error_code pending}, u32 exception.error_code,
//              u8 interrupt.{injected nr soft shadow}, u8 nmi.{injected pending masked},
//              u32 sipi_vector, u32 flags (KVM_VCPUEVENT_VALID_* only),
//              u8 smi.{smm pending smm_inside_nmi latched_init}, u8 triple_fault.pending,
//              u8 exception_has_payload, u64 exception_payload
//   mp_state   u32 (an x86 KVM_MP_STATE_* value)
//   cpuid      u32 count (<= kMaxCpuidEntries), count x {u32 function index flags eax ebx ecx edx}
// Reserved/padding fields of the kernel structs (and kvm_xcrs.flags,
// kvm_debugregs.flags, which KVM requires to be 0) are not encoded.
#include <algorithm>
#include <array>
#include <bit>
#include <cstring>
#include <map>
#include <set>
#include <type_traits>
#include <utility>

#include "userspace/base/bytes.hh"
#include "kvm/vcpu_state.hh"

namespace ferry::kvm {
namespace {

using ferry::ByteReader;
using ferry::ByteWriter;

// ---- field tables ----

template <class S, class F>
struct Field {
  const char* name;
  F S::*member;
};

constexpr std::array<Field<kvm_regs, __u64>, 18> kRegs{{
    {"rax", &kvm_regs::rax}, {"rbx", &kvm_regs::rbx}, {"rcx", &kvm_regs::rcx}, {"rdx", &kvm_regs::rdx},
    {"rsi", &kvm_regs::rsi}, {"rdi", &kvm_regs::rdi}, {"rsp", &kvm_regs::rsp}, {"rbp", &kvm_regs::rbp},
    {"r8", &kvm_regs::r8},   {"r9", &kvm_regs::r9},   {"r10", &kvm_regs::r10}, {"r11", &kvm_regs::r11},
    {"r12", &kvm_regs::r12}, {"r13", &kvm_regs::r13}, {"r14", &kvm_regs::r14}, {"r15", &kvm_regs::r15},
    {"rip", &kvm_regs::rip}, {"rflags", &kvm_regs::rflags},
}};

constexpr std::array<Field<kvm_sregs, kvm_segment>, 8> kSegments{{
    {"cs", &kvm_sregs::cs}, {"ds", &kvm_sregs::ds}, {"es", &kvm_sregs::es}, {"fs", &kvm_sregs::fs},
    {"gs", &kvm_sregs::gs}, {"ss", &kvm_sregs::ss}, {"tr", &kvm_sregs::tr}, {"ldt", &kvm_sregs::ldt},
}};

// The one-byte segment attributes, with the largest value each can hold.
struct SegmentAttr {
  const char* name;
  __u8 kvm_segment::*member;
  unsigned max;
};
constexpr std::array<SegmentAttr, 9> kSegmentAttrs{{
    {"type", &kvm_segment::type, 15}, {"present", &kvm_segment::present, 1}, {"dpl", &kvm_segment::dpl, 3},
    {"db", &kvm_segment::db, 1},      {"s", &kvm_segment::s, 1},             {"l", &kvm_segment::l, 1},
    {"g", &kvm_segment::g, 1},        {"avl", &kvm_segment::avl, 1},         {"unusable", &kvm_segment::unusable, 1},
}};

constexpr std::array<Field<kvm_sregs, kvm_dtable>, 2> kDtables{{{"gdt", &kvm_sregs::gdt}, {"idt", &kvm_sregs::idt}}};

constexpr std::array<Field<kvm_sregs, __u64>, 7> kControl{{
    {"cr0", &kvm_sregs::cr0}, {"cr2", &kvm_sregs::cr2}, {"cr3", &kvm_sregs::cr3}, {"cr4", &kvm_sregs::cr4},
    {"cr8", &kvm_sregs::cr8}, {"efer", &kvm_sregs::efer}, {"apic_base", &kvm_sregs::apic_base},
}};

// kvm_vcpu_events, field by field in wire order. E is kvm_vcpu_events or
// its const; fn(name, field) returns Status and the walk stops at an error.
template <class E, class Fn>
Status visit_events(E& e, Fn&& fn) {
  Status ok;
  auto f = [&](const char* name, auto& field) {
    if (ok) ok = fn(name, field);
  };
  f("exception.injected", e.exception.injected);
  f("exception.nr", e.exception.nr);
  f("exception.has_error_code", e.exception.has_error_code);
  f("exception.pending", e.exception.pending);
  f("exception.error_code", e.exception.error_code);
  f("interrupt.injected", e.interrupt.injected);
  f("interrupt.nr", e.interrupt.nr);
  f("interrupt.soft", e.interrupt.soft);
  f("interrupt.shadow", e.interrupt.shadow);
  f("nmi.injected", e.nmi.injected);
  f("nmi.pending", e.nmi.pending);
  f("nmi.masked", e.nmi.masked);
  f("sipi_vector", e.sipi_vector);
  f("flags", e.flags);
  f("smi.smm", e.smi.smm);
  f("smi.pending", e.smi.pending);
  f("smi.smm_inside_nmi", e.smi.smm_inside_nmi);
  f("smi.latched_init", e.smi.latched_init);
  f("triple_fault.pending", e.triple_fault.pending);
  f("exception_has_payload", e.exception_has_payload);
  f("exception_payload", e.exception_payload);
  return ok;
}

constexpr std::uint32_t kKnownEventFlags = KVM_VCPUEVENT_VALID_NMI_PENDING | KVM_VCPUEVENT_VALID_SIPI_VECTOR |
                                           KVM_VCPUEVENT_VALID_SHADOW | KVM_VCPUEVENT_VALID_SMM |
                                           KVM_VCPUEVENT_VALID_PAYLOAD | KVM_VCPUEVENT_VALID_TRIPLE_FAULT;

constexpr std::array<std::uint32_t, 6> kX86MpStates = {KVM_MP_STATE_RUNNABLE,      KVM_MP_STATE_UNINITIALIZED,
                                                       KVM_MP_STATE_INIT_RECEIVED, KVM_MP_STATE_HALTED,
                                                       KVM_MP_STATE_SIPI_RECEIVED, KVM_MP_STATE_AP_RESET_HOLD};

constexpr std::array<Field<kvm_cpuid_entry2, __u32>, 7> kCpuidFields{{
    {"function", &kvm_cpuid_entry2::function}, {"index", &kvm_cpuid_entry2::index},
    {"flags", &kvm_cpuid_entry2::flags},       {"eax", &kvm_cpuid_entry2::eax},
    {"ebx", &kvm_cpuid_entry2::ebx},           {"ecx", &kvm_cpuid_entry2::ecx},
    {"edx", &kvm_cpuid_entry2::edx},
}};
constexpr std::uint32_t kKnownCpuidFlags =
    KVM_CPUID_FLAG_SIGNIFCANT_INDEX | KVM_CPUID_FLAG_STATEFUL_FUNC | KVM_CPUID_FLAG_STATE_READ_NEXT;

// ---- scalar I/O on kernel field types (__u64 is not std::uint64_t) ----

template <class T>
void put(ByteWriter& w, T v) {
  static_assert(std::is_unsigned_v<T>);
  if constexpr (sizeof(T) == 1) w.put_u8(v);
  else if constexpr (sizeof(T) == 2) w.put_u16(v);
  else if constexpr (sizeof(T) == 4) w.put_u32(v);
  else w.put_u64(v);
}

template <class T>
Status take(ByteReader& r, T& out) {
  static_assert(std::is_unsigned_v<T>);
  auto assign = [&](auto v) -> Status {
    if (!v) return std::unexpected(v.error());
    out = static_cast<T>(*v);
    return {};
  };
  if constexpr (sizeof(T) == 1) return assign(r.get_u8());
  else if constexpr (sizeof(T) == 2) return assign(r.get_u16());
  else if constexpr (sizeof(T) == 4) return assign(r.get_u32());
  else return assign(r.get_u64());
}

// Reads one field; a failure (truncation) names it.
template <class T>
Status take(ByteReader& r, T& out, std::string_view name) {
  if (auto ok = take(r, out); !ok) return std::unexpected(std::move(ok.error()).context(name));
  return {};
}

Result<std::span<const std::byte>> take_blob(ByteReader& r, std::string_view name, std::size_t min, std::size_t max) {
  std::uint32_t len = 0;
  if (auto ok = take(r, len, fmt::format("{} length", name)); !ok) return std::unexpected(ok.error());
  if (len < min || len > max) {
    if (min == max) return fail("{} is {} bytes (must be {})", name, len, min);
    return fail("{} is {} bytes (must be {}..{})", name, len, min, max);
  }
  auto bytes = r.get_bytes(len);
  if (!bytes) return std::unexpected(std::move(bytes.error()).context(name));
  return *bytes;
}

Status take_bool(ByteReader& r, bool& out, std::string_view name) {
  std::uint8_t v = 0;
  if (auto ok = take(r, v, name); !ok) return ok;
  if (v > 1) return fail("{} is {} (must be 0 or 1)", name, v);
  out = v == 1;
  return {};
}

// ---- encode ----

void put_sregs(ByteWriter& w, const kvm_sregs& s) {
  for (const auto& seg : kSegments) {
    const kvm_segment& g = s.*seg.member;
    put(w, g.base);
    put(w, g.limit);
    put(w, g.selector);
    for (const auto& a : kSegmentAttrs) put(w, g.*a.member);
  }
  for (const auto& dt : kDtables) {
    put(w, (s.*dt.member).base);
    put(w, (s.*dt.member).limit);
  }
  for (const auto& c : kControl) put(w, s.*c.member);
  for (auto word : s.interrupt_bitmap) put(w, word);
}

void put_events(ByteWriter& w, const kvm_vcpu_events& e) {
  (void)visit_events(e, [&](const char*, auto v) -> Status {
    put(w, v);
    return {};
  });
}

// ---- decode ----

Status take_sregs(ByteReader& r, kvm_sregs& s) {
  for (const auto& seg : kSegments) {
    kvm_segment& g = s.*seg.member;
    const std::string n(seg.name);
    if (auto ok = take(r, g.base, n + ".base"); !ok) return ok;
    if (auto ok = take(r, g.limit, n + ".limit"); !ok) return ok;
    if (auto ok = take(r, g.selector, n + ".selector"); !ok) return ok;
    for (const auto& a : kSegmentAttrs) {
      if (auto ok = take(r, g.*a.member, n + "." + a.name); !ok) return ok;
      if (g.*a.member > a.max) return fail("{}.{} is {} (at most {})", seg.name, a.name, g.*a.member, a.max);
    }
  }
  for (const auto& dt : kDtables) {
    if (auto ok = take(r, (s.*dt.member).base, std::string(dt.name) + ".base"); !ok) return ok;
    if (auto ok = take(r, (s.*dt.member).limit, std::string(dt.name) + ".limit"); !ok) return ok;
  }
  for (const auto& c : kControl)
    if (auto ok = take(r, s.*c.member, c.name); !ok) return ok;
  int pending = 0;
  for (auto& word : s.interrupt_bitmap) {
    if (auto ok = take(r, word, "interrupt_bitmap"); !ok) return ok;
    pending += std::popcount(static_cast<std::uint64_t>(word));
  }
  // KVM reports at most the one injected external interrupt here.
  if (pending > 1) return fail("interrupt_bitmap has {} bits set (at most 1)", pending);
  return {};
}

Status take_xcrs(ByteReader& r, kvm_xcrs& x) {
  if (auto ok = take(r, x.nr_xcrs, "count"); !ok) return ok;
  if (x.nr_xcrs > KVM_MAX_XCRS) return fail("count {} exceeds KVM_MAX_XCRS ({})", x.nr_xcrs, KVM_MAX_XCRS);
  for (std::uint32_t i = 0; i < x.nr_xcrs; ++i) {
    if (auto ok = take(r, x.xcrs[i].xcr, fmt::format("xcrs[{}].xcr", i)); !ok) return ok;
    if (auto ok = take(r, x.xcrs[i].value, fmt::format("xcrs[{}].value", i)); !ok) return ok;
  }
  return {};
}

Status take_debugregs(ByteReader& r, kvm_debugregs& d) {
  for (int i = 0; i < 4; ++i)
    if (auto ok = take(r, d.db[i], fmt::format("db{}", i)); !ok) return ok;
  if (auto ok = take(r, d.dr6, "dr6"); !ok) return ok;
  if (auto ok = take(r, d.dr7, "dr7"); !ok) return ok;
  // KVM_SET_DEBUGREGS rejects bits above 31 in both.
  if (d.dr6 >> 32) return fail("dr6 {:#x} has bits above 31", static_cast<std::uint64_t>(d.dr6));
  if (d.dr7 >> 32) return fail("dr7 {:#x} has bits above 31", static_cast<std::uint64_t>(d.dr7));
  return {};
}

Status take_msrs(ByteReader& r, std::vector<kvm_msr_entry>& msrs) {
  std::uint32_t n = 0;
  if (auto ok = take(r, n, "count"); !ok) return ok;
  if (n > kMaxVcpuMsrs) return fail("count {} exceeds the limit of {}", n, kMaxVcpuMsrs);
  // Each entry is 12 bytes: refuse a count the input cannot hold before
  // allocating for it.
  if (r.remaining() / 12 < n)
    return fail("truncated: count {} needs {} bytes, {} left", n, std::size_t{n} * 12, r.remaining());
  std::set<std::uint32_t> seen;
  msrs.resize(n);
  for (std::uint32_t i = 0; i < n; ++i) {
    if (auto ok = take(r, msrs[i].index, fmt::format("[{}].index", i)); !ok) return ok;
    if (auto ok = take(r, msrs[i].data, fmt::format("[{}].data", i)); !ok) return ok;
    if (!seen.insert(msrs[i].index).second) return fail("MSR {:#x} appears twice", msrs[i].index);
  }
  return {};
}

Status take_lapic(ByteReader& r, std::optional<kvm_lapic_state>& lapic) {
  bool present = false;
  if (auto ok = take_bool(r, present, "present"); !ok) return ok;
  if (!present) return {};
  auto blob = take_blob(r, "registers", kLapicBytes, kLapicBytes);
  if (!blob) return std::unexpected(blob.error());
  lapic.emplace();
  std::memcpy(lapic->regs, blob->data(), kLapicBytes);
  return {};
}

Status take_events(ByteReader& r, kvm_vcpu_events& e) {
  if (auto ok = visit_events(e, [&](const char* name, auto& field) { return take(r, field, name); }); !ok) return ok;
  if (e.flags & ~kKnownEventFlags)
    return fail("flags {:#x} has unknown bits {:#x}", e.flags, e.flags & ~kKnownEventFlags);
  if ((e.exception.injected || e.exception.pending) && e.exception.nr >= 32)
    return fail("exception.nr {} is not an exception vector (0..31)", e.exception.nr);
  if (e.interrupt.shadow & ~(KVM_X86_SHADOW_INT_MOV_SS | KVM_X86_SHADOW_INT_STI))
    return fail("interrupt.shadow {:#x} has unknown bits", e.interrupt.shadow);
  return {};
}

Status take_cpuid(ByteReader& r, std::vector<kvm_cpuid_entry2>& cpuid) {
  std::uint32_t n = 0;
  if (auto ok = take(r, n, "count"); !ok) return ok;
  if (n > kMaxCpuidEntries) return fail("count {} exceeds the limit of {}", n, kMaxCpuidEntries);
  cpuid.assign(n, kvm_cpuid_entry2{});
  for (std::uint32_t i = 0; i < n; ++i) {
    for (const auto& f : kCpuidFields)
      if (auto ok = take(r, cpuid[i].*f.member, fmt::format("[{}].{}", i, f.name)); !ok) return ok;
    if (cpuid[i].flags & ~kKnownCpuidFlags) return fail("[{}].flags {:#x} has unknown bits", i, cpuid[i].flags);
  }
  return {};
}

// Runs one group's decoder and prefixes its errors with the group's name.
template <class F>
Status section(std::string_view name, F&& f) {
  if (auto ok = f(); !ok) return std::unexpected(std::move(ok.error()).context(name));
  return {};
}

// ---- differences ----

class Differ {
 public:
  template <class T>
  void scalar(const std::string& name, T a, T b) {
    if (a == b) return;
    out_.push_back(
        fmt::format("{}: {:#x} != {:#x}", name, static_cast<std::uint64_t>(a), static_cast<std::uint64_t>(b)));
  }
  void note(std::string line) { out_.push_back(std::move(line)); }
  void bytes(const std::string& name, std::span<const std::byte> a, std::span<const std::byte> b) {
    if (a.size() != b.size()) {
      note(fmt::format("{}: {} bytes != {} bytes", name, a.size(), b.size()));
      return;
    }
    std::size_t first = a.size(), count = 0;
    for (std::size_t i = 0; i < a.size(); ++i)
      if (a[i] != b[i]) {
        first = std::min(first, i);
        ++count;
      }
    if (count) note(fmt::format("{}: {} bytes differ, first at offset {:#x}", name, count, first));
  }
  std::size_t count() const { return out_.size(); }
  std::vector<std::string> take() && { return std::move(out_); }

 private:
  std::vector<std::string> out_;
};

std::uint32_t lapic_reg(const kvm_lapic_state& l, std::size_t offset) {
  std::uint32_t v = 0;
  std::memcpy(&v, l.regs + offset, sizeof v);
  return v;
}

}  // namespace

std::vector<std::byte> encode_vcpu_state(const VcpuState& s) {
  ByteWriter w;
  w.put_u32(kVcpuStateVersion);
  for (const auto& f : kRegs) put(w, s.regs.*f.member);
  put_sregs(w, s.sregs);
  const std::uint32_t nxcrs = std::min<std::uint32_t>(s.xcrs.nr_xcrs, KVM_MAX_XCRS);
  w.put_u32(nxcrs);
  for (std::uint32_t i = 0; i < nxcrs; ++i) {
    put(w, s.xcrs.xcrs[i].xcr);
    put(w, s.xcrs.xcrs[i].value);
  }
  w.put_u32(static_cast<std::uint32_t>(s.xsave.size()));
  w.put_bytes(s.xsave);
  for (auto db : s.debugregs.db) put(w, db);
  put(w, s.debugregs.dr6);
  put(w, s.debugregs.dr7);
  w.put_u32(static_cast<std::uint32_t>(s.msrs.size()));
  for (const auto& m : s.msrs) {
    put(w, m.index);
    put(w, m.data);
  }
  w.put_u8(s.lapic ? 1 : 0);
  if (s.lapic) {
    w.put_u32(static_cast<std::uint32_t>(kLapicBytes));
    w.put_bytes(std::as_bytes(std::span(s.lapic->regs)));
  }
  put_events(w, s.events);
  put(w, s.mp_state.mp_state);
  w.put_u32(static_cast<std::uint32_t>(s.cpuid.size()));
  for (const auto& e : s.cpuid)
    for (const auto& f : kCpuidFields) put(w, e.*f.member);
  return std::move(w).take();
}

Result<VcpuState> decode_vcpu_state(std::span<const std::byte> bytes) {
  ByteReader r(bytes);
  VcpuState s;
  auto err = [](Error e) { return std::unexpected(std::move(e).context("vCPU state")); };
  std::uint32_t version = 0;
  if (auto ok = take(r, version, "version"); !ok) return err(ok.error());
  if (version != kVcpuStateVersion)
    return err(Error(
        fmt::format("version {} is not supported (this build reads version {})", version, kVcpuStateVersion)));
  Status ok = section("regs", [&]() -> Status {
    for (const auto& f : kRegs)
      if (auto st = take(r, s.regs.*f.member, f.name); !st) return st;
    return {};
  });
  if (ok) ok = section("sregs", [&] { return take_sregs(r, s.sregs); });
  if (ok) ok = section("xcrs", [&] { return take_xcrs(r, s.xcrs); });
  if (ok) ok = section("xsave", [&]() -> Status {
      auto blob = take_blob(r, "area", kMinXsaveBytes, kMaxXsaveBytes);
      if (!blob) return std::unexpected(blob.error());
      s.xsave.assign(blob->begin(), blob->end());
      return {};
    });
  if (ok) ok = section("debugregs", [&] { return take_debugregs(r, s.debugregs); });
  if (ok) ok = section("msrs", [&] { return take_msrs(r, s.msrs); });
  if (ok) ok = section("lapic", [&] { return take_lapic(r, s.lapic); });
  if (ok) ok = section("events", [&] { return take_events(r, s.events); });
  if (ok) ok = section("mp_state", [&]() -> Status {
      if (auto st = take(r, s.mp_state.mp_state, "value"); !st) return st;
      if (std::find(kX86MpStates.begin(), kX86MpStates.end(), s.mp_state.mp_state) == kX86MpStates.end())
        return fail("{} is not an x86 KVM_MP_STATE value", s.mp_state.mp_state);
      return {};
    });
  if (ok) ok = section("cpuid", [&] { return take_cpuid(r, s.cpuid); });
  if (ok) ok = r.expect_end();
  if (!ok) return err(ok.error());
  return s;
}

std::vector<std::string> vcpu_state_differences(const VcpuState& a, const VcpuState& b) {
  Differ d;
  for (const auto& f : kRegs) d.scalar(std::string("regs.") + f.name, a.regs.*f.member, b.regs.*f.member);
  for (const auto& seg : kSegments) {
    const kvm_segment &x = a.sregs.*seg.member, &y = b.sregs.*seg.member;
    const std::string n = std::string("sregs.") + seg.name;
    d.scalar(n + ".base", x.base, y.base);
    d.scalar(n + ".limit", x.limit, y.limit);
    d.scalar(n + ".selector", x.selector, y.selector);
    for (const auto& at : kSegmentAttrs) d.scalar(n + "." + at.name, x.*at.member, y.*at.member);
  }
  for (const auto& dt : kDtables) {
    d.scalar(std::string("sregs.") + dt.name + ".base", (a.sregs.*dt.member).base, (b.sregs.*dt.member).base);
    d.scalar(std::string("sregs.") + dt.name + ".limit", (a.sregs.*dt.member).limit, (b.sregs.*dt.member).limit);
  }
  for (const auto& c : kControl) d.scalar(std::string("sregs.") + c.name, a.sregs.*c.member, b.sregs.*c.member);
  for (std::size_t i = 0; i < 4; ++i)
    d.scalar(fmt::format("sregs.interrupt_bitmap[{}]", i), a.sregs.interrupt_bitmap[i], b.sregs.interrupt_bitmap[i]);

  d.scalar("xcrs.count", a.xcrs.nr_xcrs, b.xcrs.nr_xcrs);
  for (std::uint32_t i = 0; i < std::min({a.xcrs.nr_xcrs, b.xcrs.nr_xcrs, std::uint32_t{KVM_MAX_XCRS}}); ++i) {
    d.scalar(fmt::format("xcrs[{}].xcr", i), a.xcrs.xcrs[i].xcr, b.xcrs.xcrs[i].xcr);
    d.scalar(fmt::format("xcrs[{}].value", i), a.xcrs.xcrs[i].value, b.xcrs.xcrs[i].value);
  }
  d.bytes("xsave", a.xsave, b.xsave);
  for (std::size_t i = 0; i < 4; ++i) d.scalar(fmt::format("debugregs.db{}", i), a.debugregs.db[i], b.debugregs.db[i]);
  d.scalar("debugregs.dr6", a.debugregs.dr6, b.debugregs.dr6);
  d.scalar("debugregs.dr7", a.debugregs.dr7, b.debugregs.dr7);

  std::map<std::uint32_t, std::uint64_t> ma, mb;
  for (const auto& m : a.msrs) ma.emplace(m.index, m.data);
  for (const auto& m : b.msrs) mb.emplace(m.index, m.data);
  for (const auto& [index, value] : ma) {
    auto it = mb.find(index);
    if (it == mb.end()) d.note(fmt::format("msr {:#x}: only in the first state", index));
    else d.scalar(fmt::format("msr {:#x}", index), value, it->second);
  }
  for (const auto& [index, value] : mb)
    if (!ma.contains(index)) d.note(fmt::format("msr {:#x}: only in the second state", index));

  if (a.lapic.has_value() != b.lapic.has_value()) {
    d.note(fmt::format("lapic: {} != {}", a.lapic ? "present" : "absent", b.lapic ? "present" : "absent"));
  } else if (a.lapic) {
    // Architectural registers are 32 bits at 16-byte strides; the bytes
    // between them are compared too, but reported only on their own.
    const std::size_t before = d.count();
    for (std::size_t off = 0; off < kLapicBytes; off += 16)
      d.scalar(fmt::format("lapic[{:#x}]", off), lapic_reg(*a.lapic, off), lapic_reg(*b.lapic, off));
    if (d.count() == before)
      d.bytes("lapic (reserved bytes)", std::as_bytes(std::span(a.lapic->regs)),
              std::as_bytes(std::span(b.lapic->regs)));
  }

  // Walk a's fields; find b's by the same name (the walk order is fixed).
  std::vector<std::pair<std::string, std::uint64_t>> eb;
  (void)visit_events(b.events, [&](const char* name, auto v) -> Status {
    eb.emplace_back(name, v);
    return {};
  });
  std::size_t ei = 0;
  (void)visit_events(a.events, [&](const char* name, auto v) -> Status {
    d.scalar(std::string("events.") + name, static_cast<std::uint64_t>(v), eb[ei++].second);
    return {};
  });
  d.scalar("mp_state", a.mp_state.mp_state, b.mp_state.mp_state);

  d.scalar("cpuid.count", a.cpuid.size(), b.cpuid.size());
  for (std::size_t i = 0; i < std::min(a.cpuid.size(), b.cpuid.size()); ++i)
    for (const auto& f : kCpuidFields)
      d.scalar(fmt::format("cpuid[{}].{}", i, f.name), a.cpuid[i].*f.member, b.cpuid[i].*f.member);
  return std::move(d).take();
}

}  // namespace ferry::kvm

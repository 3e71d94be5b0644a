// VM-wide state: capture, restore and the wire encodings.
//
// Layouts (little-endian):
//   clock v1    u32 version, u64 clock (ns), u32 flags (KVM_CLOCK_* bits),
//               u64 realtime, u64 host_tsc
//   irqchip v1  u32 version, pic master, pic slave: 16 x u8 each (struct
//               order, last_irr .. elcr_mask), ioapic: u64 base_address,
//               u32 ioregsel, u32 id, u32 irr, 24 x u64 redirection entries
//   pit v1      u32 version, 3 channels of {u32 count, u16 latched_count,
//               u8 count_latched status_latched status read_state write_state
//               write_latch rw_mode mode bcd gate, u64 count_load_time
//               (two's complement)}, u32 flags
#include "kvm/vm_state.hh"

#include <sys/ioctl.h>

#include <array>
#include <cerrno>
#include <cstring>

#include <fmt/format.h>

#include "userspace/base/bytes.hh"
#include "kvm/vm.hh"

namespace ferry::kvm {
namespace {

using ferry::ByteReader;
using ferry::ByteWriter;

// KVM_GET_CLOCK flags we carry; anything else is not from KVM.
constexpr std::uint32_t kClockFlags = KVM_CLOCK_TSC_STABLE | KVM_CLOCK_REALTIME | KVM_CLOCK_HOST_TSC;
constexpr std::uint32_t kPitFlags = KVM_PIT_FLAGS_HPET_LEGACY | KVM_PIT_FLAGS_SPEAKER_DATA_ON;

constexpr std::array kPicFields{
    &kvm_pic_state::last_irr,     &kvm_pic_state::irr,
    &kvm_pic_state::imr,          &kvm_pic_state::isr,
    &kvm_pic_state::priority_add, &kvm_pic_state::irq_base,
    &kvm_pic_state::read_reg_select, &kvm_pic_state::poll,
    &kvm_pic_state::special_mask, &kvm_pic_state::init_state,
    &kvm_pic_state::auto_eoi,     &kvm_pic_state::rotate_on_auto_eoi,
    &kvm_pic_state::special_fully_nested_mode, &kvm_pic_state::init4,
    &kvm_pic_state::elcr,         &kvm_pic_state::elcr_mask,
};
constexpr std::array<const char*, 16> kPicNames{
    "last_irr", "irr", "imr", "isr", "priority_add", "irq_base", "read_reg_select", "poll",
    "special_mask", "init_state", "auto_eoi", "rotate_on_auto_eoi", "special_fully_nested_mode",
    "init4", "elcr", "elcr_mask"};
static_assert(sizeof(kvm_pic_state) == kPicFields.size(), "a kvm_pic_state field is not encoded");

constexpr std::array kPitChannelBytes{
    &kvm_pit_channel_state::count_latched, &kvm_pit_channel_state::status_latched,
    &kvm_pit_channel_state::status,        &kvm_pit_channel_state::read_state,
    &kvm_pit_channel_state::write_state,   &kvm_pit_channel_state::write_latch,
    &kvm_pit_channel_state::rw_mode,       &kvm_pit_channel_state::mode,
    &kvm_pit_channel_state::bcd,           &kvm_pit_channel_state::gate,
};
constexpr std::array<const char*, 10> kPitChannelByteNames{
    "count_latched", "status_latched", "status", "read_state", "write_state",
    "write_latch",   "rw_mode",        "mode",   "bcd",        "gate"};

Status check_version(ByteReader& r, std::uint32_t want, const char* what) {
  auto v = r.get_u32();
  if (!v) return std::unexpected(v.error().context(fmt::format("{} state", what)));
  if (*v != want) return fail("{} state: version {} is not supported (this build reads {})", what, *v, want);
  return {};
}

Status get_chip(const Vm& vm, std::uint32_t id, kvm_irqchip& chip) {
  chip = {};
  chip.chip_id = id;
  if (::ioctl(vm.fd(), KVM_GET_IRQCHIP, &chip) < 0) {
    const int e = errno;  // before fmt allocates
    return std::unexpected(sys_error(fmt::format("KVM_GET_IRQCHIP chip {}", id), e));
  }
  return {};
}

Status set_chip(Vm& vm, std::uint32_t id, const void* src, std::size_t n) {
  kvm_irqchip chip{};
  chip.chip_id = id;
  std::memcpy(&chip.chip, src, n);
  if (::ioctl(vm.fd(), KVM_SET_IRQCHIP, &chip) < 0) {
    const int e = errno;
    return std::unexpected(sys_error(fmt::format("KVM_SET_IRQCHIP chip {}", id), e));
  }
  return {};
}

}  // namespace

Result<VmState> capture_vm_state(const Vm& vm) {
  VmState s;
  if (::ioctl(vm.fd(), KVM_GET_CLOCK, &s.clock) < 0) return fail_sys("KVM_GET_CLOCK");
  if (vm.has_irqchip()) {
    IrqchipState ic;
    kvm_irqchip chip;
    if (auto ok = get_chip(vm, KVM_IRQCHIP_PIC_MASTER, chip); !ok) return std::unexpected(ok.error());
    ic.pic_master = chip.chip.pic;
    if (auto ok = get_chip(vm, KVM_IRQCHIP_PIC_SLAVE, chip); !ok) return std::unexpected(ok.error());
    ic.pic_slave = chip.chip.pic;
    if (auto ok = get_chip(vm, KVM_IRQCHIP_IOAPIC, chip); !ok) return std::unexpected(ok.error());
    ic.ioapic = chip.chip.ioapic;
    s.irqchip = ic;
  }
  if (vm.has_pit()) {
    kvm_pit_state2 pit{};
    if (::ioctl(vm.fd(), KVM_GET_PIT2, &pit) < 0) return fail_sys("KVM_GET_PIT2");
    s.pit = pit;
  }
  return s;
}

Status restore_vm_state(Vm& vm, const VmState& s) {
  if (s.irqchip.has_value() != vm.has_irqchip())
    return fail("VM state: the state {} an in-kernel irqchip but this VM {}", s.irqchip ? "has" : "has no",
                vm.has_irqchip() ? "does" : "does not");
  if (s.pit.has_value() != vm.has_pit())
    return fail("VM state: the state {} a PIT but this VM {}", s.pit ? "has" : "has no",
                vm.has_pit() ? "does" : "does not");
  if (s.irqchip) {
    // PIC before IOAPIC mirrors reset order; KVM applies each chip
    // independently, and no interrupt is delivered until a vCPU runs.
    if (auto ok = set_chip(vm, KVM_IRQCHIP_PIC_MASTER, &s.irqchip->pic_master, sizeof(kvm_pic_state)); !ok) return ok;
    if (auto ok = set_chip(vm, KVM_IRQCHIP_PIC_SLAVE, &s.irqchip->pic_slave, sizeof(kvm_pic_state)); !ok) return ok;
    if (auto ok = set_chip(vm, KVM_IRQCHIP_IOAPIC, &s.irqchip->ioapic, sizeof(kvm_ioapic_state)); !ok) return ok;
  }
  if (s.pit) {
    kvm_pit_state2 pit = *s.pit;
    if (::ioctl(vm.fd(), KVM_SET_PIT2, &pit) < 0) return fail_sys("KVM_SET_PIT2");
  }
  // Last: see the header. flags = 0 sets the clock to exactly `clock`
  // (KVM_CLOCK_REALTIME would advance it by the wall time since capture).
  kvm_clock_data c{};
  c.clock = s.clock.clock;
  if (::ioctl(vm.fd(), KVM_SET_CLOCK, &c) < 0) {
    const int e = errno;
    return std::unexpected(sys_error(fmt::format("KVM_SET_CLOCK {} ns", c.clock), e));
  }
  return {};
}

std::vector<std::byte> encode_clock_state(const kvm_clock_data& c) {
  ByteWriter w;
  w.put_u32(kClockStateVersion);
  w.put_u64(c.clock);
  w.put_u32(c.flags);
  w.put_u64(c.realtime);
  w.put_u64(c.host_tsc);
  return std::move(w).take();
}

Result<kvm_clock_data> decode_clock_state(std::span<const std::byte> bytes) {
  ByteReader r(bytes);
  if (auto ok = check_version(r, kClockStateVersion, "clock"); !ok) return std::unexpected(ok.error());
  kvm_clock_data c{};
  std::uint64_t clock = 0, realtime = 0, tsc = 0;
  std::uint32_t flags = 0;
  if (auto ok = r.get(clock, flags, realtime, tsc); !ok) return std::unexpected(ok.error().context("clock state"));
  if (flags & ~kClockFlags) return fail("clock state: unknown flags {:#x}", flags & ~kClockFlags);
  if (auto ok = r.expect_end(); !ok) return std::unexpected(ok.error().context("clock state"));
  c.clock = clock;
  c.flags = flags;
  c.realtime = realtime;
  c.host_tsc = tsc;
  return c;
}

std::vector<std::byte> encode_irqchip_state(const IrqchipState& s) {
  ByteWriter w;
  w.put_u32(kIrqchipStateVersion);
  for (const auto* pic : {&s.pic_master, &s.pic_slave})
    for (auto f : kPicFields) w.put_u8(pic->*f);
  w.put_u64(s.ioapic.base_address);
  w.put_u32(s.ioapic.ioregsel);
  w.put_u32(s.ioapic.id);
  w.put_u32(s.ioapic.irr);
  for (const auto& e : s.ioapic.redirtbl) w.put_u64(e.bits);
  return std::move(w).take();
}

Result<IrqchipState> decode_irqchip_state(std::span<const std::byte> bytes) {
  ByteReader r(bytes);
  if (auto ok = check_version(r, kIrqchipStateVersion, "irqchip"); !ok) return std::unexpected(ok.error());
  IrqchipState s;
  for (auto* pic : {&s.pic_master, &s.pic_slave})
    for (auto f : kPicFields) {
      auto v = r.get_u8();
      if (!v) return std::unexpected(v.error().context("irqchip state: PIC"));
      pic->*f = *v;
    }
  std::uint64_t base = 0;
  std::uint32_t ioregsel = 0, id = 0, irr = 0;
  if (auto ok = r.get(base, ioregsel, id, irr); !ok) return std::unexpected(ok.error().context("irqchip state: IOAPIC"));
  s.ioapic.base_address = base;
  s.ioapic.ioregsel = ioregsel;
  s.ioapic.id = id;
  s.ioapic.irr = irr;
  for (auto& e : s.ioapic.redirtbl) {
    auto v = r.get_u64();
    if (!v) return std::unexpected(v.error().context("irqchip state: IOAPIC redirection table"));
    e.bits = *v;
  }
  // The IOAPIC selects one of 0x40 registers; anything larger is not KVM's.
  if (s.ioapic.ioregsel > 0xff) return fail("irqchip state: IOAPIC ioregsel {:#x} out of range", s.ioapic.ioregsel);
  if (auto ok = r.expect_end(); !ok) return std::unexpected(ok.error().context("irqchip state"));
  return s;
}

std::vector<std::byte> encode_pit_state(const kvm_pit_state2& s) {
  ByteWriter w;
  w.put_u32(kPitStateVersion);
  for (const auto& ch : s.channels) {
    w.put_u32(ch.count);
    w.put_u16(ch.latched_count);
    for (auto f : kPitChannelBytes) w.put_u8(ch.*f);
    w.put_u64(static_cast<std::uint64_t>(ch.count_load_time));
  }
  w.put_u32(s.flags);
  return std::move(w).take();
}

Result<kvm_pit_state2> decode_pit_state(std::span<const std::byte> bytes) {
  ByteReader r(bytes);
  if (auto ok = check_version(r, kPitStateVersion, "PIT"); !ok) return std::unexpected(ok.error());
  kvm_pit_state2 s{};
  for (std::size_t i = 0; i < 3; ++i) {
    auto& ch = s.channels[i];
    std::uint32_t count = 0;
    std::uint16_t latched = 0;
    if (auto ok = r.get(count, latched); !ok) return std::unexpected(ok.error().context(fmt::format("PIT state: channel {}", i)));
    // The 8254 counts from at most 65536 (a programmed 0).
    if (count > 0x10000) return fail("PIT state: channel {} count {} exceeds 65536", i, count);
    ch.count = count;
    ch.latched_count = latched;
    for (auto f : kPitChannelBytes) {
      auto v = r.get_u8();
      if (!v) return std::unexpected(v.error().context(fmt::format("PIT state: channel {}", i)));
      ch.*f = *v;
    }
    // 0xff is KVM's "never programmed" (kvm_pit_reset).
    if (ch.mode > 5 && ch.mode != 0xff)
      return fail("PIT state: channel {} mode {} is not an 8254 mode (0..5, or 0xff: unprogrammed)", i, ch.mode);
    auto t = r.get_u64();
    if (!t) return std::unexpected(t.error().context(fmt::format("PIT state: channel {}", i)));
    ch.count_load_time = static_cast<std::int64_t>(*t);
  }
  auto flags = r.get_u32();
  if (!flags) return std::unexpected(flags.error().context("PIT state"));
  if (*flags & ~kPitFlags) return fail("PIT state: unknown flags {:#x}", *flags & ~kPitFlags);
  s.flags = *flags;
  if (auto ok = r.expect_end(); !ok) return std::unexpected(ok.error().context("PIT state"));
  return s;
}

std::vector<std::string> vm_state_differences(const VmState& a, const VmState& b) {
  std::vector<std::string> out;
  auto diff = [&](const std::string& name, auto x, auto y) {
    if (x != y) out.push_back(fmt::format("{}: {:#x} != {:#x}", name, x, y));
  };
  // clock.clock and the PIT's count_load_time are running host clocks, not
  // values a restore reproduces (KVM_SET_PIT2 reloads each counter "now"):
  // callers compare the clock with a tolerance of their own.
  if (a.irqchip.has_value() != b.irqchip.has_value()) {
    out.push_back(fmt::format("irqchip: {} != {}", a.irqchip ? "present" : "absent", b.irqchip ? "present" : "absent"));
  } else if (a.irqchip) {
    const auto& x = *a.irqchip;
    const auto& y = *b.irqchip;
    for (std::size_t i = 0; i < kPicFields.size(); ++i) {
      diff(fmt::format("pic_master.{}", kPicNames[i]), x.pic_master.*kPicFields[i], y.pic_master.*kPicFields[i]);
      diff(fmt::format("pic_slave.{}", kPicNames[i]), x.pic_slave.*kPicFields[i], y.pic_slave.*kPicFields[i]);
    }
    diff("ioapic.base_address", x.ioapic.base_address, y.ioapic.base_address);
    diff("ioapic.ioregsel", x.ioapic.ioregsel, y.ioapic.ioregsel);
    diff("ioapic.id", x.ioapic.id, y.ioapic.id);
    diff("ioapic.irr", x.ioapic.irr, y.ioapic.irr);
    for (std::size_t i = 0; i < KVM_IOAPIC_NUM_PINS; ++i)
      diff(fmt::format("ioapic.redirtbl[{}]", i), x.ioapic.redirtbl[i].bits, y.ioapic.redirtbl[i].bits);
  }
  if (a.pit.has_value() != b.pit.has_value()) {
    out.push_back(fmt::format("pit: {} != {}", a.pit ? "present" : "absent", b.pit ? "present" : "absent"));
  } else if (a.pit) {
    for (std::size_t i = 0; i < 3; ++i) {
      const auto& x = a.pit->channels[i];
      const auto& y = b.pit->channels[i];
      diff(fmt::format("pit.channels[{}].count", i), x.count, y.count);
      diff(fmt::format("pit.channels[{}].latched_count", i), x.latched_count, y.latched_count);
      for (std::size_t k = 0; k < kPitChannelBytes.size(); ++k)
        diff(fmt::format("pit.channels[{}].{}", i, kPitChannelByteNames[k]), x.*kPitChannelBytes[k],
             y.*kPitChannelBytes[k]);
    }
    diff("pit.flags", a.pit->flags, b.pit->flags);
  }
  return out;
}

}  // namespace ferry::kvm

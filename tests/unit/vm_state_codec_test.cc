// The VM-wide state encodings (clock, irqchip, PIT: kvm/vm_state.hh), the
// snapshot's VM config (kvm/machine.hh) and memory layout (kvm/snapshot.hh):
// round trips with every field non-trivial, the documented sizes, every
// rejection path by its message, and what vm_state_differences reports.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <limits>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kvm/machine.hh"
#include "kvm/snapshot.hh"
#include "kvm/vm_state.hh"

namespace ferry::kvm {
namespace {

using Bytes = std::vector<std::byte>;

// The decoder's error message, or "(decoded)" when it accepted the input.
template <class T>
std::string error_of(const Result<T>& r) {
  return r ? std::string("(decoded)") : r.error().message();
}

::testing::AssertionResult Mentions(const std::string& text, std::string_view part) {
  if (text.find(part) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "'" << text << "' does not mention '" << part << "'";
}

void put_le(Bytes& b, std::size_t offset, std::uint64_t value, std::size_t width) {
  for (std::size_t i = 0; i < width; ++i) b.at(offset + i) = std::byte(value >> (8 * i));
}

std::uint64_t get_le(const Bytes& b, std::size_t offset, std::size_t width) {
  std::uint64_t v = 0;
  for (std::size_t i = 0; i < width; ++i) v |= std::to_integer<std::uint64_t>(b.at(offset + i)) << (8 * i);
  return v;
}

Bytes prefix(const Bytes& b, std::size_t n) { return {b.begin(), b.begin() + static_cast<std::ptrdiff_t>(n)}; }

Bytes with_trailing_byte(Bytes b) {
  b.push_back(std::byte{0});
  return b;
}

// Every strict prefix of a valid encoding must be refused as truncated; the
// decoders must never read past the end or accept a short record.
template <class Decode>
void expect_every_prefix_truncated(const Bytes& full, Decode decode, std::string_view context) {
  for (std::size_t n = 0; n < full.size(); ++n) {
    const Bytes p = prefix(full, n);
    auto r = decode(std::span<const std::byte>(p));
    ASSERT_FALSE(r) << "a " << n << "-byte prefix of " << full.size() << " bytes was accepted";
    EXPECT_TRUE(Mentions(r.error().message(), "truncated")) << "prefix " << n;
    EXPECT_TRUE(Mentions(r.error().message(), context)) << "prefix " << n;
  }
}

// ---------------------------------------------------------------- samples

kvm_clock_data sample_clock() {
  kvm_clock_data c{};
  c.clock = 0x0123456789abcdefull;
  c.flags = KVM_CLOCK_TSC_STABLE | KVM_CLOCK_REALTIME | KVM_CLOCK_HOST_TSC;
  c.realtime = 0x1122334455667788ull;
  c.host_tsc = 0xfedcba9876543210ull;
  return c;
}

IrqchipState sample_irqchip() {
  IrqchipState s;
  // Distinct value in every PIC byte, so a swapped or skipped field shows.
  auto* m = reinterpret_cast<std::uint8_t*>(&s.pic_master);
  auto* sl = reinterpret_cast<std::uint8_t*>(&s.pic_slave);
  for (std::size_t i = 0; i < sizeof(kvm_pic_state); ++i) {
    m[i] = static_cast<std::uint8_t>(0x10 + i);
    sl[i] = static_cast<std::uint8_t>(0x80 + i);
  }
  s.ioapic.base_address = 0xfec00000;
  s.ioapic.ioregsel = 0x3e;
  s.ioapic.id = 0x0a;
  s.ioapic.irr = 0x00f0f0f1;
  for (std::size_t i = 0; i < KVM_IOAPIC_NUM_PINS; ++i)
    s.ioapic.redirtbl[i].bits = (std::uint64_t{i + 1} << 56) | 0x10000 | (0x20 + i);
  return s;
}

kvm_pit_state2 sample_pit() {
  kvm_pit_state2 s{};
  const std::uint32_t counts[3] = {0x10000, 0x1234, 0};
  const std::uint8_t modes[3] = {0xff, 2, 3};
  const std::int64_t load_times[3] = {-123456789, std::numeric_limits<std::int64_t>::max(),
                                      std::numeric_limits<std::int64_t>::min()};
  for (std::size_t i = 0; i < 3; ++i) {
    auto& ch = s.channels[i];
    const auto k = static_cast<std::uint8_t>(0x20 * (i + 1));
    ch.count = counts[i];
    ch.latched_count = static_cast<std::uint16_t>(0xa000 + i);
    ch.count_latched = static_cast<std::uint8_t>(k + 1);
    ch.status_latched = static_cast<std::uint8_t>(k + 2);
    ch.status = static_cast<std::uint8_t>(k + 3);
    ch.read_state = static_cast<std::uint8_t>(k + 4);
    ch.write_state = static_cast<std::uint8_t>(k + 5);
    ch.write_latch = static_cast<std::uint8_t>(k + 6);
    ch.rw_mode = static_cast<std::uint8_t>(k + 7);
    ch.mode = modes[i];
    ch.bcd = static_cast<std::uint8_t>(k + 9);
    ch.gate = static_cast<std::uint8_t>(k + 10);
    ch.count_load_time = load_times[i];
  }
  s.flags = KVM_PIT_FLAGS_HPET_LEGACY | KVM_PIT_FLAGS_SPEAKER_DATA_ON;
  return s;
}

// Layout offsets (vm_state.cc's header comment).
constexpr std::size_t kClockSize = 4 + 8 + 4 + 8 + 8;
constexpr std::size_t kIrqchipSize = 4 + 2 * 16 + 8 + 4 + 4 + 4 + 24 * 8;
constexpr std::size_t kIoregselOffset = 4 + 2 * 16 + 8;
constexpr std::size_t kPitChannelSize = 4 + 2 + 10 + 8;
constexpr std::size_t kPitSize = 4 + 3 * kPitChannelSize + 4;
constexpr std::size_t pit_mode_offset(std::size_t ch) { return 4 + ch * kPitChannelSize + 4 + 2 + 7; }
constexpr std::size_t kVmConfigSize = 4 + 4 + 4 + 1 + 1 + 4;

// ------------------------------------------------------------------ clock

TEST(VmStateCodecClock, RoundTripsEveryField) {
  const auto c = sample_clock();
  const Bytes b = encode_clock_state(c);
  ASSERT_EQ(b.size(), kClockSize);
  EXPECT_EQ(get_le(b, 0, 4), kClockStateVersion);
  EXPECT_EQ(get_le(b, 4, 8), c.clock);
  EXPECT_EQ(get_le(b, 12, 4), c.flags);
  EXPECT_EQ(get_le(b, 16, 8), c.realtime);
  EXPECT_EQ(get_le(b, 24, 8), c.host_tsc);
  auto d = decode_clock_state(b);
  ASSERT_TRUE(d) << d.error().what();
  EXPECT_EQ(d->clock, c.clock);
  EXPECT_EQ(d->flags, c.flags);
  EXPECT_EQ(d->realtime, c.realtime);
  EXPECT_EQ(d->host_tsc, c.host_tsc);
}

TEST(VmStateCodecClock, PaddingIsNotCarried) {
  auto c = sample_clock();
  c.pad0 = 0xdeadbeef;
  c.pad[2] = 7;
  EXPECT_EQ(encode_clock_state(c), encode_clock_state(sample_clock()));
  auto d = decode_clock_state(encode_clock_state(c));
  ASSERT_TRUE(d) << d.error().what();
  EXPECT_EQ(d->pad0, 0u);
  EXPECT_EQ(d->pad[2], 0u);
}

TEST(VmStateCodecClock, RejectsUnsupportedVersion) {
  for (std::uint32_t v : {0u, 2u, 0xffffffffu}) {
    Bytes b = encode_clock_state(sample_clock());
    put_le(b, 0, v, 4);
    auto err = error_of(decode_clock_state(b));
    EXPECT_TRUE(Mentions(err, fmt::format("clock state: version {} is not supported", v)));
  }
}

TEST(VmStateCodecClock, RejectsEveryTruncation) {
  expect_every_prefix_truncated(encode_clock_state(sample_clock()),
                                [](auto s) { return decode_clock_state(s); }, "clock state");
}

TEST(VmStateCodecClock, RejectsTrailingByte) {
  auto err = error_of(decode_clock_state(with_trailing_byte(encode_clock_state(sample_clock()))));
  EXPECT_TRUE(Mentions(err, "clock state: 1 unexpected trailing bytes"));
}

TEST(VmStateCodecClock, RejectsUnknownFlags) {
  for (std::uint32_t bad : {0x1u, 0x10u, 0x80000000u}) {
    auto c = sample_clock();
    c.flags |= bad;
    auto err = error_of(decode_clock_state(encode_clock_state(c)));
    EXPECT_TRUE(Mentions(err, fmt::format("clock state: unknown flags {:#x}", bad)));
  }
  kvm_clock_data none{};
  EXPECT_TRUE(decode_clock_state(encode_clock_state(none))) << "no flags at all is KVM's oldest answer";
}

// ---------------------------------------------------------------- irqchip

TEST(VmStateCodecIrqchip, RoundTripsEveryField) {
  const auto s = sample_irqchip();
  const Bytes b = encode_irqchip_state(s);
  ASSERT_EQ(b.size(), kIrqchipSize);
  EXPECT_EQ(get_le(b, 0, 4), kIrqchipStateVersion);
  EXPECT_EQ(get_le(b, 4, 1), s.pic_master.last_irr) << "PIC fields in struct order";
  EXPECT_EQ(get_le(b, 4 + 15, 1), s.pic_master.elcr_mask);
  EXPECT_EQ(get_le(b, 4 + 16, 1), s.pic_slave.last_irr);
  EXPECT_EQ(get_le(b, kIoregselOffset - 8, 8), s.ioapic.base_address);
  EXPECT_EQ(get_le(b, kIoregselOffset, 4), s.ioapic.ioregsel);
  EXPECT_EQ(get_le(b, kIrqchipSize - 8, 8), s.ioapic.redirtbl[23].bits);

  auto d = decode_irqchip_state(b);
  ASSERT_TRUE(d) << d.error().what();
  // kvm_pic_state is 16 u8 fields (no padding); the IOAPIC's pad is 0 in both.
  EXPECT_EQ(std::memcmp(&d->pic_master, &s.pic_master, sizeof(kvm_pic_state)), 0);
  EXPECT_EQ(std::memcmp(&d->pic_slave, &s.pic_slave, sizeof(kvm_pic_state)), 0);
  EXPECT_EQ(d->pic_slave.elcr, s.pic_slave.elcr);
  EXPECT_EQ(d->ioapic.base_address, s.ioapic.base_address);
  EXPECT_EQ(d->ioapic.ioregsel, s.ioapic.ioregsel);
  EXPECT_EQ(d->ioapic.id, s.ioapic.id);
  EXPECT_EQ(d->ioapic.irr, s.ioapic.irr);
  for (std::size_t i = 0; i < KVM_IOAPIC_NUM_PINS; ++i)
    EXPECT_EQ(d->ioapic.redirtbl[i].bits, s.ioapic.redirtbl[i].bits) << "pin " << i;
  EXPECT_EQ(std::memcmp(&d->ioapic, &s.ioapic, sizeof(kvm_ioapic_state)), 0);
}

TEST(VmStateCodecIrqchip, RejectsUnsupportedVersion) {
  Bytes b = encode_irqchip_state(sample_irqchip());
  put_le(b, 0, 2, 4);
  EXPECT_TRUE(Mentions(error_of(decode_irqchip_state(b)), "irqchip state: version 2 is not supported"));
}

TEST(VmStateCodecIrqchip, RejectsEveryTruncation) {
  expect_every_prefix_truncated(encode_irqchip_state(sample_irqchip()),
                                [](auto s) { return decode_irqchip_state(s); }, "irqchip state");
}

TEST(VmStateCodecIrqchip, RejectsTrailingByte) {
  auto err = error_of(decode_irqchip_state(with_trailing_byte(encode_irqchip_state(sample_irqchip()))));
  EXPECT_TRUE(Mentions(err, "irqchip state: 1 unexpected trailing bytes"));
}

TEST(VmStateCodecIrqchip, RejectsIoregselOutOfRange) {
  auto s = sample_irqchip();
  s.ioapic.ioregsel = 0xff;  // the largest an 8-bit IOREGSEL holds
  EXPECT_TRUE(decode_irqchip_state(encode_irqchip_state(s)));
  for (std::uint32_t bad : {0x100u, 0xffffffffu}) {
    s.ioapic.ioregsel = bad;
    EXPECT_TRUE(Mentions(error_of(decode_irqchip_state(encode_irqchip_state(s))),
                         fmt::format("IOAPIC ioregsel {:#x} out of range", bad)));
  }
}

// -------------------------------------------------------------------- PIT

TEST(VmStateCodecPit, RoundTripsEveryFieldIncludingNegativeLoadTime) {
  const auto s = sample_pit();
  const Bytes b = encode_pit_state(s);
  ASSERT_EQ(b.size(), kPitSize);
  EXPECT_EQ(get_le(b, 0, 4), kPitStateVersion);
  EXPECT_EQ(get_le(b, 4 + kPitChannelSize, 4), 0x1234u);
  EXPECT_EQ(get_le(b, pit_mode_offset(1), 1), 2u);
  EXPECT_EQ(get_le(b, 4 + kPitChannelSize - 8, 8), static_cast<std::uint64_t>(-123456789ll))
      << "count_load_time is two's complement";
  EXPECT_EQ(get_le(b, kPitSize - 4, 4), s.flags);

  auto d = decode_pit_state(b);
  ASSERT_TRUE(d) << d.error().what();
  for (std::size_t i = 0; i < 3; ++i) {
    const auto& x = d->channels[i];
    const auto& y = s.channels[i];
    EXPECT_EQ(x.count, y.count) << i;
    EXPECT_EQ(x.latched_count, y.latched_count) << i;
    EXPECT_EQ(x.count_latched, y.count_latched) << i;
    EXPECT_EQ(x.status_latched, y.status_latched) << i;
    EXPECT_EQ(x.status, y.status) << i;
    EXPECT_EQ(x.read_state, y.read_state) << i;
    EXPECT_EQ(x.write_state, y.write_state) << i;
    EXPECT_EQ(x.write_latch, y.write_latch) << i;
    EXPECT_EQ(x.rw_mode, y.rw_mode) << i;
    EXPECT_EQ(x.mode, y.mode) << i;
    EXPECT_EQ(x.bcd, y.bcd) << i;
    EXPECT_EQ(x.gate, y.gate) << i;
    EXPECT_EQ(x.count_load_time, y.count_load_time) << i;
  }
  EXPECT_EQ(d->flags, s.flags);
  EXPECT_EQ(std::memcmp(&*d, &s, sizeof s), 0) << "reserved words stay zero";
}

TEST(VmStateCodecPit, RejectsUnsupportedVersion) {
  Bytes b = encode_pit_state(sample_pit());
  put_le(b, 0, 0, 4);
  EXPECT_TRUE(Mentions(error_of(decode_pit_state(b)), "PIT state: version 0 is not supported"));
}

TEST(VmStateCodecPit, RejectsEveryTruncation) {
  expect_every_prefix_truncated(encode_pit_state(sample_pit()), [](auto s) { return decode_pit_state(s); },
                                "PIT state");
}

TEST(VmStateCodecPit, RejectsTrailingByte) {
  auto err = error_of(decode_pit_state(with_trailing_byte(encode_pit_state(sample_pit()))));
  EXPECT_TRUE(Mentions(err, "PIT state: 1 unexpected trailing bytes"));
}

TEST(VmStateCodecPit, CountAboveSixtyFiveThousandFiveHundredThirtySixIsRejected) {
  auto s = sample_pit();
  s.channels[1].count = 0x10000;
  EXPECT_TRUE(decode_pit_state(encode_pit_state(s))) << "65536 is a programmed 0";
  s.channels[1].count = 0x10001;
  EXPECT_TRUE(Mentions(error_of(decode_pit_state(encode_pit_state(s))), "PIT state: channel 1 count 65537 exceeds 65536"));
  s.channels[1].count = 0xffffffff;
  EXPECT_TRUE(Mentions(error_of(decode_pit_state(encode_pit_state(s))), "count 4294967295 exceeds 65536"));
}

TEST(VmStateCodecPit, AcceptsModesZeroToFiveAndUnprogrammedOnly) {
  for (unsigned mode = 0; mode <= 0xff; ++mode) {
    auto s = sample_pit();
    s.channels[2].mode = static_cast<std::uint8_t>(mode);
    auto d = decode_pit_state(encode_pit_state(s));
    if (mode <= 5 || mode == 0xff) {
      ASSERT_TRUE(d) << "mode " << mode << ": " << d.error().what();
      EXPECT_EQ(d->channels[2].mode, mode);
    } else {
      ASSERT_FALSE(d) << "mode " << mode << " accepted";
      EXPECT_TRUE(Mentions(d.error().message(), fmt::format("PIT state: channel 2 mode {} is not an 8254 mode", mode)));
    }
  }
}

TEST(VmStateCodecPit, ModeIsCheckedOnTheWireByte) {
  Bytes b = encode_pit_state(sample_pit());
  put_le(b, pit_mode_offset(0), 6, 1);
  EXPECT_TRUE(Mentions(error_of(decode_pit_state(b)), "channel 0 mode 6"));
}

TEST(VmStateCodecPit, RejectsUnknownFlags) {
  for (std::uint32_t bad : {0x4u, 0x100u, 0x80000000u}) {
    auto s = sample_pit();
    s.flags |= bad;
    EXPECT_TRUE(Mentions(error_of(decode_pit_state(encode_pit_state(s))), fmt::format("PIT state: unknown flags {:#x}", bad)));
  }
}

// ------------------------------------------------------------- VM config

TEST(VmStateCodecVmConfig, RoundTrips) {
  for (const VmConfigState c : {VmConfigState{GuestKind::kTestGuest, 4, true, true, 2'999'999},
                                VmConfigState{GuestKind::kTestGuest, 1, true, false, 0},
                                VmConfigState{GuestKind::kTestGuest, 16, false, false, 0xffffffff}}) {
    const Bytes b = encode_vm_config(c);
    ASSERT_EQ(b.size(), kVmConfigSize);
    EXPECT_EQ(get_le(b, 0, 4), kVmConfigVersion);
    EXPECT_EQ(get_le(b, 8, 4), c.vcpus);
    EXPECT_EQ(get_le(b, 12, 1), c.irqchip ? 1u : 0u);
    EXPECT_EQ(get_le(b, 13, 1), c.pit ? 1u : 0u);
    EXPECT_EQ(get_le(b, 14, 4), c.tsc_khz);
    auto d = decode_vm_config(b);
    ASSERT_TRUE(d) << d.error().what();
    EXPECT_EQ(*d, c);
  }
}

TEST(VmStateCodecVmConfig, RejectsUnsupportedVersion) {
  Bytes b = encode_vm_config({GuestKind::kTestGuest, 2, true, true, 1000});
  put_le(b, 0, 2, 4);
  EXPECT_TRUE(Mentions(error_of(decode_vm_config(b)), "VM config: version 2 is not supported"));
}

TEST(VmStateCodecVmConfig, RejectsEveryTruncationAndTrailingByte) {
  const Bytes b = encode_vm_config({GuestKind::kTestGuest, 2, true, true, 1000});
  expect_every_prefix_truncated(b, [](auto s) { return decode_vm_config(s); }, "VM config");
  EXPECT_TRUE(Mentions(error_of(decode_vm_config(with_trailing_byte(b))), "VM config: 1 unexpected trailing bytes"));
}

TEST(VmStateCodecVmConfig, RejectsUnknownGuestKind) {
  // 1 is the built-in test guest, 2 a Linux guest.
  for (std::uint32_t kind : {0u, 3u, 0xffffffffu}) {
    VmConfigState c{static_cast<GuestKind>(kind), 2, true, true, 1000};
    EXPECT_TRUE(Mentions(error_of(decode_vm_config(encode_vm_config(c))), fmt::format("unknown guest kind {}", kind)));
  }
}

TEST(VmStateCodecVmConfig, AcceptsLinuxGuestsOnlyWithAnIrqchip) {
  auto ok = decode_vm_config(encode_vm_config({GuestKind::kLinux, 2, true, true, 1000}));
  ASSERT_TRUE(ok) << ok.error().what();
  EXPECT_EQ(ok->kind, GuestKind::kLinux);
  EXPECT_TRUE(Mentions(error_of(decode_vm_config(encode_vm_config({GuestKind::kLinux, 2, false, false, 1000}))),
                       "a Linux guest without an irqchip"));
}

TEST(VmStateCodecVmConfig, RejectsVcpuCountOutsideOneToSixteen) {
  EXPECT_TRUE(Mentions(error_of(decode_vm_config(encode_vm_config({GuestKind::kTestGuest, 0, true, true, 1}))),
                       "VM config: 0 vCPUs (1..16)"));
  EXPECT_TRUE(Mentions(error_of(decode_vm_config(encode_vm_config({GuestKind::kTestGuest, 17, true, true, 1}))),
                       "VM config: 17 vCPUs (1..16)"));
}

TEST(VmStateCodecVmConfig, RejectsFlagBytesOtherThanZeroOrOne) {
  for (std::size_t offset : {12u, 13u}) {  // irqchip, pit
    Bytes b = encode_vm_config({GuestKind::kTestGuest, 2, true, true, 1000});
    put_le(b, offset, 2, 1);
    EXPECT_TRUE(Mentions(error_of(decode_vm_config(b)), "irqchip/pit flags must be 0 or 1")) << "offset " << offset;
  }
}

TEST(VmStateCodecVmConfig, RejectsPitWithoutIrqchip) {
  EXPECT_TRUE(Mentions(error_of(decode_vm_config(encode_vm_config({GuestKind::kTestGuest, 2, false, true, 1000}))),
                       "a PIT without an irqchip"));
}

// ---------------------------------------------------------- memory layout

std::vector<SnapshotRegion> sample_layout() {
  return {
      {0, 0, 1ull << 20, 0x1000, 0x0123456789abcdefull},
      {1, 4ull << 30, 512ull << 10, 0x101000, 0xfedcba9876543210ull},
      {7, 0x200000, 0x3000, 0x181000, 0},
  };
}

std::string layout_error(std::span<const SnapshotRegion> regions) {
  return error_of(decode_memory_layout(encode_memory_layout(regions)));
}

TEST(VmStateCodecMemoryLayout, RoundTrips) {
  const auto regions = sample_layout();
  const Bytes b = encode_memory_layout(regions);
  ASSERT_EQ(b.size(), 8 + regions.size() * (4 + 4 * 8));
  EXPECT_EQ(get_le(b, 0, 4), kMemoryLayoutVersion);
  EXPECT_EQ(get_le(b, 4, 4), regions.size());
  auto d = decode_memory_layout(b);
  ASSERT_TRUE(d) << d.error().what();
  EXPECT_EQ(*d, regions);
}

TEST(VmStateCodecMemoryLayout, RejectsUnsupportedVersionTruncationAndTrailingByte) {
  Bytes b = encode_memory_layout(sample_layout());
  expect_every_prefix_truncated(b, [](auto s) { return decode_memory_layout(s); }, "memory layout");
  EXPECT_TRUE(Mentions(error_of(decode_memory_layout(with_trailing_byte(b))), "memory layout: 1 unexpected trailing bytes"));
  put_le(b, 0, 2, 4);
  EXPECT_TRUE(Mentions(error_of(decode_memory_layout(b)), "memory layout: version 2 is not supported"));
}

TEST(VmStateCodecMemoryLayout, RejectsZeroRegions) {
  EXPECT_TRUE(Mentions(layout_error({}), "memory layout: no memory regions"));
}

TEST(VmStateCodecMemoryLayout, AcceptsAtMostTheRegionLimit) {
  std::vector<SnapshotRegion> regions;
  for (std::uint32_t i = 0; i < kMaxSnapshotRegions; ++i)
    regions.push_back({i, std::uint64_t{i} * kPageSize, kPageSize, (std::uint64_t{i} + 1) * kPageSize, i});
  auto d = decode_memory_layout(encode_memory_layout(regions));
  ASSERT_TRUE(d) << d.error().what();
  EXPECT_EQ(d->size(), kMaxSnapshotRegions);

  regions.push_back({kMaxSnapshotRegions, 0x100000000ull, kPageSize, 0x100000000ull, 0});
  EXPECT_TRUE(Mentions(layout_error(regions), "memory layout: 65 regions (at most 64)"));
}

TEST(VmStateCodecMemoryLayout, HugeCountIsRejectedBeforeReadingRegions) {
  Bytes b(8);
  put_le(b, 0, kMemoryLayoutVersion, 4);
  put_le(b, 4, 0xffffffff, 4);
  EXPECT_TRUE(Mentions(error_of(decode_memory_layout(b)), "4294967295 regions (at most 64)"));
}

TEST(VmStateCodecMemoryLayout, RejectsUnalignedOrEmptyRegions) {
  struct Case {
    const char* what;
    void (*mutate)(SnapshotRegion&);
  };
  const Case cases[] = {
      {"unaligned gpa", [](SnapshotRegion& r) { r.gpa += 0x800; }},
      {"unaligned size", [](SnapshotRegion& r) { r.size += 1; }},
      {"unaligned file offset", [](SnapshotRegion& r) { r.file_offset += 8; }},
      // Zero is a page multiple, but an empty region is still refused (with
      // the same "not page-aligned" message).
      {"zero size", [](SnapshotRegion& r) { r.size = 0; }},
  };
  for (const auto& c : cases) {
    auto regions = sample_layout();
    c.mutate(regions[1]);
    const auto err = layout_error(regions);
    EXPECT_TRUE(Mentions(err, "memory layout: region 1 (gpa")) << c.what;
    EXPECT_TRUE(Mentions(err, "is not page-aligned")) << c.what;
  }
}

TEST(VmStateCodecMemoryLayout, RejectsDuplicateSlot) {
  auto regions = sample_layout();
  regions[2].slot = regions[0].slot;
  EXPECT_TRUE(Mentions(layout_error(regions), "memory layout: regions 0 and 2 both use slot 0"));
}

TEST(VmStateCodecMemoryLayout, RejectsOverlappingGuestRanges) {
  auto regions = sample_layout();
  regions[2].gpa = regions[0].gpa + regions[0].size - kPageSize;  // last page of region 0
  EXPECT_TRUE(Mentions(layout_error(regions), "memory layout: regions 0 and 2 overlap in guest memory"));
  regions[2].gpa = regions[0].gpa + regions[0].size;  // adjacent is fine
  EXPECT_TRUE(decode_memory_layout(encode_memory_layout(regions)));
  // One region wholly inside another.
  regions[2].gpa = regions[1].gpa + kPageSize;
  EXPECT_TRUE(Mentions(layout_error(regions), "memory layout: regions 1 and 2 overlap in guest memory"));
}

TEST(VmStateCodecMemoryLayout, RejectsOverlappingFileRanges) {
  auto regions = sample_layout();
  regions[2].file_offset = regions[1].file_offset + kPageSize;
  EXPECT_TRUE(Mentions(layout_error(regions), "memory layout: regions 1 and 2 overlap in the file"));
  regions[2].file_offset = regions[1].file_offset + regions[1].size;  // adjacent is fine
  EXPECT_TRUE(decode_memory_layout(encode_memory_layout(regions)));
}

TEST(VmStateCodecMemoryLayout, RejectsWrapAround) {
  constexpr std::uint64_t kTopPage = ~std::uint64_t{0} - kPageSize + 1;
  auto regions = sample_layout();
  regions[1].gpa = kTopPage;
  regions[1].size = 2 * kPageSize;
  EXPECT_TRUE(Mentions(layout_error(regions), "memory layout: region 1 wraps around"));
  regions = sample_layout();
  regions[1].file_offset = kTopPage;
  regions[1].size = 2 * kPageSize;
  EXPECT_TRUE(Mentions(layout_error(regions), "memory layout: region 1 wraps around"));
}

// ------------------------------------------------------ vm_state_differences

VmState sample_vm_state() {
  VmState s;
  s.clock = sample_clock();
  s.irqchip = sample_irqchip();
  s.pit = sample_pit();
  return s;
}

TEST(VmStateCodecDifferences, EqualStatesHaveNone) {
  EXPECT_TRUE(vm_state_differences(sample_vm_state(), sample_vm_state()).empty());
  EXPECT_TRUE(vm_state_differences(VmState{}, VmState{}).empty());
}

TEST(VmStateCodecDifferences, NamesAChangedRedirectionEntry) {
  auto a = sample_vm_state();
  auto b = a;
  b.irqchip->ioapic.redirtbl[5].bits ^= 0x10000;  // unmask pin 5
  const auto d = vm_state_differences(a, b);
  ASSERT_EQ(d.size(), 1u);
  EXPECT_TRUE(Mentions(d[0], "ioapic.redirtbl[5]: "));
}

TEST(VmStateCodecDifferences, NamesAChangedPicField) {
  auto a = sample_vm_state();
  auto b = a;
  b.irqchip->pic_slave.imr = 0xfb;
  const auto d = vm_state_differences(a, b);
  ASSERT_EQ(d.size(), 1u);
  EXPECT_TRUE(Mentions(d[0], "pic_slave.imr: "));
  EXPECT_TRUE(Mentions(d[0], fmt::format("{:#x} != 0xfb", a.irqchip->pic_slave.imr)));
}

TEST(VmStateCodecDifferences, NamesPitFieldsAndPresence) {
  auto a = sample_vm_state();
  auto b = a;
  b.pit->channels[2].mode = 4;
  b.pit->flags = 0;
  const auto d = vm_state_differences(a, b);
  ASSERT_EQ(d.size(), 2u);
  EXPECT_TRUE(Mentions(d[0], "pit.channels[2].mode"));
  EXPECT_TRUE(Mentions(d[1], "pit.flags"));

  b = a;
  b.irqchip.reset();
  b.pit.reset();
  const auto p = vm_state_differences(a, b);
  ASSERT_EQ(p.size(), 2u);
  EXPECT_EQ(p[0], "irqchip: present != absent");
  EXPECT_EQ(p[1], "pit: present != absent");
}

// Deliberate: the kvmclock and each PIT channel's count_load_time are
// running host clocks that a restore does not reproduce (KVM_SET_PIT2
// reloads the counters "now"), so vm_state_differences leaves them to the
// caller, who compares the clock with a tolerance of its own.
TEST(VmStateCodecDifferences, RunningClocksAreNotCompared) {
  auto a = sample_vm_state();
  auto b = a;
  b.clock.clock += 1'000'000'000;
  b.clock.realtime += 1;
  b.clock.host_tsc += 1;
  for (auto& ch : b.pit->channels) ch.count_load_time += 12345;
  EXPECT_TRUE(vm_state_differences(a, b).empty());
}

}  // namespace
}  // namespace ferry::kvm

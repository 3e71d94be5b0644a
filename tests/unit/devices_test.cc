// The device model without KVM: the bus registry, the device manager's
// registration and state sections, and the platform devices' registers.
#include <gtest/gtest.h>

#include <array>
#include <cstring>

#include "kvm/devices/acpi_pm/acpi_pm.hh"
#include "kvm/devices/bus.hh"
#include "kvm/devices/guest_access.hh"
#include "kvm/devices/manager.hh"
#include "kvm/devices/reset/reset.hh"
#include "kvm/devices/uart/uart.hh"
#include "kvm/linux/acpi.hh"
#include "kvm/machine.hh"
#include "userspace/base/hex.hh"

namespace ferry::kvm {
namespace {

using state::SectionType;

// A device that only claims ranges (bus tests).
class RangeDevice final : public Device {
 public:
  RangeDevice(std::string id, std::vector<IoRange> r) : id_(std::move(id)), ranges_(std::move(r)) {}
  DeviceDescription describe() const override { return {"test", id_, ""}; }
  std::vector<IoRange> ranges() const override { return ranges_; }
  IoOutcome read(const IoRange&, std::uint64_t, std::span<std::uint8_t>) override { return IoOutcome::kDone; }
  IoOutcome write(const IoRange&, std::uint64_t, std::span<const std::uint8_t>) override { return IoOutcome::kDone; }

 private:
  std::string id_;
  std::vector<IoRange> ranges_;
};

TEST(Bus, FindsTheDeviceAndTheOffsetInsideItsRange) {
  RangeDevice a("a", {}), b("b", {});
  Bus bus;
  ASSERT_TRUE(bus.add({Space::kPio, 0x3f8, 8}, a));
  ASSERT_TRUE(bus.add({Space::kPio, 0x400, 4}, b));
  ASSERT_TRUE(bus.add({Space::kMmio, 0xd0000000, 0x1000}, b));
  auto hit = bus.find(Space::kPio, 0x3fd);
  ASSERT_TRUE(hit);
  EXPECT_EQ(hit->device, &a);
  EXPECT_EQ(hit->offset, 5u);
  EXPECT_FALSE(bus.find(Space::kPio, 0x3f7));
  EXPECT_FALSE(bus.find(Space::kPio, 0x400 + 4));
  EXPECT_EQ(bus.find(Space::kPio, 0x403)->device, &b);
  // The spaces are separate: port 0x3f8 is not MMIO address 0x3f8.
  EXPECT_FALSE(bus.find(Space::kMmio, 0x3f8));
  EXPECT_EQ(bus.find(Space::kMmio, 0xd0000fff)->offset, 0xfffu);
}

TEST(Bus, RefusesOverlapsFromEitherSideAndAcceptsNeighbours) {
  RangeDevice a("a", {}), b("b", {});
  Bus bus;
  ASSERT_TRUE(bus.add({Space::kPio, 0x600, 4}, a));
  auto below = bus.add({Space::kPio, 0x5fe, 4}, b);  // reaches into a
  ASSERT_FALSE(below);
  EXPECT_NE(below.error().message().find("overlaps a"), std::string::npos) << below.error().what();
  EXPECT_FALSE(bus.add({Space::kPio, 0x603, 1}, b));  // starts inside a
  EXPECT_FALSE(bus.add({Space::kPio, 0x500, 0x200}, b));  // covers a
  EXPECT_TRUE(bus.add({Space::kPio, 0x5fc, 4}, b));   // ends where a starts
  EXPECT_TRUE(bus.add({Space::kPio, 0x604, 2}, b));   // starts where a ends
  EXPECT_FALSE(bus.add({Space::kPio, 0xfffe, 4}, b)); // past the 64 KiB port space
  EXPECT_FALSE(bus.add({Space::kPio, 0x700, 0}, b));  // empty
  EXPECT_EQ(bus.size(), 3u);
}

TEST(DeviceManager, ARefusedDeviceLeavesNothingRegistered) {
  DeviceManager m([](std::string) {});
  ASSERT_TRUE(m.add(std::make_unique<RangeDevice>("first", std::vector<IoRange>{{Space::kPio, 0x100, 4}})));
  // Its first range is free, its second overlaps: neither may stay.
  auto r = m.add(std::make_unique<RangeDevice>(
      "second", std::vector<IoRange>{{Space::kPio, 0x200, 4}, {Space::kPio, 0x102, 1}}));
  ASSERT_FALSE(r);
  EXPECT_FALSE(m.bus().find(Space::kPio, 0x200));
  EXPECT_EQ(m.describe().size(), 1u);
  auto dup = m.add(std::make_unique<RangeDevice>("first", std::vector<IoRange>{{Space::kPio, 0x300, 1}}));
  ASSERT_FALSE(dup);
  EXPECT_NE(dup.error().message().find("two devices named first"), std::string::npos);
}

// The platform a Linux guest gets, as Machine builds it.
struct Platform {
  std::vector<bool> line;  // every level the UART drove its IRQ to
  std::string stopped;
  DeviceManager m{[this](std::string why) { stopped = why; }};
  Uart* uart = nullptr;
  AcpiPm* pm = nullptr;
  Platform() {
    uart = *m.add(std::make_unique<Uart>([](std::string_view) {}, [this](bool l) { line.push_back(l); }));
    pm = *m.add(std::make_unique<AcpiPm>());
    EXPECT_TRUE(m.add(std::make_unique<ResetPorts>()));
  }
  state::StateImage image() const {
    state::StateWriter w;
    m.save(w);
    return *state::parse_state(w.finish());
  }
};

std::uint8_t port_read(Device& d, const IoRange& r, std::uint64_t off) {
  std::array<std::uint8_t, 1> b{};
  d.read(r, off, b);
  return b[0];
}

TEST(AcpiPm, Pm1EnableReadsBackAndTravelsInItsSection) {
  Platform src;
  const IoRange evt{Space::kPio, kAcpiPm1aEventPort, 4};
  const std::array<std::uint8_t, 2> en{0x21, 0x01};
  EXPECT_EQ(src.pm->write(evt, 2, en), IoOutcome::kDone);
  EXPECT_EQ(src.pm->pm1_enable(), 0x0121);
  std::array<std::uint8_t, 4> all{};
  src.pm->read(evt, 0, all);
  EXPECT_EQ(all, (std::array<std::uint8_t, 4>{0, 0, 0x21, 0x01}));  // PM1_STS 0, PM1_EN as written

  const auto img = src.image();
  const auto* sec = img.find(SectionType::kDeviceOther, static_cast<std::uint32_t>(OtherDevice::kAcpiPm));
  ASSERT_NE(sec, nullptr);
  EXPECT_EQ(sec->version, kAcpiPmStateVersion);
  Platform dst;
  ASSERT_TRUE(dst.m.restore(img));
  EXPECT_EQ(dst.pm->pm1_enable(), 0x0121);
}

TEST(AcpiPm, S5PowersOffOtherSleepStatesAreIgnored) {
  AcpiPm pm;
  const IoRange cnt{Space::kPio, kAcpiPm1aControlPort, 2};
  EXPECT_EQ(port_read(pm, cnt, 0), kAcpiSciEnable);
  auto put16 = [&](std::uint16_t v) {
    const std::array<std::uint8_t, 2> b{static_cast<std::uint8_t>(v), static_cast<std::uint8_t>(v >> 8)};
    return pm.write(cnt, 0, b);
  };
  EXPECT_EQ(put16(kAcpiSleepEnable | (3 << 10)), IoOutcome::kDone);  // S3: not supported
  EXPECT_EQ(put16(kAcpiS5SleepType << 10), IoOutcome::kDone);       // type without SLP_EN
  EXPECT_EQ(put16(kAcpiSleepEnable | (kAcpiS5SleepType << 10)), IoOutcome::kPowerOff);
}

TEST(ResetPorts, EachResetPathRebootsAndThe8042LooksIdle) {
  ResetPorts r;
  const auto ranges = r.ranges();
  ASSERT_EQ(ranges.size(), 3u);
  const std::array<std::uint8_t, 1> fe{0xfe}, other{0x01}, pci_reset{0x06};
  for (const auto& range : ranges) {
    if (range.base == 0xcf9) {
      EXPECT_EQ(r.write(range, 0, other), IoOutcome::kDone);
      EXPECT_EQ(r.write(range, 0, pci_reset), IoOutcome::kReboot);
    } else {
      EXPECT_EQ(r.write(range, 0, other), IoOutcome::kDone) << range.base;
      EXPECT_EQ(r.write(range, 0, fe), IoOutcome::kReboot) << range.base;
    }
  }
  EXPECT_EQ(port_read(r, {Space::kPio, 0x64, 1}, 0), 0x00);  // input buffer empty
}

TEST(DeviceManager, RestoreRejectsUnknownVersionsMissingStateAndForeignDevices) {
  Platform src;
  const auto good = src.image();
  auto rebuilt = [&](auto edit) {
    state::StateWriter w;
    for (auto s : good.sections) {
      if (!edit(s)) continue;
      w.add(s.type, s.instance, s.version, s.payload);
    }
    return *state::parse_state(w.finish());
  };
  {  // A newer ACPI PM state this build cannot read.
    Platform dst;
    auto r = dst.m.restore(rebuilt([](state::Section& s) {
      if (s.type == SectionType::kDeviceOther) s.version = 2;
      return true;
    }));
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message().find("ACPI PM state version 2 is not supported"), std::string::npos) << r.error().what();
  }
  {  // COM1's state is in every image ever written: its absence is an error.
    Platform dst;
    auto r = dst.m.restore(rebuilt([](state::Section& s) { return s.type != SectionType::kSerial; }));
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message().find("no state for device com1"), std::string::npos) << r.error().what();
  }
  {  // Images from before the PM block carried PM1_EN restore as before.
    Platform dst;
    EXPECT_TRUE(dst.m.restore(rebuilt([](state::Section& s) { return s.type != SectionType::kDeviceOther; })));
    EXPECT_EQ(dst.pm->pm1_enable(), 0);
  }
  {  // State for a device this VM was not built with.
    Platform dst;
    auto r = dst.m.restore(rebuilt([](state::Section& s) {
      if (s.type == SectionType::kDeviceOther) s.instance = 77;
      return true;
    }));
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message().find("this VM does not have"), std::string::npos) << r.error().what();
  }
}

TEST(Uart, EveryTransmittedByteIsAFreshEdgeOnTheIrqLine) {
  Platform p;
  const IoRange com1{Space::kPio, kCom1Base, 8};
  const std::array<std::uint8_t, 1> thre_irq{0x02}, byte{'x'};
  p.uart->write(com1, 1, thre_irq);  // IER: THRE interrupt on: the line rises
  ASSERT_EQ(p.line, (std::vector<bool>{true}));
  p.uart->write(com1, 0, byte);  // a byte leaves at once: low, then high again
  EXPECT_EQ(p.line, (std::vector<bool>{true, false, true}));
  EXPECT_EQ(port_read(*p.uart, com1, 2) & 0x0f, 0x02);  // IIR: THRE; reading it acknowledges
  EXPECT_EQ(p.line.back(), false);
  // A restored UART takes the line level the restored interrupt controllers
  // hold (captured together), so the next edge is not lost.
  Platform dst;
  ASSERT_TRUE(dst.m.restore(p.image()));
  dst.uart->console_input("k");  // RX interrupt is off: no edge
  EXPECT_TRUE(dst.line.empty());
}

// What a device's DMA (or a guest's descriptor) may name: only whole ranges
// inside RAM; nothing that starts outside, runs past the end or wraps.
TEST(GuestAccess, ReachesOnlyGuestRam) {
  auto low = GuestRegion::create(0, 0, 16 * kPageSize, "ferry-access-low");
  auto high = GuestRegion::create(1, 1ull << 32, 4 * kPageSize, "ferry-access-high");
  ASSERT_TRUE(low && high);
  const GuestAccess mem({&*low, &*high}, nullptr);
  const std::array<std::byte, 4> in{std::byte{1}, std::byte{2}, std::byte{3}, std::byte{4}};
  ASSERT_TRUE(mem.write(3 * kPageSize - 2, in));  // across a page boundary
  std::array<std::byte, 4> out{};
  ASSERT_TRUE(mem.read(3 * kPageSize - 2, out));
  EXPECT_EQ(out, in);
  EXPECT_EQ(std::memcmp(low->host_at(3 * kPageSize - 2), in.data(), in.size()), 0);
  ASSERT_TRUE(mem.write((1ull << 32) + 4 * kPageSize - 4, in));  // the last bytes of the high region

  auto past = mem.write(16 * kPageSize - 2, in);  // runs off the end of low RAM
  ASSERT_FALSE(past);
  EXPECT_NE(past.error().message().find("runs past the end"), std::string::npos) << past.error().what();
  auto hole = mem.read(16 * kPageSize, out);  // the hole between the regions
  ASSERT_FALSE(hole);
  EXPECT_NE(hole.error().message().find("not RAM"), std::string::npos) << hole.error().what();
  // A length that would wrap the address space if added to the address.
  std::vector<std::byte> big(1);
  EXPECT_FALSE(mem.read(~0ull, big));
  EXPECT_FALSE(mem.write(0, {}));  // empty
}

// What a migration destination checks before it accepts a VM: the devices
// it would build are the source's, or the refusal names the difference.
TEST(SameDevices, AcceptsOnlyTheSameSetAndNamesTheFirstDifference) {
  const std::vector<DeviceDescription> here{{"uart-16550a", "com1", "port=0x3f8 irq=4"}, {"acpi-pm", "pm", "port=0x600"}};
  EXPECT_TRUE(same_devices(here, here));
  auto extra = here;
  extra.push_back({"virtio-net", "net0", "mmio=0xd0000000 irq=5"});
  auto r = same_devices(extra, here);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message().find("device net0 (virtio-net mmio=0xd0000000 irq=5), which this host does not build"),
            std::string::npos)
      << r.error().what();
  auto moved = here;
  moved[0].config = "port=0x2f8 irq=3";
  r = same_devices(moved, here);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message().find("device com1 is uart-16550a port=0x2f8 irq=3 in the VM, uart-16550a port=0x3f8 irq=4 here"),
            std::string::npos)
      << r.error().what();
  r = same_devices({here[0]}, here);  // the host would build one more
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message().find("this host builds com1 (uart-16550a port=0x3f8 irq=4), pm (acpi-pm port=0x600)"),
            std::string::npos)
      << r.error().what();
}

TEST(Hex, RoundTripsAndSaysWhatIsWrong) {
  const std::array<std::byte, 3> b{std::byte{0x00}, std::byte{0xab}, std::byte{0x7f}};
  EXPECT_EQ(to_hex(b), "00ab7f");
  auto back = from_hex("00AB7f");
  ASSERT_TRUE(back);
  EXPECT_EQ(*back, std::vector<std::byte>(b.begin(), b.end()));
  auto odd = from_hex("abc");
  ASSERT_FALSE(odd);
  EXPECT_NE(odd.error().message().find("even count"), std::string::npos);
  auto bad = from_hex("00zz");
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message().find("'z' at offset 2"), std::string::npos) << bad.error().what();
}

}  // namespace
}  // namespace ferry::kvm

namespace ferry::kvm {
namespace {

// PkgLength at p (20.2.4): the length it encodes and its own size.
std::pair<std::size_t, std::size_t> pkg_length(const std::uint8_t* p) {
  const std::size_t extra = p[0] >> 6;
  if (extra == 0) return {p[0] & 0x3f, 1};
  std::size_t n = p[0] & 0x0f;
  for (std::size_t i = 0; i < extra; ++i) n |= std::size_t{p[1 + i]} << (4 + 8 * i);
  return {n, 1 + extra};
}

TEST(Acpi, TheDsdtDescribesEachVirtioMmioDeviceAsLinuxLooksForIt) {
  EXPECT_EQ(dsdt_aml({}).size(), 14u) << "without devices, only \\_S5";
  const std::vector<AcpiMmioDevice> devs{{0xd0000000, 0x200, 16}, {0xd0001000, 0x200, 17}};
  const auto aml = dsdt_aml(devs);
  // \_SB_ scope right after \_S5, its PkgLength covering the rest exactly
  // (two devices need the two-byte form).
  ASSERT_GT(aml.size(), 14u);
  const std::uint8_t* scope = aml.data() + 14;
  ASSERT_EQ(scope[0], 0x10);
  const auto [len, len_bytes] = pkg_length(scope + 1);
  EXPECT_EQ(len_bytes, 2u);
  EXPECT_EQ(len, aml.size() - 14 - 1);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(scope + 1 + len_bytes), 5), "\\_SB_");
  const std::string text(aml.begin(), aml.end());
  for (std::size_t i = 0; i < devs.size(); ++i) {
    SCOPED_TRACE(i);
    const auto dev = text.find(fmt::format("VR0{}", i));
    ASSERT_NE(dev, std::string::npos);
    EXPECT_EQ(static_cast<std::uint8_t>(text[dev - 2]), 0x82) << "DeviceOp precedes the name";
    EXPECT_NE(text.find("_HID\x0dLNRO0005", dev), std::string::npos);
    // Memory32Fixed (read-write, base, size) then the extended interrupt
    // (consumer, edge, active high, exclusive, one GSI), then the end tag.
    std::vector<std::uint8_t> crs = {0x86, 0x09, 0x00, 0x01};
    for (int b = 0; b < 4; ++b) crs.push_back(static_cast<std::uint8_t>(devs[i].base >> (8 * b)));
    crs.insert(crs.end(), {0x00, 0x02, 0x00, 0x00, 0x89, 0x06, 0x00, 0x03, 0x01});
    for (int b = 0; b < 4; ++b) crs.push_back(static_cast<std::uint8_t>(devs[i].gsi >> (8 * b)));
    crs.insert(crs.end(), {0x79, 0x00});
    EXPECT_NE(text.find(std::string(crs.begin(), crs.end()), dev), std::string::npos) << "_CRS of device " << i;
  }
  // In the tables: the DSDT's checksum holds with the devices in it.
  auto ram = GuestRegion::create(0, 0, 2 << 20, "ferry-acpi-test");
  ASSERT_TRUE(ram);
  ASSERT_TRUE(write_acpi_tables(*ram, 1, devs));
  const std::string area(reinterpret_cast<const char*>(ram->host_at(kAcpiTablesGpa)), 0x2000);
  const auto at = area.find("DSDT");
  ASSERT_NE(at, std::string::npos);
  std::uint32_t dsdt_len = 0;
  std::memcpy(&dsdt_len, area.data() + at + 4, 4);
  EXPECT_EQ(dsdt_len, 36 + aml.size());
  EXPECT_EQ(acpi_checksum(reinterpret_cast<const std::uint8_t*>(area.data() + at), dsdt_len), 0);
  const std::vector<AcpiMmioDevice> high{{1ull << 32, 0x200, 16}};
  EXPECT_FALSE(write_acpi_tables(*ram, 1, high));
}

}  // namespace
}  // namespace ferry::kvm

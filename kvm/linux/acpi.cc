// ACPI tables (ACPI 6.x layouts; offsets from the spec's table definitions).
#include "kvm/linux/acpi.hh"

#include <cstring>
#include <string_view>
#include <vector>

namespace ferry::kvm {
namespace {

class Table {
 public:
  Table(std::string_view sig, std::uint8_t revision) {
    bytes_.resize(36);  // the common header
    std::memcpy(bytes_.data(), sig.data(), 4);
    bytes_[8] = revision;
    std::memcpy(bytes_.data() + 10, "FERRY ", 6);     // OEM ID
    std::memcpy(bytes_.data() + 16, "FERRYVM ", 8);   // OEM table ID
    put32(24, 1);                                     // OEM revision
    std::memcpy(bytes_.data() + 28, "FRRY", 4);       // creator ID
    put32(32, 1);                                     // creator revision
  }
  void append(std::initializer_list<std::uint8_t> b) { bytes_.insert(bytes_.end(), b); }
  void append8(std::uint8_t v) { bytes_.push_back(v); }
  void append16(std::uint16_t v) { append({std::uint8_t(v), std::uint8_t(v >> 8)}); }
  void append32(std::uint32_t v) { append16(std::uint16_t(v)), append16(std::uint16_t(v >> 16)); }
  void append64(std::uint64_t v) { append32(std::uint32_t(v)), append32(std::uint32_t(v >> 32)); }
  void resize(std::size_t n) { bytes_.resize(n); }
  void put8(std::size_t off, std::uint8_t v) { bytes_[off] = v; }
  void put16(std::size_t off, std::uint16_t v) { put8(off, std::uint8_t(v)), put8(off + 1, std::uint8_t(v >> 8)); }
  void put32(std::size_t off, std::uint32_t v) { put16(off, std::uint16_t(v)), put16(off + 2, std::uint16_t(v >> 16)); }
  void put64(std::size_t off, std::uint64_t v) { put32(off, std::uint32_t(v)), put32(off + 4, std::uint32_t(v >> 32)); }
  // A Generic Address Structure (12 bytes): system I/O space, byte access.
  void put_gas_io(std::size_t off, std::uint16_t port, std::uint8_t bits) {
    put8(off, 1);         // address space: system I/O
    put8(off + 1, bits);  // register bit width
    put8(off + 2, 0);     // bit offset
    put8(off + 3, 1);     // access size: byte
    put64(off + 4, port);
  }
  // Length and checksum, once the content is final.
  std::vector<std::uint8_t> finish() {
    put32(4, static_cast<std::uint32_t>(bytes_.size()));
    bytes_[9] = 0;
    bytes_[9] = static_cast<std::uint8_t>(-acpi_checksum(bytes_.data(), bytes_.size()));
    return bytes_;
  }

 private:
  std::vector<std::uint8_t> bytes_;
};

// DSDT body: Name (_S5, Package () { 5, 5, 0, 0 }) in AML. Linux reads the
// sleep type for S5 from it; without \_S5 it offers no ACPI power-off.
constexpr std::uint8_t kS5Aml[] = {0x08, '_', 'S', '5', '_',  // NameOp "_S5_"
                                   0x12, 0x08, 0x04,          // PackageOp, PkgLength 8, 4 elements
                                   0x0a, kAcpiS5SleepType,    // BytePrefix 5 (SLP_TYP a)
                                   0x0a, kAcpiS5SleepType,    // BytePrefix 5 (SLP_TYP b)
                                   0x00, 0x00};               // Zero, Zero

// AML (ACPI 6.x, 20.2): the few encodings the DSDT needs.
// PkgLength counts itself: 1 byte up to 63, 2 bytes up to 4095, 3 beyond.
void aml_pkg(std::vector<std::uint8_t>& out, std::size_t content) {
  if (content + 1 < 64) {
    out.push_back(static_cast<std::uint8_t>(content + 1));
  } else if (content + 2 < 4096) {
    const std::size_t n = content + 2;
    out.push_back(static_cast<std::uint8_t>(0x40 | (n & 0x0f)));
    out.push_back(static_cast<std::uint8_t>(n >> 4));
  } else {
    const std::size_t n = content + 3;
    out.push_back(static_cast<std::uint8_t>(0x80 | (n & 0x0f)));
    out.push_back(static_cast<std::uint8_t>(n >> 4));
    out.push_back(static_cast<std::uint8_t>(n >> 12));
  }
}
void aml_append(std::vector<std::uint8_t>& out, const std::vector<std::uint8_t>& b) {
  out.insert(out.end(), b.begin(), b.end());
}
void aml_name(std::vector<std::uint8_t>& out, const char (&seg)[5]) {
  out.push_back(0x08);  // NameOp
  out.insert(out.end(), seg, seg + 4);
}
void aml_u32(std::vector<std::uint8_t>& out, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<std::uint8_t>(v >> (8 * i)));
}

// Device (VRnn) { Name (_HID, "LNRO0005") Name (_UID, n) Name (_CRS,
// ResourceTemplate () { Memory32Fixed (ReadWrite, base, size)
// Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive) { gsi } }) }
std::vector<std::uint8_t> aml_virtio_mmio(std::size_t index, const AcpiMmioDevice& d) {
  std::vector<std::uint8_t> body;
  const char hex[] = "0123456789ABCDEF";
  body.insert(body.end(), {'V', 'R', static_cast<std::uint8_t>(hex[(index >> 4) & 15]),
                           static_cast<std::uint8_t>(hex[index & 15])});
  aml_name(body, "_HID");
  body.push_back(0x0d);  // StringPrefix
  for (char c : std::string_view("LNRO0005")) body.push_back(static_cast<std::uint8_t>(c));
  body.push_back(0);
  aml_name(body, "_UID");
  body.insert(body.end(), {0x0a, static_cast<std::uint8_t>(index)});  // BytePrefix
  std::vector<std::uint8_t> crs = {0x86, 0x09, 0x00, 0x01};  // Memory32Fixed, read-write
  aml_u32(crs, static_cast<std::uint32_t>(d.base));
  aml_u32(crs, d.size);
  crs.insert(crs.end(), {0x89, 0x06, 0x00, 0x03, 0x01});  // Extended Interrupt: consumer, edge, high, exclusive; 1 GSI
  aml_u32(crs, d.gsi);
  crs.insert(crs.end(), {0x79, 0x00});  // End Tag
  aml_name(body, "_CRS");
  std::vector<std::uint8_t> buf = {0x0a, static_cast<std::uint8_t>(crs.size())};  // BufferSize
  aml_append(buf, crs);
  body.push_back(0x11);  // BufferOp
  aml_pkg(body, buf.size());
  aml_append(body, buf);
  std::vector<std::uint8_t> dev = {0x5b, 0x82};  // DeviceOp
  aml_pkg(dev, body.size());
  aml_append(dev, body);
  return dev;
}

}  // namespace

std::vector<std::uint8_t> dsdt_aml(std::span<const AcpiMmioDevice> mmio) {
  std::vector<std::uint8_t> out(std::begin(kS5Aml), std::end(kS5Aml));
  if (mmio.empty()) return out;
  std::vector<std::uint8_t> sb = {0x5c, '_', 'S', 'B', '_'};  // \_SB_
  for (std::size_t i = 0; i < mmio.size(); ++i) aml_append(sb, aml_virtio_mmio(i, mmio[i]));
  out.push_back(0x10);  // ScopeOp
  aml_pkg(out, sb.size());
  aml_append(out, sb);
  return out;
}

std::uint8_t acpi_checksum(const std::uint8_t* p, std::size_t n) {
  std::uint8_t sum = 0;
  for (std::size_t i = 0; i < n; ++i) sum = static_cast<std::uint8_t>(sum + p[i]);
  return sum;
}

Result<std::uint64_t> write_acpi_tables(GuestRegion& ram, std::uint32_t vcpus, std::span<const AcpiMmioDevice> mmio) {
  if (vcpus == 0 || vcpus > 255) return fail("ACPI: {} vCPUs (1..255 with xAPIC IDs)", vcpus);
  if (mmio.size() > 255) return fail("ACPI: {} virtio-mmio devices (at most 255)", mmio.size());
  for (const auto& d : mmio)
    if (d.base + d.size > (1ull << 32)) return fail("ACPI: a virtio-mmio window at {:#x} above 4 GiB", d.base);
  // Layout inside the reserved 0xe0000 page(s): RSDP, then the tables,
  // each 16-byte aligned.
  const std::uint64_t rsdp = kAcpiTablesGpa;
  std::uint64_t next = rsdp + 64;
  auto place = [&](const std::vector<std::uint8_t>& t) {
    const std::uint64_t at = next;
    std::memcpy(ram.host_at(at), t.data(), t.size());
    next = (at + t.size() + 15) & ~15ull;
    return at;
  };

  // FACS (64 bytes, 64-byte aligned): holds the global lock ACPICA
  // initialises with the fixed hardware; no firmware ever contends for it.
  next = (next + 63) & ~63ull;
  const std::uint64_t facs_gpa = next;
  {
    std::uint8_t f[64] = {};
    std::memcpy(f, "FACS", 4);
    f[4] = 64;  // length
    f[32] = 2;  // version
    std::memcpy(ram.host_at(facs_gpa), f, sizeof f);
    next += 64;
  }

  Table dsdt("DSDT", 2);
  for (auto b : dsdt_aml(mmio)) dsdt.append8(b);
  const auto dsdt_gpa = place(dsdt.finish());

  // FADT, revision 6 (276 bytes): fixed hardware with PM1a event/control
  // blocks and SCI 9; SMI_CMD = 0 means ACPI mode is always on (PM1_CNT
  // reads back SCI_EN). No PM timer, no GPE blocks.
  Table fadt("FACP", 6);
  fadt.resize(276);
  fadt.put32(36, static_cast<std::uint32_t>(facs_gpa));  // FIRMWARE_CTRL
  fadt.put32(40, static_cast<std::uint32_t>(dsdt_gpa));
  fadt.put8(45, 0);                               // preferred PM profile: unspecified
  fadt.put16(46, kAcpiSciIrq);                    // SCI_INT
  fadt.put32(48, 0);                              // SMI_CMD: none
  fadt.put32(56, kAcpiPm1aEventPort);             // PM1a_EVT_BLK
  fadt.put32(64, kAcpiPm1aControlPort);           // PM1a_CNT_BLK
  fadt.put8(88, 4);                               // PM1_EVT_LEN
  fadt.put8(89, 2);                               // PM1_CNT_LEN
  fadt.put16(109, (1u << 0) | (1u << 2) | (1u << 5));  // IAPC_BOOT_ARCH: legacy devices, no VGA, no CMOS RTC
  fadt.put32(112, (1u << 0) | (1u << 4) | (1u << 5) | (1u << 10));  // WBINVD, PWR_BUTTON and SLP_BUTTON as
                                                                    // control methods (none), RESET_REG_SUP
  fadt.put_gas_io(116, kAcpiResetPort, 8);        // RESET_REG
  fadt.put8(128, kAcpiResetValue);                // RESET_VALUE
  fadt.put16(129, 0);                             // ARM boot arch
  fadt.put8(131, 1);                              // FADT minor version (6.1)
  fadt.put64(132, facs_gpa);                      // X_FIRMWARE_CTRL
  fadt.put64(140, dsdt_gpa);                      // X_DSDT
  fadt.put_gas_io(148, kAcpiPm1aEventPort, 32);   // X_PM1a_EVT_BLK
  fadt.put_gas_io(172, kAcpiPm1aControlPort, 16); // X_PM1a_CNT_BLK
  fadt.put64(268, 0);                             // hypervisor vendor identity
  const auto fadt_gpa = place(fadt.finish());

  Table madt("APIC", 5);
  madt.append32(0xfee00000);  // local APIC address
  madt.append32(1);           // flags: PCAT_COMPAT (dual 8259s present; Linux masks them)
  for (std::uint32_t i = 0; i < vcpus; ++i)
    madt.append({0, 8, std::uint8_t(i), std::uint8_t(i), 1, 0, 0, 0});  // processor LAPIC, enabled
  madt.append({1, 12, 0, 0});                                             // IOAPIC id 0
  madt.append32(0xfec00000);
  madt.append32(0);                                                       // GSI base
  // No "ISA IRQ0 -> GSI 2" override, unlike real PCs: KVM's default GSI
  // routing wires the in-kernel PIT to IOAPIC pin 0, so that is where the
  // guest must look for its timer (with the override, jiffies never moved).
  madt.append({4, 6, 0xff, 0, 0, 1});                                     // every LAPIC: LINT1 is NMI
  const auto madt_gpa = place(madt.finish());

  Table xsdt("XSDT", 1);
  xsdt.append64(fadt_gpa);
  xsdt.append64(madt_gpa);
  const auto xsdt_gpa = place(xsdt.finish());

  // RSDP, ACPI 2.0+ (36 bytes): first checksum covers bytes 0..19, the
  // extended one all 36.
  std::uint8_t r[36] = {};
  std::memcpy(r, "RSD PTR ", 8);
  std::memcpy(r + 9, "FERRY ", 6);
  r[15] = 2;  // revision
  r[20] = 36;
  for (int i = 0; i < 8; ++i) r[24 + i] = static_cast<std::uint8_t>(xsdt_gpa >> (8 * i));
  r[8] = static_cast<std::uint8_t>(-acpi_checksum(r, 20));
  r[32] = static_cast<std::uint8_t>(-acpi_checksum(r, 36));
  std::memcpy(ram.host_at(rsdp), r, sizeof r);
  if (next > 0x100000) return fail("ACPI: tables overflow the BIOS area ({:#x})", next);
  return rsdp;
}

}  // namespace ferry::kvm

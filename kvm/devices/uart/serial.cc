#include "kvm/devices/uart/serial.hh"

#include "userspace/base/bytes.hh"

namespace ferry::kvm {
namespace {

// Register offsets and bits (16550A data sheet).
constexpr std::uint16_t kData = 0, kIer = 1, kIir = 2, kLcr = 3, kMcr = 4, kLsr = 5, kMsr = 6, kScr = 7;
constexpr std::uint8_t kLcrDlab = 0x80;
constexpr std::uint8_t kIerRx = 0x01, kIerThre = 0x02;
constexpr std::uint8_t kIirNone = 0x01, kIirThre = 0x02, kIirRx = 0x04, kIirFifo = 0xc0;
constexpr std::uint8_t kLsrDr = 0x01, kLsrThre = 0x20, kLsrTemt = 0x40;
constexpr std::uint8_t kMcrLoop = 0x10;
// With nothing attached, report a modem that is present and ready (DCD, DSR,
// CTS) so drivers that check carrier keep transmitting.
constexpr std::uint8_t kMsrReady = 0xb0;

}  // namespace

bool Serial::irq_level_locked() const {
  // Received data (when enabled) takes priority over THRE, as on the chip.
  if ((s_.ier & kIerRx) && !s_.rx.empty()) return true;
  return (s_.ier & kIerThre) && s_.thr_interrupt_pending;
}

bool Serial::irq_level() const {
  std::lock_guard lock(mu_);
  return irq_level_locked();
}

bool Serial::write(std::uint16_t offset, std::uint8_t value) {
  std::string_view out;
  char byte = 0;
  {
    std::lock_guard lock(mu_);
    switch (offset) {
      case kData:
        if (s_.lcr & kLcrDlab) {
          s_.dll = value;
          break;
        }
        if (s_.mcr & kMcrLoop) {
          if (s_.rx.size() < kRxCapacity) s_.rx.push_back(value);  // loopback: transmit feeds receive
        } else {
          byte = static_cast<char>(value);
          out = std::string_view(&byte, 1);
        }
        // The byte left at once: the holding register is empty again.
        s_.thr_interrupt_pending = true;
        break;
      case kIer:
        if (s_.lcr & kLcrDlab) {
          s_.dlm = value;
          break;
        }
        // Enabling THRE while the register is empty raises it immediately;
        // Linux's driver probes for exactly this.
        if (!(s_.ier & kIerThre) && (value & kIerThre)) s_.thr_interrupt_pending = true;
        s_.ier = value & 0x0f;
        break;
      case kIir: break;  // FCR: FIFOs are always on and never hold bytes back
      case kLcr: s_.lcr = value; break;
      case kMcr: s_.mcr = value & 0x1f; break;
      case kScr: s_.scr = value; break;
      case kLsr:
      case kMsr: break;  // read-only on real hardware; writes are ignored
      default: return false;
    }
  }
  if (!out.empty() && sink_) sink_(out);  // outside the lock: the sink may block
  return true;
}

std::uint8_t Serial::read(std::uint16_t offset) {
  std::lock_guard lock(mu_);
  switch (offset) {
    case kData: {
      if (s_.lcr & kLcrDlab) return s_.dll;
      if (s_.rx.empty()) return 0;
      const std::uint8_t b = s_.rx.front();
      s_.rx.erase(s_.rx.begin());
      return b;
    }
    case kIer: return (s_.lcr & kLcrDlab) ? s_.dlm : s_.ier;
    case kIir: {
      std::uint8_t iir = kIirNone;
      if ((s_.ier & kIerRx) && !s_.rx.empty()) {
        iir = kIirRx;
      } else if ((s_.ier & kIerThre) && s_.thr_interrupt_pending) {
        iir = kIirThre;
        s_.thr_interrupt_pending = false;  // reading IIR acknowledges THRE
      }
      return iir | kIirFifo;
    }
    case kLcr: return s_.lcr;
    case kMcr: return s_.mcr;
    case kLsr: return static_cast<std::uint8_t>(kLsrThre | kLsrTemt | (s_.rx.empty() ? 0 : kLsrDr));
    case kMsr:
      if (s_.mcr & kMcrLoop) {
        // Loopback wires MCR's DTR/RTS/OUT1/OUT2 to DSR/CTS/RI/DCD.
        const std::uint8_t m = s_.mcr;
        return static_cast<std::uint8_t>(((m & 0x02) << 3) | ((m & 0x01) << 5) | ((m & 0x04) << 4) | ((m & 0x08) << 4));
      }
      return kMsrReady;
    case kScr: return s_.scr;
    default: return 0xff;
  }
}

void Serial::enqueue_input(std::string_view bytes) {
  std::lock_guard lock(mu_);
  for (char c : bytes) {
    if (s_.rx.size() >= kRxCapacity) break;  // like a UART overrun: excess input is dropped
    s_.rx.push_back(static_cast<std::uint8_t>(c));
  }
}

SerialState Serial::save() const {
  std::lock_guard lock(mu_);
  return s_;
}

void Serial::restore(const SerialState& s) {
  std::lock_guard lock(mu_);
  s_ = s;
}

std::vector<std::byte> encode_serial_state(const SerialState& s) {
  ByteWriter w;
  w.put_u32(kSerialStateVersion);
  for (std::uint8_t r : {s.ier, s.lcr, s.mcr, s.scr, s.dll, s.dlm}) w.put_u8(r);
  w.put_u8(s.thr_interrupt_pending ? 1 : 0);
  w.put_u32(static_cast<std::uint32_t>(s.rx.size()));
  w.put_bytes(std::as_bytes(std::span(s.rx)));
  return std::move(w).take();
}

Result<SerialState> decode_serial_state(std::span<const std::byte> bytes) {
  ByteReader r(bytes);
  std::uint32_t version = 0;
  if (auto ok = r.get(version); !ok) return std::unexpected(std::move(ok.error()).context("serial state"));
  if (version != kSerialStateVersion) return fail("serial state: version {} unsupported (expected {})", version, kSerialStateVersion);
  SerialState s;
  std::uint8_t thr = 0;
  std::uint32_t rx_len = 0;
  if (auto ok = r.get(s.ier, s.lcr, s.mcr, s.scr, s.dll, s.dlm, thr, rx_len); !ok)
    return std::unexpected(std::move(ok.error()).context("serial state"));
  if (thr > 1) return fail("serial state: bad THRE flag {}", thr);
  if (rx_len > Serial::kRxCapacity) return fail("serial state: {} queued bytes exceed {}", rx_len, Serial::kRxCapacity);
  auto rx = r.get_bytes(rx_len);
  if (!rx) return std::unexpected(std::move(rx.error()).context("serial state"));
  for (auto b : *rx) s.rx.push_back(static_cast<std::uint8_t>(b));
  s.thr_interrupt_pending = thr == 1;
  if (auto ok = r.expect_end(); !ok) return std::unexpected(std::move(ok.error()).context("serial state"));
  return s;
}

}  // namespace ferry::kvm

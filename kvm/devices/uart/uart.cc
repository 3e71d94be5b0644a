#include "kvm/devices/uart/uart.hh"

#include <algorithm>

#include <fmt/format.h>

namespace ferry::kvm {

DeviceDescription Uart::describe() const {
  return {"uart-16550a", "com1", line_ ? fmt::format("port={:#x} irq={}", kCom1Base, kCom1Irq)
                                       : fmt::format("port={:#x} polled", kCom1Base)};
}

void Uart::set_line_locked(bool level) {
  line_(level);
  line_level_ = level;
}

void Uart::sync_irq_locked(bool new_event) {
  if (!line_) return;
  // The default GSI routing sends ISA IRQ 4 to PIC and IOAPIC pin 4, both
  // edge-triggered for ISA: only a rising edge interrupts. A real 16550
  // drops INTR when THR is written and raises it again when the byte has
  // gone, so every transmitted byte (and every received one) is a fresh
  // edge even if the line looked high throughout; the model completes the
  // byte instantly, so the VMM replays that dip as 0 -> 1. Without it, a
  // THRE left pending under an RX interrupt keeps the line high forever
  // and the guest's transmitter stalls (seen).
  const bool level = serial_.irq_level();
  if (level && line_level_ && new_event) set_line_locked(false);
  if (level != line_level_) set_line_locked(level);
}

IoOutcome Uart::read(const IoRange&, std::uint64_t offset, std::span<std::uint8_t> data) {
  // The UART decodes byte accesses only; a wider one finds nothing there.
  if (data.size() != 1) {
    std::fill(data.begin(), data.end(), 0xff);
    return IoOutcome::kDone;
  }
  std::lock_guard lock(mu_);
  data[0] = serial_.read(static_cast<std::uint16_t>(offset));
  sync_irq_locked(false);
  return IoOutcome::kDone;
}

IoOutcome Uart::write(const IoRange&, std::uint64_t offset, std::span<const std::uint8_t> data) {
  if (data.size() != 1) return IoOutcome::kDone;
  std::lock_guard lock(mu_);
  serial_.write(static_cast<std::uint16_t>(offset), data[0]);
  // A data write (DLAB off) or an IER write is a new interrupt condition.
  sync_irq_locked(offset == 0 || offset == 1);
  return IoOutcome::kDone;
}

void Uart::console_input(std::string_view bytes) {
  std::lock_guard lock(mu_);
  serial_.enqueue_input(bytes);
  sync_irq_locked(true);
}

Status Uart::restore_state(std::uint32_t version, std::span<const std::byte> payload) {
  if (version != kSerialStateVersion)
    return fail("com1: serial state version {} is not supported (this build reads {})", version, kSerialStateVersion);
  auto s = decode_serial_state(payload);
  if (!s) return std::unexpected(std::move(s.error()).context("com1"));
  std::lock_guard lock(mu_);
  serial_.restore(*s);
  line_level_ = serial_.irq_level();
  return {};
}

}  // namespace ferry::kvm

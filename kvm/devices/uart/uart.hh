#pragma once
// COM1 as a bus device: the 16550A model (serial.hh) on ports 0x3f8..0x3ff,
// with its interrupt line when one is wired (Linux guests; the built-in
// test guest polls). Its state is the kSerial section, as it always was.
#include <functional>
#include <mutex>
#include <string_view>

#include "kvm/devices/device.hh"
#include "kvm/devices/uart/serial.hh"

namespace ferry::kvm {

class Uart final : public Device {
 public:
  // Raises or lowers the UART's interrupt line (ISA IRQ 4); empty when no
  // interrupt is wired.
  using IrqLine = std::function<void(bool level)>;
  Uart(Serial::Sink sink, IrqLine line) : serial_(std::move(sink)), line_(std::move(line)) {}

  DeviceDescription describe() const override;
  std::vector<IoRange> ranges() const override { return {{Space::kPio, kCom1Base, 8}}; }
  IoOutcome read(const IoRange& range, std::uint64_t offset, std::span<std::uint8_t> data) override;
  IoOutcome write(const IoRange& range, std::uint64_t offset, std::span<const std::uint8_t> data) override;

  std::optional<StateKey> state_key() const override { return StateKey{state::SectionType::kSerial, 0}; }
  std::uint32_t state_version() const override { return kSerialStateVersion; }
  std::vector<std::byte> save_state() const override { return encode_serial_state(serial_.save()); }
  Status restore_state(std::uint32_t version, std::span<const std::byte> payload) override;

  // Bytes typed at the console: queued in the UART, interrupt raised.
  void console_input(std::string_view bytes);
  Serial& serial() { return serial_; }

 private:
  void sync_irq_locked(bool new_event);
  void set_line_locked(bool level);

  Serial serial_;
  IrqLine line_;
  // Serialises register accesses with the line updates they cause. The
  // line is edge-triggered: if vCPU A's IIR read (line falls) and vCPU B's
  // THR write (line rises) were reflected out of order, the 0 -> 1 edge
  // would be lost and the guest's transmitter would stall for good (seen).
  std::mutex mu_;
  // The line as the interrupt controllers hold it: low at boot, and after a
  // restore whatever the restored controllers hold, which is the restored
  // UART's level (both were captured in one pause).
  bool line_level_ = false;
};

}  // namespace ferry::kvm

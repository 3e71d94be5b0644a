#pragma once
// A 16550A-compatible UART (the PC's COM1 at 0x3f8), enough for a console:
// transmit to a sink, receive from a queue, the divisor latch, and the
// interrupt-identification logic Linux's 8250 driver relies on.
//
// The device is pure logic: the vCPU run loop forwards port I/O here and
// delivers irq_level() changes to the interrupt controller (when the VM
// has one). Its state is plain data and travels in snapshots/migrations.
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <span>
#include <string_view>
#include <vector>

#include "userspace/base/error.hh"

namespace ferry::kvm {

inline constexpr std::uint16_t kCom1Base = 0x3f8;
inline constexpr std::uint32_t kCom1Irq = 4;
// The kSerial section's version (also the payload's first field).
inline constexpr std::uint32_t kSerialStateVersion = 1;

struct SerialState {
  std::uint8_t ier = 0;   // interrupt enable
  std::uint8_t lcr = 0;   // line control (bit 7 = DLAB)
  std::uint8_t mcr = 0;   // modem control (bit 3 = OUT2 gates the IRQ line on PCs)
  std::uint8_t scr = 0;   // scratch
  std::uint8_t dll = 0x0c, dlm = 0;  // divisor latch: 9600 baud, as firmware leaves it
  bool thr_interrupt_pending = false;  // THRE interrupt raised and not yet acknowledged
  std::vector<std::uint8_t> rx;        // received bytes not yet read by the guest
  friend bool operator==(const SerialState&, const SerialState&) = default;
};

class Serial {
 public:
  using Sink = std::function<void(std::string_view)>;
  explicit Serial(Sink sink) : sink_(std::move(sink)) {}

  // Port I/O at offsets 0..7 from the base. Returns false for offsets the
  // device does not decode.
  bool write(std::uint16_t offset, std::uint8_t value);
  std::uint8_t read(std::uint16_t offset);

  // Host-side input (the console's keyboard), queued for the guest.
  void enqueue_input(std::string_view bytes);

  // Whether the device asserts its interrupt line now.
  bool irq_level() const;

  SerialState save() const;
  void restore(const SerialState& s);

  static constexpr std::size_t kRxCapacity = 4096;

 private:
  mutable std::mutex mu_;
  Sink sink_;
  SerialState s_;
  bool irq_level_locked() const;
};

std::vector<std::byte> encode_serial_state(const SerialState& s);
Result<SerialState> decode_serial_state(std::span<const std::byte> bytes);

}  // namespace ferry::kvm

#pragma once
// The platform a Linux guest sees beyond what KVM emulates in the kernel
// (LAPICs, IOAPIC, PIC, PIT): COM1 with its interrupt, the ACPI sleep and
// reset registers (power-off, reboot), the legacy reset ports, and an empty
// ISA/PCI bus everywhere else (reads float high, writes vanish), which is
// how Linux concludes that a device is absent.
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <string_view>

#include "userspace/base/error.hh"
#include "kvm/devices/serial.hh"
#include "kvm/vcpu_runner.hh"

namespace ferry::kvm {

class Vm;

class LinuxDevices {
 public:
  // `on_stop(reason)` runs on the vCPU thread that powered off or reset the
  // guest; that vCPU then stops (the caller stops the rest).
  // `irq_level` is the UART line as the interrupt controllers already hold
  // it (restored with them after a snapshot; low at boot): only changes
  // from there are signalled. Construct before any vCPU runs.
  LinuxDevices(Vm& vm, Serial& serial, std::function<void(std::string)> on_stop, bool irq_level)
      : vm_(vm), serial_(serial), on_stop_(std::move(on_stop)), irq_level_(irq_level) {}

  Result<ExitAction> on_exit(Vcpu& vcpu);

  // Bytes typed at the console: queued in the UART, interrupt raised.
  void console_input(std::string_view bytes);

 private:
  Result<ExitAction> on_io(Vcpu& vcpu);
  void sync_serial_irq_locked(bool new_event);
  void set_line(bool level);

  Vm& vm_;
  Serial& serial_;
  std::function<void(std::string)> on_stop_;
  // Serialises UART register accesses with the IRQ line updates they cause.
  // The line is edge-triggered: if vCPU A's IIR read (line falls) and vCPU
  // B's THR write (line rises) were reflected out of order, the 0 -> 1 edge
  // would be lost and the guest's transmitter would stall for good (seen).
  std::mutex irq_mu_;
  bool irq_level_ = false;
  std::uint16_t pm1_enable_ = 0;  // PM1_EN: read back as written (ACPICA checks)
};

}  // namespace ferry::kvm

#include "kvm/linux/devices.hh"

#include <linux/kvm.h>
#include <sys/ioctl.h>

#include <cstring>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "kvm/linux/acpi.hh"
#include "kvm/vcpu.hh"
#include "kvm/vm.hh"

namespace ferry::kvm {
namespace {

constexpr std::uint16_t kI8042Command = 0x64;  // 0xfe: pulse the CPU reset line
constexpr std::uint16_t kPciResetControl = 0xcf9;  // bit 2: reset

}  // namespace

void LinuxDevices::set_line(bool level) {
  kvm_irq_level l{};
  l.irq = kCom1Irq;
  l.level = level ? 1 : 0;
  if (::ioctl(vm_.fd(), KVM_IRQ_LINE, &l) < 0) spdlog::warn("KVM_IRQ_LINE {}: {}", kCom1Irq, std::strerror(errno));
  irq_level_ = level;
}

void LinuxDevices::sync_serial_irq_locked(bool new_event) {
  // The default GSI routing sends ISA IRQ 4 to PIC and IOAPIC pin 4, both
  // edge-triggered for ISA: only a rising edge interrupts. A real 16550
  // drops INTR when THR is written and raises it again when the byte has
  // gone, so every transmitted byte (and every received one) is a fresh
  // edge even if the line looked high throughout; the model completes the
  // byte instantly, so the VMM replays that dip as 0 -> 1. Without it, a
  // THRE left pending under an RX interrupt keeps the line high forever
  // and the guest's transmitter stalls (seen).
  const bool level = serial_.irq_level();
  if (level && irq_level_ && new_event) set_line(false);
  if (level != irq_level_) set_line(level);
}

void LinuxDevices::console_input(std::string_view bytes) {
  std::lock_guard lock(irq_mu_);
  serial_.enqueue_input(bytes);
  sync_serial_irq_locked(true);
}

Result<ExitAction> LinuxDevices::on_io(Vcpu& vcpu) {
  kvm_run& run = vcpu.run();
  auto* data = reinterpret_cast<std::uint8_t*>(&run) + run.io.data_offset;
  const bool out = run.io.direction == KVM_EXIT_IO_OUT;
  const std::uint16_t port = run.io.port;
  for (std::uint32_t i = 0; i < run.io.count; ++i, data += run.io.size) {
    if (port >= kCom1Base && port < kCom1Base + 8 && run.io.size == 1) {
      const auto off = static_cast<std::uint16_t>(port - kCom1Base);
      std::lock_guard lock(irq_mu_);
      if (out)
        serial_.write(off, data[0]);
      else
        data[0] = serial_.read(off);
      // A data write (DLAB off) or an IER write is a new interrupt condition.
      sync_serial_irq_locked(out && (off == 0 || off == 1));
      continue;
    }
    std::uint32_t value = 0;
    if (out) std::memcpy(&value, data, std::min<std::size_t>(run.io.size, 4));
    if (port == kAcpiPm1aControlPort) {
      if (!out) {
        std::memset(data, 0, run.io.size);
        data[0] = kAcpiSciEnable;  // ACPI mode, always
        continue;
      }
      if (value & kAcpiSleepEnable) {
        const auto type = (value >> 10) & 7;
        if (type == kAcpiS5SleepType) {
          on_stop_("the guest powered off");
          return ExitAction::kStop;
        }
        spdlog::warn("guest asked for ACPI sleep type {}: only S5 (off) is supported; ignored", type);
      }
      continue;
    }
    if (port >= kAcpiPm1aEventPort && port < kAcpiPm1aEventPort + 4) {
      // PM1_STS (+0) and PM1_EN (+2). No fixed event ever fires (no power
      // button, no PM timer, no global lock owner), so status reads 0; the
      // enable bits read back as written, which ACPICA verifies.
      std::lock_guard lock(irq_mu_);
      for (std::uint32_t b = 0; b < run.io.size; ++b) {
        const auto reg = port - kAcpiPm1aEventPort + b;
        if (reg >= 4) {  // a wide access running past the block
          if (!out) data[b] = 0xff;
        } else if (reg < 2) {
          if (!out) data[b] = 0;
        } else if (out) {
          const int shift = static_cast<int>(reg - 2) * 8;
          pm1_enable_ = static_cast<std::uint16_t>((pm1_enable_ & ~(0xff << shift)) | (data[b] << shift));
        } else {
          data[b] = static_cast<std::uint8_t>(pm1_enable_ >> ((reg - 2) * 8));
        }
      }
      continue;
    }
    if (out && ((port == kAcpiResetPort && value == kAcpiResetValue) || (port == kI8042Command && value == 0xfe) ||
                (port == kPciResetControl && (value & 4)))) {
      on_stop_("the guest rebooted");
      return ExitAction::kStop;
    }
    // The 8042's status register: always "input buffer empty", so a kernel
    // rebooting through the keyboard controller (reboot=k) writes its reset
    // command at once instead of polling 65536 times. The FADT says there
    // is no 8042, so nothing else probes it.
    if (!out && port == kI8042Command) {
      std::memset(data, 0, run.io.size);
      continue;
    }
    // Nothing here: like an empty bus, reads return all ones.
    if (port != 0x80)  // the POST/delay port gets a write per port delay
      spdlog::trace("vCPU {}: {} port {:#x} (size {}){}: no device", vcpu.id(), out ? "write" : "read", port,
                    run.io.size, out ? fmt::format(" value {:#x}", value) : std::string());
    if (!out) std::memset(data, 0xff, run.io.size);
  }
  return ExitAction::kContinue;
}

Result<ExitAction> LinuxDevices::on_exit(Vcpu& vcpu) {
  kvm_run& run = vcpu.run();
  switch (run.exit_reason) {
    case KVM_EXIT_IO:
      return on_io(vcpu);
    case KVM_EXIT_MMIO:
      spdlog::trace("vCPU {}: MMIO {} {:#x} ({} bytes): no device", vcpu.id(), run.mmio.is_write ? "write" : "read",
                    run.mmio.phys_addr, run.mmio.len);
      // No MMIO devices besides KVM's own (LAPIC, IOAPIC): reads float high.
      if (!run.mmio.is_write) std::memset(run.mmio.data, 0xff, sizeof run.mmio.data);
      return ExitAction::kContinue;
    case KVM_EXIT_SHUTDOWN:
      // A triple fault: how x86 resets when every other way failed.
      on_stop_("the guest rebooted (triple fault)");
      return ExitAction::kStop;
    case KVM_EXIT_HLT:
      return ExitAction::kContinue;  // only without an in-kernel LAPIC
    default:
      return fail("Linux guest: unexpected exit {} on vCPU {}", run.exit_reason, vcpu.id());
  }
}

}  // namespace ferry::kvm

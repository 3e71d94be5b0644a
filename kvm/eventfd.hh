#pragma once
// The eventfd-based KVM objects virtio devices are built on, one move-only
// class per kernel object:
//   EventFd    an eventfd(2) counter
//   IrqFd      KVM_IRQFD: signalling its eventfd injects an interrupt on a
//              GSI from any thread, without a KVM_IRQ_LINE round trip
//   IoEventFd  KVM_IOEVENTFD: a guest write to a port or MMIO address (of a
//              given width, optionally only of a given value) signals its
//              eventfd inside KVM, without an exit to the VMM (queue kicks)
// The KVM registrations are undone when the objects are destroyed.
#include <cstdint>
#include <optional>

#include "kvm/devices/device.hh"
#include "userspace/base/error.hh"
#include "userspace/base/unique_fd.hh"

namespace ferry::kvm {

class Vm;

class EventFd {
 public:
  // Non-blocking and close-on-exec.
  static Result<EventFd> create();
  // Another descriptor of the same counter (for KVM to signal one that a
  // device polls).
  Result<EventFd> duplicate() const;
  Status signal(std::uint64_t n = 1) const;
  // The count since the last take (0 when nothing was signalled); resets it.
  Result<std::uint64_t> take() const;
  int fd() const { return fd_.get(); }

 private:
  explicit EventFd(UniqueFd fd) : fd_(std::move(fd)) {}
  UniqueFd fd_;
};

class IrqFd {
 public:
  // The VM needs the in-kernel irqchip; `gsi` is routed by its default
  // routing (ISA IRQs 0-15 to PIC and IOAPIC, 16-23 to the IOAPIC).
  static Result<IrqFd> assign(const Vm& vm, std::uint32_t gsi);
  ~IrqFd();
  IrqFd(IrqFd&& o) noexcept;
  IrqFd& operator=(IrqFd&& o) noexcept;
  IrqFd(const IrqFd&) = delete;
  IrqFd& operator=(const IrqFd&) = delete;

  // One edge on the GSI (KVM raises and lowers the line).
  Status trigger() const { return event_.signal(); }
  const EventFd& event() const { return event_; }
  std::uint32_t gsi() const { return gsi_; }

 private:
  IrqFd(int vm_fd, EventFd event, std::uint32_t gsi) : vm_fd_(vm_fd), event_(std::move(event)), gsi_(gsi) {}
  void deassign();
  int vm_fd_ = -1;  // borrowed; -1 once moved from
  EventFd event_;
  std::uint32_t gsi_ = 0;
};

class IoEventFd {
 public:
  struct Match {
    Space space = Space::kMmio;
    std::uint64_t addr = 0;
    std::uint32_t len = 4;                   // 1, 2, 4 or 8 bytes
    std::optional<std::uint64_t> datamatch;  // only writes of this value (e.g. a queue index)
  };
  static Result<IoEventFd> assign(const Vm& vm, const Match& match);
  // The same, signalling `event` (a duplicate of a device's kick eventfd).
  static Result<IoEventFd> assign(const Vm& vm, const Match& match, EventFd event);
  ~IoEventFd();
  IoEventFd(IoEventFd&& o) noexcept;
  IoEventFd& operator=(IoEventFd&& o) noexcept;
  IoEventFd(const IoEventFd&) = delete;
  IoEventFd& operator=(const IoEventFd&) = delete;

  const EventFd& event() const { return event_; }
  const Match& match() const { return match_; }

 private:
  IoEventFd(int vm_fd, EventFd event, Match match) : vm_fd_(vm_fd), event_(std::move(event)), match_(match) {}
  void deassign();
  int vm_fd_ = -1;
  EventFd event_;
  Match match_;
};

}  // namespace ferry::kvm

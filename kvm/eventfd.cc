#include "kvm/eventfd.hh"

#include <fcntl.h>

#include <optional>

#include <linux/kvm.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "kvm/vm.hh"

namespace ferry::kvm {

Result<EventFd> EventFd::create() {
  const int fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (fd < 0) return fail_sys("eventfd");
  return EventFd(UniqueFd(fd));
}

Result<EventFd> EventFd::duplicate() const {
  const int fd = ::fcntl(fd_.get(), F_DUPFD_CLOEXEC, 0);
  if (fd < 0) return fail_sys("eventfd dup");
  return EventFd(UniqueFd(fd));
}

Status EventFd::signal(std::uint64_t n) const {
  if (::write(fd_.get(), &n, sizeof n) != static_cast<ssize_t>(sizeof n)) return fail_sys("eventfd write");
  return {};
}

Result<std::uint64_t> EventFd::take() const {
  std::uint64_t n = 0;
  if (::read(fd_.get(), &n, sizeof n) == static_cast<ssize_t>(sizeof n)) return n;
  if (errno == EAGAIN) return 0;
  return fail_sys("eventfd read");
}

// --- IrqFd ---

Result<IrqFd> IrqFd::assign(const Vm& vm, std::uint32_t gsi) {
  if (!vm.has_irqchip()) return fail("irqfd for GSI {}: the VM has no in-kernel irqchip", gsi);
  auto ev = EventFd::create();
  if (!ev) return std::unexpected(ev.error());
  kvm_irqfd req{};
  req.fd = static_cast<std::uint32_t>(ev->fd());
  req.gsi = gsi;
  if (::ioctl(vm.fd(), KVM_IRQFD, &req) < 0) return fail_sys(fmt::format("KVM_IRQFD (assign GSI {})", gsi));
  return IrqFd(vm.fd(), std::move(*ev), gsi);
}

void IrqFd::deassign() {
  if (vm_fd_ < 0) return;
  kvm_irqfd req{};
  req.fd = static_cast<std::uint32_t>(event_.fd());
  req.gsi = gsi_;
  req.flags = KVM_IRQFD_FLAG_DEASSIGN;
  if (::ioctl(vm_fd_, KVM_IRQFD, &req) < 0)
    spdlog::warn("KVM_IRQFD (deassign GSI {}): {}", gsi_, std::strerror(errno));
  vm_fd_ = -1;
}

IrqFd::~IrqFd() { deassign(); }

IrqFd::IrqFd(IrqFd&& o) noexcept : vm_fd_(o.vm_fd_), event_(std::move(o.event_)), gsi_(o.gsi_) { o.vm_fd_ = -1; }

IrqFd& IrqFd::operator=(IrqFd&& o) noexcept {
  if (this != &o) {
    deassign();
    vm_fd_ = o.vm_fd_;
    event_ = std::move(o.event_);
    gsi_ = o.gsi_;
    o.vm_fd_ = -1;
  }
  return *this;
}

// --- IoEventFd ---

namespace {

kvm_ioeventfd request(const IoEventFd::Match& m, int fd) {
  kvm_ioeventfd req{};
  req.addr = m.addr;
  req.len = m.len;
  req.fd = fd;
  if (m.space == Space::kPio) req.flags |= KVM_IOEVENTFD_FLAG_PIO;
  if (m.datamatch) {
    req.flags |= KVM_IOEVENTFD_FLAG_DATAMATCH;
    req.datamatch = *m.datamatch;
  }
  return req;
}

}  // namespace

Result<IoEventFd> IoEventFd::assign(const Vm& vm, const Match& m) {
  auto ev = EventFd::create();
  if (!ev) return std::unexpected(ev.error());
  return assign(vm, m, std::move(*ev));
}

Result<IoEventFd> IoEventFd::assign(const Vm& vm, const Match& m, EventFd event) {
  if (m.len != 1 && m.len != 2 && m.len != 4 && m.len != 8)
    return fail("ioeventfd at {} {:#x}: width {} (1, 2, 4 or 8 bytes)", space_name(m.space), m.addr, m.len);
  auto ev = std::optional<EventFd>(std::move(event));
  auto req = request(m, ev->fd());
  if (::ioctl(vm.fd(), KVM_IOEVENTFD, &req) < 0)
    return fail_sys(fmt::format("KVM_IOEVENTFD (assign {} {:#x}, {} bytes{})", space_name(m.space), m.addr, m.len,
                                m.datamatch ? fmt::format(", value {:#x}", *m.datamatch) : std::string()));
  return IoEventFd(vm.fd(), std::move(*ev), m);
}

void IoEventFd::deassign() {
  if (vm_fd_ < 0) return;
  auto req = request(match_, event_.fd());
  req.flags |= KVM_IOEVENTFD_FLAG_DEASSIGN;
  if (::ioctl(vm_fd_, KVM_IOEVENTFD, &req) < 0)
    spdlog::warn("KVM_IOEVENTFD (deassign {:#x}): {}", match_.addr, std::strerror(errno));
  vm_fd_ = -1;
}

IoEventFd::~IoEventFd() { deassign(); }

IoEventFd::IoEventFd(IoEventFd&& o) noexcept : vm_fd_(o.vm_fd_), event_(std::move(o.event_)), match_(o.match_) {
  o.vm_fd_ = -1;
}

IoEventFd& IoEventFd::operator=(IoEventFd&& o) noexcept {
  if (this != &o) {
    deassign();
    vm_fd_ = o.vm_fd_;
    event_ = std::move(o.event_);
    match_ = o.match_;
    o.vm_fd_ = -1;
  }
  return *this;
}

}  // namespace ferry::kvm

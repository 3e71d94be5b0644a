#include "kvm/vcpu.hh"

#include <sys/ioctl.h>

#include <cerrno>

namespace ferry::kvm {

Status Vcpu::run_once() {
  if (::ioctl(fd_.get(), KVM_RUN, 0) < 0) {
    const int e = errno;
    // EINTR: a signal (our kick). EAGAIN: an application processor waiting
    // for SIPI (KVM_MP_STATE_UNINITIALIZED) woke up, e.g. on INIT, without
    // becoming runnable yet; KVM expects the VMM to simply call again.
    // Both read as "no exit to handle" to the run loop.
    if (e == EINTR || e == EAGAIN) {
      run().exit_reason = KVM_EXIT_INTR;
      return {};
    }
    return std::unexpected(sys_error(fmt::format("KVM_RUN vCPU {}", id_), e));
  }
  return {};
}

Status Vcpu::complete_pending_exit() {
  auto& r = run();
  r.immediate_exit = 1;
  const int rc = ::ioctl(fd_.get(), KVM_RUN, 0);
  const int e = errno;
  r.immediate_exit = 0;
  // The kernel finishes the pending operation first, then sees immediate_exit
  // and returns EINTR without entering the guest.
  if (rc == 0) return fail("KVM_RUN with immediate_exit on vCPU {} entered the guest", id_);
  if (e != EINTR) return std::unexpected(sys_error(fmt::format("KVM_RUN (immediate_exit) vCPU {}", id_), e));
  r.exit_reason = KVM_EXIT_INTR;
  return {};
}

Result<kvm_regs> Vcpu::get_regs() const {
  kvm_regs r{};
  if (::ioctl(fd_.get(), KVM_GET_REGS, &r) < 0) {
    const int e = errno;
    return std::unexpected(sys_error(fmt::format("KVM_GET_REGS vCPU {}", id_), e));
  }
  return r;
}

Status Vcpu::set_regs(const kvm_regs& r) {
  if (::ioctl(fd_.get(), KVM_SET_REGS, &r) < 0) {
    const int e = errno;
    return std::unexpected(sys_error(fmt::format("KVM_SET_REGS vCPU {}", id_), e));
  }
  return {};
}

Result<kvm_sregs> Vcpu::get_sregs() const {
  kvm_sregs s{};
  if (::ioctl(fd_.get(), KVM_GET_SREGS, &s) < 0) {
    const int e = errno;
    return std::unexpected(sys_error(fmt::format("KVM_GET_SREGS vCPU {}", id_), e));
  }
  return s;
}

Status Vcpu::set_sregs(const kvm_sregs& s) {
  if (::ioctl(fd_.get(), KVM_SET_SREGS, &s) < 0) {
    const int e = errno;
    return std::unexpected(sys_error(fmt::format("KVM_SET_SREGS vCPU {}", id_), e));
  }
  return {};
}

namespace {
kvm_device_attr tsc_offset_attr(std::uint64_t* value) {
  kvm_device_attr attr{};
  attr.group = KVM_VCPU_TSC_CTRL;
  attr.attr = KVM_VCPU_TSC_OFFSET;
  attr.addr = reinterpret_cast<std::uint64_t>(value);
  return attr;
}
}  // namespace

bool Vcpu::has_tsc_offset() const {
  auto attr = tsc_offset_attr(nullptr);
  return ::ioctl(fd_.get(), KVM_HAS_DEVICE_ATTR, &attr) == 0;
}

Result<std::uint64_t> Vcpu::tsc_offset() const {
  std::uint64_t v = 0;
  auto attr = tsc_offset_attr(&v);
  if (::ioctl(fd_.get(), KVM_GET_DEVICE_ATTR, &attr) < 0) {
    const int e = errno;
    return std::unexpected(sys_error(fmt::format("KVM_GET_DEVICE_ATTR TSC offset of vCPU {}", id_), e));
  }
  return v;
}

Status Vcpu::set_tsc_offset(std::uint64_t offset) {
  auto attr = tsc_offset_attr(&offset);
  if (::ioctl(fd_.get(), KVM_SET_DEVICE_ATTR, &attr) < 0) {
    const int e = errno;
    return std::unexpected(sys_error(fmt::format("KVM_SET_DEVICE_ATTR TSC offset of vCPU {}", id_), e));
  }
  return {};
}

}  // namespace ferry::kvm

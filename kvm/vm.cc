#include <cerrno>

#include "kvm/vm.hh"

#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <bit>

#include "kvm/guest_memory.hh"
#include "kvm/uapi.hh"

namespace ferry::kvm {

int Vm::check_extension(unsigned cap) const {
  int r = ::ioctl(fd_.get(), KVM_CHECK_EXTENSION, cap);
  return r < 0 ? 0 : r;
}

Status Vm::enable_dirty_ring(std::uint32_t bytes) {
  if (vcpus_created_ > 0) return fail("dirty ring: must be enabled before any vCPU is created");
  if (!std::has_single_bit(bytes) || bytes < static_cast<std::uint32_t>(::getpagesize()))
    return fail("dirty ring: size {} bytes is not a power of two >= the page size {}", bytes, ::getpagesize());
  unsigned cap = KVM_CAP_DIRTY_LOG_RING_ACQ_REL;
  int max = check_extension(cap);
  DirtyRingMode mode = DirtyRingMode::kAcqRel;
  if (max == 0) {
    cap = KVM_CAP_DIRTY_LOG_RING;
    max = check_extension(cap);
    mode = DirtyRingMode::kPlain;
  }
  if (max == 0) return fail("dirty ring: KVM_CAP_DIRTY_LOG_RING not supported by this kernel");
  if (bytes > static_cast<std::uint32_t>(max))
    return fail("dirty ring: {} bytes requested, kernel maximum is {}", bytes, max);
  kvm_enable_cap ec{};
  ec.cap = cap;
  ec.args[0] = bytes;
  if (::ioctl(fd_.get(), KVM_ENABLE_CAP, &ec) < 0)
    {
    const int e = errno;
    return std::unexpected(sys_error(fmt::format("KVM_ENABLE_CAP dirty ring ({} bytes)", bytes), e));
  }
  ring_mode_ = mode;
  ring_bytes_ = bytes;
  return {};
}

Result<std::uint32_t> Vm::enable_smallest_dirty_ring() {
  Error last("dirty ring: no size accepted");
  for (std::uint32_t bytes = static_cast<std::uint32_t>(::getpagesize()); bytes <= (1u << 20); bytes *= 2) {
    auto ok = enable_dirty_ring(bytes);
    if (ok) return bytes;
    // EINVAL = below this CPU's reserve; anything else is a real failure.
    if (ok.error().sys_errno() != EINVAL) return std::unexpected(ok.error());
    last = ok.error();
  }
  return std::unexpected(last);
}

Status Vm::set_memory_region(const GuestRegion& region, bool log_dirty) {
  kvm_userspace_memory_region r{};
  r.slot = region.slot();
  r.flags = log_dirty ? KVM_MEM_LOG_DIRTY_PAGES : 0;
  r.guest_phys_addr = region.gpa();
  r.memory_size = region.size();
  r.userspace_addr = reinterpret_cast<std::uint64_t>(region.host());
  if (::ioctl(fd_.get(), KVM_SET_USER_MEMORY_REGION, &r) < 0)
    return std::unexpected(sys_error(
        fmt::format("KVM_SET_USER_MEMORY_REGION slot {} gpa {:#x} size {:#x}", r.slot, r.guest_phys_addr, r.memory_size)));
  return {};
}

Result<Vcpu> Vm::create_vcpu(std::uint32_t id) {
  UniqueFd fd(::ioctl(fd_.get(), KVM_CREATE_VCPU, static_cast<unsigned long>(id)));
  if (!fd) {
    const int e = errno;
    return std::unexpected(sys_error(fmt::format("KVM_CREATE_VCPU {}", id), e));
  }
  auto run = Mapping::map(vcpu_mmap_size_, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0,
                          fmt::format("kvm_run of vCPU {}", id));
  if (!run) return std::unexpected(run.error());
  std::optional<DirtyRing> ring;
  if (ring_mode_ != DirtyRingMode::kOff) {
    auto r = DirtyRing::map(fd.get(), ring_bytes_, id);
    if (!r) return std::unexpected(r.error());
    ring.emplace(std::move(*r));
  }
  ++vcpus_created_;
  Vcpu vcpu(id, std::move(fd), std::move(*run), std::move(ring));
  // The XSAVE area's size is fixed when the vCPU is created and is only
  // answered on the VM fd (0 = no KVM_CAP_XSAVE2, i.e. the 4 KiB legacy size).
  const auto xsave2 = static_cast<std::size_t>(check_extension(KVM_CAP_XSAVE2));
  vcpu.xsave_bytes_ = std::max(sizeof(uapi::XsaveRegion), xsave2);
  return vcpu;
}

Status Vm::create_irqchip() {
  if (vcpus_created_ > 0) return fail("KVM_CREATE_IRQCHIP: must be created before any vCPU");
  if (::ioctl(fd_.get(), KVM_CREATE_IRQCHIP, 0) < 0) return fail_sys("KVM_CREATE_IRQCHIP");
  irqchip_ = true;
  return {};
}

Status Vm::set_irq_line(std::uint32_t gsi, bool level) {
  kvm_irq_level l{};
  l.irq = gsi;
  l.level = level ? 1 : 0;
  if (::ioctl(fd_.get(), KVM_IRQ_LINE, &l) < 0) return fail_sys(fmt::format("KVM_IRQ_LINE {}", gsi));
  return {};
}

Status Vm::create_pit() {
  if (!irqchip_) return fail("KVM_CREATE_PIT2: needs the in-kernel irqchip (create it first)");
  kvm_pit_config c{};
  c.flags = KVM_PIT_SPEAKER_DUMMY;
  if (::ioctl(fd_.get(), KVM_CREATE_PIT2, &c) < 0) return fail_sys("KVM_CREATE_PIT2");
  pit_ = true;
  return {};
}

Result<std::uint32_t> Vm::reset_dirty_rings() {
  int r = ::ioctl(fd_.get(), KVM_RESET_DIRTY_RINGS, 0);
  if (r < 0) return fail_sys("KVM_RESET_DIRTY_RINGS");
  return static_cast<std::uint32_t>(r);
}

}  // namespace ferry::kvm

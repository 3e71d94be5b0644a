#include "kvm/system.hh"

#include <fcntl.h>
#include <sys/ioctl.h>

#include <cerrno>
#include <vector>

#include "kvm/uapi.hh"
#include "kvm/vm.hh"

namespace ferry::kvm {

Result<Kvm> Kvm::open(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CLOEXEC));
  if (!fd) {
    const int e = errno;
    return std::unexpected(sys_error(fmt::format("open {}", path), e));
  }
  int api = ::ioctl(fd.get(), KVM_GET_API_VERSION, 0);
  if (api < 0) {
    const int e = errno;
    return std::unexpected(sys_error(fmt::format("KVM_GET_API_VERSION on {}", path), e));
  }
  if (api != kExpectedApiVersion)
    return fail("{}: KVM API version {} (Ferry needs {})", path, api, kExpectedApiVersion);
  return Kvm(std::move(fd), path, api);
}

int Kvm::check_extension(unsigned cap) const {
  int r = ::ioctl(fd_.get(), KVM_CHECK_EXTENSION, cap);
  return r < 0 ? 0 : r;
}

Result<std::size_t> Kvm::vcpu_mmap_size() const {
  int r = ::ioctl(fd_.get(), KVM_GET_VCPU_MMAP_SIZE, 0);
  if (r < 0) return fail_sys("KVM_GET_VCPU_MMAP_SIZE");
  if (r == 0) return fail("KVM_GET_VCPU_MMAP_SIZE returned 0");
  return static_cast<std::size_t>(r);
}

Result<std::vector<std::uint32_t>> Kvm::msr_index_list() const {
  // The kernel tells the size through E2BIG when asked with nmsrs = 0.
  uapi::MsrListHeader probe{};
  if (::ioctl(fd_.get(), uapi::kGetMsrIndexList, &probe) < 0 && errno != E2BIG)
    return fail_sys("KVM_GET_MSR_INDEX_LIST (size)");
  // Header and indices in one u32 buffer, laid out as the kernel expects.
  std::vector<std::uint32_t> buf(1 + probe.nmsrs);
  buf[0] = probe.nmsrs;
  if (::ioctl(fd_.get(), uapi::kGetMsrIndexList, buf.data()) < 0) return fail_sys("KVM_GET_MSR_INDEX_LIST");
  return std::vector<std::uint32_t>(buf.begin() + 1, buf.begin() + 1 + buf[0]);
}

Result<std::vector<kvm_cpuid_entry2>> Kvm::supported_cpuid() const {
  // Grow until the kernel stops saying E2BIG; 256 entries covers today's CPUs.
  for (std::uint32_t n = 64; n <= 4096; n *= 2) {
    const std::size_t bytes = sizeof(uapi::Cpuid2Header) + n * sizeof(kvm_cpuid_entry2);
    std::vector<std::uint64_t> buf((bytes + 7) / 8);  // 8-byte aligned storage
    auto* hdr = reinterpret_cast<uapi::Cpuid2Header*>(buf.data());
    hdr->nent = n;
    if (::ioctl(fd_.get(), uapi::kGetSupportedCpuid, hdr) == 0) {
      const auto* first = reinterpret_cast<const kvm_cpuid_entry2*>(hdr + 1);
      return std::vector<kvm_cpuid_entry2>(first, first + hdr->nent);
    }
    if (errno != E2BIG) return fail_sys("KVM_GET_SUPPORTED_CPUID");
  }
  return fail("KVM_GET_SUPPORTED_CPUID: more than 4096 entries");
}

Result<Vm> Kvm::create_vm() const {
  auto mmap_size = vcpu_mmap_size();
  if (!mmap_size) return std::unexpected(mmap_size.error());
  UniqueFd vm(::ioctl(fd_.get(), KVM_CREATE_VM, 0));
  if (!vm) {
    const int e = errno;
    return std::unexpected(sys_error(fmt::format("KVM_CREATE_VM on {}", path_), e));
  }
  return Vm(std::move(vm), *mmap_size);
}

}  // namespace ferry::kvm

#pragma once
// /dev/kvm: the KVM subsystem handle. Answers capability questions and
// creates VMs. Everything Ferry asks of the host kernel's KVM starts here.
#include <linux/kvm.h>

#include <cstdint>
#include <string>
#include <vector>

#include "userspace/base/error.hh"
#include "userspace/base/unique_fd.hh"

namespace ferry::kvm {

class Vm;

inline constexpr int kExpectedApiVersion = KVM_API_VERSION;  // 12 since Linux 2.6.22

class Kvm {
 public:
  // Opens the device and checks the API version (KVM refuses to change it, so
  // anything but 12 means "not the KVM we were written against").
  static Result<Kvm> open(const std::string& path = "/dev/kvm");

  Kvm(Kvm&&) noexcept = default;
  Kvm& operator=(Kvm&&) noexcept = default;

  int api_version() const { return api_version_; }
  // KVM_CHECK_EXTENSION on the system fd: 0 = absent, >0 = present or a size.
  int check_extension(unsigned cap) const;
  Result<std::size_t> vcpu_mmap_size() const;
  // KVM_GET_MSR_INDEX_LIST: the MSRs KVM can save/restore for a vCPU.
  Result<std::vector<std::uint32_t>> msr_index_list() const;
  // KVM_GET_SUPPORTED_CPUID entries (what a guest may be given here).
  Result<std::vector<kvm_cpuid_entry2>> supported_cpuid() const;

  // A VM of the default machine type. The Kvm object may outlive or be
  // destroyed before the VM; the VM holds what it needs.
  Result<Vm> create_vm() const;

  int fd() const { return fd_.get(); }
  const std::string& path() const { return path_; }

 private:
  Kvm(UniqueFd fd, std::string path, int api) : fd_(std::move(fd)), path_(std::move(path)), api_version_(api) {}
  UniqueFd fd_;
  std::string path_;
  int api_version_ = 0;
};

}  // namespace ferry::kvm

#pragma once
// Re-running a ferry command inside tools/kvm-sandbox when this host has no
// usable /dev/kvm, so that users in containers and VMs can still try Ferry.
#include <string>
#include <vector>

#include "userspace/base/error.hh"

namespace ferry::cli {

// Succeeds when /dev/kvm opens and answers KVM_GET_API_VERSION; otherwise
// the reason (absent, permission denied, not a KVM device...).
Status native_kvm_usable(const std::string& device = "/dev/kvm");

// Replaces this process with `kvm-sandbox -- <this ferry binary> args...`;
// returns only on failure, with the reason (sandbox missing, not built...).
Error exec_in_sandbox(const std::vector<std::string>& ferry_args);

}  // namespace ferry::cli

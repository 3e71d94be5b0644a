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

// The preamble of every command that needs KVM (demo, bench-migrate,
// bench-trace): it runs here when already inside the sandbox, or with a
// usable /dev/kvm and no --sandbox. Otherwise it says why (unless quiet,
// e.g. --json) and replaces this process with the sandbox running `args`
// (which carry --in-sandbox). Returns true to go on here; false when the
// sandbox could not be started (the reason printed).
struct SandboxRerun {
  std::string command;   // "demo", for messages
  bool in_sandbox = false;
  bool force_sandbox = false;
  bool quiet = false;
  std::string doing;     // "running the demo inside tools/kvm-sandbox (...)"
  std::vector<std::string> args;
};
bool run_here_or_in_sandbox(const SandboxRerun& r);

}  // namespace ferry::cli

#include "tools/ferry/sandbox_exec.hh"

#include <unistd.h>

#include <cstdlib>
#include <filesystem>

#include <fmt/format.h>

#include "kvm/system.hh"

namespace ferry::cli {

Status native_kvm_usable(const std::string& device) {
  auto kvm = kvm::Kvm::open(device);
  if (!kvm) return std::unexpected(kvm.error());
  return {};
}

Error exec_in_sandbox(const std::vector<std::string>& ferry_args) {
  namespace fs = std::filesystem;
  const char* env_sandbox = std::getenv("FERRY_SANDBOX");
  const std::string sandbox = env_sandbox ? env_sandbox : FERRY_SANDBOX_PATH;
  std::error_code ec;
  if (!fs::exists(sandbox, ec))
    return Error(fmt::format("the KVM sandbox runner {} is missing (set FERRY_SANDBOX)", sandbox));
  if (!std::getenv("FERRY_SANDBOX_INITRAMFS")) {
    if (!fs::exists(FERRY_SANDBOX_INITRAMFS_PATH, ec))
      return Error(fmt::format("the sandbox initramfs {} is not built: run tools/bootstrap.sh, then "
                               "cmake --build <build-dir> --target sandbox-initramfs",
                               FERRY_SANDBOX_INITRAMFS_PATH));
    ::setenv("FERRY_SANDBOX_INITRAMFS", FERRY_SANDBOX_INITRAMFS_PATH, 1);
  }
  const auto self = fs::read_symlink("/proc/self/exe", ec);
  if (ec) return Error(fmt::format("cannot find this binary: {}", ec.message()));

  std::vector<std::string> argv{sandbox, "--", self.string()};
  argv.insert(argv.end(), ferry_args.begin(), ferry_args.end());
  std::vector<char*> cargv;
  for (auto& a : argv) cargv.push_back(a.data());
  cargv.push_back(nullptr);
  ::execv(sandbox.c_str(), cargv.data());
  const int e = errno;
  return sys_error(fmt::format("exec {}", sandbox), e);
}

bool run_here_or_in_sandbox(const SandboxRerun& r) {
  const auto native = r.in_sandbox || r.force_sandbox ? Status{} : native_kvm_usable();
  if (r.in_sandbox || (!r.force_sandbox && native)) return true;
  // Say why, so that a permission problem on a real KVM host is not
  // silently papered over by the (much slower) sandbox.
  const std::string why = r.force_sandbox ? "--sandbox given" : fmt::format("No usable /dev/kvm ({})", native.error());
  if (!r.quiet) fmt::print(stderr, "{}; {}...\n", why, r.doing);
  const auto err = exec_in_sandbox(r.args);
  fmt::print(stderr, "ferry {}: cannot start the sandbox: {}\n", r.command, err);
  return false;
}

}  // namespace ferry::cli

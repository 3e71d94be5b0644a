// Host facilities beyond KVM/io_uring/BPF: userfaultfd, locked memory, huge
// pages, kTLS.
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

#include <fmt/format.h>

#include "userspace/base/io.hh"
#include "userspace/base/unique_fd.hh"
#include "tools/doctor/checks.hh"
#include "kvm/guest_memory.hh"

namespace ferry::doctor {
namespace {

Check make(std::string name, Level level, std::string detail, std::string remedy, nlohmann::json value) {
  return Check{"system", std::move(name), level, std::move(detail), std::move(remedy), std::move(value)};
}

std::string read_file(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

Check check_userfaultfd() {
  // The syscall first (works for root and, with vm.unprivileged_userfaultfd,
  // others); /dev/userfaultfd (Linux >= 6.1) is the other door.
  UniqueFd fd(static_cast<int>(::syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK)));
  const int syscall_errno = errno;
  if (fd) return make("userfaultfd", Level::kOk, "userfaultfd available (post-copy possible)", "", true);
  fd = UniqueFd(::open("/dev/userfaultfd", O_RDWR | O_CLOEXEC));
  const int dev_errno = errno;
  if (fd) return make("userfaultfd", Level::kOk, "userfaultfd available through /dev/userfaultfd", "", true);
  return make("userfaultfd", Level::kWarn,
              fmt::format("userfaultfd unavailable: syscall: {}; /dev/userfaultfd: {}", std::strerror(syscall_errno),
                          std::strerror(dev_errno)),
              "run as root or set sysctl vm.unprivileged_userfaultfd=1 (needed only for post-copy)", false);
}

Check check_memlock() {
  rlimit rl{};
  ::getrlimit(RLIMIT_MEMLOCK, &rl);
  constexpr rlim_t kWant = 64ull << 20;  // io_uring registered buffers + BPF maps on old kernels
  if (rl.rlim_cur == RLIM_INFINITY)
    return make("memlock", Level::kOk, "locked-memory limit: unlimited", "", "unlimited");
  const auto mib = rl.rlim_cur >> 20;
  if (rl.rlim_cur >= kWant) return make("memlock", Level::kOk, fmt::format("locked-memory limit: {} MiB", mib), "", rl.rlim_cur);
  return make("memlock", Level::kWarn, fmt::format("locked-memory limit only {} KiB", rl.rlim_cur >> 10),
              "raise it: `ulimit -l unlimited` or LimitMEMLOCK=infinity in the unit file", rl.rlim_cur);
}

Check check_hugepages() {
  const auto total = static_cast<long>(meminfo("HugePages_Total").value_or(0));
  const auto free_pages = static_cast<long>(meminfo("HugePages_Free").value_or(0));
  const auto size_kb = static_cast<long>(meminfo("Hugepagesize").value_or(0));
  std::string thp = read_file("/sys/kernel/mm/transparent_hugepage/shmem_enabled");
  if (!thp.empty() && thp.back() == '\n') thp.pop_back();
  nlohmann::json v{{"total", total}, {"free", free_pages}, {"size_kb", size_kb}, {"shmem_thp", thp}};
  if (total > 0)
    return make("hugepages", Level::kOk,
                fmt::format("{} of {} huge pages ({} KiB) free; shmem THP: {}", free_pages, total, size_kb, thp.empty() ? "n/a" : thp),
                "", v);
  const bool thp_ok = kvm::shmem_thp_allowed(thp);
  v["default_backing"] = thp_ok ? "thp" : "off";
  return make("hugepages", Level::kWarn,
              fmt::format("no huge pages reserved; shmem THP: {} (guest RAM by default: {})", thp.empty() ? "n/a" : thp,
                          thp_ok ? "THP" : "4 KiB pages"),
              thp_ok ? "optional: reserve with sysctl vm.nr_hugepages=N for hugetlb-backed guests"
                     : "for THP-backed guest RAM (a migration destination on 4 KiB pages faults on every first touch): "
                       "echo advise > /sys/kernel/mm/transparent_hugepage/shmem_enabled",
              v);
}

Check check_ktls() {
  // The real test: attach the "tls" ULP to a connected TCP socket. The
  // kernel autoloads tls.ko when it can.
  UniqueFd listener(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  UniqueFd client(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  int err = 0;
  if (!listener || !client || ::bind(listener.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0 ||
      ::listen(listener.get(), 1) < 0 || ::getsockname(listener.get(), reinterpret_cast<sockaddr*>(&addr), &len) < 0 ||
      ::connect(client.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0) {
    err = errno;
    return make("ktls", Level::kWarn, fmt::format("could not test kTLS (loopback TCP: {})", std::strerror(err)),
                "bring up the loopback interface", false);
  }
  if (::setsockopt(client.get(), IPPROTO_TCP, TCP_ULP, "tls", 3) == 0)
    return make("ktls", Level::kOk, "kernel TLS available (encrypted migration without extra copies)", "", true);
  err = errno;
  return make("ktls", Level::kWarn, fmt::format("kernel TLS unavailable: {}", std::strerror(err)),
              "modprobe tls (CONFIG_TLS); encrypted migration would need a userspace copy", false);
}

}  // namespace

std::vector<Check> check_system() {
  return {check_userfaultfd(), check_memlock(), check_hugepages(), check_ktls()};
}

}  // namespace ferry::doctor

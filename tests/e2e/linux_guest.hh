#pragma once
// What the Linux guest e2e tests share: the guest's initramfs built once
// per suite (busybox, ferry-workload, the virtio modules), `ferry run`'s
// arguments for it, and waiting on and typing into its serial console.
#include <gtest/gtest.h>

#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/e2e/process.hh"

namespace ferry::test {

using namespace std::chrono_literals;

inline std::string slurp(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}
struct Heartbeat {
  std::uint64_t hb = 0, uptime_ms = 0, rewrites = 0, verified = 0, failures = 0, max_gap_ms = 0;
};

// Every ferry-workload heartbeat line in a console log, in order.
inline std::vector<Heartbeat> heartbeats(const std::string& log) {
  static const std::regex re(
      R"(ferry-workload: hb=(\d+) uptime_ms=(\d+) rewrites=(\d+) verified=(\d+) failures=(\d+) max_gap_ms=(\d+))");
  std::vector<Heartbeat> out;
  for (auto it = std::sregex_iterator(log.begin(), log.end(), re); it != std::sregex_iterator(); ++it) {
    const auto& m = *it;
    out.push_back({std::stoull(m[1]), std::stoull(m[2]), std::stoull(m[3]), std::stoull(m[4]), std::stoull(m[5]),
                   std::stoull(m[6])});
  }
  return out;
}

class LinuxGuest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    char tmpl[] = "/tmp/ferry-linux-XXXXXX";
    dir_ = ::mkdtemp(tmpl);
    initrd_ = dir_ + "/guest.cpio";
    // Built now, from busybox-static and this build's workload binary.
    auto r = run_process({FERRY_GUEST_MKINITRAMFS, initrd_, FERRY_GUEST_WORKLOAD, FERRY_GUEST_MODULES}, 120s);
    build_error_ = r.exit_code == 0 ? "" : r.describe();
  }
  static void TearDownTestSuite() { std::filesystem::remove_all(dir_); }

  void SetUp() override {
    ASSERT_TRUE(build_error_.empty()) << "building the guest initramfs failed:\n" << build_error_;
    ASSERT_TRUE(std::filesystem::exists(FERRY_GUEST_KERNEL)) << FERRY_GUEST_KERNEL << " missing: run tools/bootstrap.sh";
  }

  std::vector<std::string> run_args(int vcpus, const std::string& api, const std::string& log) const {
    return {FERRY_BIN, "run", "--kernel", FERRY_GUEST_KERNEL, "--initrd", initrd_, "--memory", "256M",
            "--vcpus", std::to_string(vcpus), "--api", api, "--serial-log", log, "--json",
            "--cmdline", "console=ttyS0 panic=-1 pci=off ferry.mib=16 ferry.rate=8"};
  }

  // Polls the console log until pred holds; false on timeout.
  static bool wait_console(const std::string& log, const std::function<bool(const std::string&)>& pred,
                           std::chrono::seconds limit) {
    const auto end = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < end) {
      if (pred(slurp(log))) return true;
      std::this_thread::sleep_for(100ms);
    }
    return pred(slurp(log));
  }
  static bool contains(const std::string& log, const std::string& s) { return log.find(s) != std::string::npos; }
  // A line that is exactly `s` (the command's output, not the echoed input).
  static bool has_line(const std::string& log, const std::string& s) {
    std::istringstream in(log);
    for (std::string line; std::getline(in, line);) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line == s) return true;
    }
    return false;
  }
  static bool type(const std::string& api, const std::string& line) {
    return run_process({FERRY_BIN, "console", "--vm", api, line}, 60s).exit_code == 0;
  }

  static inline std::string dir_, initrd_, build_error_;
};

}  // namespace ferry::test

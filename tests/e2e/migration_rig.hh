#pragma once
// What the migration e2e tests share: a source VM, a receiver, the fault
// proxy, `ferry migrate`, and how the channel is secured. Real processes:
// the ferry binary and tests/fault_proxy.
#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "tests/e2e/process.hh"
#include "tests/e2e/vm_client.hh"
#include "tests/temp_dir.hh"

namespace ferry::test {

using namespace std::chrono_literals;

// Waits for a line of output (JSON event or the proxy's text) and returns it.
template <class F>
auto wait_output(BackgroundProcess& p, F&& find, std::chrono::seconds limit) {
  const auto end = std::chrono::steady_clock::now() + limit;
  auto v = find(p.output());
  while (!v && std::chrono::steady_clock::now() < end && p.running()) {
    std::this_thread::sleep_for(50ms);
    v = find(p.output());
  }
  return v;
}

struct Receiver {
  std::unique_ptr<BackgroundProcess> p;
  std::string api, listen;
};

// How a test's migration is secured. Plain TCP unless the test is about
// the channel: in the sandbox AES-GCM is emulated and runs at about a sixth
// of the page path in clear (ferry bench-transport), slower than the
// built-in guest dirties, and the fault proxy must read the frames it cuts.
// The tests that are about TLS use it (OverTls*, Strangers*); natively it
// costs about a tenth.
enum class Wire { kTls, kPlain };

// The suite's pre-shared key: one file, mode 600, for the process's life.
inline const std::string& test_psk() {
  static TempDir dir("ferry-psk");
  static const std::string path = [] {
    const std::string p = dir.path + "/psk";
    std::ofstream(p) << "5e1f0c6a2b7d4e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f\n";
    ::chmod(p.c_str(), 0600);
    return p;
  }();
  return path;
}

inline std::vector<std::string> wire_args(Wire w) {
  if (w == Wire::kPlain) return {"--insecure"};
  return {"--tls-psk", test_psk()};
}

// Its records go to `state_dir` (default: a directory of its own in `dir`).
inline Receiver start_receiver(const TempDir& dir, const std::string& name, std::string state_dir = "",
                        const std::string& listen = "127.0.0.1:0", Wire wire = Wire::kPlain) {
  Receiver r;
  r.api = dir.path + "/" + name + ".sock";
  if (state_dir.empty()) state_dir = dir.path + "/" + name + "-state";
  r.p = std::make_unique<BackgroundProcess>(std::vector<std::string>{
      FERRY_BIN, "receive", "--listen", listen, "--api", r.api, "--json", "--serial-log",
      dir.path + "/" + name + "-serial.log", "--state-dir", state_dir, wire_args(wire)[0],
      wire_args(wire).back()});
  auto ev = wait_output(*r.p, [](const std::string& out) -> std::optional<std::string> {
    auto j = find_event(out, "listening");
    if (j.is_null()) return std::nullopt;
    return j["listen"].get<std::string>();
  }, 60s);
  if (ev) r.listen = *ev;
  return r;
}

// The fault proxy in front of a receiver; its address, or "" on failure.
inline std::string start_proxy(std::unique_ptr<BackgroundProcess>& proxy, const std::string& to, const std::string& fault) {
  proxy = std::make_unique<BackgroundProcess>(
      std::vector<std::string>{FERRY_FAULT_PROXY, "--listen", "127.0.0.1:0", "--to", to, "--fault", fault});
  auto port = wait_output(*proxy, [](const std::string& out) -> std::optional<std::string> {
    const auto at = out.find("listening on ");
    if (at == std::string::npos) return std::nullopt;
    const auto nl = out.find('\n', at);
    if (nl == std::string::npos) return std::nullopt;
    return out.substr(at + 13, nl - at - 13);
  }, 30s);
  return port.value_or("");
}

// Plain TCP unless `extra` has --tls-psk or --insecure already.
inline ProcessResult migrate(const std::string& api, const std::string& to, std::vector<std::string> extra = {}) {
  std::vector<std::string> argv{FERRY_BIN, "migrate", "--vm", api, "--to", to, "--json"};
  argv.insert(argv.end(), extra.begin(), extra.end());
  if (std::find(extra.begin(), extra.end(), "--tls-psk") == extra.end() &&
      std::find(extra.begin(), extra.end(), "--insecure") == extra.end())
    argv.push_back("--insecure");
  return run_process(argv, 900s);
}

// The source keeps running and verifying: the one VM that must exist.
inline void expect_source_alive_and_verifying(const std::string& api, const std::string& context) {
  auto before = wait_status(api, [](const nlohmann::json& j) { return j["state"] == "running"; }, 60s);
  ASSERT_FALSE(before.is_null()) << context;
  ASSERT_EQ(before["state"], "running") << context << "\n" << before.dump(2);
  auto after = wait_status(api, [&](const nlohmann::json& j) { return verified(j) >= verified(before) + 100; }, 300s);
  EXPECT_GE(verified(after), verified(before) + 100) << context << ": the source stopped verifying";
  EXPECT_EQ(after["totals"]["failures"], 0) << context;
  EXPECT_TRUE(after["migration"]["phase"] == "failed" || after["migration"]["phase"] == "cancelled")
      << context << after["migration"].dump(2);
}

inline std::vector<std::string> source_argv(const TempDir& dir, const std::string& api) {
  return {FERRY_BIN, "run", "--vcpus", "2", "--memory", "256M", "--working-set", "4", "--api", api, "--json",
          "--serial-log", dir.path + "/src-serial.log"};
}

// The one VM runs at the destination and its guest goes on verifying (100
// more pages, no failure); then it is told to quit and must end cleanly.
inline void expect_destination_runs_then_quit(Receiver& dst) {
  auto d = wait_status(dst.api, [](const nlohmann::json& j) { return j["state"] == "running"; }, 60s);
  ASSERT_EQ(d["state"], "running") << dst.p->output();
  auto d2 = wait_status(dst.api, [&](const nlohmann::json& j) { return verified(j) >= verified(d) + 100; }, 300s);
  EXPECT_GE(verified(d2), verified(d) + 100) << "the guest stopped verifying at the destination";
  EXPECT_EQ(d2["totals"]["failures"], 0);
  ctl({"quit", "--vm", dst.api});
  EXPECT_EQ(dst.p->wait(60s).exit_code, 0);
}

}  // namespace ferry::test

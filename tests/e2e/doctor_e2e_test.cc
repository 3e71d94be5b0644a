// `ferry doctor` as a user runs it: on this host, and inside the KVM sandbox.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "tests/e2e/process.hh"

namespace ferry::test {
namespace {

using namespace std::chrono_literals;

const nlohmann::json* find_check(const nlohmann::json& report, std::string_view area, std::string_view name) {
  for (const auto& c : report["checks"])
    if (c["area"] == area && c["name"] == name) return &c;
  return nullptr;
}

TEST(Host, DoctorJsonVerdictMatchesExitStatus) {
  auto r = run_process({FERRY_BIN, "doctor", "--json"}, 120s);
  ASSERT_FALSE(r.timed_out) << r.describe();
  ASSERT_TRUE(r.exit_code == 0 || r.exit_code == 1) << r.describe();
  auto j = nlohmann::json::parse(r.out, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << "doctor --json printed invalid JSON:\n" << r.describe();
  EXPECT_EQ(j["migration_possible"].get<bool>(), r.exit_code == 0) << r.out;
  // Every area is reported, every check has a known status, and every
  // non-OK line carries a remedy.
  for (const char* area : {"kvm", "io_uring", "ebpf", "system"}) {
    bool seen = false;
    for (const auto& c : j["checks"]) seen = seen || c["area"] == area;
    EXPECT_TRUE(seen) << "no " << area << " checks in:\n" << r.out;
  }
  for (const auto& c : j["checks"]) {
    const auto s = c["status"].get<std::string>();
    EXPECT_TRUE(s == "OK" || s == "WARN" || s == "FAIL") << c.dump();
    if (s != "OK") {
      EXPECT_FALSE(c["remedy"].get<std::string>().empty()) << c.dump();
    }
  }
  if (r.exit_code != 0) {
    EXPECT_FALSE(j["reason"].get<std::string>().empty());
  }
}

TEST(Host, DoctorTextPutsTheVerdictFirst) {
  auto r = run_process({FERRY_BIN, "doctor"}, 120s);
  ASSERT_FALSE(r.timed_out) << r.describe();
  const auto expected = r.exit_code == 0 ? "Live migration can work on this host" : "Live migration CANNOT work on this host";
  EXPECT_EQ(r.out.rfind(expected, 0), 0u) << r.describe();
}

TEST(Host, HelpAnswers) {
  auto top = run_process({FERRY_BIN, "--help"}, 30s);
  EXPECT_EQ(top.exit_code, 0) << top.describe();
  EXPECT_NE(top.out.find("doctor"), std::string::npos) << top.out;
  EXPECT_NE(top.out.find("demo"), std::string::npos) << top.out;
  auto doc = run_process({FERRY_BIN, "doctor", "--help"}, 30s);
  EXPECT_EQ(doc.exit_code, 0) << doc.describe();
  EXPECT_NE(doc.out.find("--json"), std::string::npos) << doc.out;
  auto bad = run_process({FERRY_BIN, "no-such-command"}, 30s);
  EXPECT_NE(bad.exit_code, 0) << bad.describe();
}

TEST(Sandbox, DoctorReportsKvmUsableWithDirtyRing) {
  auto r = run_process({FERRY_SANDBOX_BIN, "--", FERRY_BIN, "doctor", "--json"}, 600s);
  ASSERT_FALSE(r.timed_out) << r.describe();
  auto j = nlohmann::json::parse(r.out, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << "invalid JSON from doctor in the sandbox:\n" << r.describe();
  const auto* dev = find_check(j, "kvm", "device");
  ASSERT_NE(dev, nullptr) << r.out;
  EXPECT_EQ((*dev)["status"], "OK") << dev->dump();
  const auto* ring = find_check(j, "kvm", "dirty_ring");
  ASSERT_NE(ring, nullptr) << r.out;
  EXPECT_EQ((*ring)["status"], "OK") << ring->dump();
  EXPECT_GE((*ring)["value"].get<long>(), 4096) << ring->dump();
  // The sandbox is meant to be a complete Ferry host: nothing may FAIL there,
  // and the BPF load+attach must really run.
  EXPECT_TRUE(j["migration_possible"].get<bool>()) << j["reason"];
  EXPECT_EQ(r.exit_code, 0) << r.describe();
  const auto* bpf = find_check(j, "ebpf", "load_attach");
  ASSERT_NE(bpf, nullptr);
  EXPECT_EQ((*bpf)["status"], "OK") << bpf->dump();
}

}  // namespace
}  // namespace ferry::test

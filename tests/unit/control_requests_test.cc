// The control API's typed requests: what parse_request accepts, and the
// error each malformed request gets (before anything touches the VM).
#include <gtest/gtest.h>

#include <filesystem>

#include "userspace/control/requests.hh"

namespace ferry::control {
namespace {

using nlohmann::json;
// The plain-TCP choice every migrate request must spell out.
const json kPlain = json::array({"security", {{"mode", "insecure"}}});

std::string error_of(const std::string& cmd, const json& req) {
  auto r = parse_request(cmd, req);
  return r ? std::string("(parsed)") : r.error().message();
}

TEST(ControlRequests, TheUnknownCommandErrorListsEveryCommand) {
  const auto e = error_of("frobnicate", json::object());
  EXPECT_TRUE(e.starts_with("unknown command 'frobnicate' (")) << e;
  ASSERT_EQ(command_names().size(), std::variant_size_v<Request>);
  for (auto name : command_names()) {
    EXPECT_NE(e.find(name), std::string::npos) << name << " missing from: " << e;
    // Every listed name parses to the request that reports that name (with
    // the fields the stricter ones need).
    json req{{"path", "x.snap"}, {"input", "ls\n"}, {"gpa", 4096}, {"len", 8}, {"hex", "00ff"},
             {"to", "127.0.0.1:7000"}, {"migrated", false}, {"security", {{"mode", "insecure"}}},
             {"binding", std::string(64, '0')}};
    auto r = parse_request(std::string(name), req);
    ASSERT_TRUE(r) << name << ": " << r.error().what();
    EXPECT_EQ(command_name(*r), name);
  }
}

TEST(ControlRequests, FieldsAreTypedAndChecked) {
  auto snap = parse_request("snapshot", {{"path", "rel.snap"}});
  ASSERT_TRUE(snap);
  EXPECT_EQ(std::get<SnapshotRequest>(*snap).path, (std::filesystem::current_path() / "rel.snap").string());
  EXPECT_EQ(error_of("snapshot", json::object()), "snapshot: needs \"path\" (a file name)");
  EXPECT_EQ(error_of("console", {{"input", 3}}), "console: needs \"input\" (a string)");

  auto mig = parse_request("migrate", {{"to", "10.0.0.2:7000"},
                                      {"security", {{"mode", "psk"}, {"path", "/etc/ferry/psk"}}},
                                      {"streams", 4},
                                      {"verify", true},
                                      {"policy", "fixed"}});
  ASSERT_TRUE(mig) << mig.error().what();
  const auto& mo = std::get<MigrateRequest>(*mig).options;
  EXPECT_EQ(mo.to.str(), "10.0.0.2:7000");
  EXPECT_EQ(mo.streams, 4u);
  EXPECT_TRUE(mo.verify);
  EXPECT_EQ(mo.policy, migration::PolicyKind::kFixedThreshold);
  EXPECT_EQ(mo.security.kind, transport::Security::Kind::kPreSharedKey);
  EXPECT_EQ(mo.security.path, "/etc/ferry/psk");
  // Never plain TCP unless asked for.
  EXPECT_TRUE(error_of("migrate", {{"to", "10.0.0.2:7000"}}).starts_with("migrate: needs \"security\""));
  EXPECT_EQ(error_of("migrate", {{"to", "10.0.0.2:7000"}, {"security", {{"mode", "tls"}}}}),
            "migrate: unknown security mode 'tls' (insecure, certificates, psk)");
  EXPECT_EQ(error_of("migrate", {{"to", "10.0.0.2:7000"}, {"security", {{"mode", "certificates"}}}}),
            "migrate: security mode certificates needs a path");
  EXPECT_EQ(error_of("migrate", json::object()), "migrate: needs \"to\" (HOST:PORT)");
  EXPECT_EQ(error_of("migrate", {{"to", "10.0.0.2:7000"}, kPlain, {"streams", 17}}), "migrate: streams must be 1..16");
  EXPECT_EQ(error_of("migrate", {{"to", "10.0.0.2:7000"}, kPlain, {"policy", "yolo"}}),
            "migrate: policy is \"adaptive\" or \"fixed\"");
  EXPECT_EQ(error_of("migrate", {{"to", "10.0.0.2:7000"}, kPlain, {"downtime_limit_ms", -1}}),
            "migrate: downtime_limit_ms must be positive");
  EXPECT_TRUE(error_of("migrate", {{"to", "10.0.0.2:7000"}, kPlain, {"verify", "yes"}}).starts_with("migrate: bad field"));

  // Numbers that do not fit the field are refused, not converted (a double
  // beyond an unsigned field's range was undefined behaviour: fuzz_control).
  EXPECT_EQ(error_of("migrate", {{"to", "10.0.0.2:7000"}, kPlain, {"streams", 2.5}}),
            "migrate: streams must be a whole number from 0 to 65536");
  EXPECT_EQ(error_of("migrate", {{"to", "10.0.0.2:7000"}, kPlain, {"timeout_s", -3}}),
            "migrate: timeout_s must be a whole number from 0 to 604800");
  EXPECT_EQ(error_of("migrate", {{"to", "10.0.0.2:7000"}, kPlain, {"timeout_s", 1e30}}),
            "migrate: timeout_s must be a whole number from 0 to 604800");
  EXPECT_EQ(error_of("dirty-rate", {{"seconds", 0.5}, {"harvest_ms", 5.7777777777777777e19}}),
            "dirty-rate: harvest_ms must be at least 10 and at most the duration");
  EXPECT_EQ(error_of("dirty-rate", {{"seconds", 61}}), "dirty-rate: seconds must be in (0, 60]");
  EXPECT_EQ(error_of("dirty-rate", {{"seconds", 1}, {"harvest_ms", 5}}),
            "dirty-rate: harvest_ms must be at least 10 and at most the duration");
  EXPECT_EQ(error_of("migration", {{"since_round", -1}}), "migration: since_round must be a round count");
  EXPECT_EQ(error_of("resolve", json::object()),
            "resolve: needs \"migrated\": true (the destination runs the VM) or false (resume here)");
  auto cancel = parse_request("cancel", json::object());
  ASSERT_TRUE(cancel);
  EXPECT_EQ(std::get<CancelRequest>(*cancel).reason, "cancelled through the API");
}

TEST(ControlRequests, MemoryAccessesAreBounded) {
  auto w = parse_request("memory-write", {{"gpa", 0x1000}, {"hex", "deadBEEF"}});
  ASSERT_TRUE(w) << w.error().what();
  EXPECT_EQ(std::get<MemoryWriteRequest>(*w).bytes.size(), 4u);
  EXPECT_EQ(error_of("memory-read", {{"len", 4}}), "memory-read: needs \"gpa\" (a guest physical address)");
  EXPECT_EQ(error_of("memory-read", {{"gpa", -5}, {"len", 4}}), "memory-read: needs \"gpa\" (a guest physical address)");
  EXPECT_EQ(error_of("memory-read", {{"gpa", 0}, {"len", kMaxMemoryAccess + 1}}),
            "memory-read: needs \"len\", 1 to 16384 bytes");
  EXPECT_EQ(error_of("memory-read", {{"gpa", 0}, {"len", 0}}), "memory-read: needs \"len\", 1 to 16384 bytes");
  EXPECT_EQ(error_of("memory-write", {{"gpa", 0}, {"hex", ""}}), "memory-write: 1 to 16384 bytes, not 0");
  EXPECT_EQ(error_of("memory-write", {{"gpa", 0}, {"hex", std::string(2 * kMaxMemoryAccess + 2, 'a')}}),
            "memory-write: 1 to 16384 bytes, not 16385");
  EXPECT_TRUE(error_of("memory-write", {{"gpa", 0}, {"hex", "0g"}}).starts_with("memory-write: hex: 'g' at offset 1"))
      << error_of("memory-write", {{"gpa", 0}, {"hex", "0g"}});
}

}  // namespace
}  // namespace ferry::control

#include "userspace/control/requests.hh"

#include <filesystem>
#include <optional>

#include <fmt/format.h>

#include "userspace/base/hex.hh"
#include "userspace/migration/payloads.hh"
#include "userspace/transport/endpoint.hh"

namespace ferry::control {
namespace {

using nlohmann::json;

// A non-negative integer field. JSON text parses such numbers as unsigned,
// but a json built in code holds them as signed: both count.
std::optional<std::uint64_t> count_field(const json& req, const char* name) {
  if (!req.contains(name)) return std::nullopt;
  const json& v = req[name];
  if (v.is_number_unsigned()) return v.get<std::uint64_t>();
  if (v.is_number_integer() && v.get<std::int64_t>() >= 0) return static_cast<std::uint64_t>(v.get<std::int64_t>());
  return std::nullopt;
}

// A whole number field of at most `max`, or the error naming it: a float or
// a negative value is refused rather than converted (a JSON number beyond
// the target type's range would be undefined behaviour; found by
// tests/fuzz/fuzz_control).
Result<std::uint32_t> whole_field(const json& req, const char* name, std::uint32_t max, std::string_view cmd) {
  const auto v = count_field(req, name);
  if (!v || *v > max) return fail("{}: {} must be a whole number from 0 to {}", cmd, name, max);
  return static_cast<std::uint32_t>(*v);
}

// `migrate` fields -> options; unknown values are errors.
Result<migration::MigrateOptions> migrate_options(const json& req) {
  migration::MigrateOptions mo;
  if (!req.contains("to") || !req["to"].is_string()) return fail("migrate: needs \"to\" (HOST:PORT)");
  auto to = transport::parse_endpoint(req["to"].get<std::string>());
  if (!to) return std::unexpected(to.error());
  if (to->port == 0) return fail("migrate: \"to\" needs a port");
  mo.to = *to;
  // Never plain TCP by default: the caller says how (ferry migrate's
  // --tls-dir, --tls-psk or --insecure).
  if (!req.contains("security") || !req["security"].is_object() || !req["security"].contains("mode") ||
      !req["security"]["mode"].is_string()) {
    return fail("migrate: needs \"security\": {\"mode\": \"certificates\"|\"psk\"|\"insecure\", \"path\": ...}");
  }
  {
    const auto& sec = req["security"];
    auto s = transport::security_from_mode(sec["mode"].get<std::string>(),
                                           sec.contains("path") && sec["path"].is_string() ? sec["path"].get<std::string>() : "");
    if (!s) return std::unexpected(std::move(s.error()).context("migrate"));
    mo.security = *s;
  }
  try {
    if (req.contains("downtime_limit_ms")) mo.downtime_limit = migration::Millis(req["downtime_limit_ms"].get<double>());
    if (req.contains("max_bandwidth_bytes_per_s")) mo.max_bandwidth = req["max_bandwidth_bytes_per_s"].get<double>();
    if (req.contains("streams")) {
      auto n = whole_field(req, "streams", 1u << 16, "migrate");
      if (!n) return std::unexpected(n.error());
      mo.streams = *n;
    }
    if (req.contains("timeout_s")) {
      auto n = whole_field(req, "timeout_s", 7 * 24 * 3600, "migrate");
      if (!n) return std::unexpected(n.error());
      mo.timeout = std::chrono::seconds(*n);
    }
    if (req.contains("on_timeout")) {
      const auto a = req["on_timeout"].get<std::string>();
      if (a != "cancel" && a != "switchover") return fail("migrate: on_timeout is \"cancel\" or \"switchover\"");
      mo.on_timeout = a == "cancel" ? migration::TimeoutAction::kCancel : migration::TimeoutAction::kForceSwitchover;
    }
    if (req.contains("verify")) mo.verify = req["verify"].get<bool>();
    if (req.contains("policy")) {
      const auto pol = req["policy"].get<std::string>();
      if (pol != "adaptive" && pol != "fixed") return fail("migrate: policy is \"adaptive\" or \"fixed\"");
      mo.policy = pol == "adaptive" ? migration::PolicyKind::kAdaptive : migration::PolicyKind::kFixedThreshold;
    }
    if (req.contains("ebpf")) mo.use_ebpf = req["ebpf"].get<bool>();
    if (req.contains("zero_copy"))
      mo.zero_copy = req["zero_copy"].get<bool>() ? transport::ZeroCopy::kAuto : transport::ZeroCopy::kOff;
  } catch (const json::exception& e) {
    return fail("migrate: bad field: {}", e.what());
  }
  if (mo.streams < 1 || mo.streams > migration::kMaxStreams)
    return fail("migrate: streams must be 1..{}", migration::kMaxStreams);
  if (mo.downtime_limit.count() <= 0) return fail("migrate: downtime_limit_ms must be positive");
  if (mo.max_bandwidth < 0) return fail("migrate: max_bandwidth_bytes_per_s must not be negative");
  return mo;
}

Result<migration::DirtyRateOptions> dirty_rate_options(const json& req) {
  migration::DirtyRateOptions dro;
  try {
    if (req.contains("seconds")) {
      const double secs = req["seconds"].get<double>();
      if (!(secs > 0 && secs <= 60)) return fail("dirty-rate: seconds must be in (0, 60]");
      dro.duration = std::chrono::milliseconds(static_cast<long>(secs * 1000));
    }
    if (req.contains("harvest_ms")) {
      auto n = whole_field(req, "harvest_ms", 60000, "dirty-rate");
      if (!n) return fail("dirty-rate: harvest_ms must be at least 10 and at most the duration");
      dro.harvest = std::chrono::milliseconds(*n);
    }
  } catch (const json::exception& e) {
    return fail("dirty-rate: bad field: {}", e.what());
  }
  // The API answers one request at a time: keep a measurement short enough
  // that status callers are not starved for long.
  if (dro.duration > std::chrono::seconds(60) || dro.duration.count() <= 0)
    return fail("dirty-rate: seconds must be in (0, 60]");
  if (dro.harvest < std::chrono::milliseconds(10) || dro.harvest > dro.duration)
    return fail("dirty-rate: harvest_ms must be at least 10 and at most the duration");
  return dro;
}

Result<Request> memory_request(const std::string& cmd, const json& req) {
  const auto gpa = count_field(req, "gpa");
  if (!gpa) return fail("{}: needs \"gpa\" (a guest physical address)", cmd);
  if (cmd == "memory-read") {
    const auto len = count_field(req, "len");
    if (!len || *len == 0 || *len > kMaxMemoryAccess)
      return fail("memory-read: needs \"len\", 1 to {} bytes", kMaxMemoryAccess);
    return MemoryReadRequest{*gpa, static_cast<std::size_t>(*len)};
  }
  if (!req.contains("hex") || !req["hex"].is_string()) return fail("memory-write: needs \"hex\" (the bytes)");
  auto bytes = from_hex(req["hex"].get<std::string>());
  if (!bytes) return std::unexpected(std::move(bytes.error()).context("memory-write"));
  if (bytes->empty() || bytes->size() > kMaxMemoryAccess)
    return fail("memory-write: 1 to {} bytes, not {}", kMaxMemoryAccess, bytes->size());
  return MemoryWriteRequest{*gpa, std::move(*bytes)};
}

}  // namespace

const std::vector<std::string_view>& command_names() {
  // The variant's order: command_name() indexes this.
  static const std::vector<std::string_view> names{
      "status",       "pause",      "resume",  "quit",      "snapshot", "console", "memory-read",
      "memory-write", "dirty-rate", "migrate", "migration", "cancel",   "resolve", "resolve-proof"};
  static_assert(std::variant_size_v<Request> == 14);
  return names;
}

std::string_view command_name(const Request& r) { return command_names()[r.index()]; }

Result<Request> parse_request(const std::string& cmd, const json& req) {
  if (cmd == "status") return StatusRequest{};
  if (cmd == "pause") return PauseRequest{};
  if (cmd == "resume") return ResumeRequest{};
  if (cmd == "quit") return QuitRequest{};
  if (cmd == "snapshot") {
    if (!req.contains("path") || !req["path"].is_string() || req["path"].get<std::string>().empty())
      return fail("snapshot: needs \"path\" (a file name)");
    return SnapshotRequest{std::filesystem::absolute(req["path"].get<std::string>()).string()};
  }
  if (cmd == "console") {
    if (!req.contains("input") || !req["input"].is_string()) return fail("console: needs \"input\" (a string)");
    return ConsoleRequest{req["input"].get<std::string>()};
  }
  if (cmd == "memory-read" || cmd == "memory-write") return memory_request(cmd, req);
  if (cmd == "dirty-rate") {
    auto o = dirty_rate_options(req);
    if (!o) return std::unexpected(o.error());
    return DirtyRateRequest{*o};
  }
  if (cmd == "migrate") {
    auto o = migrate_options(req);
    if (!o) return std::unexpected(o.error());
    return MigrateRequest{*o};
  }
  if (cmd == "migration") {
    MigrationRequest m;
    if (req.contains("since_round")) {
      const auto from = count_field(req, "since_round");
      if (!from) return fail("migration: since_round must be a round count");
      m.since_round = static_cast<std::size_t>(*from);
    }
    return m;
  }
  if (cmd == "cancel") {
    CancelRequest c;
    if (req.contains("reason") && req["reason"].is_string()) c.reason = req["reason"].get<std::string>();
    return c;
  }
  if (cmd == "resolve") {
    if (!req.contains("migrated") || !req["migrated"].is_boolean())
      return fail("resolve: needs \"migrated\": true (the destination runs the VM) or false (resume here)");
    return ResolveRequest{req["migrated"].get<bool>()};
  }
  if (cmd == "resolve-proof") {
    ResolveProofRequest p;
    auto b = req.contains("binding") && req["binding"].is_string() ? from_hex(req["binding"].get<std::string>())
                                                                    : Result<std::vector<std::byte>>(fail("missing"));
    if (!b || b->size() != p.binding.size())
      return fail("resolve-proof: needs \"binding\": {} hex digits (the resolver connection's secret)",
                  2 * p.binding.size());
    std::copy(b->begin(), b->end(), p.binding.begin());
    return p;
  }
  std::string all;
  for (auto n : command_names()) all += fmt::format("{}{}", all.empty() ? "" : ", ", n);
  return fail("unknown command '{}' ({})", cmd, all);
}

}  // namespace ferry::control

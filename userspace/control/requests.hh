#pragma once
// The control API's requests, typed: parse_request turns a JSON request
// into one of these or an error that says what is wrong, so the VM service
// executes only well-formed requests and no field is checked in two places.
// docs/control-api.md documents each command.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

#include "userspace/base/error.hh"
#include "userspace/migration/dirty_rate.hh"
#include "userspace/migration/source.hh"

namespace ferry::control {

// memory-read/memory-write move at most this many bytes, so that the hex
// text stays well inside the API's line limit.
inline constexpr std::size_t kMaxMemoryAccess = 16 * 1024;
static_assert(kMaxMemoryAccess * 2 + 256 < 64 * 1024, "control::kMaxLineBytes");

struct StatusRequest {};
struct PauseRequest {};
struct ResumeRequest {};
struct QuitRequest {};
struct SnapshotRequest {
  std::string path;  // absolute
};
struct ConsoleRequest {
  std::string input;
};
struct MemoryReadRequest {
  std::uint64_t gpa = 0;
  std::size_t len = 0;  // 1..kMaxMemoryAccess
};
struct MemoryWriteRequest {
  std::uint64_t gpa = 0;
  std::vector<std::byte> bytes;  // 1..kMaxMemoryAccess
};
struct DirtyRateRequest {
  migration::DirtyRateOptions options;
};
struct MigrateRequest {
  migration::MigrateOptions options;
};
struct MigrationRequest {
  std::size_t since_round = 0;  // rounds are paged through
};
struct CancelRequest {
  std::string reason = "cancelled through the API";
};
struct ResolveRequest {
  bool migrated = false;  // true: the destination runs the VM
};
// `ferry resolve` over TLS: the proof that this VM's process is the
// session's source, bound to the resolver's own connection (its secret,
// `binding`); see migration/session_proof.hh.
struct ResolveProofRequest {
  transport::Connection::Secret binding{};
};

using Request = std::variant<StatusRequest, PauseRequest, ResumeRequest, QuitRequest, SnapshotRequest,
                             ConsoleRequest, MemoryReadRequest, MemoryWriteRequest, DirtyRateRequest,
                             MigrateRequest, MigrationRequest, CancelRequest, ResolveRequest, ResolveProofRequest>;

// Every command, in the order the unknown-command error lists them.
const std::vector<std::string_view>& command_names();
std::string_view command_name(const Request& r);

// `cmd` is the request's "cmd"; an unknown one is an error listing every
// command.
Result<Request> parse_request(const std::string& cmd, const nlohmann::json& request);

}  // namespace ferry::control

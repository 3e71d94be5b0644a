#include "userspace/control/resolve.hh"

#include <chrono>

#include <fmt/format.h>

#include "userspace/control/api.hh"
#include "userspace/migration/destination.hh"
#include "userspace/migration/status.hh"

namespace ferry::control {

Result<Resolution> resolve_migration(const std::string& vm, const std::string& to_override, bool destination_gone) {
  auto st = call(vm, json{{"cmd", "migration"}});
  if (!st) return std::unexpected(st.error());
  if (migration::parse_phase(st->value("phase", std::string())) != migration::Phase::kOutcomeUnknown)
    return fail("nothing to resolve: the migration is {}", st->value("phase", "?"));
  // The address the migration used, unless the destination is reached
  // another way.
  const std::string to = to_override.empty() ? st->value("to", "") : to_override;
  const std::uint64_t session = std::stoull(st->value("session", "0"), nullptr, 16);
  auto q = migration::query_destination(to, session, /*discard_if_holding=*/true, std::chrono::seconds(10));
  Resolution r;
  if (q) {
    r.migrated = q->outcome == migration::SessionOutcome::kRunning;
    r.why = fmt::format("the destination {} says: {}", to, migration::session_outcome_name(q->outcome));
  } else if (destination_gone) {
    r.why = fmt::format("the destination {} is unreachable ({}) and --destination-gone says it is gone", to,
                        q.error().what());
  } else {
    return fail("cannot ask the destination {}: {}\n"
                "  Nothing was changed: the VM stays paused here. If you are sure the destination process is gone\n"
                "  (it cannot be running the VM), run again with --destination-gone to resume it here.",
                to, q.error().what());
  }
  if (auto told = call(vm, json{{"cmd", "resolve"}, {"migrated", r.migrated}}); !told)
    return fail("{}: telling the source failed: {}", r.why, told.error().what());
  return r;
}

}  // namespace ferry::control

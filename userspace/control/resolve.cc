#include "userspace/control/resolve.hh"

#include <chrono>

#include <fmt/format.h>

#include "userspace/base/hex.hh"
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
  // The destination is asked the way the migration reached it.
  const auto ms = migration::status_from_json(*st);
  auto security = transport::security_from_mode(ms.security_mode, ms.security_path);
  if (!security) return std::unexpected(std::move(security.error()).context("the migration's security"));
  // Over TLS the destination answers only the session's source: the VM's
  // process, which holds the session secret, makes the proof for this
  // connection (the secret never leaves it).
  auto prove = [&](const transport::Connection::Secret& binding) -> Result<transport::Connection::Secret> {
    auto p = call(vm, json{{"cmd", "resolve-proof"}, {"binding", to_hex(binding)}});
    if (!p) return std::unexpected(p.error());
    auto bytes = from_hex(p->value("proof", ""));
    transport::Connection::Secret out{};
    if (!bytes || bytes->size() != out.size()) return fail("the VM's proof is not {} bytes of hex", out.size());
    std::copy(bytes->begin(), bytes->end(), out.begin());
    return out;
  };
  auto q = migration::query_destination(to, *security, session, /*discard_if_holding=*/true, std::chrono::seconds(10),
                                        prove);
  Resolution r;
  if (q) {
    using O = migration::SessionOutcome;
    r.why = fmt::format("the destination {} says: {}", to, migration::session_outcome_name(q->outcome));
    switch (q->outcome) {
      // It runs the VM, or ran it (on record) after COMMIT: never resume here.
      case O::kRunning:
      case O::kCommitted: r.migrated = true; break;
      // Dropped there, or never got that far: the copy here is the only one.
      case O::kDiscarded:
      case O::kUnknown: r.migrated = false; break;
      case O::kHolding:
        return fail("{}, and it did not drop its copy when asked. Nothing was changed: the VM stays paused here.",
                    r.why);
    }
  } else if (destination_gone && st->value("commit_sent", true)) {
    return fail("cannot ask the destination {}: {}\n"
                "  COMMIT left this host, so the destination may have resumed the VM: resuming it here as well\n"
                "  could run the guest twice. Nothing was changed. Start `ferry receive --state-dir DIR --listen ...`\n"
                "  on the destination's host with the state directory it used (its record says whether it\n"
                "  committed), then run `ferry resolve` again with --to pointing at it.",
                to, q.error().what());
  } else if (destination_gone) {
    r.why = fmt::format("the destination {} is unreachable ({}), --destination-gone says it is gone, and COMMIT "
                        "never left this host",
                        to, q.error().what());
  } else {
    return fail("cannot ask the destination {}: {}\n"
                "  Nothing was changed: the VM stays paused here. If the destination's host is gone for good and\n"
                "  COMMIT never left this host, --destination-gone resumes it here.",
                to, q.error().what());
  }
  if (auto told = call(vm, json{{"cmd", "resolve"}, {"migrated", r.migrated}}); !told)
    return fail("{}: telling the source failed: {}", r.why, told.error().what());
  return r;
}

}  // namespace ferry::control

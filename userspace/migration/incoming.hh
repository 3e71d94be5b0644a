#pragma once
// Pieces the destination session and the resolver side share: a new
// connection opened and its HELLO read, one resolver served, and the
// destination's phases. Internal to the destination.
#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string_view>

#include "userspace/base/error.hh"
#include "userspace/migration/migration_stream.hh"
#include "userspace/migration/payloads.hh"
#include "userspace/transport/connection.hh"

namespace ferry::migration {

// A connection with its stream opened; `hello` is its HELLO or why there
// is none (a peer speaking another version, or garbage), so the caller can
// still answer it with ABORT on the stream.
struct Incoming {
  std::unique_ptr<MigrationStream> stream;
  Result<Hello> hello;
  // The connection's own TLS secret (none on plain TCP): for a migration's
  // control stream the session secret, for a resolver the binding its
  // proof is made with (session_proof.hh).
  std::optional<transport::Connection::Secret> secret;
  std::string peer;  // "host:port", for logs
};
// Fails only when the stream itself cannot be set up. Reads are named
// "incoming" in errors until the HELLO says what the peer is; its replies
// go out as `sender_name`. The peer has `hello_deadline` in all to send its
// HELLO (not an idle timer, which a peer trickling a byte at a time would
// keep restarting); then the connection is shut down.
Result<Incoming> open_incoming(transport::Connection c, std::string sender_name, std::chrono::milliseconds read_timeout,
                               std::chrono::milliseconds hello_deadline = kHelloDeadline);

// Serves one resolver whose HELLO was read: QUERYs, then maybe ABORT.
// `outcome(token)` says what this process knows of any session (its own,
// or one on record); an error (an unreadable record) is answered with
// ABORT and its reason, never with a guess. `discard` is called on an
// ABORT while holding `session`, and only on a connection that asked
// about `session` first; it returns whether the VM was dropped.
// `session_secret` is `session`'s (none when it came over plain TCP): then
// a QUERY about it must carry the proof made with `in.secret`, or the
// resolver is refused, logged, and learns nothing.
using OutcomeOf = std::function<Result<SessionOutcome>(std::uint64_t token)>;
void serve_resolver(Incoming& in, std::uint64_t session, const std::optional<transport::Connection::Secret>& session_secret,
                    const OutcomeOf& outcome, const std::function<bool()>& discard);
class SessionRecords;
// What this process can say of a session that is not the one it runs or
// holds: its record's outcome, or unknown.
Result<SessionOutcome> recorded_outcome(const SessionRecords* records, std::uint64_t token);

// The destination's phases. The VM runs here only in kRunning, which only
// COMMIT reaches; from kReady a lost source leads to kHolding, which only a
// resolver leaves (discard).
enum class IncomingPhase { kListening, kPrecheck, kReceiving, kReady, kRunning, kHolding, kFailed, kDiscarded };
std::string_view incoming_phase_name(IncomingPhase p);
bool incoming_transition_allowed(IncomingPhase from, IncomingPhase to);

}  // namespace ferry::migration

#pragma once
// How a resolver proves it belongs to a session without sending anything
// a listener could reuse. Both ends of a migration's control connection
// export the same secret from its TLS handshake (Connection::secret). A
// resolver's own TLS connection has a secret of its own, the binding; its
// QUERY carries HMAC-SHA256(session secret, label || binding). The
// destination recomputes it for the session asked about. A peer that
// holds valid credentials but was not that migration's source cannot
// make it, and a proof seen on one connection is worthless on another.
// Internal to the migration engine.
#include <optional>

#include "userspace/transport/connection.hh"

namespace ferry::migration {

using Secret = transport::Connection::Secret;

Secret session_proof(const Secret& session_secret, const Secret& binding);
// Constant time in the proof's bytes.
bool proof_matches(const Secret& session_secret, const Secret& binding, const Secret& proof);

}  // namespace ferry::migration

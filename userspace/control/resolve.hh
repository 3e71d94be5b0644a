#pragma once
// Settling a migration whose COMMIT was not confirmed (phase
// outcome-unknown): ask the destination what it did with the session, then
// tell the source, so that exactly one side runs the VM. `ferry resolve`
// is this plus printing.
#include <string>

#include "userspace/base/error.hh"

namespace ferry::control {

struct Resolution {
  bool migrated = false;  // true: the destination runs the VM, the source stopped it
  std::string why;        // what decided it, for the user
};

// `vm`: the source's control socket. `to`: where to ask, when not the
// address the migration used (a relay, NAT). `destination_gone`: the user
// asserts the destination process is gone, so an unreachable destination
// means "resume here". Every error leaves the VM as it was (paused).
Result<Resolution> resolve_migration(const std::string& vm, const std::string& to, bool destination_gone);

}  // namespace ferry::control

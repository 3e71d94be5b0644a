#pragma once
// What a destination did with a session, kept on disk so that the answer
// outlives the process: a `ferry receive` restarted on the same state
// directory tells a resolver "committed" (the VM was resumed here, so the
// source must never resume it) or "discarded" (dropped here, so the source
// must), instead of "unknown", which would fork the guest's history.
//
// One file per session, `session-<16 hex digits>`, written before the act
// it records (resume, discard) and made durable first: written to a
// temporary file, fsync'd, renamed into place, and the directory fsync'd.
// A record is never rewritten: the first outcome of a session is final.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "userspace/base/error.hh"
#include "userspace/migration/payloads.hh"

namespace ferry::migration {

class SessionRecords {
 public:
  // Creates `dir` (mode 0700) when missing; fails when it is not a
  // directory this process can write.
  static Result<SessionRecords> open(std::string dir);

  // Records kCommitted or kDiscarded for `session`, durably. Fails (and
  // the caller must not act) when it cannot be written and synced, or when
  // the session already has a different outcome on record.
  Status write(std::uint64_t session, SessionOutcome outcome, std::string_view source_host) const;
  // The outcome on record, if any; an unreadable or malformed record is an
  // error (the caller answers nothing rather than guess).
  Result<std::optional<SessionOutcome>> find(std::uint64_t session) const;

  const std::string& dir() const { return dir_; }
  std::string path_of(std::uint64_t session) const;

 private:
  explicit SessionRecords(std::string dir) : dir_(std::move(dir)) {}
  std::string dir_;
};

}  // namespace ferry::migration

#pragma once
// The destination's record of pages whose last received copy failed its
// checksum, and the rule that decides when that matters.
//
// During pre-copy the guest keeps running on the source, and the sender may
// transmit a page straight from guest memory after checksumming it. If the
// guest writes the page in between, the copy that arrives does not match its
// checksum. That is not corruption, and not a reason to fail: the sender
// must harvest and reset the dirty log *before* reading a page, so a write
// that lands during the read or the send is in the dirty log and the page
// goes out again in a later round. The receiver therefore only records the
// page as bad; the next copy that verifies (or a ZERO_PAGES entry for it)
// makes it good again.
//
// The last round runs with the vCPUs paused, so nothing can change a page
// in flight any more. At READY every page must be good; a page still bad
// then failed for another reason (corruption, a sender bug) and the session
// aborts, which resumes the VM on the source. So a page modified in flight
// can neither fail a migration nor slip through.
#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <vector>

#include "userspace/base/error.hh"
#include "userspace/migration/payloads.hh"

namespace ferry::migration {

struct PageRef {
  std::uint32_t slot = 0;
  std::uint64_t page = 0;  // from the start of the slot
  bool operator==(const PageRef&) const = default;
};

class PageLedger {
 public:
  // Declares a slot (from PRECHECK) and its size in pages. The bitmap grows
  // only as far as the highest bad page, so a large slot costs nothing
  // until pages in it actually fail.
  Status add_slot(std::uint32_t slot, std::uint64_t pages);

  // Unknown slots and pages past a slot's end are errors: the descriptor
  // that named them is wrong, whatever its checksum says.
  Status mark_bad(std::uint32_t slot, std::uint64_t page);
  Status mark_good(std::uint32_t slot, std::uint64_t page);

  // Verifies one received copy against its descriptor and marks the page
  // accordingly. Returns whether it verified (false is not an error).
  Result<bool> receive(std::uint32_t slot, const PageDescriptor& d, std::span<const std::byte> page);

  std::uint64_t bad_count() const { return bad_; }
  std::optional<PageRef> first_bad() const;  // lowest slot, then lowest page

  // The READY rule: fails, naming the count and the first bad page, unless
  // every page's last copy verified.
  Status check_ready() const;

 private:
  struct Slot {
    std::uint64_t pages = 0;
    std::vector<std::uint64_t> bad;  // bit p % 64 of word p / 64
  };
  Result<Slot*> find(std::uint32_t slot, std::uint64_t page);

  std::map<std::uint32_t, Slot> slots_;  // ordered, for first_bad()
  std::uint64_t bad_ = 0;
};

}  // namespace ferry::migration

#pragma once
// A split virtqueue (virtio v1.2, 2.7), device side: the descriptor table,
// the available ring the driver fills and the used ring the device fills,
// all in guest memory.
//
// Everything the guest wrote is untrusted. The rings' placement is checked
// once when the queue is opened; every chain is checked as it is taken:
// heads and next indices inside the table, every buffer inside guest RAM,
// no loops (a chain visits at most as many descriptors as its table has),
// indirect tables only when negotiated, never nested, never combined with
// NEXT, device-writable buffers only after the readable ones, and the
// available index never more than a queue's worth ahead. A violation is an
// error the device answers with NEEDS_RESET: never a crash, never an access
// outside guest memory.
//
// Used-ring writes and buffer contents go through the host mapping pop()
// checked, and every write is marked dirty (KVM does not see them). With EVENT_IDX the queue publishes where it wants the
// next kick (avail_event) and honours the driver's used_event; without it,
// the rings' flags.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "kvm/devices/guest_access.hh"
#include "userspace/base/error.hh"

namespace ferry::kvm::virtio {

// What the driver programmed for one queue.
struct QueueLayout {
  std::uint16_t size = 0;
  std::uint64_t desc = 0, avail = 0, used = 0;  // guest-physical
  friend bool operator==(const QueueLayout&, const QueueLayout&) = default;
};

// The device's position in the rings: with the layout, all a queue needs
// to carry on after a snapshot or a migration.
struct QueuePosition {
  std::uint16_t next_avail = 0;   // the next available entry to take
  std::uint16_t next_used = 0;    // the used index the device publishes next
  std::uint16_t signalled_used = 0;  // the used index at the last interrupt
  friend bool operator==(const QueuePosition&, const QueuePosition&) = default;
};

struct Buffer {
  std::uint64_t gpa = 0;
  std::uint32_t len = 0;
  std::byte* host = nullptr;  // where it is mapped here (checked inside guest RAM by pop())
};

// One request: the chain's head (what push() returns to the driver) and
// its buffers, the device-readable ones first.
struct Chain {
  std::uint16_t head = 0;
  std::vector<Buffer> readable, writable;
  std::uint64_t readable_bytes = 0, writable_bytes = 0;

  // Copies up to out.size() bytes of the readable buffers from `offset`;
  // returns how many.
  std::size_t read(std::uint64_t offset, std::span<std::byte> out) const;
  // Writes `bytes` into the writable buffers from `offset` (marked dirty);
  // an error if they do not fit.
  Status write(const GuestAccess& mem, std::uint64_t offset, std::span<const std::byte> bytes) const;
};

class SplitQueue {
 public:
  static constexpr std::uint16_t kMaxSize = 32768;
  // An indirect table larger than this is refused (Linux uses at most a
  // queue's size; this bounds the work one chain can ask for).
  static constexpr std::uint32_t kMaxIndirect = 4096;

  // Checks the layout (size a power of two, at most max_size; each ring
  // aligned as 2.7 requires and inside one RAM region). `name` appears in
  // every error ("virtio-net rx").
  static Result<SplitQueue> open(std::string name, const GuestAccess& mem, QueueLayout layout, std::uint16_t max_size,
                                 bool event_idx, bool indirect, QueuePosition at = {});

  SplitQueue(SplitQueue&&) noexcept = default;
  SplitQueue& operator=(SplitQueue&&) noexcept = default;

  // The next chain the driver made available; nullopt when there is none.
  Result<std::optional<Chain>> pop();
  // Returns a chain to the driver with `written` bytes of its writable
  // buffers filled.
  Status push(std::uint16_t head, std::uint32_t written);
  // Gives back the last `n` chains taken and not pushed (a received frame
  // that did not fit the buffers there are): they are taken again next.
  void unpop(std::uint16_t n) { pos_.next_avail = static_cast<std::uint16_t>(pos_.next_avail - n); }
  // Whether the driver asked to hear about what was pushed since the last
  // time this returned true (used_event, or NO_INTERRUPT without EVENT_IDX).
  bool should_interrupt();
  // Kicks wanted (true) or not while the device is busy anyway. Returns
  // whether buffers are available now: checked after publishing, so one
  // made available just before is never missed.
  bool want_kicks(bool on);
  // A kick only once the driver's available index moves past `seen` (the
  // device waits for enough buffers, not for any). True if it already has:
  // checked after publishing, so an addition just before is not missed.
  bool want_kick_when_more(std::uint16_t seen);
  // The driver's available index as published now.
  std::uint16_t available_index() const { return avail_idx(); }
  bool has_available() const;

  const QueueLayout& layout() const { return layout_; }
  QueuePosition position() const { return pos_; }
  const std::string& name() const { return name_; }

 private:
  SplitQueue() = default;
  std::uint16_t avail_idx() const;
  Status take_chain(std::uint16_t head, Chain& out) const;

  std::string name_;
  const GuestAccess* mem_ = nullptr;
  QueueLayout layout_;
  QueuePosition pos_;
  bool event_idx_ = false, indirect_ = false;
  bool kicks_ = true;  // want_kicks(); with EVENT_IDX, pop() moves avail_event along
  std::byte* desc_ = nullptr;   // size x 16 bytes
  std::byte* avail_ = nullptr;  // flags, idx, ring[size], used_event
  std::byte* used_ = nullptr;   // flags, idx, ring[size] x 8, avail_event
};

}  // namespace ferry::kvm::virtio

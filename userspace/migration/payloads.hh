#pragma once
// Typed payloads of the migration frames (protocol.hh), one struct per
// frame type, each with encode() and a decode_*() that validates every field.
// Integers are little-endian and encoded field by field with
// userspace/base/bytes.hh; strings and lists are a u32 count then the items.
// Decoders check a count against its limit and against the bytes left
// before allocating anything, and reject truncation and trailing bytes.
// Layouts are in docs/protocol.md.
#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <span>
#include <optional>
#include <string>
#include <vector>

#include "userspace/base/error.hh"
#include "userspace/migration/protocol.hh"

namespace ferry::migration {

inline constexpr std::size_t kMaxHostName = 255;
inline constexpr std::size_t kMaxReason = 4096;
inline constexpr std::size_t kMaxRegions = 64;
inline constexpr std::size_t kMaxCpuidEntries = 256;
inline constexpr std::size_t kMaxDevices = 64;
inline constexpr std::size_t kMaxDeviceField = 255;  // a device's kind, id or config
inline constexpr std::size_t kMaxZeroPagesPerFrame = 65536;

// HELLO, both directions, first. The header's version says how to parse
// frames; this one is the protocol the peer implements, for the session to
// report and, once there are several, to choose from. Capabilities are
// optional features; unknown bits are ignored (that is what they are for):
// the session uses the intersection of both sides' masks. None defined yet.
//
// A migration uses stream_count TCP connections to the destination's one
// port; each starts with a HELLO naming the session (a random token the
// source chooses) and its index. Stream 0 is the control stream (PRECHECK,
// STATE, the commit handshake); all streams carry pages. A HELLO with
// purpose kResolve opens a connection that only asks about a session's
// outcome (QUERY), see docs/protocol.md.
enum class HelloPurpose : std::uint8_t { kMigrate = 1, kResolve = 2 };
inline constexpr std::uint16_t kMaxStreams = 16;
struct Hello {
  std::uint16_t major = kVersionMajor;
  std::uint16_t minor = kVersionMinor;
  std::uint64_t capabilities = 0;
  std::string host;  // for reports and logs only; at most kMaxHostName bytes
  HelloPurpose purpose = HelloPurpose::kMigrate;
  std::uint64_t session = 0;
  std::uint16_t stream_index = 0;  // kMigrate: < stream_count; kResolve: 0
  std::uint16_t stream_count = 1;  // kMigrate: 1..kMaxStreams; kResolve: 0
  bool operator==(const Hello&) const = default;
};

// PRECHECK, source to destination: what the destination must be able to run.
struct MemoryRegion {
  std::uint32_t slot = 0;
  std::uint64_t gpa = 0;   // page-aligned
  std::uint64_t size = 0;  // non-zero, a multiple of kPageSize
  bool operator==(const MemoryRegion&) const = default;
};
struct CpuidEntry {
  std::uint32_t function = 0;
  std::uint32_t index = 0;
  std::uint32_t eax = 0, ebx = 0, ecx = 0, edx = 0;
  bool operator==(const CpuidEntry&) const = default;
};
struct Precheck {
  std::uint32_t vcpus = 0;              // non-zero
  std::vector<MemoryRegion> regions;    // unique slots, at most kMaxRegions
  std::uint32_t guest_kind = 0;         // kvm::GuestKind; non-zero
  std::vector<CpuidEntry> cpuid;        // what the guest was given, at most kMaxCpuidEntries
  std::uint32_t tsc_khz = 0;            // non-zero
  bool irqchip = true;                  // in-kernel PIC/IOAPIC/LAPICs and PIT
  // The VM's devices (protocol 1.2), which the destination builds before
  // any state arrives and refuses to accept when it would build others.
  // nullopt: a 1.1 source, whose devices follow from guest_kind.
  struct Device {
    std::string kind, id, config;  // kvm::DeviceDescription
    bool operator==(const Device&) const = default;
  };
  std::optional<std::vector<Device>> devices = std::nullopt;
  bool operator==(const Precheck&) const = default;
};

// PRECHECK_RESULT, destination to source.
struct PrecheckResult {
  bool ok = false;
  std::string reason;  // why not, when !ok; at most kMaxReason bytes
  bool operator==(const PrecheckResult&) const = default;
};

// PAGES, source to destination: the fixed part, then count descriptors,
// then count * kPageSize bytes of page data in descriptor order. Page
// indices count pages from the start of the slot.
struct PageDescriptor {
  std::uint64_t page_index = 0;
  std::uint64_t checksum = 0;  // page_checksum() of the bytes the sender read
  bool operator==(const PageDescriptor&) const = default;
};
struct PagesHeader {
  std::uint32_t slot = 0;
  std::uint32_t round = 0;
  std::vector<PageDescriptor> pages;  // at most kMaxPagesPerFrame
  bool operator==(const PagesHeader&) const = default;
};
struct DecodedPages {
  PagesHeader header;
  std::span<const std::byte> data;  // aliases the payload
  std::span<const std::byte> page(std::size_t i) const { return data.subspan(i * kPageSize, kPageSize); }
};

// The per-page checksum (protocol 1.1): XXH64 of the page, seeded with its
// index, so that data filed under the wrong index fails too. A mismatch is not necessarily corruption; see page_ledger.hh.
std::uint64_t page_checksum(std::uint64_t page_index, std::span<const std::byte> page);

// ZERO_PAGES: pages whose content is all zero, sent as indices only.
struct ZeroPages {
  std::uint32_t slot = 0;
  std::uint32_t round = 0;
  std::vector<std::uint64_t> page_index;  // at most kMaxZeroPagesPerFrame
  bool operator==(const ZeroPages&) const = default;
};

// ROUND_END: the sender's totals for a pre-copy round, for reports and as a
// cross-check of what the receiver counted.
struct RoundEnd {
  std::uint32_t round = 0;
  std::uint64_t pages_sent = 0;
  std::uint64_t zero_pages = 0;
  std::uint64_t bytes = 0;
  bool operator==(const RoundEnd&) const = default;
};

// STATE: a u64 length, then a state image (kvm/state/format.hh), which
// validates itself; here it is only length-checked and must not be empty.
// After the image: the round whose ROUND_END frames every stream sends
// before the destination may load the state (pages of that round travel on
// other streams too), and the wall-clock time (ns since the Unix epoch; 0
// when unknown) of the guest's last heartbeat on the source, from which
// the destination measures the downtime the guest saw.
struct State {
  std::vector<std::byte> image;
  std::uint32_t final_round = 0;
  std::uint64_t last_heartbeat_wall_ns = 0;
  bool operator==(const State&) const = default;
};

// The commit handshake. The token is chosen by the source for the session
// and echoed, so that a stray frame of another session cannot commit this one.
struct Ready {
  std::uint64_t token = 0;
  std::uint64_t load_ns = 0;  // how long the destination took to load the state
  bool operator==(const Ready&) const = default;
};
struct Commit {
  std::uint64_t token = 0;
  bool operator==(const Commit&) const = default;
};
// Sent once the destination's vCPUs run. Wall-clock times in ns since the
// Unix epoch (0: unknown): when the vCPUs were resumed, and when the built-in
// guest's first heartbeat arrived (the destination waits briefly for it).
struct Confirmed {
  std::uint64_t token = 0;
  std::uint64_t resumed_wall_ns = 0;
  std::uint64_t first_heartbeat_wall_ns = 0;
  bool operator==(const Confirmed&) const = default;
};

// QUERY, resolver to destination: what became of session `token`? Over
// TLS it carries the resolver's proof that it belongs to the session
// (session_proof.hh), 32 bytes after the token; over plain TCP none (the
// payload is then what 1.2 sent).
struct Query {
  std::uint64_t token = 0;
  std::optional<std::array<std::byte, 32>> proof;
  bool operator==(const Query&) const = default;
};
// QUERY_RESULT, destination to resolver.
enum class SessionOutcome : std::uint8_t {
  kRunning = 1,    // COMMIT arrived: the VM runs here; the source must stop
  kHolding = 2,    // READY sent, no COMMIT: paused here, waiting for a decision
  kUnknown = 3,    // no such session (or it failed before READY): nothing runs here
  kDiscarded = 4,  // the resolver's ABORT was applied: the VM was dropped here
  // On record (session_records.hh): COMMIT was applied here and the VM
  // resumed, and the process that ran it has since ended. The source must
  // not resume: the guest ran on past the source's copy.
  kCommitted = 5,
};
std::string_view session_outcome_name(SessionOutcome o);
struct QueryResult {
  std::uint64_t token = 0;
  SessionOutcome outcome = SessionOutcome::kUnknown;
  std::string detail;  // at most kMaxReason bytes
  bool operator==(const QueryResult&) const = default;
};

struct Abort {
  std::string reason;  // at most kMaxReason bytes
  bool operator==(const Abort&) const = default;
};

// VERIFY_DIGEST: a slot's memory digest, the snapshot's memory check
// (kvm::memory_crc: CRC-64 over (index, page) of every non-zero page).
struct VerifyDigest {
  std::uint32_t slot = 0;
  std::uint64_t digest = 0;
  bool operator==(const VerifyDigest&) const = default;
};

// The *_wall_ns fields: ns since the Unix epoch (CLOCK_REALTIME), 0 for a
// time that never came (the default time_point).
inline std::uint64_t wall_ns(std::chrono::system_clock::time_point t) {
  if (t == std::chrono::system_clock::time_point{}) return 0;
  return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count());
}
inline std::uint64_t wall_now_ns() { return wall_ns(std::chrono::system_clock::now()); }

// Encoders write only what the decoders accept; a value over a limit is a
// programming error and aborts.
std::vector<std::byte> encode(const Hello& m);
std::vector<std::byte> encode(const Precheck& m);
std::vector<std::byte> encode(const PrecheckResult& m);
std::vector<std::byte> encode_pages_header(const PagesHeader& m);  // append the page data after it
std::vector<std::byte> encode(const ZeroPages& m);
std::vector<std::byte> encode(const RoundEnd& m);
std::vector<std::byte> encode(const State& m);
std::vector<std::byte> encode(const Ready& m);
std::vector<std::byte> encode(const Commit& m);
std::vector<std::byte> encode(const Confirmed& m);
std::vector<std::byte> encode(const Abort& m);
std::vector<std::byte> encode(const VerifyDigest& m);
std::vector<std::byte> encode(const Query& m);
std::vector<std::byte> encode(const QueryResult& m);

// Errors are prefixed with the frame type: "precheck: region 2: ...".
Result<Hello> decode_hello(std::span<const std::byte> payload);
// `minor`: the frame's protocol minor version; from 1.2 on the device list
// is part of the layout (a 1.2 precheck cut before it is refused).
Result<Precheck> decode_precheck(std::span<const std::byte> payload, std::uint16_t minor = kVersionMinor);
Result<PrecheckResult> decode_precheck_result(std::span<const std::byte> payload);
// Checks the data is exactly count * kPageSize bytes; does not verify the
// page checksums (that is the receiver's PageLedger decision).
Result<DecodedPages> decode_pages(std::span<const std::byte> payload);
// The fixed part and descriptors alone (exactly: what the frame CRC
// covers), for receivers that read the page data straight into memory.
Result<PagesHeader> decode_pages_header(std::span<const std::byte> covered);
Result<ZeroPages> decode_zero_pages(std::span<const std::byte> payload);
Result<RoundEnd> decode_round_end(std::span<const std::byte> payload);
Result<State> decode_state(std::span<const std::byte> payload);
Result<Ready> decode_ready(std::span<const std::byte> payload);
Result<Commit> decode_commit(std::span<const std::byte> payload);
Result<Confirmed> decode_confirmed(std::span<const std::byte> payload);
Result<Abort> decode_abort(std::span<const std::byte> payload);
Result<VerifyDigest> decode_verify_digest(std::span<const std::byte> payload);
Result<Query> decode_query(std::span<const std::byte> payload);
Result<QueryResult> decode_query_result(std::span<const std::byte> payload);

}  // namespace ferry::migration

#pragma once
// The live-migration wire protocol, frame layer: every message between the
// source and the destination is one frame, a fixed header and a payload.
// Typed payloads are in payloads.hh; docs/protocol.md is the full story.
//
// Header (32 bytes, all integers little-endian, encoded field by field):
//
//    0  u32 magic           0x47494d46, the bytes "FMIG"
//    4  u16 version_major   kVersionMajor
//    6  u16 version_minor   kVersionMinor
//    8  u16 type            FrameType; 0 and unknown values are rejected
//   10  u16 flags           must be 0 (no type defines any in 1.0)
//   12  u32 sequence        0 for a stream's first frame, then +1 (mod 2^32)
//   16  u64 payload_length  at most kMaxPayload
//   24  u32 payload_crc32c  CRC-32C of the payload (PAGES: see below)
//   28  u32 header_crc      CRC-32C of bytes 0..28
//
// PAGES frames are the one exception to "the payload CRC covers the
// payload": theirs covers only the fixed part and the descriptors, not the
// page data. The sender may transmit page data straight from guest memory
// while the guest runs (zero-copy), so a CRC over it, computed before the
// bytes leave, could be stale and would fail a healthy frame. Each page has
// its own checksum in its descriptor instead; see payloads.hh.
//
// Version policy: the reader accepts its own major and any minor up to its
// own, as the state format does (kvm/state/format.hh): a newer minor may add
// frame types or flags this reader cannot interpret, and naming both
// versions is a clearer error than an unknown type later in the session.
#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

#include "userspace/base/page.hh"
#include "userspace/base/error.hh"

namespace ferry::migration {

inline constexpr std::uint32_t kMagic = 0x47494d46;  // 'F','M','I','G' in wire order
inline constexpr std::uint16_t kVersionMajor = 1;
inline constexpr std::uint16_t kVersionMinor = 2;
// The oldest minor version this reader accepts. 1.2 added the device list
// to PRECHECK (a 1.1 source's precheck, without it, is still accepted).
// 1.1 changed what a PAGES
// descriptor's checksum is (XXH64, no longer CRC-64): a 1.0 peer would have
// every page rejected as torn, so it is refused at its first frame instead.
inline constexpr std::uint16_t kVersionMinorOldest = 1;
inline constexpr std::size_t kHeaderSize = 32;
// How long a new connection has, in all, to deliver its HELLO before a
// listener closes it (a HELLO is one frame of under 600 bytes).
inline constexpr std::chrono::milliseconds kHelloDeadline{10000};
inline constexpr std::size_t kHeaderCrcOffset = 28;  // header_crc covers the bytes before it
// Bounds what a peer can make the reader buffer: no frame is larger (STATE,
// the one of unbounded content, may be this large). Each type has its own,
// much smaller limit (max_payload), checked from the header alone.
inline constexpr std::uint64_t kMaxPayload = 64ull << 20;
// Readers set aside at most this much of a payload ahead of the bytes that
// have arrived (FrameReader, FrameSource): a header alone never costs the
// size it claims.
inline constexpr std::uint64_t kPayloadStep = 1 << 20;

// The PAGES layout, here because the frame layer needs it for the CRC rule.
using ferry::kPageSize;  // userspace/base/page.hh
inline constexpr std::size_t kPagesFixedSize = 12;      // u32 slot, u32 round, u32 count
inline constexpr std::size_t kPageDescriptorSize = 16;  // u64 page_index, u64 checksum
inline constexpr std::size_t kMaxPagesPerFrame = 4096;

// Values are on the wire: never renumber, only append. 0 stays invalid so
// that zeroed memory never decodes as a real frame.
enum class FrameType : std::uint16_t {
  kInvalid = 0,
  kHello = 1,
  kPrecheck = 2,
  kPrecheckResult = 3,
  kPages = 4,
  kZeroPages = 5,
  kRoundEnd = 6,
  kState = 7,
  kReady = 8,
  kCommit = 9,
  kConfirmed = 10,
  kAbort = 11,
  kVerifyDigest = 12,
  kQuery = 13,
  kQueryResult = 14,
};
inline constexpr FrameType kLastFrameType = FrameType::kQueryResult;

// "HELLO", "PAGES", ...; "INVALID" for kInvalid and "UNKNOWN" otherwise.
std::string_view frame_type_name(FrameType type);

// The largest payload a frame of this type can legally carry (the largest
// encoding payloads.hh allows, rounded up): a header that claims more is
// refused before a byte of its payload is buffered, so a stranger's
// 32-byte header cannot make a receiver set aside 64 MiB for a HELLO.
// STATE: kMaxPayload. 0 for kInvalid and unknown types.
std::uint64_t max_payload(FrameType type);

struct Frame {
  FrameType type = FrameType::kInvalid;
  std::uint32_t sequence = 0;
  std::vector<std::byte> payload;
  std::uint16_t minor = kVersionMinor;  // the sender's; a payload's layout may depend on it
};

// How many leading payload bytes payload_crc32c covers: all of them except
// for PAGES (the fixed part and descriptors). Empty when a PAGES length is
// not kPagesFixedSize + count * (kPageDescriptorSize + kPageSize) for a
// count up to kMaxPagesPerFrame.
std::optional<std::uint64_t> crc_covered_length(FrameType type, std::uint64_t payload_length);

// The header alone, for senders that transmit the payload from elsewhere
// (PAGES data straight from guest memory); payload_crc32c is over
// crc_covered_length() bytes. Asking for a frame the reader would reject
// (invalid type, oversized or malformed length) is a programming error and
// aborts, like StateWriter.
std::array<std::byte, kHeaderSize> encode_header(FrameType type, std::uint32_t sequence,
                                                 std::uint64_t payload_length,
                                                 std::uint32_t payload_crc32c);

// A received header, validated field by field as FrameReader does (same
// order, same messages, without the "frame N" prefix), for receivers that
// read the payload themselves: page data straight into guest memory.
struct FrameHeader {
  FrameType type = FrameType::kInvalid;
  std::uint32_t sequence = 0;
  std::uint64_t payload_length = 0;
  std::uint32_t payload_crc32c = 0;
  std::uint16_t minor = kVersionMinor;
};
Result<FrameHeader> decode_header(std::span<const std::byte, kHeaderSize> header, std::uint32_t expected_sequence);

// Header plus payload, with both CRCs computed. Same preconditions.
std::vector<std::byte> encode_frame(FrameType type, std::uint32_t sequence,
                                    std::span<const std::byte> payload);

// Cuts a byte stream into validated frames, however the bytes arrive.
// Headers are validated field by field before any payload is buffered, so
// an oversized length costs nothing. The first error is final: the stream
// cannot be resynchronised, so every later feed() returns it again, and
// frames completed earlier in the failing feed() are dropped (the session
// ends anyway). Messages read "migration stream: frame N: ...", N counting
// from 0 (a valid frame N has sequence N mod 2^32).
class FrameReader {
 public:
  Result<std::vector<Frame>> feed(std::span<const std::byte> bytes);

  // At end of input: fails when a frame was cut off, naming how much of it
  // arrived. A clean end is between frames.
  Status finish() const;

  std::uint64_t frames_read() const { return count_; }

 private:
  struct Pending {
    FrameType type;
    std::uint32_t sequence;
    std::uint64_t length;
    std::uint32_t crc;
    std::uint16_t minor;
  };

  std::unexpected<Error> stop(Error e);
  Result<Pending> parse_header() const;
  Result<Frame> complete_frame();

  std::array<std::byte, kHeaderSize> header_{};
  std::size_t header_fill_ = 0;
  std::optional<Pending> pending_;  // set once its header is valid
  std::vector<std::byte> payload_;
  std::uint64_t count_ = 0;
  std::optional<Error> failed_;
};

}  // namespace ferry::migration

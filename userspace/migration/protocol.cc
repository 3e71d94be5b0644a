#include "userspace/migration/protocol.hh"

#include <algorithm>
#include <cstdio>
#include <cstdlib>

#include "userspace/base/bytes.hh"
#include "userspace/base/crc32c.hh"

namespace ferry::migration {
namespace {

using ferry::ByteReader;
using ferry::ByteWriter;

// The decoded header. Never copied to or from the wire as a whole; the
// static_assert ties kHeaderSize to the fields encode_header writes.
struct Header {
  std::uint32_t magic = 0;
  std::uint16_t major = 0;
  std::uint16_t minor = 0;
  std::uint16_t type = 0;
  std::uint16_t flags = 0;
  std::uint32_t sequence = 0;
  std::uint64_t payload_length = 0;
  std::uint32_t payload_crc = 0;
  std::uint32_t header_crc = 0;
};
static_assert(sizeof(Header::magic) + sizeof(Header::major) + sizeof(Header::minor) +
                  sizeof(Header::type) + sizeof(Header::flags) + sizeof(Header::sequence) +
                  sizeof(Header::payload_length) + sizeof(Header::payload_crc) +
                  sizeof(Header::header_crc) ==
              kHeaderSize);

constexpr std::uint64_t kBytesPerPage = kPageDescriptorSize + kPageSize;
static_assert(kPagesFixedSize + kMaxPagesPerFrame * kBytesPerPage <= kMaxPayload);

bool is_known(std::uint16_t type) {
  return type > static_cast<std::uint16_t>(FrameType::kInvalid) &&
         type <= static_cast<std::uint16_t>(kLastFrameType);
}

[[noreturn]] void sender_bug(const std::string& what) {
  std::fputs(fmt::format("ferry: migration frame encoder misuse: {}\n", what).c_str(), stderr);
  std::abort();
}

}  // namespace

std::string_view frame_type_name(FrameType type) {
  switch (type) {
    case FrameType::kInvalid: return "INVALID";
    case FrameType::kHello: return "HELLO";
    case FrameType::kPrecheck: return "PRECHECK";
    case FrameType::kPrecheckResult: return "PRECHECK_RESULT";
    case FrameType::kPages: return "PAGES";
    case FrameType::kZeroPages: return "ZERO_PAGES";
    case FrameType::kRoundEnd: return "ROUND_END";
    case FrameType::kState: return "STATE";
    case FrameType::kReady: return "READY";
    case FrameType::kCommit: return "COMMIT";
    case FrameType::kConfirmed: return "CONFIRMED";
    case FrameType::kAbort: return "ABORT";
    case FrameType::kVerifyDigest: return "VERIFY_DIGEST";
    case FrameType::kQuery: return "QUERY";
    case FrameType::kQueryResult: return "QUERY_RESULT";
  }
  return "UNKNOWN";
}

// Rounded up from the largest encodings payloads.hh allows (its limits:
// a 255-byte host name, 4096-byte reasons, 64 regions, 256 CPUID entries,
// 64 devices of three 255-byte fields, 65536 zero-page indices); the unit
// tests encode each of those and check it fits.
std::uint64_t max_payload(FrameType type) {
  constexpr std::uint64_t kSmall = 256;            // fixed-size payloads of a few integers
  constexpr std::uint64_t kWithReason = 8 << 10;   // a few integers and a reason of up to 4096 bytes
  switch (type) {
    case FrameType::kInvalid: return 0;
    case FrameType::kHello: return 512;
    case FrameType::kPrecheck: return 64 << 10;
    case FrameType::kPrecheckResult: return kWithReason;
    case FrameType::kPages: return kPagesFixedSize + kMaxPagesPerFrame * kBytesPerPage;
    case FrameType::kZeroPages: return kSmall + 65536 * sizeof(std::uint64_t);
    case FrameType::kRoundEnd: return kSmall;
    case FrameType::kState: return kMaxPayload;
    case FrameType::kReady: return kSmall;
    case FrameType::kCommit: return kSmall;
    case FrameType::kConfirmed: return kSmall;
    case FrameType::kAbort: return kWithReason;
    case FrameType::kVerifyDigest: return kSmall;
    case FrameType::kQuery: return kSmall;
    case FrameType::kQueryResult: return kWithReason;
  }
  return 0;
}

std::optional<std::uint64_t> crc_covered_length(FrameType type, std::uint64_t payload_length) {
  if (type != FrameType::kPages) return payload_length;
  if (payload_length < kPagesFixedSize) return std::nullopt;
  const std::uint64_t variable = payload_length - kPagesFixedSize;
  if (variable % kBytesPerPage != 0 || variable / kBytesPerPage > kMaxPagesPerFrame) return std::nullopt;
  return kPagesFixedSize + variable / kBytesPerPage * kPageDescriptorSize;
}

std::array<std::byte, kHeaderSize> encode_header(FrameType type, std::uint32_t sequence,
                                                 std::uint64_t payload_length,
                                                 std::uint32_t payload_crc32c) {
  if (!is_known(static_cast<std::uint16_t>(type))) {
    sender_bug(fmt::format("frame type {}", static_cast<std::uint16_t>(type)));
  }
  if (payload_length > max_payload(type)) {
    sender_bug(fmt::format("{} payload of {} bytes", frame_type_name(type), payload_length));
  }
  if (!crc_covered_length(type, payload_length)) {
    sender_bug(fmt::format("PAGES payload of {} bytes", payload_length));
  }
  ByteWriter w;
  w.put_u32(kMagic);
  w.put_u16(kVersionMajor);
  w.put_u16(kVersionMinor);
  w.put_u16(static_cast<std::uint16_t>(type));
  w.put_u16(0);  // flags
  w.put_u32(sequence);
  w.put_u64(payload_length);
  w.put_u32(payload_crc32c);
  w.put_u32(crc32c(w.bytes()));
  std::array<std::byte, kHeaderSize> out;
  std::ranges::copy(w.bytes(), out.begin());
  return out;
}

std::vector<std::byte> encode_frame(FrameType type, std::uint32_t sequence,
                                    std::span<const std::byte> payload) {
  // A bad PAGES length makes this nullopt; encode_header reports it.
  const std::uint64_t covered = crc_covered_length(type, payload.size()).value_or(0);
  const auto header = encode_header(type, sequence, payload.size(), crc32c(payload.first(covered)));
  // Sized once and copied into: g++ 12 at -O3 reports a false
  // -Warray-bounds for insert() after a copy of the 32-byte header array.
  std::vector<std::byte> out(header.size() + payload.size());
  std::ranges::copy(header, out.begin());
  std::ranges::copy(payload, out.begin() + static_cast<std::ptrdiff_t>(header.size()));
  return out;
}

std::unexpected<Error> FrameReader::stop(Error e) {
  failed_ = std::move(e).context(fmt::format("migration stream: frame {}", count_));
  return std::unexpected(*failed_);
}

// Order matters: the magic and version come first because a peer speaking
// another major may lay out the rest of the header differently, and then
// "version 2.0" explains more than "header CRC mismatch". Everything after
// the CRC check is known to be what the sender wrote.
Result<FrameHeader> decode_header(std::span<const std::byte, kHeaderSize> header, std::uint32_t expected) {
  Header h;
  ByteReader r(header);
  if (auto s = r.get(h.magic, h.major, h.minor, h.type, h.flags, h.sequence, h.payload_length,
                     h.payload_crc, h.header_crc);
      !s) {
    return std::unexpected(s.error());
  }
  if (h.magic != kMagic) return fail("bad magic {:#010x} (expected {:#010x}, \"FMIG\")", h.magic, kMagic);
  if (h.major != kVersionMajor) {
    return fail("protocol version {}.{} is not supported: this reader speaks {}.x up to {}.{}",
                h.major, h.minor, kVersionMajor, kVersionMajor, kVersionMinor);
  }
  if (h.minor > kVersionMinor) {
    return fail("protocol version {}.{} is newer than this reader's {}.{}", h.major, h.minor,
                kVersionMajor, kVersionMinor);
  }
  if (h.minor < kVersionMinorOldest) {
    return fail("protocol version {}.{} is older than this reader accepts ({}.{} to {}.{})", h.major, h.minor,
                kVersionMajor, kVersionMinorOldest, kVersionMajor, kVersionMinor);
  }
  const std::uint32_t header_crc = crc32c(header.first(kHeaderCrcOffset));
  if (h.header_crc != header_crc) {
    return fail("header CRC mismatch (stored {:#010x}, computed {:#010x})", h.header_crc, header_crc);
  }
  if (h.type == 0) return fail("invalid frame type 0");
  if (!is_known(h.type)) return fail("unknown frame type {}", h.type);
  const auto type = static_cast<FrameType>(h.type);
  if (h.flags != 0) {
    return fail("non-zero flags {:#06x} on a {} frame (none are defined)", h.flags, frame_type_name(type));
  }
  if (h.payload_length > max_payload(type)) {
    return fail("oversized {} payload: {} bytes, the limit is {}", frame_type_name(type),
                h.payload_length, max_payload(type));
  }
  if (!crc_covered_length(type, h.payload_length)) {
    return fail("PAGES payload of {} bytes is not {} + count * {} bytes with count <= {}",
                h.payload_length, kPagesFixedSize, kBytesPerPage, kMaxPagesPerFrame);
  }
  if (h.sequence != expected) return fail("sequence {}, expected {}", h.sequence, expected);
  return FrameHeader{type, h.sequence, h.payload_length, h.payload_crc, h.minor};
}

Result<FrameReader::Pending> FrameReader::parse_header() const {
  // Unsigned arithmetic wraps, so sequence 0 follows 0xffffffff.
  auto h = decode_header(header_, static_cast<std::uint32_t>(count_));
  if (!h) return std::unexpected(h.error());
  return Pending{h->type, h->sequence, h->payload_length, h->payload_crc32c, h->minor};
}

Result<Frame> FrameReader::complete_frame() {
  const Pending& p = *pending_;
  const std::uint64_t covered = *crc_covered_length(p.type, p.length);
  const std::uint32_t crc = crc32c(std::span(payload_).first(covered));
  if (crc != p.crc) {
    return fail("{} payload CRC mismatch (stored {:#010x}, computed {:#010x})", frame_type_name(p.type),
                p.crc, crc);
  }
  Frame f{p.type, p.sequence, std::move(payload_), p.minor};
  payload_ = {};
  pending_.reset();
  header_fill_ = 0;
  ++count_;
  return f;
}

Result<std::vector<Frame>> FrameReader::feed(std::span<const std::byte> bytes) {
  if (failed_) return std::unexpected(*failed_);
  std::vector<Frame> frames;
  while (!bytes.empty()) {
    if (!pending_) {
      const std::size_t n = std::min(bytes.size(), kHeaderSize - header_fill_);
      std::ranges::copy(bytes.first(n), header_.begin() + header_fill_);
      header_fill_ += n;
      bytes = bytes.subspan(n);
      if (header_fill_ < kHeaderSize) break;
      auto p = parse_header();
      if (!p) return stop(std::move(p.error()));
      pending_ = *p;
      payload_.reserve(std::min(p->length, kPayloadStep));  // grows with the bytes that arrive
    }
    const std::size_t n = std::min<std::uint64_t>(bytes.size(), pending_->length - payload_.size());
    payload_.insert(payload_.end(), bytes.begin(), bytes.begin() + n);
    bytes = bytes.subspan(n);
    if (payload_.size() < pending_->length) break;
    auto f = complete_frame();
    if (!f) return stop(std::move(f.error()));
    frames.push_back(std::move(*f));
  }
  return frames;
}

Status FrameReader::finish() const {
  if (failed_) return std::unexpected(*failed_);
  if (pending_) {
    return fail("migration stream: frame {}: truncated: the stream ended after {} of {} payload bytes",
                count_, payload_.size(), pending_->length);
  }
  if (header_fill_ != 0) {
    return fail("migration stream: frame {}: truncated: the stream ended after {} of {} header bytes",
                count_, header_fill_, kHeaderSize);
  }
  return {};
}

}  // namespace ferry::migration

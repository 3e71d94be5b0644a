#include "kvm/state/format.hh"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <unordered_set>

#include "userspace/base/crc64.hh"

namespace ferry::kvm::state {
namespace {

// Decoded forms of the fixed records. They are never copied to or from the
// file as a whole; the static_asserts tie the documented sizes to the
// fields that encode_*/read_* actually write and read.
struct FileHeader {
  std::uint16_t major = 0;
  std::uint16_t minor = 0;
  std::uint32_t flags = 0;
  std::uint32_t section_count = 0;
  std::uint64_t body_length = 0;
};
static_assert(sizeof(kMagic) + sizeof(FileHeader::major) + sizeof(FileHeader::minor) +
                  sizeof(FileHeader::flags) + sizeof(FileHeader::section_count) +
                  sizeof(FileHeader::body_length) ==
              kHeaderSize);

struct SectionHeader {
  std::uint32_t type = 0;
  std::uint32_t instance = 0;
  std::uint32_t version = 0;
  std::uint32_t reserved = 0;
  std::uint64_t payload_length = 0;
};
static_assert(sizeof(SectionHeader::type) + sizeof(SectionHeader::instance) +
                  sizeof(SectionHeader::version) + sizeof(SectionHeader::reserved) +
                  sizeof(SectionHeader::payload_length) ==
              kSectionHeaderSize);
constexpr std::size_t kReservedOffset = 12;       // within a section header
constexpr std::size_t kPayloadLengthOffset = 16;  // within a section header

bool is_known(std::uint32_t type) {
  return type > static_cast<std::uint32_t>(SectionType::kInvalid) &&
         type <= static_cast<std::uint32_t>(SectionType::kVirtio);
}

std::uint64_t padding_for(std::uint64_t payload_length) {
  return (kPayloadAlign - payload_length % kPayloadAlign) % kPayloadAlign;
}

std::uint64_t section_key(std::uint32_t type, std::uint32_t instance) {
  return (std::uint64_t{type} << 32) | instance;
}

[[noreturn]] void writer_bug(const std::string& what) {
  std::fputs(fmt::format("ferry: StateWriter misuse: {}\n", what).c_str(), stderr);
  std::abort();
}

void encode_header(ByteWriter& w, const FileHeader& h) {
  w.put_bytes(kMagic);
  w.put_u16(h.major);
  w.put_u16(h.minor);
  w.put_u32(h.flags);
  w.put_u32(h.section_count);
  w.put_u64(h.body_length);
}

void encode_section(ByteWriter& w, const Section& s) {
  w.put_u32(static_cast<std::uint32_t>(s.type));
  w.put_u32(s.instance);
  w.put_u32(s.version);
  w.put_u32(0);  // reserved
  w.put_u64(s.payload.size());
  w.put_bytes(s.payload);
  w.put_zeros(padding_for(s.payload.size()));
}

Result<FileHeader> read_header(std::span<const std::byte> bytes) {
  if (bytes.size() < kHeaderSize) {
    return fail("state: truncated: header needs {} bytes at offset 0, {} left", kHeaderSize,
                bytes.size());
  }
  ByteReader r(bytes);
  FileHeader h;
  // The magic was compared by the caller; skip it.
  if (auto m = r.get_bytes(kMagic.size()); !m) return std::unexpected(m.error());
  if (auto s = r.get(h.major, h.minor, h.flags, h.section_count, h.body_length); !s) {
    return std::unexpected(s.error());
  }
  return h;
}

Status check_version(const FileHeader& h) {
  if (h.major > kFormatMajor) {
    return fail("state: version {}.{} is newer than supported {}.x", h.major, h.minor, kFormatMajor);
  }
  if (h.major < kFormatMajor) {
    return fail("state: version {}.{} is older than supported {}.x", h.major, h.minor, kFormatMajor);
  }
  if (h.minor > kFormatMinor) {
    return fail("state: version {}.{} is newer than supported {}.{}", h.major, h.minor,
                kFormatMajor, kFormatMinor);
  }
  return {};
}

// The input is shorter than the header promises, so the CRC cannot be
// checked. Walk the section headers that are present to say which part is
// cut off; these fields are unverified, but they only choose the message.
std::unexpected<Error> explain_truncation(std::span<const std::byte> bytes, const FileHeader& h) {
  const std::uint64_t size = bytes.size();
  std::uint64_t off = kHeaderSize;
  for (std::uint32_t i = 0; i < h.section_count; ++i) {
    if (size - off < kSectionHeaderSize) {
      return fail("state: truncated: section {} header needs {} bytes at offset {}, {} left", i,
                  kSectionHeaderSize, off, size - off);
    }
    std::uint64_t length = 0;
    ByteReader r(bytes.subspan(off + kPayloadLengthOffset), off + kPayloadLengthOffset);
    if (auto s = r.get(length); !s) return std::unexpected(s.error());
    off += kSectionHeaderSize;
    if (length > size - off) {
      return fail("state: truncated: section {} payload needs {} bytes at offset {}, {} left", i,
                  length, off, size - off);
    }
    off += length;
    const std::uint64_t pad = padding_for(length);
    if (pad > size - off) {
      return fail("state: truncated: section {} padding needs {} bytes at offset {}, {} left", i,
                  pad, off, size - off);
    }
    off += pad;
  }
  if (size - off < kTrailerSize) {
    return fail("state: truncated: trailer needs {} bytes at offset {}, {} left", kTrailerSize, off,
                size - off);
  }
  return fail("state: truncated: body_length {} plus {}-byte trailer at offset {} exceed the {} bytes left",
              h.body_length, kTrailerSize, kHeaderSize, size - kHeaderSize);
}

// Runs only after the CRC matched, so a failure here means a writer bug or a
// crafted file, not a flipped bit; messages say which field is inconsistent.
Result<std::vector<Section>> decode_sections(ByteReader& body, std::uint32_t count) {
  const std::uint64_t body_end = body.offset() + body.remaining();
  std::vector<Section> sections;
  // Not reserve(count): count is input; each section needs a header anyway.
  sections.reserve(std::min<std::uint64_t>(count, body.remaining() / kSectionHeaderSize));
  std::unordered_set<std::uint64_t> seen;
  for (std::uint32_t i = 0; i < count; ++i) {
    const std::uint64_t at = body.offset();
    SectionHeader sh;
    if (body.remaining() < kSectionHeaderSize) {
      return fail("state: section_count {} does not match body: section {} header needs {} bytes "
                  "at offset {}, body has {} left",
                  count, i, kSectionHeaderSize, at, body.remaining());
    }
    if (auto s = body.get(sh.type, sh.instance, sh.version, sh.reserved, sh.payload_length); !s) {
      return std::unexpected(s.error());
    }
    if (sh.type == static_cast<std::uint32_t>(SectionType::kInvalid)) {
      return fail("state: invalid section type 0 at offset {}", at);
    }
    if (!is_known(sh.type)) return fail("state: unknown section type {} at offset {}", sh.type, at);
    if (sh.reserved != 0) {
      return fail("state: non-zero reserved field {:#x} in section {} at offset {}", sh.reserved, i,
                  at + kReservedOffset);
    }
    if (sh.payload_length > body.remaining()) {
      return fail("state: section {} payload of {} bytes at offset {} overruns body end at offset {}",
                  i, sh.payload_length, body.offset(), body_end);
    }
    auto payload = body.get_bytes(sh.payload_length);
    if (!payload) return std::unexpected(payload.error());
    const std::uint64_t pad_at = body.offset();
    auto pad = body.get_bytes(padding_for(sh.payload_length));
    if (!pad) {
      return fail("state: section {} padding at offset {} overruns body end at offset {}", i, pad_at,
                  body_end);
    }
    if (std::ranges::any_of(*pad, [](std::byte b) { return b != std::byte{0}; })) {
      return fail("state: non-zero padding in section {} at offset {}", i, pad_at);
    }
    const auto type = static_cast<SectionType>(sh.type);
    if (!seen.insert(section_key(sh.type, sh.instance)).second) {
      return fail("state: duplicate section {}#{} at offset {}", section_type_name(type),
                  sh.instance, at);
    }
    sections.push_back(Section{type, sh.instance, sh.version, {payload->begin(), payload->end()}});
  }
  if (body.remaining() != 0) {
    return fail("state: body length {} does not match content: {} sections end at offset {}, "
                "body ends at offset {}",
                body_end - kHeaderSize, count, body.offset(), body_end);
  }
  return sections;
}

}  // namespace

std::string_view section_type_name(SectionType type) {
  switch (type) {
    case SectionType::kInvalid: return "invalid";
    case SectionType::kVmConfig: return "vm-config";
    case SectionType::kMemoryLayout: return "memory-layout";
    case SectionType::kVcpu: return "vcpu";
    case SectionType::kIrqchip: return "irqchip";
    case SectionType::kPit: return "pit";
    case SectionType::kClock: return "clock";
    case SectionType::kSerial: return "serial";
    case SectionType::kDeviceOther: return "device-other";
    case SectionType::kVirtio: return "virtio";
  }
  return "unknown";
}

const Section* StateImage::find(SectionType type, std::uint32_t instance) const {
  for (const Section& s : sections) {
    if (s.type == type && s.instance == instance) return &s;
  }
  return nullptr;
}

void StateWriter::add(SectionType type, std::uint32_t instance, std::uint32_t version,
                      std::span<const std::byte> payload) {
  const auto raw = static_cast<std::uint32_t>(type);
  if (!is_known(raw)) writer_bug(fmt::format("section type {} cannot be written", raw));
  for (const Section& s : sections_) {
    if (s.type == type && s.instance == instance) {
      writer_bug(fmt::format("duplicate section {}#{}", section_type_name(type), instance));
    }
  }
  if (sections_.size() == std::numeric_limits<std::uint32_t>::max()) writer_bug("too many sections");
  sections_.push_back(Section{type, instance, version, {payload.begin(), payload.end()}});
}

std::vector<std::byte> StateWriter::finish() const {
  ByteWriter body;
  for (const Section& s : sections_) encode_section(body, s);
  ByteWriter out;
  encode_header(out, FileHeader{kFormatMajor, kFormatMinor, 0,
                                static_cast<std::uint32_t>(sections_.size()), body.size()});
  out.put_bytes(body.bytes());
  out.put_u64(crc64(out.bytes()));
  return std::move(out).take();
}

Result<StateImage> parse_state(std::span<const std::byte> bytes, std::uint64_t max_bytes) {
  if (bytes.size() > max_bytes) {
    return fail("state: input of {} bytes exceeds limit {}", bytes.size(), max_bytes);
  }
  // Compare what magic there is even on short input: a file that is not
  // ours at all should say so, not "truncated".
  const std::size_t magic_len = std::min(bytes.size(), kMagic.size());
  if (!std::equal(bytes.begin(), bytes.begin() + magic_len, kMagic.begin())) {
    return fail("state: bad magic (not a Ferry state file)");
  }
  auto h = read_header(bytes);
  if (!h) return std::unexpected(h.error());
  // Version before anything else: another major may lay out the rest
  // (even where the trailer is) differently.
  if (auto s = check_version(*h); !s) return std::unexpected(s.error());
  if (h->flags != 0) {
    return fail("state: non-zero header flags {:#x} (none are defined in {}.{})", h->flags,
                kFormatMajor, kFormatMinor);
  }

  const std::uint64_t after_header = bytes.size() - kHeaderSize;
  if (h->body_length > after_header || after_header - h->body_length < kTrailerSize) {
    return explain_truncation(bytes, *h);
  }
  const std::uint64_t body_end = kHeaderSize + h->body_length;

  // CRC before interpreting any section, so a flipped bit is reported as
  // corruption rather than as whatever field it happened to land in.
  std::uint64_t stored = 0;
  ByteReader trailer(bytes.subspan(body_end, kTrailerSize), body_end);
  if (auto s = trailer.get(stored); !s) return std::unexpected(s.error());
  const std::uint64_t computed = crc64(bytes.first(body_end));
  if (stored != computed) {
    return fail("state: CRC mismatch (stored {:#018x}, computed {:#018x})", stored, computed);
  }
  if (const std::uint64_t extra = after_header - h->body_length - kTrailerSize; extra != 0) {
    return fail("state: trailing garbage: {} bytes after the trailer at offset {}", extra,
                body_end + kTrailerSize);
  }

  ByteReader body(bytes.subspan(kHeaderSize, h->body_length), kHeaderSize);
  auto sections = decode_sections(body, h->section_count);
  if (!sections) return std::unexpected(sections.error());
  return StateImage{h->major, h->minor, std::move(*sections)};
}

}  // namespace ferry::kvm::state

#pragma once
// Ferry's one versioned binary state format: snapshots on disk and the CPU
// and device state sent at the end of a live migration use the same bytes.
//
// Layout (all integers little-endian, encoded field by field):
//
//   header (28 bytes)
//     0  magic          "FERRYST\0"
//     8  u16 major      kFormatMajor
//    10  u16 minor      kFormatMinor
//    12  u32 flags      must be 0 (none defined in 1.0)
//    16  u32 section_count
//    20  u64 body_length  bytes of sections between header and trailer
//   body: section_count sections, back to back, each
//     0  u32 type       SectionType; 0 and unknown values are rejected
//     4  u32 instance   e.g. the vCPU index; (type, instance) is unique
//     8  u32 version    the component's own state version
//    12  u32 reserved   must be 0
//    16  u64 payload_length
//    24  payload, then zero padding up to a multiple of 8 bytes
//   trailer: u64 CRC-64/XZ of every byte before it
//
// The header is 28 bytes, so section headers are not 8-aligned in the file;
// that is harmless because nothing is ever read by casting a pointer.
//
// Version policy: a reader accepts its own major and any minor up to its
// own. A newer minor is rejected too, although "minor" suggests
// compatibility: a newer writer may add section types or flags this reader
// cannot interpret, and naming the version is a clearer error than an
// "unknown section type" deep inside the body. Minor bumps therefore buy
// backward compatibility only (new readers, old files).
//
// Messages number sections from 0 and give offsets from the start of input.
#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "userspace/base/error.hh"
#include "userspace/base/bytes.hh"

namespace ferry::kvm::state {

inline constexpr std::array<std::byte, 8> kMagic = {
    std::byte{'F'}, std::byte{'E'}, std::byte{'R'}, std::byte{'R'},
    std::byte{'Y'}, std::byte{'S'}, std::byte{'T'}, std::byte{0}};
inline constexpr std::uint16_t kFormatMajor = 1;
inline constexpr std::uint16_t kFormatMinor = 0;
inline constexpr std::size_t kHeaderSize = 28;
inline constexpr std::size_t kSectionHeaderSize = 24;
inline constexpr std::size_t kTrailerSize = 8;
inline constexpr std::size_t kPayloadAlign = 8;

// Values are on disk: never renumber, only append. 0 stays invalid so that
// zeroed memory never decodes as a real section.
enum class SectionType : std::uint32_t {
  kInvalid = 0,
  kVmConfig = 1,
  kMemoryLayout = 2,
  kVcpu = 3,
  kIrqchip = 4,
  kPit = 5,
  kClock = 6,
  kSerial = 7,
  kDeviceOther = 8,
  kVirtio = 9,  // one virtio transport and its device (instance: the device's index)
};

// "vcpu", "irqchip", ...; "invalid" for kInvalid and "unknown" otherwise.
std::string_view section_type_name(SectionType type);

struct Section {
  SectionType type = SectionType::kInvalid;
  std::uint32_t instance = 0;
  std::uint32_t version = 0;
  std::vector<std::byte> payload;
};

struct StateImage {
  std::uint16_t major = 0;
  std::uint16_t minor = 0;
  std::vector<Section> sections;  // in file order

  const Section* find(SectionType type, std::uint32_t instance) const;
};

class StateWriter {
 public:
  // Copies the payload. Adding kInvalid, an unknown type or a duplicate
  // (type, instance) is a programming error and aborts: the writer must
  // never produce a file the reader rejects.
  void add(SectionType type, std::uint32_t instance, std::uint32_t version,
           std::span<const std::byte> payload);
  std::vector<std::byte> finish() const;

 private:
  std::vector<Section> sections_;
};

// Validates everything (see the layout above) before returning; inputs
// larger than max_bytes are refused without being read.
Result<StateImage> parse_state(std::span<const std::byte> bytes,
                               std::uint64_t max_bytes = 1ull << 32);

}  // namespace ferry::kvm::state

#pragma once
// CRC-32C (Castagnoli: polynomial 0x1EDC6F41, reflected, init and xorout all
// ones), the check on every migration frame. Castagnoli rather than the
// zlib polynomial because it detects more error patterns at the lengths we
// send and is the CRC that iSCSI, ext4 and SCTP use, so hardware and
// reference values are everywhere. Like crc64.hh it catches accidents, not
// a hostile peer.
#include <cstddef>
#include <cstdint>
#include <span>

namespace ferry {

// Incremental: update() any number of times, value() at any point.
class Crc32c {
 public:
  void update(std::span<const std::byte> bytes);
  std::uint32_t value() const { return ~state_; }  // applies xorout; does not reset

 private:
  std::uint32_t state_ = ~std::uint32_t{0};
};

std::uint32_t crc32c(std::span<const std::byte> bytes);

}  // namespace ferry

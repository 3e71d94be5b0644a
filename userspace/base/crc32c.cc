#include "userspace/base/crc32c.hh"

#include <isa-l/crc.h>

#include <limits>

namespace ferry {

// ISA-L (Debian's libisal) uses the SSE4.2 crc32 instruction with PCLMULQDQ
// folding, chosen at run time: memory speed, several times the slicing-by-8
// table this replaced. Unlike its CRC-64 functions, crc32_iscsi applies no
// inversions, so the register (state_) is passed in and out as is.
void Crc32c::update(std::span<const std::byte> bytes) {
  auto* p = reinterpret_cast<unsigned char*>(const_cast<std::byte*>(bytes.data()));  // ISA-L only reads
  std::size_t left = bytes.size();
  constexpr std::size_t kChunk = std::numeric_limits<int>::max() & ~std::size_t{4095};  // its length is an int
  while (left > 0) {
    const std::size_t n = left < kChunk ? left : kChunk;
    state_ = crc32_iscsi(p, static_cast<int>(n), state_);
    p += n;
    left -= n;
  }
}

std::uint32_t crc32c(std::span<const std::byte> bytes) {
  Crc32c c;
  c.update(bytes);
  return c.value();
}

}  // namespace ferry

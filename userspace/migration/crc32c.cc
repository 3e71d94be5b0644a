#include "migration/crc32c.hh"

#include <array>

namespace ferry::migration {
namespace {

// 0x1EDC6F41 bit-reversed: the reflected CRC consumes each byte LSB first.
constexpr std::uint32_t kPolyReflected = 0x82F63B78u;

// Slicing-by-8: table k maps a byte to its CRC contribution when k more
// bytes follow it, so eight bytes are folded per step with eight
// independent lookups instead of eight dependent ones. Frames carry up to
// 16 MiB of pages, so the byte-at-a-time loop would be the bottleneck.
using Tables = std::array<std::array<std::uint32_t, 256>, 8>;

constexpr Tables make_tables() {
  Tables t{};
  for (std::uint32_t i = 0; i < 256; ++i) {
    std::uint32_t c = i;
    for (int bit = 0; bit < 8; ++bit) c = (c & 1) ? (c >> 1) ^ kPolyReflected : c >> 1;
    t[0][i] = c;
  }
  for (std::size_t k = 1; k < 8; ++k) {
    for (std::uint32_t i = 0; i < 256; ++i) t[k][i] = (t[k - 1][i] >> 8) ^ t[0][t[k - 1][i] & 0xff];
  }
  return t;
}

// Built at compile time: no init-order or thread-safety questions.
constexpr Tables kTables = make_tables();

std::uint32_t byte_at(std::span<const std::byte> b, std::size_t i) {
  return std::to_integer<std::uint32_t>(b[i]);
}

}  // namespace

void Crc32c::update(std::span<const std::byte> bytes) {
  std::uint32_t c = state_;
  std::size_t i = 0;
  // Bytes are assembled explicitly (no pointer casts), so the result does
  // not depend on host endianness or alignment.
  for (; i + 8 <= bytes.size(); i += 8) {
    const std::uint32_t lo = c ^ (byte_at(bytes, i) | byte_at(bytes, i + 1) << 8 |
                                  byte_at(bytes, i + 2) << 16 | byte_at(bytes, i + 3) << 24);
    c = kTables[7][lo & 0xff] ^ kTables[6][(lo >> 8) & 0xff] ^ kTables[5][(lo >> 16) & 0xff] ^
        kTables[4][lo >> 24] ^ kTables[3][byte_at(bytes, i + 4)] ^ kTables[2][byte_at(bytes, i + 5)] ^
        kTables[1][byte_at(bytes, i + 6)] ^ kTables[0][byte_at(bytes, i + 7)];
  }
  for (; i < bytes.size(); ++i) c = kTables[0][(c ^ byte_at(bytes, i)) & 0xff] ^ (c >> 8);
  state_ = c;
}

std::uint32_t crc32c(std::span<const std::byte> bytes) {
  Crc32c c;
  c.update(bytes);
  return c.value();
}

}  // namespace ferry::migration

#pragma once
// CRC-64/XZ (ECMA-182 polynomial, reflected, init and xorout all ones): the
// integrity check over a whole state file. A CRC catches accidental
// corruption (disk, truncated copy, buggy sender); it is not a MAC and does
// not defend against a hostile peer, which the transport must do.
#include <cstddef>
#include <cstdint>
#include <span>

namespace ferry {

// Incremental so a writer or a streaming receiver can checksum piece by
// piece: update() any number of times, value() at any point.
class Crc64 {
 public:
  void update(std::span<const std::byte> bytes);
  std::uint64_t value() const { return ~state_; }  // applies xorout; does not reset

 private:
  std::uint64_t state_ = ~std::uint64_t{0};
};

std::uint64_t crc64(std::span<const std::byte> bytes);

}  // namespace ferry

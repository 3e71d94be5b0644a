#include "kvm/state/crc64.hh"

#include <array>

namespace ferry::kvm::state {
namespace {

// 0x42F0E1EBA9EA3693 bit-reversed, because the XZ variant is reflected
// (processes each byte least-significant bit first).
constexpr std::uint64_t kPolyReflected = 0xC96C5795D7870F42ull;

constexpr std::array<std::uint64_t, 256> make_table() {
  std::array<std::uint64_t, 256> t{};
  for (std::uint64_t i = 0; i < 256; ++i) {
    std::uint64_t c = i;
    for (int bit = 0; bit < 8; ++bit) c = (c & 1) ? (c >> 1) ^ kPolyReflected : c >> 1;
    t[i] = c;
  }
  return t;
}

// Built at compile time: no init-order or thread-safety questions.
constexpr auto kTable = make_table();

}  // namespace

void Crc64::update(std::span<const std::byte> bytes) {
  std::uint64_t c = state_;
  for (std::byte b : bytes) c = kTable[(c ^ std::to_integer<std::uint64_t>(b)) & 0xff] ^ (c >> 8);
  state_ = c;
}

std::uint64_t crc64(std::span<const std::byte> bytes) {
  Crc64 c;
  c.update(bytes);
  return c.value();
}

}  // namespace ferry::kvm::state

#include "userspace/base/hex.hh"

namespace ferry {
namespace {

int digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

std::string to_hex(std::span<const std::byte> bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (std::byte b : bytes) {
    out.push_back(kDigits[std::to_integer<unsigned>(b) >> 4]);
    out.push_back(kDigits[std::to_integer<unsigned>(b) & 0xf]);
  }
  return out;
}

Result<std::vector<std::byte>> from_hex(std::string_view text) {
  if (text.size() % 2 != 0) return fail("hex: {} digits, not whole bytes (an even count is needed)", text.size());
  std::vector<std::byte> out(text.size() / 2);
  for (std::size_t i = 0; i < text.size(); i += 2) {
    const int hi = digit(text[i]), lo = digit(text[i + 1]);
    if (hi < 0 || lo < 0) return fail("hex: '{}' at offset {} is not a hex digit", text[hi < 0 ? i : i + 1], hi < 0 ? i : i + 1);
    out[i / 2] = static_cast<std::byte>(hi << 4 | lo);
  }
  return out;
}

}  // namespace ferry

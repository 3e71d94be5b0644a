#pragma once
// Hex text for bytes, as the control API carries guest memory
// (`memory-read`, `memory-write`): lower-case pairs, no separators.
#include <cstddef>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "userspace/base/error.hh"

namespace ferry {

std::string to_hex(std::span<const std::byte> bytes);
// Pairs of hex digits (either case); anything else, or an odd count, is an
// error that says where.
Result<std::vector<std::byte>> from_hex(std::string_view text);

}  // namespace ferry

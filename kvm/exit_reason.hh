#pragma once
#include <cstdint>
#include <string_view>

namespace ferry::kvm {
// "HLT", "IO", ... for logs and errors; "UNKNOWN(n)" is never returned, the
// caller formats the number when this returns an empty view.
std::string_view exit_reason_name(std::uint32_t reason);
}  // namespace ferry::kvm

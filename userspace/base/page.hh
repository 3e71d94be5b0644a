#pragma once
// The page: KVM's dirty-logging granule, the unit of every dirty bitmap and
// ring entry, and the unit the migration protocol sends. One definition for
// the VMM and the engine, so the two can never disagree.
#include <cstddef>

namespace ferry {

inline constexpr std::size_t kPageSize = 4096;

}  // namespace ferry

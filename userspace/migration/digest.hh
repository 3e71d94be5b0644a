#pragma once
// The whole-memory digest `--verify` compares between source and
// destination: CRC-64/XZ over (u64 page index, page) of every non-zero page
// in order, as the snapshot's memory check. Zero pages do not count, so
// neither side reads memory nobody touched (only the memfd's data extents).
#include <cstdint>

#include "kvm/guest_memory.hh"

namespace ferry::migration {

std::uint64_t memory_digest(const kvm::GuestRegion& region);

}  // namespace ferry::migration

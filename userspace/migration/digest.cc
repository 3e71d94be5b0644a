#include "migration/digest.hh"

#include "kvm/state/crc64.hh"

namespace ferry::migration {

std::uint64_t memory_digest(const kvm::GuestRegion& region) {
  kvm::state::Crc64 crc;
  kvm::for_each_data_extent(region.memfd(), 0, region.size(), [&](std::uint64_t b, std::uint64_t e) {
    for (std::uint64_t off = b / kvm::kPageSize * kvm::kPageSize; off < e; off += kvm::kPageSize) {
      const std::byte* p = region.host() + off;
      if (kvm::page_is_zero(p)) continue;
      const std::uint64_t index = off / kvm::kPageSize;
      std::byte idx[8];
      for (int i = 0; i < 8; ++i) idx[i] = std::byte(index >> (8 * i));
      crc.update(idx);
      crc.update({p, kvm::kPageSize});
    }
  });
  return crc.value();
}

}  // namespace ferry::migration

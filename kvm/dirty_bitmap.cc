#include "kvm/dirty_bitmap.hh"

#include <algorithm>

namespace ferry::kvm {

std::uint64_t DirtyBitmap::count() const {
  std::uint64_t n = 0;
  for (auto w : words_) n += static_cast<std::uint64_t>(std::popcount(w));
  return n;
}

void DirtyBitmap::clear() { std::fill(words_.begin(), words_.end(), 0); }

void DirtyBitmap::merge(const DirtyBitmap& other) {
  const auto n = std::min(words_.size(), other.words_.size());
  for (std::size_t i = 0; i < n; ++i) words_[i] |= other.words_[i];
}

}  // namespace ferry::kvm

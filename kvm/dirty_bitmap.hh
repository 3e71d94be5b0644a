#pragma once
// A bitmap of dirty pages for one memory slot, one bit per 4 KiB page, in
// the same word layout KVM uses for KVM_GET_DIRTY_LOG (bit i of u64 word
// i/64 = page i). Both tracking backends harvest into these.
#include <bit>
#include <cstdint>
#include <vector>

namespace ferry::kvm {

class DirtyBitmap {
 public:
  DirtyBitmap() = default;
  explicit DirtyBitmap(std::uint64_t pages) : pages_(pages), words_((pages + 63) / 64, 0) {}

  std::uint64_t pages() const { return pages_; }
  void set(std::uint64_t page) { words_[page / 64] |= 1ull << (page % 64); }
  bool test(std::uint64_t page) const { return (words_[page / 64] >> (page % 64)) & 1; }
  std::uint64_t count() const;
  void clear();
  void merge(const DirtyBitmap& other);  // same size required
  bool any() const { return count() > 0; }

  // The raw words, for KVM_GET_DIRTY_LOG / KVM_CLEAR_DIRTY_LOG.
  std::uint64_t* words() { return words_.data(); }
  const std::uint64_t* words() const { return words_.data(); }
  std::size_t word_count() const { return words_.size(); }

  // Calls f(page) for each set bit, in ascending order.
  template <class F>
  void for_each(F&& f) const {
    for (std::size_t w = 0; w < words_.size(); ++w) {
      for (std::uint64_t bits = words_[w]; bits; bits &= bits - 1)
        f(static_cast<std::uint64_t>(w * 64 + std::countr_zero(bits)));
    }
  }

 private:
  std::uint64_t pages_ = 0;
  std::vector<std::uint64_t> words_;
};

}  // namespace ferry::kvm

#include "userspace/migration/page_ledger.hh"

#include <bit>

namespace ferry::migration {

Status PageLedger::add_slot(std::uint32_t slot, std::uint64_t pages) {
  if (!slots_.emplace(slot, Slot{pages, {}}).second) return fail("page ledger: slot {} added twice", slot);
  return {};
}

Result<PageLedger::Slot*> PageLedger::find(std::uint32_t slot, std::uint64_t page) {
  auto it = slots_.find(slot);
  if (it == slots_.end()) return fail("page ledger: unknown slot {}", slot);
  if (page >= it->second.pages) {
    return fail("page ledger: page {} is past the end of slot {} ({} pages)", page, slot, it->second.pages);
  }
  return &it->second;
}

Status PageLedger::mark_bad(std::uint32_t slot, std::uint64_t page) {
  auto s = find(slot, page);
  if (!s) return std::unexpected(s.error());
  std::vector<std::uint64_t>& words = (*s)->bad;
  if (page / 64 >= words.size()) words.resize(page / 64 + 1);
  const std::uint64_t bit = std::uint64_t{1} << (page % 64);
  if (!(words[page / 64] & bit)) ++bad_;
  words[page / 64] |= bit;
  return {};
}

Status PageLedger::mark_good(std::uint32_t slot, std::uint64_t page) {
  auto s = find(slot, page);
  if (!s) return std::unexpected(s.error());
  std::vector<std::uint64_t>& words = (*s)->bad;
  if (page / 64 >= words.size()) return {};  // never bad
  const std::uint64_t bit = std::uint64_t{1} << (page % 64);
  if (words[page / 64] & bit) --bad_;
  words[page / 64] &= ~bit;
  return {};
}

Result<bool> PageLedger::receive(std::uint32_t slot, const PageDescriptor& d,
                                 std::span<const std::byte> page) {
  const bool ok = page.size() == kPageSize && page_checksum(d.page_index, page) == d.checksum;
  auto s = ok ? mark_good(slot, d.page_index) : mark_bad(slot, d.page_index);
  if (!s) return std::unexpected(s.error());
  return ok;
}

std::optional<PageRef> PageLedger::first_bad() const {
  if (bad_ == 0) return std::nullopt;
  for (const auto& [slot, s] : slots_) {
    for (std::size_t w = 0; w < s.bad.size(); ++w) {
      if (s.bad[w] != 0) return PageRef{slot, w * 64 + std::countr_zero(s.bad[w])};
    }
  }
  return std::nullopt;  // unreachable while bad_ is kept in step
}

Status PageLedger::check_ready() const {
  const auto first = first_bad();
  if (!first) return {};
  return fail("{} page(s) failed their checksum and were not sent again (first: slot {} page {})", bad_,
              first->slot, first->page);
}

}  // namespace ferry::migration

// Round planning on the source (round_planner.hh).
#include "userspace/migration/round_planner.hh"

#include <bit>

#include "kvm/snapshot.hh"
#include "userspace/base/page.hh"
#include "userspace/migration/page_path.hh"

namespace ferry::migration {

RoundPlanner::RoundPlanner(std::uint32_t slot, std::uint64_t gpa, std::uint64_t pages, std::uint32_t streams)
    : slot_(slot),
      streams_(streams),
      dirty_(std::vector<kvm::TrackedSlot>{{slot, gpa, pages}}),
      held_(std::vector<kvm::TrackedSlot>{{slot, gpa, pages}}),
      prev_harvest_(pages),
      hot_(pages),
      sent_before_((pages + 63) / 64, 0) {}

RoundPlanner::PerStream RoundPlanner::first_round(const kvm::GuestRegion& ram) {
  PerStream todo(streams_);
  allocated_ = 0;
  kvm::for_each_data_extent(ram.memfd(), 0, ram.size(), [&](std::uint64_t b, std::uint64_t e) {
    for (std::uint64_t p = b / kPageSize; p < (e + kPageSize - 1) / kPageSize; ++p) {
      todo[stream_of(p, streams_)].push_back(p);
      ++allocated_;
    }
  });
  return todo;
}

RoundPlanner::Harvest RoundPlanner::observe() {
  Harvest h;
  h.dirty_pages = dirty_.count();
  const auto& now = *dirty_.find(slot_);
  const auto& held = *held_.find(slot_);
  for (std::size_t w = 0; w < now.word_count(); ++w) {
    hot_.words()[w] = now.words()[w] & prev_harvest_.words()[w];
    prev_harvest_.words()[w] = now.words()[w];
    // Held pages the harvest did not find again are still unsent.
    h.held_only += static_cast<std::uint64_t>(std::popcount(held.words()[w] & ~now.words()[w]));
  }
  // The policy judges holding back on the set it would hold: the pages hot
  // now plus those still held from before (not the held count alone, which
  // is 0 before the first hold and would always look affordable).
  h.hot_set_pages = hot_.count() + h.held_only;
  return h;
}

RoundPlanner::PerStream RoundPlanner::next_round(bool hold_back_hot) {
  dirty_.merge(held_);
  held_.clear();
  if (hold_back_hot) {
    // Every hot page is pending (it is in this harvest): move it over.
    auto& h = *held_.find(slot_);
    auto& pending = *dirty_.find(slot_);
    for (std::size_t w = 0; w < pending.word_count(); ++w) {
      h.words()[w] = hot_.words()[w];
      pending.words()[w] &= ~hot_.words()[w];
    }
  }
  return split();
}

RoundPlanner::PerStream RoundPlanner::final_round(std::uint64_t& held_final) {
  held_final = held_.count();
  dirty_.merge(held_);
  held_.clear();
  return split();
}

std::uint64_t RoundPlanner::record_sent(const PerStream& round) {
  std::uint64_t resent = 0;
  for (const auto& list : round)
    for (std::uint64_t page : list) {
      auto& word = sent_before_[page / 64];
      const std::uint64_t bit = std::uint64_t{1} << (page % 64);
      if (word & bit) ++resent;
      word |= bit;
    }
  return resent;
}

// Dirty pages of the slot in per-stream lists, ascending.
RoundPlanner::PerStream RoundPlanner::split() const {
  PerStream out(streams_);
  if (const auto* bits = dirty_.find(slot_))
    bits->for_each([&](std::uint64_t p) { out[stream_of(p, streams_)].push_back(p); });
  return out;
}

}  // namespace ferry::migration

#pragma once
// Which pages each pre-copy round sends, on which stream (the source's
// planner). Round 0 sends every page the memory file holds: never-touched
// pages (holes) are zero on the fresh destination too. Each later round
// sends what the harvest after the previous one found dirty, except hot
// pages (dirty in two harvests in a row: re-dirtied while a round sent
// them) when the policy holds them back for the final round, which sends
// the final harvest plus everything held. Pure bookkeeping: no VM, no I/O.
#include <cstdint>
#include <vector>

#include "kvm/dirty_bitmap.hh"
#include "kvm/dirty_tracker.hh"
#include "kvm/guest_memory.hh"

namespace ferry::migration {

class RoundPlanner {
 public:
  using PerStream = std::vector<std::vector<std::uint64_t>>;  // ascending page indices per stream

  RoundPlanner(std::uint32_t slot, std::uint64_t gpa, std::uint64_t pages, std::uint32_t streams);

  // Round 0: every page of the data extents of `ram`'s memory file.
  PerStream first_round(const kvm::GuestRegion& ram);
  std::uint64_t allocated() const { return allocated_; }

  // The log to harvest into after a pre-copy round (emptied first).
  kvm::DirtyLog& harvest_log() {
    dirty_.clear();
    return dirty_;
  }
  // After that harvest: what the policy is told about it.
  struct Harvest {
    std::uint64_t dirty_pages = 0;    // found dirty now
    std::uint64_t held_only = 0;      // held back earlier and not dirty again: still unsent
    std::uint64_t hot_set_pages = 0;  // hot now plus held_only: what holding back would hold
  };
  Harvest observe();
  // Hot pages held out of the round about to start.
  std::uint64_t withheld() const { return held_.count(); }
  // The next pre-copy round: everything still unsent, hot pages held back
  // when the policy can afford them in the final round.
  PerStream next_round(bool hold_back_hot);

  // The final harvest (with the VM paused) adds to the last one, which no
  // round has sent yet.
  kvm::DirtyLog& final_log() { return dirty_; }
  // The final round: that, plus every held page. held_final: how many were held.
  PerStream final_round(std::uint64_t& held_final);

  // Records a round's pages as sent; returns how many had been sent before.
  std::uint64_t record_sent(const PerStream& round);

 private:
  PerStream split() const;
  std::uint32_t slot_;
  std::uint32_t streams_;
  std::uint64_t allocated_ = 0;
  kvm::DirtyLog dirty_, held_;
  kvm::DirtyBitmap prev_harvest_, hot_;
  std::vector<std::uint64_t> sent_before_;  // bitmap: pages sent at least once
};

}  // namespace ferry::migration

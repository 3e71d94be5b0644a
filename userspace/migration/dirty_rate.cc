#include "userspace/migration/dirty_rate.hh"

#include <thread>

#include "kvm/dirty_tracker.hh"
#include "kvm/machine.hh"

namespace ferry::migration {

Result<DirtyRateResult> measure_dirty_rate(kvm::Machine& m, const DirtyRateOptions& opts) {
  if (opts.duration.count() <= 0 || opts.harvest.count() <= 0) return fail("dirty-rate: duration and harvest interval must be positive");
  if (m.dirty_tracking()) return fail("dirty-rate: dirty logging is already on (a migration or another measurement owns it)");
  if (m.status().state != kvm::RunState::kRunning) return fail("dirty-rate: the VM is not running");
  std::vector<kvm::TrackedSlot> slots;
  for (const auto* r : m.regions()) slots.push_back({r->slot(), r->gpa(), r->pages()});
  if (auto ok = m.start_dirty_tracking(); !ok) return std::unexpected(std::move(ok.error()).context("dirty-rate"));

  DirtyRateResult out;
  out.backend = m.dirty_backend() == kvm::DirtyBackend::kRing ? "ring" : "bitmap";
  const auto per_vcpu_start = m.dirtied_per_vcpu();
  kvm::DirtyLog harvest(slots), seen(slots);
  const auto t0 = std::chrono::steady_clock::now();
  const auto end = t0 + opts.duration;
  Status failed;
  // Harvest on a schedule, not after sleeping a fixed time: a slow harvest
  // must not stretch the measurement.
  for (auto next = t0 + opts.harvest;; next += opts.harvest) {
    std::this_thread::sleep_until(std::min(next, end));
    harvest.clear();
    if (auto ok = m.harvest_dirty(harvest); !ok) {
      failed = std::unexpected(std::move(ok.error()).context("dirty-rate: harvest"));
      break;
    }
    ++out.harvests;
    out.harvested_pages += harvest.count();
    seen.merge(harvest);
    if (std::chrono::steady_clock::now() >= end) break;
  }
  out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  out.distinct_pages = seen.count();
  const auto per_vcpu_end = m.dirtied_per_vcpu();
  for (std::size_t i = 0; i < per_vcpu_end.size(); ++i)
    out.per_vcpu.push_back(per_vcpu_end[i] - (i < per_vcpu_start.size() ? per_vcpu_start[i] : 0));
  // Logging costs the guest a write fault per page per harvest: off again.
  if (auto ok = m.stop_dirty_tracking(); !ok && failed) failed = std::unexpected(std::move(ok.error()).context("dirty-rate"));
  if (!failed) return std::unexpected(std::move(failed).error());
  return out;
}

}  // namespace ferry::migration

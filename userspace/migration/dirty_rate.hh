#pragma once
// Measures how fast a running VM dirties its memory, from userspace: turn on
// KVM dirty logging, harvest every `harvest` interval for `duration`, turn it
// off. The equivalent of QEMU's calc-dirty-rate.
//
// It is the migration policy's fallback view (what the engine itself sees
// between rounds) and the way an operator turns dirty logging on without
// migrating, which is when `ferry trace` shows a VM's dirtying in the kernel.
#include <chrono>
#include <cstdint>
#include <vector>

#include "userspace/base/error.hh"

namespace ferry::kvm {
class Machine;
}

namespace ferry::migration {

struct DirtyRateOptions {
  std::chrono::milliseconds duration{1000};
  std::chrono::milliseconds harvest{100};
};

struct DirtyRateResult {
  double seconds = 0;                 // measured wall time
  std::uint64_t harvested_pages = 0;  // sum over harvests (a page counts once per harvest)
  std::uint64_t distinct_pages = 0;   // the working set: pages dirtied at least once
  std::uint32_t harvests = 0;
  std::vector<std::uint64_t> per_vcpu;  // harvested pages per vCPU (dirty ring only; empty with the bitmap)
  const char* backend = "";           // "ring" or "bitmap"

  double pages_per_s() const { return seconds > 0 ? static_cast<double>(harvested_pages) / seconds : 0; }
};

// Blocks for opts.duration. Fails (and leaves logging off) when dirty
// logging is already on (a migration owns it) or the VM is not running.
Result<DirtyRateResult> measure_dirty_rate(kvm::Machine& m, const DirtyRateOptions& opts);

}  // namespace ferry::migration

#pragma once
// The dirty-ring self-test: a real VM runs a few real-mode instructions that
// write chosen pages, and the ring must report exactly those pages. It is
// what `ferry demo` shows until migration exists, and what the KVM smoke
// test asserts on. Callers judge the result; this code only reports.
#include <cstdint>
#include <string>
#include <vector>

#include "userspace/base/error.hh"
#include "kvm/dirty_ring.hh"
#include "kvm/vm.hh"

namespace ferry::kvm {

struct DirtyRingSelftestOptions {
  std::string kvm_path = "/dev/kvm";
  // One entry per round: the guest page numbers (gfns) the guest writes in
  // that round. Real mode reaches 1 MiB, and gfns 0..kCodePages-1 hold code,
  // so valid gfns are kCodePages..255.
  std::vector<std::vector<std::uint64_t>> rounds;
  // 0 = the smallest ring this host accepts (4 KiB on AMD/PVM, 16 KiB with
  // Intel PML), for rounds that must overflow it.
  std::uint32_t ring_bytes = 64 * 1024;
};

struct DirtyRingRound {
  std::vector<std::uint64_t> written;  // what the guest was told to write
  std::vector<DirtyGfn> reported;      // what the ring reported, in order (slot, offset)
  std::uint32_t harvested = 0;         // entries harvested from the ring
  std::uint32_t reset = 0;             // what KVM_RESET_DIRTY_RINGS returned
  std::uint32_t ring_full_exits = 0;   // KVM_EXIT_DIRTY_RING_FULL seen
  bool memory_matches = false;         // host view shows every guest write
};

struct DirtyRingSelftestReport {
  int api_version = 0;
  DirtyRingMode mode = DirtyRingMode::kOff;
  std::uint32_t ring_entries = 0;
  std::vector<DirtyRingRound> rounds;
  double elapsed_ms = 0;
};

// Memory layout: gfns 0..7 are a code slot WITHOUT dirty logging (one code
// page per round); gfns 8..255 are the data slot, logged. Keeping code out
// of the logged slot matters: under nested SVM emulated by QEMU/TCG, an
// instruction fetch from a fresh page is reported dirty, which is harmless
// for pre-copy (a page sent twice) but would blur a test of exactness.
inline constexpr std::uint64_t kSelftestCodePages = 8;
inline constexpr std::uint64_t kSelftestMemoryBytes = 1 << 20;
inline constexpr std::uint32_t kSelftestCodeSlot = 0;
inline constexpr std::uint32_t kSelftestDataSlot = 1;

// The guest page number a ring entry of the data slot names.
inline std::uint64_t selftest_gfn(const DirtyGfn& g) { return kSelftestCodePages + g.offset; }

Result<DirtyRingSelftestReport> run_dirty_ring_selftest(const DirtyRingSelftestOptions& opts);

std::string_view dirty_ring_mode_name(DirtyRingMode m);

}  // namespace ferry::kvm

#pragma once
// Loader for dirty_pages.bpf.c: which vCPU threads dirty how many guest
// pages, and which pages, measured inside KVM by tracepoints rather than
// by harvesting (so it costs the VMM nothing and works for any VMM).
//
//   ring  kvm:kvm_dirty_ring_push   VMs using the dirty ring
//   wp    kvmmmu:fast_page_fault    a write un-protecting a page (bitmap
//                                   VMs, and ring VMs underneath)
//
// Counting happens in the kernel; this class only reads the totals.
#include <sys/types.h>

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "userspace/base/error.hh"
#include "bpf/dirty_pages.h"

struct dirty_pages_bpf;  // generated skeleton (dirty_pages.skel.h)
struct ring_buffer;      // libbpf

namespace ferry::bpf {

enum class DirtySource : std::uint32_t {
  kRing = DIRTY_SOURCE_RING,
  kWriteProtect = DIRTY_SOURCE_WP,
};
std::string_view dirty_source_name(DirtySource s);  // "ring", "wp"

// Cumulative since the tracer attached, summed over CPUs.
struct VcpuDirtyCount {
  pid_t tgid = 0;  // in the caller's pid namespace
  pid_t tid = 0;   // the vCPU thread
  // ring: the vCPU's index (creation order); wp: its KVM vcpu_id (what
  // KVM_CREATE_VCPU was given). The same number in Ferry.
  std::uint32_t vcpu = 0;
  DirtySource source = DirtySource::kRing;
  std::uint64_t events = 0;
  friend bool operator==(const VcpuDirtyCount&, const VcpuDirtyCount&) = default;
};

// Sum of `events` for one process and source.
std::uint64_t total_events(std::span<const VcpuDirtyCount> counts, pid_t tgid, DirtySource source);

// The source that counts `tgid`'s writes: the ring once it has ring events,
// else write-protect faults. Never both: a ring VM on AMD fires the two for
// the same write (when the tracer counts faults under the ring at all).
DirtySource counting_source(std::span<const VcpuDirtyCount> counts, pid_t tgid);

inline constexpr std::uint32_t kNoSlot = DIRTY_SLOT_NONE;

struct PageHeat {
  std::uint32_t slot = 0;  // as_id << 16 | slot; kNoSlot for wp pages
  std::uint64_t page = 0;  // offset in the slot; wp: address >> 12
  std::uint64_t count = 0; // dirty events since the page entered the map
  std::uint64_t first_seen_ns = 0;  // CLOCK_MONOTONIC, see now_ns()
  std::uint64_t last_seen_ns = 0;
  friend bool operator==(const PageHeat&, const PageHeat&) = default;
};

// One process's pages as the page map holds them. Per-page event counts
// are cumulative (the map keeps no history), so how often pages were
// re-dirtied within a window comes from two vcpu_counts() readings.
struct PageSummary {
  std::uint64_t tracked = 0;    // distinct pages in the map (evicted ones excluded)
  std::uint64_t in_window = 0;  // of those, last dirtied in [now - window, now]
  // The in-window pages with the highest counts, highest first (ties by
  // slot, page): at most top_n of them.
  std::vector<PageHeat> hottest;

  // events_in_window / in_window: with the ring, the average number of
  // harvest cycles in which a page of the working set was dirty again.
  double redirty_ratio(std::uint64_t events_in_window) const;
};

// A vCPU thread's first dirty event from a source (from the ring buffer):
// how `--all` learns of a VM that just started dirtying memory.
struct FirstDirty {
  pid_t tgid = 0;
  pid_t tid = 0;
  std::uint32_t vcpu = 0;
  DirtySource source = DirtySource::kRing;
  std::uint64_t ts_ns = 0;
};

// What the kernel side could not record (all zero in a healthy run).
struct DirtyDrops {
  std::uint64_t vcpu_map_full = 0;  // vCPU counts lost: more keys than DIRTY_VCPU_ENTRIES
  std::uint64_t page_insert = 0;    // page events lost: LRU insert failed
  std::uint64_t events_full = 0;    // FirstDirty records lost: ring buffer full
};

// One tracepoint and whether it is attached (else why not).
struct ProbeState {
  std::string tracepoint;  // "category/name"
  bool attached = false;
  std::string error;
};

class DirtyTracer {
 public:
  struct Options {
    // Only this process (as getpid() returns it in the caller's pid
    // namespace); nullopt traces every process (`ferry trace --all`).
    std::optional<pid_t> tgid;
    // A thread that pushes to a dirty ring also takes the write faults
    // underneath (kvm-amd): by default they are not counted twice.
    bool count_wp_under_ring = false;
    // Per-page counts (pages(): hot pages, `ferry trace`). Their LRU map is
    // preallocated (26 MiB, zeroed and linked at load: seconds under
    // emulation) and updated on every dirtying; a caller that wants only
    // the per-vCPU rates (the migration policy) turns it off, and pages()
    // then reports no pages.
    bool count_pages = true;
  };

  // Loads both programs and attaches each tracepoint this kernel has. One
  // missing tracepoint is reported by probe(), not an error; none at all is.
  static Result<DirtyTracer> open(Options options);

  const ProbeState& probe(DirtySource s) const { return probes_[static_cast<std::size_t>(s)]; }
  bool attached(DirtySource s) const { return probe(s).attached; }

  // Per {tgid, tid, vcpu, source}, sorted by tgid, source, vcpu, tid.
  Result<std::vector<VcpuDirtyCount>> vcpu_counts() const;

  // `tgid`'s pages as one source saw them (a ring VM shows its pages under
  // both when KVM write-protects for the ring too: never add the two). The
  // window is (now_ns - window_ns, now_ns] on the now_ns() clock; top_n =
  // SIZE_MAX returns every page in the window.
  Result<PageSummary> pages(pid_t tgid, DirtySource source, std::uint64_t now_ns, std::uint64_t window_ns,
                            std::size_t top_n) const;

  // FirstDirty records that arrived, waiting up to `timeout` for the first.
  Result<std::vector<FirstDirty>> poll_first_dirty(std::chrono::milliseconds timeout);

  Result<DirtyDrops> drops() const;

  // CLOCK_MONOTONIC in ns: the clock of bpf_ktime_get_ns() and so of the
  // page map's timestamps.
  static std::uint64_t now_ns();

  DirtyTracer(DirtyTracer&&) noexcept = default;
  DirtyTracer& operator=(DirtyTracer&&) noexcept = default;
  DirtyTracer(const DirtyTracer&) = delete;
  DirtyTracer& operator=(const DirtyTracer&) = delete;
  ~DirtyTracer();

 private:
  struct SkeletonDeleter {
    void operator()(dirty_pages_bpf* skel) const;
  };
  struct RingBufferDeleter {
    void operator()(ring_buffer* rb) const;
  };
  DirtyTracer() = default;
  Status loaded(std::string_view what) const;

  // Members are destroyed in reverse: the ring buffer (which maps one of
  // the skeleton's maps) goes first, then the skeleton (links, then maps
  // and programs).
  std::unique_ptr<dirty_pages_bpf, SkeletonDeleter> skel_;
  std::unique_ptr<ring_buffer, RingBufferDeleter> events_;
  // Where the ring buffer callback appends; on the heap so its address
  // (libbpf's callback context) survives moves of the tracer.
  std::unique_ptr<std::vector<FirstDirty>> pending_;
  std::array<ProbeState, 2> probes_;
  int cpus_ = 0;  // possible CPUs: per-CPU values come as one per CPU
};

}  // namespace ferry::bpf

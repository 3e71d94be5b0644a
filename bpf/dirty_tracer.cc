#include "bpf/dirty_tracer.hh"

#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string_view>
#include <tuple>
#include <utility>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "bpf/libbpf_log.hh"
#include "bpf/load_errors.hh"
#include "dirty_pages.skel.h"

namespace ferry::bpf {
namespace {

constexpr std::string_view kProgram = "dirty_pages";
// The inode of the initial pid namespace (PROC_PID_INIT_INO in the
// kernel's include/linux/proc_ns.h, fixed since Linux 3.8).
constexpr ino_t kInitPidNsIno = 0xEFFFFFFCu;
// Keys per batch lookup: a few syscalls for a full page map.
constexpr std::uint32_t kBatch = 4096;

constexpr const char* kTracepoints[] = {
    DIRTY_TP_RING_CATEGORY "/" DIRTY_TP_RING_NAME,
    DIRTY_TP_WP_CATEGORY "/" DIRTY_TP_WP_NAME,
};

void append_first_dirty(std::vector<FirstDirty>& out, const dirty_first_event& e) {
  out.push_back(FirstDirty{.tgid = static_cast<pid_t>(e.key.tgid),
                           .tid = static_cast<pid_t>(e.key.tid),
                           .vcpu = e.key.vcpu,
                           .source = static_cast<DirtySource>(e.key.source),
                           .ts_ns = e.ts_ns});
}

int on_first_dirty(void* ctx, void* data, std::size_t size) {
  if (size < sizeof(dirty_first_event)) return 0;
  dirty_first_event e;
  std::memcpy(&e, data, sizeof e);
  append_first_dirty(*static_cast<std::vector<FirstDirty>*>(ctx), e);
  return 0;
}

// Reads every entry of a hash map with BPF_MAP_LOOKUP_BATCH, which walks
// bucket by bucket: unlike get_next_key it cannot restart from the top
// when the kernel evicts the key it stands on. `value_bytes` is the whole
// value of one key (for per-CPU maps, one rounded value per CPU).
template <class Key, class F>
Status for_each_entry(const bpf_map* map, std::size_t value_bytes, F&& f) {
  std::uint32_t batch = kBatch;
  std::vector<Key> keys(batch);
  std::vector<std::byte> values(batch * value_bytes);
  // The cursor is the next bucket: a u32 for hash maps.
  std::uint32_t in = 0, out = 0;
  bool first = true;
  LIBBPF_OPTS(bpf_map_batch_opts, opts);
  for (;;) {
    std::uint32_t count = batch;
    const int rc = bpf_map_lookup_batch(bpf_map__fd(map), first ? nullptr : &in, &out, keys.data(),
                                        values.data(), &count, &opts);
    const int err = rc < 0 ? -rc : 0;
    if (err == ENOSPC && count == 0) {
      // One bucket holds more keys than a batch: retry it with room.
      batch *= 2;
      keys.resize(batch);
      values.resize(batch * value_bytes);
      continue;
    }
    if (err != 0 && err != ENOENT) {
      return std::unexpected(sys_error(fmt::format("read map {} of {}", bpf_map__name(map), kProgram), err));
    }
    for (std::uint32_t i = 0; i < count; ++i) f(keys[i], values.data() + i * value_bytes);
    if (err == ENOENT) return {};  // past the last bucket
    in = out;
    first = false;
  }
}

}  // namespace

std::string_view dirty_source_name(DirtySource s) {
  switch (s) {
    case DirtySource::kRing: return "ring";
    case DirtySource::kWriteProtect: return "wp";
  }
  return "?";
}

std::uint64_t total_events(std::span<const VcpuDirtyCount> counts, pid_t tgid, DirtySource source) {
  std::uint64_t n = 0;
  for (const auto& c : counts)
    if (c.tgid == tgid && c.source == source) n += c.events;
  return n;
}

DirtySource counting_source(std::span<const VcpuDirtyCount> counts, pid_t tgid) {
  return total_events(counts, tgid, DirtySource::kRing) > 0 ? DirtySource::kRing : DirtySource::kWriteProtect;
}

double PageSummary::redirty_ratio(std::uint64_t events_in_window) const {
  return in_window == 0 ? 0.0 : static_cast<double>(events_in_window) / static_cast<double>(in_window);
}

void DirtyTracer::SkeletonDeleter::operator()(dirty_pages_bpf* skel) const { dirty_pages_bpf__destroy(skel); }
void DirtyTracer::RingBufferDeleter::operator()(ring_buffer* rb) const { ring_buffer__free(rb); }
DirtyTracer::~DirtyTracer() = default;

std::uint64_t DirtyTracer::now_ns() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000'000ull + static_cast<std::uint64_t>(ts.tv_nsec);
}

Result<DirtyTracer> DirtyTracer::open(Options options) {
  install_libbpf_logging();
  if (options.tgid && *options.tgid <= 0) {
    return fail("open {}: target tgid {} is not a process id", kProgram, *options.tgid);
  }
  // Tracepoint attach resolves ids through tracefs: without it nothing
  // can attach, so say how to fix that before loading anything.
  auto events = tracefs_events_dir();
  if (!events) {
    return fail("open {}: tracefs is not mounted (mount -t tracefs nodev /sys/kernel/tracing)", kProgram);
  }
  struct stat pidns {};
  if (::stat("/proc/self/ns/pid", &pidns) != 0) {
    const int e = errno;
    return std::unexpected(sys_error(fmt::format("open {}: stat /proc/self/ns/pid", kProgram), e));
  }

  DirtyTracer t;
  t.skel_.reset(dirty_pages_bpf__open());
  if (!t.skel_) return std::unexpected(load_error(kProgram, "open", errno));
  auto* skel = t.skel_.get();
  skel->rodata->target_tgid = options.tgid ? static_cast<__u32>(*options.tgid) : 0;
  skel->rodata->wp_under_ring = options.count_wp_under_ring ? 1 : 0;
  skel->rodata->count_pages = options.count_pages ? 1 : 0;
  if (!options.count_pages) {
    if (int err = bpf_map__set_max_entries(skel->maps.pages, 1); err != 0)
      return std::unexpected(load_error(kProgram, "size the pages map", -err));
  }
  skel->rodata->use_global_ids = pidns.st_ino == kInitPidNsIno;
  skel->rodata->pidns_dev = pidns.st_dev;
  skel->rodata->pidns_ino = pidns.st_ino;

  // A tracepoint this kernel lacks (kvm not loaded, a kernel without dirty
  // rings or without KVM's x86 MMU) must not stop the other one: its
  // program is not loaded, which also skips its CO-RE relocations against
  // types that this kernel's BTF then lacks too.
  bpf_program* progs[] = {skel->progs.on_ring_push, skel->progs.on_fast_page_fault};
  bool any = false;
  for (std::size_t i = 0; i < 2; ++i) {
    t.probes_[i].tracepoint = kTracepoints[i];
    if (::access(fmt::format("{}/{}", *events, kTracepoints[i]).c_str(), F_OK) == 0) {
      any = true;
      continue;
    }
    t.probes_[i].error = fmt::format("this kernel has no tracepoint {} (is KVM loaded? modprobe kvm)", kTracepoints[i]);
    bpf_program__set_autoload(progs[i], false);
  }
  if (!any) return fail("open {}: {}; {}", kProgram, t.probes_[0].error, t.probes_[1].error);

  if (int err = dirty_pages_bpf__load(skel); err != 0) return std::unexpected(load_error(kProgram, "load", -err));

  bpf_link** links[] = {&skel->links.on_ring_push, &skel->links.on_fast_page_fault};
  bool attached = false;
  for (std::size_t i = 0; i < 2; ++i) {
    auto& p = t.probes_[i];
    if (!p.error.empty()) continue;
    // Kept in the skeleton's links, so destroy() detaches it.
    *links[i] = bpf_program__attach(progs[i]);
    if (*links[i] == nullptr) {
      const int e = errno;
      p.error = attach_error(kProgram, p.tracepoint, e).what();
      continue;
    }
    p.attached = true;
    attached = true;
  }
  for (const auto& p : t.probes_)
    if (!p.attached) spdlog::info("{}: not tracing {}: {}", kProgram, p.tracepoint, p.error);
  if (!attached) return fail("open {}: {}; {}", kProgram, t.probes_[0].error, t.probes_[1].error);

  t.pending_ = std::make_unique<std::vector<FirstDirty>>();
  t.events_.reset(ring_buffer__new(bpf_map__fd(skel->maps.first_events), on_first_dirty, t.pending_.get(), nullptr));
  if (!t.events_) {
    const int e = errno;
    return std::unexpected(Error(fmt::format("open {}: ring buffer", kProgram), e));
  }
  const int cpus = libbpf_num_possible_cpus();
  if (cpus <= 0) return std::unexpected(Error(fmt::format("open {}: count possible CPUs", kProgram), -cpus));
  t.cpus_ = cpus;
  return t;
}

Status DirtyTracer::loaded(std::string_view what) const {
  if (!skel_) return fail("{} of {}: the tracer is not open", what, kProgram);
  return {};
}

Result<std::vector<VcpuDirtyCount>> DirtyTracer::vcpu_counts() const {
  if (auto ok = loaded("vCPU counts"); !ok) return std::unexpected(ok.error());
  // Per-CPU values come one per possible CPU, each rounded up to 8 bytes.
  constexpr std::size_t kStride = (sizeof(dirty_vcpu_value) + 7) / 8 * 8;
  std::vector<VcpuDirtyCount> out;
  auto ok = for_each_entry<dirty_vcpu_key>(
      skel_->maps.vcpu_counts, kStride * static_cast<std::size_t>(cpus_),
      [&](const dirty_vcpu_key& k, const std::byte* v) {
        VcpuDirtyCount c{.tgid = static_cast<pid_t>(k.tgid),
                         .tid = static_cast<pid_t>(k.tid),
                         .vcpu = k.vcpu,
                         .source = static_cast<DirtySource>(k.source)};
        for (int cpu = 0; cpu < cpus_; ++cpu) {
          dirty_vcpu_value one;
          std::memcpy(&one, v + static_cast<std::size_t>(cpu) * kStride, sizeof one);
          c.events += one.events;
        }
        out.push_back(c);
      });
  if (!ok) return std::unexpected(ok.error());
  std::sort(out.begin(), out.end(), [](const VcpuDirtyCount& a, const VcpuDirtyCount& b) {
    return std::tie(a.tgid, a.source, a.vcpu, a.tid) < std::tie(b.tgid, b.source, b.vcpu, b.tid);
  });
  return out;
}

Result<PageSummary> DirtyTracer::pages(pid_t tgid, DirtySource source, std::uint64_t now_ns,
                                       std::uint64_t window_ns, std::size_t top_n) const {
  if (auto ok = loaded("pages"); !ok) return std::unexpected(ok.error());
  const std::uint64_t since = now_ns > window_ns ? now_ns - window_ns : 0;
  PageSummary s;
  std::vector<PageHeat> recent;
  auto ok = for_each_entry<dirty_page_key>(
      skel_->maps.pages, sizeof(dirty_page_value), [&](const dirty_page_key& k, const std::byte* v) {
        // Write-protect faults name no slot; ring pushes always do.
        const auto from = k.slot == DIRTY_SLOT_NONE ? DirtySource::kWriteProtect : DirtySource::kRing;
        if (k.tgid != static_cast<__u32>(tgid) || from != source) return;
        dirty_page_value p;
        std::memcpy(&p, v, sizeof p);
        ++s.tracked;
        // Strictly after `since`; pages dirtied after now_ns (the map is
        // read after the caller took the time) count as in the window.
        if (p.last_seen_ns <= since) return;
        recent.push_back(PageHeat{.slot = k.slot,
                                  .page = k.page,
                                  .count = p.count,
                                  .first_seen_ns = p.first_seen_ns,
                                  .last_seen_ns = p.last_seen_ns});
      });
  if (!ok) return std::unexpected(ok.error());
  s.in_window = recent.size();
  const std::size_t n = std::min(top_n, recent.size());
  auto hotter = [](const PageHeat& a, const PageHeat& b) {
    return std::tie(b.count, a.slot, a.page) < std::tie(a.count, b.slot, b.page);
  };
  std::partial_sort(recent.begin(), recent.begin() + static_cast<std::ptrdiff_t>(n), recent.end(), hotter);
  recent.resize(n);
  s.hottest = std::move(recent);
  return s;
}

Result<std::vector<FirstDirty>> DirtyTracer::poll_first_dirty(std::chrono::milliseconds timeout) {
  if (auto ok = loaded("first-dirty events"); !ok) return std::unexpected(ok.error());
  const int rc = ring_buffer__poll(events_.get(), static_cast<int>(timeout.count()));
  if (rc < 0 && rc != -EINTR) {
    return std::unexpected(Error(fmt::format("poll the {} ring buffer", kProgram), -rc));
  }
  return std::exchange(*pending_, {});
}

Result<DirtyDrops> DirtyTracer::drops() const {
  if (auto ok = loaded("drop counters"); !ok) return std::unexpected(ok.error());
  constexpr std::size_t kStride = (sizeof(dirty_drops) + 7) / 8 * 8;
  std::vector<std::byte> values(kStride * static_cast<std::size_t>(cpus_));
  const std::uint32_t zero = 0;
  if (int rc = bpf_map_lookup_elem(bpf_map__fd(skel_->maps.drops), &zero, values.data()); rc < 0) {
    return std::unexpected(sys_error(fmt::format("read the {} drop counters", kProgram), -rc));
  }
  DirtyDrops d;
  for (int cpu = 0; cpu < cpus_; ++cpu) {
    dirty_drops one;
    std::memcpy(&one, values.data() + static_cast<std::size_t>(cpu) * kStride, sizeof one);
    d.vcpu_map_full += one.vcpu_map_full;
    d.page_insert += one.page_insert;
    d.events_full += one.events_full;
  }
  return d;
}

}  // namespace ferry::bpf

// DirtyTracer (bpf/dirty_tracer.hh) against a real guest: the built-in test
// guest dirties a known working set on 2 vCPUs while the VMM harvests its
// dirty log every 100 ms, and what the tracer counted inside KVM must agree
// with what the VMM harvested.
//
// With the dirty ring (kvm-amd in tools/kvm-sandbox) every push is one ring
// entry the VMM harvests, so the counts must match exactly, per vCPU, and
// the tracer's pages must be exactly the harvested pages. With the bitmap
// on this project's PVM hosts nothing is visible: no ring is in use, and
// PVM emits no kvmmmu:fast_page_fault for guest writes (verified by hand
// with tracefs); the test checks that the tracer still loads and attaches.
// Needs root (CAP_BPF + CAP_PERFMON) and /dev/kvm.
#include <sched.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <utility>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <gtest/gtest.h>

#include "bpf/dirty_tracer.hh"
#include "kvm/machine.hh"
#include "kvm/quirks.hh"
#include "tests/kvm/wait.hh"

namespace ferry::bpf {
namespace {

using namespace std::chrono_literals;
using kvm::DirtyBackend;
using kvm::DirtyLog;
using kvm::Machine;

constexpr std::uint64_t kPage = 4096;

bool tracefs_visible() {
  return ::access("/sys/kernel/tracing/events", F_OK) == 0 || ::access("/sys/kernel/debug/tracing/events", F_OK) == 0;
}

std::uint64_t guest_rewrites(const Machine& vm) {
  std::uint64_t n = 0;
  for (const auto& v : vm.status().per_vcpu) n += v.guest.rewrites;
  return n;
}

// Runs f in a forked child and returns what it returned ("" = passed), or
// why the child died. For tests that must change namespaces or mounts
// without touching this process.
std::string in_child(const std::function<std::string()>& f) {
  int fds[2];
  if (::pipe(fds) != 0) return std::string("pipe: ") + std::strerror(errno);
  const pid_t child = ::fork();
  if (child < 0) return std::string("fork: ") + std::strerror(errno);
  if (child == 0) {
    ::close(fds[0]);
    const std::string msg = f();
    const bool sent = ::write(fds[1], msg.data(), msg.size()) == static_cast<ssize_t>(msg.size());
    ::_exit(sent ? 0 : 3);
  }
  ::close(fds[1]);
  std::string msg;
  char buf[512];
  for (ssize_t n; (n = ::read(fds[0], buf, sizeof buf)) > 0;) msg.append(buf, static_cast<std::size_t>(n));
  ::close(fds[0]);
  int status = 0;
  ::waitpid(child, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) return msg + fmt::format(" (child status {:#x})", status);
  return msg;
}

// Runs f as pid 1 of a new pid namespace, as a VMM in a container runs.
std::string in_pid_namespace(const std::function<std::string()>& f) {
  return in_child([&]() -> std::string {
    if (::unshare(CLONE_NEWPID) != 0) return std::string("unshare(CLONE_NEWPID): ") + std::strerror(errno);
    return in_child(f);  // the first child made after unshare is the namespace's pid 1
  });
}

class DirtyTracerTest : public ::testing::Test {
 protected:
  // Tracepoints attach through tracefs. When the host has it unmounted, it
  // is mounted in a private mount namespace so the host stays untouched.
  static void SetUpTestSuite() {
    if (::geteuid() != 0 || tracefs_visible()) return;
    if (::unshare(CLONE_NEWNS) != 0 || ::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0 ||
        ::mount("nodev", "/sys/kernel/tracing", "tracefs", 0, nullptr) != 0)
      suite_error_ = std::string("mount tracefs privately: ") + std::strerror(errno);
  }

  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "needs root (CAP_BPF + CAP_PERFMON) to load BPF";
    ASSERT_TRUE(suite_error_.empty()) << suite_error_;
  }

  static inline std::string suite_error_;
};

TEST_F(DirtyTracerTest, CountsWhatTheVmmHarvestsPerVcpuAndPage) {
  // This one counts write faults under the ring too, to check their filter;
  // `all` below runs as `ferry trace` does, without them.
  auto tracer = DirtyTracer::open({.tgid = ::getpid(), .count_wp_under_ring = true});
  ASSERT_TRUE(tracer) << tracer.error().what();
  // Both kernels this runs on (6.1 in the sandbox, 6.18 natively) have both.
  EXPECT_TRUE(tracer->attached(DirtySource::kRing)) << tracer->probe(DirtySource::kRing).error;
  EXPECT_TRUE(tracer->attached(DirtySource::kWriteProtect)) << tracer->probe(DirtySource::kWriteProtect).error;
  // Another process's tracer, attached at the same time, must see none of
  // this test's VM: the tgid filter works in the kernel.
  auto other = DirtyTracer::open({.tgid = ::getppid()});
  ASSERT_TRUE(other) << other.error().what();
  // And `--all` sees it like the filtered tracer does.
  auto all = DirtyTracer::open({});
  ASSERT_TRUE(all) << all.error().what();
  // As the migration policy opens it: per-vCPU counts only, no page map.
  auto rates_only = DirtyTracer::open({.tgid = ::getpid(), .count_pages = false});
  ASSERT_TRUE(rates_only) << rates_only.error().what();

  kvm::MachineConfig config;
  config.guest.vcpus = 2;
  config.guest.working_set_mib = 2;  // 512 pages: far below a ring's 4096 entries per cycle
  config.guest.workload = FG_DIRTY;
  auto booted = Machine::boot(config, {}, {});
  ASSERT_TRUE(booted) << booted.error().what();
  Machine& vm = **booted;
  const fg_params params = vm.status().params;
  const auto& ram = vm.ram();
  ASSERT_TRUE(test::wait_until([&] { return guest_rewrites(vm) > 50; }, 120s)) << "the guest made no progress";

  // Start tracking with the vCPUs stopped, so nothing is pushed between
  // start_dirty_tracking()'s internal (discarded) harvest and t0.
  ASSERT_TRUE(vm.pause());
  auto before = tracer->vcpu_counts();
  ASSERT_TRUE(before) << before.error().what();
  EXPECT_EQ(total_events(*before, ::getpid(), DirtySource::kRing), 0u) << "ring pushes before dirty logging began";
  const std::uint64_t wp_before = total_events(*before, ::getpid(), DirtySource::kWriteProtect);
  auto all_before = all->vcpu_counts();
  ASSERT_TRUE(all_before) << all_before.error().what();
  const std::uint64_t all_wp_before = total_events(*all_before, ::getpid(), DirtySource::kWriteProtect);
  ASSERT_TRUE(vm.start_dirty_tracking());
  const auto per_vcpu_at_start = vm.dirtied_per_vcpu();
  const std::uint64_t t0 = DirtyTracer::now_ns();
  const std::uint64_t rewrites_at_start = guest_rewrites(vm);
  ASSERT_TRUE(vm.resume());

  // Harvest every 100 ms for at least 2 s, and until the guest has swept
  // its working set twice (every page dirtied in the window) or, with the
  // bitmap, dirtied anything at all (PVM runs the guest slowly).
  DirtyLog log(std::vector<kvm::TrackedSlot>{{ram.slot(), ram.gpa(), ram.pages()}});
  std::set<std::uint64_t> harvested;  // union of every harvest, as gfns
  std::uint64_t harvested_per_cycle = 0, harvests = 0;
  auto harvest = [&] {
    ASSERT_TRUE(vm.harvest_dirty(log));
    ++harvests;
    harvested_per_cycle += log.count();
    log.for_each_gpa([&](std::uint64_t gpa) { harvested.insert(gpa / kPage); });
    log.clear();
  };
  const bool ring = vm.dirty_backend() == DirtyBackend::kRing;
  const auto start = std::chrono::steady_clock::now();
  auto enough = [&] {
    if (std::chrono::steady_clock::now() - start < 2s) return false;
    return ring ? guest_rewrites(vm) - rewrites_at_start >= 2 * params.ws_pages : !harvested.empty();
  };
  while (!enough() && std::chrono::steady_clock::now() - start < 120s) {
    std::this_thread::sleep_for(100ms);
    harvest();
    if (HasFatalFailure()) return;
  }
  ASSERT_TRUE(enough()) << "the guest rewrote " << guest_rewrites(vm) - rewrites_at_start << " pages in 120 s";
  // Paused, every push has completed (the tracepoint fires on the vCPU
  // thread inside KVM_RUN), so the last harvest leaves nothing behind and
  // the comparison below is exact rather than off by in-flight pushes.
  ASSERT_TRUE(vm.pause());
  harvest();
  const std::uint64_t t_end = DirtyTracer::now_ns();

  auto counts = tracer->vcpu_counts();
  ASSERT_TRUE(counts) << counts.error().what();
  const std::uint64_t pushes = total_events(*counts, ::getpid(), DirtySource::kRing);
  const std::uint64_t wp = total_events(*counts, ::getpid(), DirtySource::kWriteProtect) - wp_before;
  constexpr auto kAll = std::numeric_limits<std::size_t>::max();
  auto pages = tracer->pages(::getpid(), DirtySource::kRing, t_end, t_end - t0, kAll);
  ASSERT_TRUE(pages) << pages.error().what();
  auto drops = tracer->drops();
  ASSERT_TRUE(drops) << drops.error().what();
  EXPECT_EQ(drops->vcpu_map_full, 0u);
  EXPECT_EQ(drops->page_insert, 0u);
  EXPECT_EQ(drops->events_full, 0u);
  auto others = other->vcpu_counts();
  ASSERT_TRUE(others) << others.error().what();
  EXPECT_TRUE(others->empty()) << "a tracer for pid " << ::getppid() << " counted " << others->size()
                               << " vCPU keys of this process";
  auto everyone = all->vcpu_counts();
  ASSERT_TRUE(everyone) << everyone.error().what();
  EXPECT_EQ(total_events(*everyone, ::getpid(), DirtySource::kRing), pushes) << "--all and the filtered tracer disagree";
  auto rates = rates_only->vcpu_counts();
  ASSERT_TRUE(rates) << rates.error().what();
  EXPECT_EQ(total_events(*rates, ::getpid(), DirtySource::kRing), pushes) << "without the page map, vCPU counts differ";
  auto no_pages = rates_only->pages(::getpid(), DirtySource::kRing, t_end, t_end - t0, kAll);
  ASSERT_TRUE(no_pages) << no_pages.error().what();
  EXPECT_EQ(no_pages->tracked, 0u) << "pages counted although count_pages is off";
  if (ring) {
    // Without count_wp_under_ring a write is counted once: at most each
    // vCPU thread's first fault (before its ring key existed) gets through.
    const std::uint64_t all_wp = total_events(*everyone, ::getpid(), DirtySource::kWriteProtect) - all_wp_before;
    EXPECT_LE(all_wp, std::uint64_t{config.guest.vcpus}) << "write faults counted again under the dirty ring";
  }

  if (!ring) {
    // Bitmap: KVM pushes nothing to a ring, and the guest did dirty pages.
    EXPECT_EQ(pushes, 0u) << "ring pushes from a VM without a dirty ring";
    EXPECT_FALSE(harvested.empty());
    if (kvm::kvm_is_pvm()) {
      EXPECT_EQ(wp, 0u) << "PVM now reports fast_page_fault for guest writes: the tracer sees bitmap VMs "
                           "on this host, so this test can check them";
      std::printf("[ note     ] dirty bitmap on PVM: the tracer loaded and attached both tracepoints, but this "
                  "host's KVM emits no dirty events for guest writes (no ring pushes, no fast_page_fault); "
                  "the VMM harvested %zu distinct pages in %llu harvests\n",
                  harvested.size(), static_cast<unsigned long long>(harvests));
    } else {
      std::printf("[ note     ] dirty bitmap: %llu write-protect faults seen, %zu distinct pages harvested\n",
                  static_cast<unsigned long long>(wp), harvested.size());
    }
    ASSERT_TRUE(vm.stop());
    return;
  }

  // Ring: each push is one entry the VMM harvested (Machine counts them
  // per vCPU from the start of tracking), attributed to the vCPU whose
  // ring it went to and to that vCPU's thread.
  const auto per_vcpu = vm.dirtied_per_vcpu();
  ASSERT_EQ(per_vcpu.size(), 2u);
  ASSERT_EQ(per_vcpu_at_start.size(), 2u);
  std::map<std::uint32_t, std::set<pid_t>> tids;
  std::map<std::uint32_t, std::uint64_t> by_vcpu;
  for (const auto& c : *counts) {
    if (c.tgid != ::getpid() || c.source != DirtySource::kRing) continue;
    tids[c.vcpu].insert(c.tid);
    by_vcpu[c.vcpu] += c.events;
    EXPECT_NE(c.tid, ::getpid()) << "vCPU " << c.vcpu << " pushed from the main thread";
  }
  ASSERT_EQ(by_vcpu.size(), 2u) << "pushes from vCPUs other than 0 and 1";
  for (std::uint32_t i = 0; i < 2; ++i) {
    EXPECT_EQ(by_vcpu[i], per_vcpu[i]) << "vCPU " << i << ": tracer vs. entries harvested from its ring";
    EXPECT_EQ(tids[i].size(), 1u) << "vCPU " << i << " pushed from several threads";
  }
  EXPECT_EQ(pushes, per_vcpu[0] + per_vcpu[1]);
  // Between two harvests a page is pushed at most once (it stays writable
  // until the ring is reset), and the VMM itself wrote nothing, so the
  // per-harvest page counts add up to the pushes as well.
  EXPECT_EQ(pushes, harvested_per_cycle);

  // Pages: exactly the harvested ones, and their counts add up.
  ASSERT_EQ(pages->hottest.size(), pages->in_window);
  EXPECT_EQ(pages->tracked, pages->in_window) << "pages dirtied before t0";
  std::set<std::uint64_t> traced;
  std::uint64_t counted = 0;
  for (const auto& p : pages->hottest) {
    EXPECT_EQ(p.slot, ram.slot());
    traced.insert(ram.gpa() / kPage + p.page);
    counted += p.count;
    EXPECT_GE(p.first_seen_ns, t0);
    EXPECT_LE(p.last_seen_ns, t_end);
    EXPECT_LE(p.first_seen_ns, p.last_seen_ns);
  }
  EXPECT_EQ(counted, pushes);
  EXPECT_TRUE(traced == harvested) << "tracer saw " << traced.size() << " pages, the VMM harvested "
                                   << harvested.size();
  for (std::size_t i = 1; i < pages->hottest.size(); ++i)
    EXPECT_GE(pages->hottest[i - 1].count, pages->hottest[i].count) << "hottest pages out of order at " << i;

  // The working set plus what else the guest writes: its generation table
  // (4 bytes a page), its status block, each vCPU's stack, and the page
  // tables it runs on (PML4, PDPT, the PD page of the low 1 GiB). Those
  // are only read, but AMD's nested paging checks a guest page-table walk
  // as a write (it may set accessed/dirty bits), and KVM write-protects
  // them again at every ring reset: they are dirty in every cycle.
  const std::uint64_t ws_first = params.ws_gpa / kPage, ws_end = ws_first + params.ws_pages;
  const std::uint64_t gen_first = params.gen_table_gpa / kPage;
  const std::uint64_t gen_end = (params.gen_table_gpa + params.ws_pages * 4 + kPage - 1) / kPage;
  const std::uint64_t stacks_first = FG_STACKS_GPA / kPage;
  const std::uint64_t stacks_end = (FG_STACKS_GPA + FG_MAX_VCPUS * FG_STACK_BYTES) / kPage;
  std::uint64_t ws_seen = 0;
  for (std::uint64_t gfn : traced) {
    if (gfn >= ws_first && gfn < ws_end) {
      ++ws_seen;
      continue;
    }
    const bool known = (gfn >= gen_first && gfn < gen_end) || gfn == FG_STATUS_GPA / kPage ||
                       (gfn >= stacks_first && gfn < stacks_end) ||
                       (gfn >= FG_PML4_GPA / kPage && gfn < FG_PARAMS_GPA / kPage);
    EXPECT_TRUE(known) << "the guest does not write gfn " << gfn;
  }
  EXPECT_EQ(ws_seen, params.ws_pages) << "working-set pages missing from the window";
  const double expected = static_cast<double>(params.ws_pages + (gen_end - gen_first) + 1 + 2 + 3);
  EXPECT_NEAR(static_cast<double>(pages->in_window), expected, 0.1 * static_cast<double>(params.ws_pages));

  // Underneath the ring, KVM write-protects the harvested pages and each
  // vCPU's first write un-protects one: on this kernel (nested kvm-amd)
  // mostly through the fast page fault path, which pushes as it fixes
  // (slow-path fixes push without that tracepoint). So wp events are some
  // of the pushes, from the same vCPU threads, on harvested pages (the
  // address is the gfn here: a TDP fault's gpa, or under shadow paging the
  // guest's identity-mapped virtual address).
  EXPECT_GT(wp, 0u) << "no write-protect faults seen: the fast_page_fault filter rejects real un-protections";
  EXPECT_LE(wp, pushes);
  std::map<std::uint32_t, std::set<pid_t>> wp_tids;
  for (const auto& c : *counts)
    if (c.tgid == ::getpid() && c.source == DirtySource::kWriteProtect) wp_tids[c.vcpu].insert(c.tid);
  EXPECT_EQ(wp_tids, tids) << "write-protect faults attributed to other vCPUs or threads than the pushes";
  // Since t0 only: the guest's first run, before tracking, faulted too.
  auto wp_pages = tracer->pages(::getpid(), DirtySource::kWriteProtect, t_end, t_end - t0, kAll);
  ASSERT_TRUE(wp_pages) << wp_pages.error().what();
  EXPECT_GT(wp_pages->in_window, 0u);
  for (const auto& p : wp_pages->hottest) {
    EXPECT_EQ(p.slot, kNoSlot);
    EXPECT_TRUE(harvested.contains(p.page)) << "write-protect fault on gfn " << p.page << ", never harvested";
  }

  // Each vCPU thread was announced once on the ring buffer, when it pushed
  // its first page.
  auto firsts = tracer->poll_first_dirty(100ms);
  ASSERT_TRUE(firsts) << firsts.error().what();
  std::map<std::uint32_t, std::set<pid_t>> announced;
  for (const auto& f : *firsts)
    if (f.tgid == ::getpid() && f.source == DirtySource::kRing) {
      EXPECT_TRUE(announced[f.vcpu].insert(f.tid).second) << "vCPU " << f.vcpu << " announced twice";
      EXPECT_GE(f.ts_ns, t0);
    }
  EXPECT_EQ(announced, tids);

  std::printf("[ figures  ] dirty ring: %llu pushes (vCPU 0: %llu, vCPU 1: %llu) = entries harvested in %llu "
              "harvests; %llu distinct pages (working set %llu), re-dirty ratio %.1f; %llu write-protect faults "
              "on %llu pages (%llu before tracking)\n",
              static_cast<unsigned long long>(pushes), static_cast<unsigned long long>(by_vcpu[0]),
              static_cast<unsigned long long>(by_vcpu[1]), static_cast<unsigned long long>(harvests),
              static_cast<unsigned long long>(pages->in_window), static_cast<unsigned long long>(params.ws_pages),
              pages->redirty_ratio(pushes), static_cast<unsigned long long>(wp),
              static_cast<unsigned long long>(wp_pages->in_window), static_cast<unsigned long long>(wp_before));
  ASSERT_TRUE(vm.stop());
}

// A VMM in a container traced from the same container: ids are the
// container's (the kernel translates them with bpf_get_ns_current_pid_tgid),
// so the filter for "pid 1" matches this VM and its vCPU threads show the
// container's small tids, not the host's.
TEST_F(DirtyTracerTest, FiltersAndCountsInTheCallersPidNamespace) {
  const std::string failure = in_pid_namespace([]() -> std::string {
    if (::getpid() != 1) return fmt::format("expected to be pid 1, am {}", ::getpid());
    auto tracer = DirtyTracer::open({.tgid = 1});
    if (!tracer) return tracer.error().what();
    kvm::MachineConfig config;
    config.guest.working_set_mib = 1;
    config.guest.workload = FG_DIRTY;
    auto vm = Machine::boot(config, {}, {});
    if (!vm) return vm.error().what();
    if (!test::wait_until([&] { return guest_rewrites(**vm) > 50; }, 120s)) return "the guest made no progress";
    if (auto ok = (*vm)->start_dirty_tracking(); !ok) return ok.error().what();
    DirtyLog log(std::vector<kvm::TrackedSlot>{{(*vm)->ram().slot(), (*vm)->ram().gpa(), (*vm)->ram().pages()}});
    for (int i = 0; i < 10; ++i) {
      std::this_thread::sleep_for(100ms);
      if (auto ok = (*vm)->harvest_dirty(log); !ok) return ok.error().what();
    }
    if (auto ok = (*vm)->pause(); !ok) return ok.error().what();
    if (auto ok = (*vm)->harvest_dirty(log); !ok) return ok.error().what();
    auto counts = tracer->vcpu_counts();
    if (!counts) return counts.error().what();
    const std::uint64_t pushes = total_events(*counts, 1, DirtySource::kRing);
    const auto per_vcpu = (*vm)->dirtied_per_vcpu();
    std::string why;
    if ((*vm)->dirty_backend() == DirtyBackend::kRing) {
      if (pushes == 0 || per_vcpu.size() != 1 || pushes != per_vcpu[0])
        why = fmt::format("counted {} pushes as pid 1, the VMM harvested {}", pushes, fmt::join(per_vcpu, "+"));
    } else if (pushes != 0) {
      why = fmt::format("{} ring pushes from a VM without a dirty ring", pushes);
    }
    for (const auto& c : *counts)
      if (c.tgid != 1 || c.tid <= 1 || c.tid > 100)
        why += fmt::format("; key tgid {} tid {}: not this namespace's vCPU thread", c.tgid, c.tid);
    (void)(*vm)->stop();
    return why;
  });
  EXPECT_EQ(failure, "");
}

TEST_F(DirtyTracerTest, OpenWithoutTracefsSaysHowToMountIt) {
  const std::string message = in_child([]() -> std::string {
    if (::unshare(CLONE_NEWNS) != 0 || ::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0)
      return std::string("private mount namespace: ") + std::strerror(errno);
    ::umount2("/sys/kernel/debug", MNT_DETACH);
    while (::umount2("/sys/kernel/tracing", MNT_DETACH) == 0) {
    }
    if (tracefs_visible()) return "tracefs could not be unmounted";
    auto tracer = DirtyTracer::open({});
    return tracer ? "opened without tracefs" : tracer.error().what();
  });
  EXPECT_NE(message.find("mount -t tracefs nodev /sys/kernel/tracing"), std::string::npos) << message;
}

TEST_F(DirtyTracerTest, OpenRefusesANonProcessTgid) {
  auto tracer = DirtyTracer::open({.tgid = 0});
  ASSERT_FALSE(tracer);
  EXPECT_NE(tracer.error().what().find("not a process id"), std::string::npos) << tracer.error().what();
}

TEST_F(DirtyTracerTest, MovedFromTracerSaysItIsNotOpen) {
  auto tracer = DirtyTracer::open({.tgid = ::getpid()});
  ASSERT_TRUE(tracer) << tracer.error().what();
  DirtyTracer owner = std::move(*tracer);
  auto counts = tracer->vcpu_counts();
  ASSERT_FALSE(counts);
  EXPECT_NE(counts.error().what().find("not open"), std::string::npos) << counts.error().what();
  EXPECT_FALSE(tracer->pages(::getpid(), DirtySource::kRing, DirtyTracer::now_ns(), 1, 1));
  auto moved = owner.vcpu_counts();
  EXPECT_TRUE(moved) << moved.error().what();
}

}  // namespace
}  // namespace ferry::bpf

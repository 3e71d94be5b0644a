// A whole VM on real KVM (kvm/machine.hh): the built-in guest dirtying its
// memory on 2 vCPUs is paused, resumed, snapshotted and restored into a
// fresh VM. The restored state must equal the captured one field by field,
// and the guest's own page verification must keep passing over thousands of
// rewrites afterwards, with heartbeats continuing its sequence.
#include <gtest/gtest.h>

#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <thread>

#include <fmt/format.h>

#include "userspace/base/io.hh"
#include "tests/temp_dir.hh"
#include "kvm/machine.hh"
#include "tests/kvm/running_clocks.hh"
#include "tests/kvm/wait.hh"

namespace ferry::kvm {
namespace {

using namespace std::chrono_literals;
using test::wait_until;

std::uint64_t total(const MachineStatus& s, std::uint64_t fg_status::*field) {
  std::uint64_t t = 0;
  for (const auto& v : s.per_vcpu) t += v.guest.*field;
  return t;
}

using test::TempDir;

MachineConfig dirty_config(bool irqchip) {
  MachineConfig c;
  c.irqchip = irqchip;
  c.guest.vcpus = 2;
  c.guest.working_set_mib = 1;  // 256 pages: every page rewritten (and verified) many times
  c.guest.workload = FG_DIRTY;
  return c;
}

class MachineSnapshot : public ::testing::TestWithParam<bool> {};

TEST_P(MachineSnapshot, RestoredVmHasExactlyTheCapturedStateAndKeepsVerifying) {
  TempDir dir;
  const std::string file = dir.path + "/vm.snap";
  auto src = Machine::boot(dirty_config(GetParam()), {}, {});
  ASSERT_TRUE(src) << src.error().what();
  auto& a = **src;
  // Every vCPU past its first pass over its half of the working set: every
  // page holds data, and every rewrite verifies the previous contents.
  ASSERT_TRUE(wait_until(
      [&] {
        const auto st = a.status();
        return st.per_vcpu[0].guest.verified > 20 && st.per_vcpu[1].guest.verified > 20;
      },
      120s))
      << "the guest made no progress";

  ASSERT_TRUE(a.pause());
  auto captured = a.capture_state();
  ASSERT_TRUE(captured) << captured.error().what();
  const auto at_snapshot = a.status();
  auto figures = a.snapshot(file);
  ASSERT_TRUE(figures) << figures.error().what();
  EXPECT_FALSE(figures->was_running);
  EXPECT_EQ(figures->file.pages, a.ram().pages());
  EXPECT_GT(figures->file.data_pages, 256u);  // at least the working set
  EXPECT_LT(figures->file.data_pages, figures->file.pages);  // zero pages left as holes

  auto snap = Snapshot::open(file);
  ASSERT_TRUE(snap) << snap.error().what();
  auto dst = Machine::restore(*snap, {}, {}, /*start_paused=*/true);
  ASSERT_TRUE(dst) << dst.error().what();
  auto& b = **dst;
  EXPECT_EQ(b.status().state, RunState::kPaused);

  // Exact round trip: every vCPU field, the irqchip and PIT, the UART, memory;
  // the running clocks (TSC, kvmclock) within bounds.
  auto restored = b.capture_state();
  ASSERT_TRUE(restored) << restored.error().what();
  ASSERT_EQ(restored->vcpus.size(), 2u);
  for (std::size_t i = 0; i < 2; ++i) {
    const auto clocks = test::running_clock_problems(captured->vcpus[i], restored->vcpus[i]);
    EXPECT_TRUE(clocks.empty()) << "vCPU " << i << ": " << fmt::format("{}", fmt::join(clocks, "\n"));
    const auto diff = vcpu_state_differences(test::without_running_clocks(captured->vcpus[i]),
                                             test::without_running_clocks(restored->vcpus[i]));
    EXPECT_TRUE(diff.empty()) << "vCPU " << i << ":\n" << fmt::format("{}", fmt::join(diff, "\n"));
    EXPECT_FALSE(captured->vcpus[i].msrs.empty());
    EXPECT_EQ(captured->vcpus[i].lapic.has_value(), GetParam());
  }
  const auto vdiff = vm_state_differences(captured->vm, restored->vm);
  EXPECT_TRUE(vdiff.empty()) << fmt::format("{}", fmt::join(vdiff, "\n"));
  EXPECT_EQ(restored->vm.irqchip.has_value(), GetParam());
  EXPECT_EQ(restored->vm.pit.has_value(), GetParam());
  // kvmclock runs while the VM exists (paused or not): it resumes from the
  // captured value and has only moved by the time this test took since.
  EXPECT_GE(restored->vm.clock.clock, captured->vm.clock.clock);
  EXPECT_LT(restored->vm.clock.clock - captured->vm.clock.clock, 60'000'000'000ull);
  EXPECT_EQ(restored->serial, captured->serial);
  ASSERT_EQ(a.ram().size(), b.ram().size());
  EXPECT_EQ(std::memcmp(a.ram().host(), b.ram().host(), a.ram().size()), 0) << "memory differs after restore";

  // Only one copy may run: the source stops for good.
  ASSERT_TRUE(a.stop());

  // The restored guest continues where it stopped: its counters start from
  // the snapshot's, its heartbeat sequence continues, and it verifies
  // thousands of rewrites of pages written before the snapshot.
  ASSERT_TRUE(b.resume());
  const auto verified0 = total(at_snapshot, &fg_status::verified);
  ASSERT_TRUE(wait_until([&] { return total(b.status(), &fg_status::verified) >= verified0 + 2000; }, 300s))
      << "restored guest stalled at " << total(b.status(), &fg_status::verified) << " verified rewrites";
  ASSERT_TRUE(wait_until([&] { return b.status().monitor.heartbeats >= 5; }, 60s)) << "no heartbeats after restore";
  const auto after = b.status();
  EXPECT_EQ(after.state, RunState::kRunning) << after.stop_reason;
  EXPECT_EQ(total(after, &fg_status::failures), 0u);
  for (std::size_t i = 0; i < 2; ++i)
    EXPECT_GE(after.per_vcpu[i].guest.rewrites, at_snapshot.per_vcpu[i].guest.rewrites) << "vCPU " << i;
  // The first heartbeat this process saw continued the guest's sequence.
  EXPECT_GT(after.monitor.last_sequence, at_snapshot.per_vcpu[0].guest.heartbeats);
  // The guest counts a heartbeat just before its port write, so a status
  // read in between sees the count one ahead of the last one received.
  EXPECT_LE(after.monitor.last_sequence, after.per_vcpu[0].guest.heartbeats);
  EXPECT_GE(after.monitor.last_sequence + 1, after.per_vcpu[0].guest.heartbeats);
  ASSERT_TRUE(b.stop()) << "a vCPU failed";
  std::printf("[ figures  ] %s: snapshot %.1f MiB (%llu of %llu pages written), %llu rewrites verified after restore\n",
              GetParam() ? "irqchip" : "no irqchip", figures->file.file_bytes / 1048576.0,
              static_cast<unsigned long long>(figures->file.data_pages),
              static_cast<unsigned long long>(figures->file.pages),
              static_cast<unsigned long long>(total(after, &fg_status::verified) - verified0));
}

INSTANTIATE_TEST_SUITE_P(Irqchip, MachineSnapshot, ::testing::Values(true, false),
                         [](const ::testing::TestParamInfo<bool>& p) { return p.param ? std::string("Irqchip") : std::string("NoIrqchip"); });

TEST(Machine, PauseStopsTheGuestAndResumeContinuesIt) {
  auto m = Machine::boot(dirty_config(true), {}, {});
  ASSERT_TRUE(m) << m.error().what();
  auto& vm = **m;
  ASSERT_TRUE(wait_until([&] { return total(vm.status(), &fg_status::rewrites) > 50; }, 120s));
  ASSERT_TRUE(vm.pause());
  EXPECT_EQ(vm.status().state, RunState::kPaused);
  const auto frozen = total(vm.status(), &fg_status::rewrites);
  std::this_thread::sleep_for(200ms);
  EXPECT_EQ(total(vm.status(), &fg_status::rewrites), frozen) << "the guest ran while paused";
  ASSERT_TRUE(vm.resume());
  ASSERT_TRUE(wait_until([&] { return total(vm.status(), &fg_status::rewrites) > frozen + 50; }, 120s))
      << "the guest did not continue after resume";
  EXPECT_EQ(total(vm.status(), &fg_status::failures), 0u);
  ASSERT_TRUE(vm.stop());
}

// Live migration's dirty tracking on a running VM: nothing is logged
// before start, the guest's writes are reported after it (and attributed
// to the vCPUs that made them when the ring is in use), and stop ends it.
TEST(Machine, DirtyTrackingReportsTheGuestsWritesWhileItRuns) {
  auto m = Machine::boot(dirty_config(true), {}, {});
  ASSERT_TRUE(m) << m.error().what();
  auto& vm = **m;
  ASSERT_TRUE(wait_until([&] { return total(vm.status(), &fg_status::rewrites) > 50; }, 120s));
  const auto* ram = vm.regions().front();
  DirtyLog log(std::vector<TrackedSlot>{{ram->slot(), ram->gpa(), ram->pages()}});
  ASSERT_TRUE(vm.start_dirty_tracking());
  ASSERT_TRUE(vm.harvest_dirty(log));
  log.clear();
  const auto before = total(vm.status(), &fg_status::rewrites);
  ASSERT_TRUE(wait_until([&] { return total(vm.status(), &fg_status::rewrites) > before + 100; }, 120s));
  ASSERT_TRUE(vm.harvest_dirty(log));
  // The guest rewrote over 100 pages of its 256-page working set (plus its
  // generation table, status and stack): that many are reported, and no
  // more than it can have touched.
  std::uint64_t low = ~0ull, high = 0;
  log.for_each_gpa([&](std::uint64_t gpa) {
    low = std::min(low, gpa);
    high = std::max(high, gpa);
  });
  EXPECT_GE(log.count(), 100u);
  EXPECT_LE(log.count(), 256u + 64u) << "pages reported from " << low << " to " << high;
  const auto per_vcpu = vm.dirtied_per_vcpu();
  if (vm.dirty_backend() == DirtyBackend::kRing) {
    ASSERT_EQ(per_vcpu.size(), 2u);
    EXPECT_GT(per_vcpu[0], 0u);
    EXPECT_GT(per_vcpu[1], 0u);
  } else {
    EXPECT_TRUE(per_vcpu.empty()) << "the bitmap cannot attribute writes to vCPUs";
  }
  ASSERT_TRUE(vm.stop_dirty_tracking());
  EXPECT_EQ(total(vm.status(), &fg_status::failures), 0u);
  ASSERT_TRUE(vm.stop());
}

// The policy's lever: one vCPU held back, the other at full speed.
TEST(Machine, ThrottlingSlowsOnlyTheChosenVcpu) {
  auto m = Machine::boot(dirty_config(true), {}, {});
  ASSERT_TRUE(m) << m.error().what();
  auto& vm = **m;
  auto rewrites = [&](int i) { return vm.status().per_vcpu[i].guest.rewrites; };
  ASSERT_TRUE(wait_until([&] { return rewrites(0) > 50 && rewrites(1) > 50; }, 120s));
  vm.set_throttle({0.0, 0.8});
  std::this_thread::sleep_for(100ms);  // the first tick takes effect
  // Windows of many throttle periods (20 ms each), whatever the guest's
  // speed: at least a second and 150 rewrites of the free vCPU.
  auto window = [&](std::uint64_t from) {
    std::this_thread::sleep_for(1s);
    return wait_until([&] { return rewrites(0) > from + 150; }, 300s);
  };
  auto a0 = rewrites(0), a1 = rewrites(1);
  ASSERT_TRUE(window(a0));
  const double fast = static_cast<double>(rewrites(0) - a0), slow = static_cast<double>(rewrites(1) - a1);
  EXPECT_LT(slow, 0.6 * fast) << "vCPU 1 held back 80% still did " << slow << " rewrites to vCPU 0's " << fast;
  const auto held = vm.throttled_time();
  EXPECT_EQ(held[0].count(), 0) << "vCPU 0 was never to be throttled";
  EXPECT_GT(held[1].count(), 0);
  // Released, it catches up to the same pace again.
  vm.set_throttle({0.0, 0.0});
  std::this_thread::sleep_for(100ms);
  a0 = rewrites(0);
  a1 = rewrites(1);
  ASSERT_TRUE(window(a0));
  EXPECT_GT(static_cast<double>(rewrites(1) - a1), 0.6 * static_cast<double>(rewrites(0) - a0));
  EXPECT_EQ(total(vm.status(), &fg_status::failures), 0u);
  ASSERT_TRUE(vm.stop());
}

TEST(Machine, AFailedSnapshotLeavesTheVmRunning) {
  auto m = Machine::boot(dirty_config(true), {}, {});
  ASSERT_TRUE(m) << m.error().what();
  auto& vm = **m;
  auto f = vm.snapshot("/nonexistent-dir/vm.snap");
  ASSERT_FALSE(f);
  EXPECT_NE(f.error().what().find("/nonexistent-dir/vm.snap"), std::string::npos) << f.error().what();
  EXPECT_EQ(vm.status().state, RunState::kRunning);
  const auto before = total(vm.status(), &fg_status::rewrites);
  ASSERT_TRUE(wait_until([&] { return total(vm.status(), &fg_status::rewrites) > before + 20; }, 120s))
      << "the VM did not keep running after a failed snapshot";
  ASSERT_TRUE(vm.stop());
}

TEST(Machine, GuestPowerOffStopsTheVmAndNotifies) {
  std::atomic<int> notified{0};
  std::string console;
  std::mutex mu;
  auto c = dirty_config(true);
  c.guest.max_rewrites = 300;
  c.guest.poweroff_when_done = true;
  auto m = Machine::boot(
      c,
      [&](std::string_view s) {
        std::lock_guard lock(mu);
        console += s;
      },
      [&] { ++notified; });
  ASSERT_TRUE(m) << m.error().what();
  ASSERT_TRUE(wait_until([&] { return notified.load() > 0; }, 300s)) << "no power-off";
  const auto s = (*m)->status();
  EXPECT_EQ(s.state, RunState::kStopped);
  EXPECT_EQ(s.stop_reason, "the guest powered off");
  EXPECT_TRUE((*m)->stop());
  EXPECT_EQ(notified.load(), 1);
  std::lock_guard lock(mu);
  EXPECT_EQ(console, "ferry test guest: 2 vCPUs, 256 pages to dirty\n");
}

TEST(Machine, RefusesASnapshotWhoseMemoryWasCorrupted) {
  TempDir dir;
  const std::string file = dir.path + "/vm.snap";
  auto m = Machine::boot(dirty_config(true), {}, {});
  ASSERT_TRUE(m) << m.error().what();
  ASSERT_TRUE(wait_until([&] { return total((*m)->status(), &fg_status::rewrites) > 50; }, 120s));
  auto f = (*m)->snapshot(file);
  ASSERT_TRUE(f) << f.error().what();
  ASSERT_TRUE((*m)->stop());
  // Flip one bit of the code page (always data, never a hole).
  auto snap = Snapshot::open(file);
  ASSERT_TRUE(snap) << snap.error().what();
  const auto off = snap->regions()[0].file_offset + FG_CODE_GPA + 100;
  FILE* fp = std::fopen(file.c_str(), "r+b");
  ASSERT_NE(fp, nullptr);
  std::fseek(fp, static_cast<long>(off), SEEK_SET);
  const int byte = std::fgetc(fp);
  std::fseek(fp, static_cast<long>(off), SEEK_SET);
  std::fputc(byte ^ 1, fp);
  std::fclose(fp);
  auto reopened = Snapshot::open(file);
  ASSERT_TRUE(reopened) << reopened.error().what();  // the state image itself is intact
  auto r = Machine::restore(*reopened, {}, {}, true);
  ASSERT_FALSE(r) << "a corrupted snapshot was restored";
  EXPECT_NE(r.error().what().find("memory of slot 0 is corrupt"), std::string::npos) << r.error().what();
}

}  // namespace
}  // namespace ferry::kvm

namespace ferry::kvm {
namespace {

// Makes sure `pages` 2 MiB huge pages are free (raising vm.nr_hugepages,
// as root), and puts the old setting back afterwards.
class HugePageReservation {
 public:
  explicit HugePageReservation(long pages) {
    old_total_ = read_long("/proc/sys/vm/nr_hugepages");
    const long free_now = meminfo("HugePages_Free");
    if (old_total_ < 0 || free_now < 0) {
      error_ = "cannot read /proc/sys/vm/nr_hugepages or HugePages_Free";
      return;
    }
    if (free_now >= pages) return;
    if (!write_long("/proc/sys/vm/nr_hugepages", old_total_ + pages - free_now)) {
      error_ = "cannot raise /proc/sys/vm/nr_hugepages (needs root)";
      return;
    }
    changed_ = true;
    if (meminfo("HugePages_Free") < pages)
      error_ = fmt::format("asked for {} free huge pages, the kernel found only {}", pages, meminfo("HugePages_Free"));
  }
  ~HugePageReservation() {
    if (changed_) write_long("/proc/sys/vm/nr_hugepages", old_total_);
  }
  const std::string& error() const { return error_; }

 private:
  static long read_long(const char* path) {
    long v = -1;
    if (FILE* f = std::fopen(path, "r")) {
      if (std::fscanf(f, "%ld", &v) != 1) v = -1;
      std::fclose(f);
    }
    return v;
  }
  static bool write_long(const char* path, long v) {
    FILE* f = std::fopen(path, "w");
    if (!f) return false;
    const bool ok = std::fprintf(f, "%ld\n", v) > 0;
    return std::fclose(f) == 0 && ok;
  }
  static long meminfo(std::string_view field) {
    const auto v = ferry::meminfo(field);
    return v ? static_cast<long>(*v) : -1;
  }
  long old_total_ = -1;
  bool changed_ = false;
  std::string error_;
};

TEST(Machine, HugetlbBackedGuestRunsSnapshotsAndRestores) {
  HugePageReservation reserve(8);  // two 6 MiB VMs exist at once below
  ASSERT_TRUE(reserve.error().empty()) << reserve.error();
  TempDir dir;
  auto c = dirty_config(true);
  c.huge_pages = HugePages::kHugetlb;
  auto src = Machine::boot(c, {}, {});
  ASSERT_TRUE(src) << src.error().what();
  // The RAM really is a hugetlbfs file of 2 MiB pages.
  struct stat st {};
  ASSERT_EQ(::fstat((*src)->ram().memfd(), &st), 0);
  EXPECT_EQ(st.st_blksize, static_cast<blksize_t>(kHugePageSize));
  EXPECT_EQ((*src)->status().huge_pages, HugePages::kHugetlb);
  ASSERT_TRUE(wait_until([&] { return total((*src)->status(), &fg_status::verified) > 100; }, 120s));
  ASSERT_TRUE((*src)->snapshot(dir.path + "/vm.snap"));
  ASSERT_TRUE((*src)->stop());
  auto snap = Snapshot::open(dir.path + "/vm.snap");
  ASSERT_TRUE(snap) << snap.error().what();
  auto dst = Machine::restore(*snap, {}, {}, false, HugePages::kHugetlb);
  ASSERT_TRUE(dst) << dst.error().what();
  const auto base = total((*dst)->status(), &fg_status::verified);
  ASSERT_TRUE(wait_until([&] { return total((*dst)->status(), &fg_status::verified) > base + 500; }, 120s));
  EXPECT_EQ(total((*dst)->status(), &fg_status::failures), 0u);
  EXPECT_TRUE((*dst)->stop());
}

}  // namespace
}  // namespace ferry::kvm

// Both dirty-tracking backends against the real kernel: two vCPUs on their own
// threads write known page sets, round after round; each harvest must report
// exactly the union of what they wrote plus what the VMM marked itself.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <set>
#include <thread>

#include "kvm/dirty_tracker.hh"
#include "kvm/exit_reason.hh"
#include "kvm/guest_memory.hh"
#include "kvm/quirks.hh"
#include "kvm/real_mode_code.hh"
#include "kvm/system.hh"
#include "kvm/vm.hh"

namespace ferry::kvm {
namespace {

constexpr std::uint64_t kCodePages = 8;    // slot 0, not logged: one code page per vCPU
constexpr std::uint64_t kTotalPages = 256;  // real mode reaches 1 MiB
constexpr std::uint32_t kVcpus = 2;

struct Rig {
  GuestRegion code;
  GuestRegion data;  // gfns kCodePages..255, slot 1, logged
  Vm vm;
  std::vector<Vcpu> vcpus;
  std::unique_ptr<DirtyTracker> tracker;
};

Result<Rig> make_rig(DirtyBackend backend) {
  auto code = GuestRegion::create(0, 0, kCodePages * kPageSize, "code");
  auto data = GuestRegion::create(1, kCodePages * kPageSize, (kTotalPages - kCodePages) * kPageSize, "data");
  if (!code || !data) return fail("guest memory");
  auto kvm = Kvm::open();
  if (!kvm) return std::unexpected(kvm.error());
  auto vm = kvm->create_vm();
  if (!vm) return std::unexpected(vm.error());
  if (backend == DirtyBackend::kRing)
    if (auto ok = vm->enable_dirty_ring(64 * 1024); !ok) return std::unexpected(ok.error());
  if (auto ok = vm->set_memory_region(*code, false); !ok) return std::unexpected(ok.error());
  if (auto ok = vm->set_memory_region(*data, true); !ok) return std::unexpected(ok.error());
  Rig rig{std::move(*code), std::move(*data), std::move(*vm), {}, nullptr};
  std::vector<DirtyRing> rings;
  for (std::uint32_t i = 0; i < kVcpus; ++i) {
    auto v = rig.vm.create_vcpu(i);
    if (!v) return std::unexpected(v.error());
    if (auto r = v->take_dirty_ring()) rings.push_back(std::move(*r));
    rig.vcpus.push_back(std::move(*v));
  }
  std::vector<TrackedSlot> slots{{1, rig.data.gpa(), rig.data.pages()}};
  auto t = backend == DirtyBackend::kRing ? make_ring_tracker(rig.vm, std::move(rings), slots)
                                          : make_bitmap_tracker(rig.vm, slots);
  if (!t) return std::unexpected(t.error());
  rig.tracker = std::move(*t);
  return rig;
}

// Runs vCPU `i` over its page list until HLT on its own thread. Ring-full
// exits are answered with a harvest into `during`, as the VMM's run loop does.
Status run_vcpu(Rig& rig, std::uint32_t i, const std::vector<std::uint64_t>& gfns, std::uint64_t round, DirtyLog& during) {
  const auto code = real_mode_write_pages(gfns, round);
  std::memcpy(rig.code.host_at(i * kPageSize), code.data(), code.size());
  if (auto ok = real_mode_enter(rig.vcpus[i], i * kPageSize); !ok) return ok;
  for (;;) {
    if (auto ok = rig.vcpus[i].run_once(); !ok) return ok;
    const auto reason = rig.vcpus[i].run().exit_reason;
    if (reason == KVM_EXIT_HLT) return {};
    if (reason == KVM_EXIT_DIRTY_RING_FULL) {
      if (auto ok = rig.tracker->harvest(during); !ok) return ok;
      continue;
    }
    return fail("vCPU {} exit {}", i, exit_reason_name(reason));
  }
}

std::set<std::uint64_t> gfns_of(const DirtyLog& log) {
  std::set<std::uint64_t> out;
  log.for_each_gpa([&](std::uint64_t gpa) { out.insert(gpa / kPageSize); });
  return out;
}

class DirtyTrackerTest : public ::testing::TestWithParam<DirtyBackend> {};

TEST_P(DirtyTrackerTest, ReportsEveryPageWrittenByEveryVcpuAcrossRounds) {
  auto rig = make_rig(GetParam());
  ASSERT_TRUE(rig) << rig.error().what();
  ASSERT_EQ(rig->tracker->backend(), GetParam());
  std::mt19937_64 rng(42);
  DirtyLog log(rig->tracker->slots());
  auto clean = rig->tracker->harvest(log);  // start clean
  ASSERT_TRUE(clean) << clean.error().what();
  EXPECT_EQ(log.count(), 0u) << "nothing ran yet";
  std::uint64_t total_checked = 0;
  for (std::uint64_t round = 0; round < 12; ++round) {
    // Random, overlapping page sets per vCPU (both may hit the same page).
    std::vector<std::vector<std::uint64_t>> sets(kVcpus);
    std::set<std::uint64_t> expected;
    for (auto& s : sets) {
      const auto n = 1 + rng() % 40;
      for (std::uint64_t k = 0; k < n; ++k) s.push_back(kCodePages + rng() % (kTotalPages - kCodePages));
      expected.insert(s.begin(), s.end());
    }
    // A page the VMM writes itself must be reported too.
    const std::uint64_t vmm_gfn = kCodePages + rng() % (kTotalPages - kCodePages);
    std::memset(rig->data.host_at(vmm_gfn * kPageSize) + 100, 0xAB, 8);
    rig->tracker->mark_vmm_write(vmm_gfn * kPageSize + 100, 8);
    expected.insert(vmm_gfn);

    DirtyLog got(rig->tracker->slots());
    Status results[kVcpus];
    std::vector<std::thread> threads;
    for (std::uint32_t i = 0; i < kVcpus; ++i)
      threads.emplace_back([&, i] { results[i] = run_vcpu(*rig, i, sets[i], round, got); });
    for (auto& t : threads) t.join();
    for (auto& r : results) ASSERT_TRUE(r) << r.error().what();
    auto h = rig->tracker->harvest(got);
    ASSERT_TRUE(h) << h.error().what();
    EXPECT_EQ(gfns_of(got), expected) << "round " << round << " backend " << dirty_backend_name(GetParam());
    total_checked += expected.size();
    // The guest really wrote what we expect to be reported.
    for (std::uint32_t i = 0; i < kVcpus; ++i)
      for (auto g : sets[i])
        EXPECT_EQ(static_cast<std::uint8_t>(*rig->data.host_at(g * kPageSize)), real_mode_marker(g, round));
  }
  EXPECT_GT(total_checked, 100u);
  // After the last harvest nothing is pending: tracking was re-armed, not left open.
  DirtyLog after(rig->tracker->slots());
  ASSERT_TRUE(rig->tracker->harvest(after));
  EXPECT_EQ(after.count(), 0u);
}

INSTANTIATE_TEST_SUITE_P(Backends, DirtyTrackerTest, ::testing::Values(DirtyBackend::kRing, DirtyBackend::kBitmap),
                         [](const ::testing::TestParamInfo<DirtyBackend>& p) { return std::string(dirty_backend_name(p.param)); });

TEST(DirtyTracker, ChosenBackendLosesNothingWhenTheGuestOutrunsTheRing) {
  // More pages than the smallest ring holds, written without any other exit.
  // With the ring, KVM must stop the vCPU with DIRTY_RING_FULL and our
  // harvest + reset must keep every page (in the sandbox: 3 exits, each
  // re-reporting the page whose store was interrupted). On hosts whose ring
  // is known to drop entries on overflow (PVM: 1280 of 1500 in most runs),
  // Ferry chooses the bitmap, and that choice must be exact.
  constexpr std::uint32_t kPages = 1500;  // > 1024 entries, the largest "smallest ring" (Intel PML)
  auto code = GuestRegion::create(0, 0, kPageSize, "code");
  auto data = GuestRegion::create(1, 16ull << 20, std::uint64_t{kPages} * kPageSize, "data");
  ASSERT_TRUE(code && data);
  auto kvm = Kvm::open();
  ASSERT_TRUE(kvm) << kvm.error().what();
  auto vm = kvm->create_vm();
  ASSERT_TRUE(vm);
  const auto backend = resolve_dirty_backend(*vm, DirtyBackend::kAuto);
  RecordProperty("backend", std::string(dirty_backend_name(backend)));
  if (backend == DirtyBackend::kRing) {
    auto ring_bytes = vm->enable_smallest_dirty_ring();
    ASSERT_TRUE(ring_bytes) << ring_bytes.error().what();
    ASSERT_LT(*ring_bytes / sizeof(kvm_dirty_gfn), kPages);
  }
  ASSERT_TRUE(vm->set_memory_region(*code, false));
  ASSERT_TRUE(vm->set_memory_region(*data, true));
  auto vcpu = vm->create_vcpu(0);
  ASSERT_TRUE(vcpu);
  std::vector<TrackedSlot> slots{{1, data->gpa(), data->pages()}};
  std::vector<DirtyRing> rings;
  if (auto r = vcpu->take_dirty_ring()) rings.push_back(std::move(*r));
  auto tracker = backend == DirtyBackend::kRing ? make_ring_tracker(*vm, std::move(rings), slots)
                                                : make_bitmap_tracker(*vm, slots);
  ASSERT_TRUE(tracker) << tracker.error().what();

  const auto prog = real_mode_write_range(static_cast<std::uint32_t>(data->gpa()), kPages, 0x5a);
  std::memcpy(code->host(), prog.data(), prog.size());
  ASSERT_TRUE(real_mode_enter(*vcpu, 0));
  DirtyLog log(slots);
  std::uint32_t ring_full_exits = 0;
  for (;;) {
    auto ok = vcpu->run_once();
    ASSERT_TRUE(ok) << ok.error().what();
    const auto reason = vcpu->run().exit_reason;
    if (reason == KVM_EXIT_HLT) break;
    ASSERT_EQ(reason, static_cast<std::uint32_t>(KVM_EXIT_DIRTY_RING_FULL)) << exit_reason_name(reason);
    ++ring_full_exits;
    auto h = (*tracker)->harvest(log);
    ASSERT_TRUE(h) << h.error().what();
  }
  auto h = (*tracker)->harvest(log);
  ASSERT_TRUE(h) << h.error().what();
  if (backend == DirtyBackend::kRing) {
    EXPECT_GE(ring_full_exits, 1u);
  }
  EXPECT_EQ(log.count(), kPages) << "a page was written but never reported (" << dirty_backend_name(backend) << ")";
  for (std::uint32_t p = 0; p < kPages; ++p) ASSERT_EQ(static_cast<std::uint8_t>(data->host()[p * kPageSize]), 0x5a);
  RecordProperty("ring_full_exits", static_cast<int>(ring_full_exits));
}

TEST(DirtyTracker, BackendsRefuseTheWrongVmMode) {
  auto kvm = Kvm::open();
  ASSERT_TRUE(kvm) << kvm.error().what();
  auto ring_vm = kvm->create_vm();
  ASSERT_TRUE(ring_vm);
  ASSERT_TRUE(ring_vm->enable_dirty_ring(64 * 1024));
  auto bitmap = make_bitmap_tracker(*ring_vm, {});
  ASSERT_FALSE(bitmap);
  EXPECT_NE(bitmap.error().message().find("uses the dirty ring"), std::string::npos) << bitmap.error().what();
  auto plain_vm = kvm->create_vm();
  ASSERT_TRUE(plain_vm);
  auto ring = make_ring_tracker(*plain_vm, {}, {});
  ASSERT_FALSE(ring);
  EXPECT_NE(ring.error().message().find("no dirty ring enabled"), std::string::npos) << ring.error().what();
  EXPECT_EQ(resolve_dirty_backend(*plain_vm, DirtyBackend::kBitmap), DirtyBackend::kBitmap);
  const bool ring_offered = plain_vm->check_extension(KVM_CAP_DIRTY_LOG_RING) > 0 ||
                            plain_vm->check_extension(KVM_CAP_DIRTY_LOG_RING_ACQ_REL) > 0;
  const bool trusted = !dirty_ring_unreliable_reason();
  EXPECT_EQ(resolve_dirty_backend(*plain_vm, DirtyBackend::kAuto),
            ring_offered && trusted ? DirtyBackend::kRing : DirtyBackend::kBitmap);
}

}  // namespace
}  // namespace ferry::kvm

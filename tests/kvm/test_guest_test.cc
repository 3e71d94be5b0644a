// The built-in test guest on real KVM: it runs in long mode on several
// vCPUs, verifies every page before rewriting it, reports heartbeats, and
// catches a page corrupted behind its back.
#include <gtest/gtest.h>

#include <cstring>
#include <mutex>
#include <string>
#include <thread>

#include <fmt/format.h>

#include "kvm/guest_memory.hh"
#include "tests/kvm/wait.hh"
#include "kvm/system.hh"
#include "kvm/test_guest.hh"
#include "kvm/vcpu_runner.hh"
#include "kvm/vm.hh"

namespace ferry::kvm {
namespace {

using namespace std::chrono_literals;

struct GuestVm {
  GuestRegion ram;
  Vm vm;
  std::vector<Vcpu> vcpus;
  std::unique_ptr<TestGuestMonitor> monitor;
  std::unique_ptr<VcpuRunner> runner;

  fg_status status(std::uint32_t cpu) const { return read_test_guest_status(ram, cpu); }
};

Result<std::unique_ptr<GuestVm>> boot(const TestGuestOptions& o, Serial* serial = nullptr) {
  auto ram = GuestRegion::create(0, 0, test_guest_min_memory(o), "ram");
  if (!ram) return std::unexpected(ram.error());
  auto kvm = Kvm::open();
  if (!kvm) return std::unexpected(kvm.error());
  auto vm = kvm->create_vm();
  if (!vm) return std::unexpected(vm.error());
  if (auto ok = vm->set_memory_region(*ram, false); !ok) return std::unexpected(ok.error());
  auto g = std::make_unique<GuestVm>(GuestVm{std::move(*ram), std::move(*vm), {}, nullptr, nullptr});
  g->vcpus.reserve(o.vcpus);
  for (std::uint32_t i = 0; i < o.vcpus; ++i) {
    auto v = g->vm.create_vcpu(i);
    if (!v) return std::unexpected(v.error());
    g->vcpus.push_back(std::move(*v));
  }
  auto khz = vcpu_tsc_khz(g->vcpus[0]);
  if (!khz) return std::unexpected(khz.error());
  if (auto ok = load_test_guest(g->ram, o, *khz); !ok) return std::unexpected(ok.error());
  for (std::uint32_t i = 0; i < o.vcpus; ++i)
    if (auto ok = enter_test_guest(g->vcpus[i], i); !ok) return std::unexpected(ok.error());
  // Power-off stops every vCPU; the runner does not exist yet, so the
  // callback goes through the GuestVm that will own it.
  auto* gp = g.get();
  g->monitor = std::make_unique<TestGuestMonitor>(g->ram, serial, [gp] { gp->runner->request_stop(); });
  std::vector<Vcpu*> ptrs;
  for (auto& v : g->vcpus) ptrs.push_back(&v);
  auto* mon = g->monitor.get();
  auto r = VcpuRunner::start(ptrs, [mon](Vcpu& v) { return mon->on_exit(v); });
  if (!r) return std::unexpected(r.error());
  g->runner = std::move(*r);
  return g;
}

using test::wait_until;

TEST(TestGuest, TwoVcpusRewriteAndVerifyTheirWorkingSet) {
  TestGuestOptions o;
  // Sized for PVM hosts, which emulate this guest instruction by instruction
  // (~15 ms per page rewrite); nested KVM in the sandbox does it in 0.1 s.
  o.vcpus = 2;
  o.working_set_mib = 1;   // 256 pages, 128 per vCPU
  o.max_rewrites = 400;    // each page written ~3 times
  auto g = boot(o);
  ASSERT_TRUE(g) << g.error().what();
  for (const auto& st : (*g)->runner->join()) ASSERT_TRUE(st) << st.error().what();
  const auto f = (*g)->monitor->figures();
  EXPECT_EQ(f.ready, 2u);
  EXPECT_EQ(f.done, 2u);
  for (std::uint32_t cpu = 0; cpu < 2; ++cpu) {
    const auto s = (*g)->status(cpu);
    EXPECT_EQ(s.rewrites, 400u) << "vCPU " << cpu;
    // Sequential: the first pass over 128 pages has nothing to verify; every
    // later write verified the page's previous contents.
    EXPECT_EQ(s.verified, 400u - 128u) << "vCPU " << cpu;
    EXPECT_EQ(s.failures, 0u) << "vCPU " << cpu;
  }
}

class TestGuestPattern : public ::testing::TestWithParam<fg_pattern> {};

TEST_P(TestGuestPattern, EveryPatternVerifiesCleanly) {
  TestGuestOptions o;
  o.working_set_mib = 1;
  o.pattern = GetParam();
  o.max_rewrites = 400;
  auto g = boot(o);
  ASSERT_TRUE(g) << g.error().what();
  for (const auto& st : (*g)->runner->join()) ASSERT_TRUE(st) << st.error().what();
  const auto s = (*g)->status(0);
  EXPECT_EQ(s.rewrites, 400u);
  EXPECT_EQ(s.failures, 0u);
  EXPECT_GT(s.verified, 0u);  // every pattern revisits pages within 400 writes of 256
  EXPECT_LT(s.verified, 400u);
}

INSTANTIATE_TEST_SUITE_P(Patterns, TestGuestPattern, ::testing::Values(FG_SEQUENTIAL, FG_RANDOM, FG_HOTCOLD));

TEST(TestGuest, HeartbeatsShowAPauseAsTheGapTheGuestSaw) {
  TestGuestOptions o;
  o.workload = FG_IDLE;
  o.working_set_mib = 1;
  auto g = boot(o);
  ASSERT_TRUE(g) << g.error().what();
  auto& mon = *(*g)->monitor;
  ASSERT_TRUE(wait_until([&] { return mon.figures().heartbeats >= 20; }, 60s)) << "no heartbeats";
  ASSERT_TRUE((*g)->runner->pause());
  std::this_thread::sleep_for(150ms);
  mon.reset_gap();
  (*g)->runner->resume();
  const auto before = mon.figures().last_sequence;
  ASSERT_TRUE(wait_until([&] { return mon.figures().last_sequence >= before + 20; }, 60s)) << "heartbeats stopped";
  const auto f = mon.figures();
  // The guest's own sequence numbers continue across the pause: it was
  // stopped, not restarted.
  EXPECT_GT(f.last_sequence, before);
  EXPECT_GE(f.max_gap, 150ms) << "the pause must show as a heartbeat gap";
  std::printf("[ figures  ] heartbeat gap across a 150 ms pause: %.1f ms\n",
              std::chrono::duration<double, std::milli>(f.max_gap).count());
  for (const auto& st : (*g)->runner->stop_and_join()) EXPECT_TRUE(st) << st.error().what();
}

TEST(TestGuest, GuestCatchesAPageCorruptedBehindItsBack) {
  TestGuestOptions o;
  o.working_set_mib = 1;  // 256 pages
  o.rate_mib_s = 4;       // ~1000 pages/s: several passes per second
  auto g = boot(o);
  ASSERT_TRUE(g) << g.error().what();
  // After one full pass every page has content to verify. Pause, and corrupt
  // one word of the page half a pass away from where the guest is (not the
  // page it may be in the middle of writing).
  ASSERT_TRUE(wait_until([&] { return (*g)->status(0).rewrites > 300; }, 60s));
  ASSERT_TRUE((*g)->runner->pause());
  const std::uint64_t victim = ((*g)->status(0).rewrites + 128) % 256;
  const std::uint64_t gpa = test_guest_min_memory(o) - 256 * kPageSize + victim * kPageSize;
  auto* word = reinterpret_cast<std::uint64_t*>((*g)->ram.host_at(gpa)) + 100;
  *word ^= 1;
  (*g)->runner->resume();
  const auto results = (*g)->runner->join();  // the guest stops itself on detection
  ASSERT_EQ(results.size(), 1u);
  ASSERT_FALSE(results[0]) << "corruption went unnoticed";
  EXPECT_NE(results[0].error().message().find(fmt::format("working-set page {} corrupt: bad checksum", victim)),
            std::string::npos)
      << results[0].error().what();
  EXPECT_EQ((*g)->status(0).failures, 1u);
}

TEST(TestGuest, PrintsOnTheSerialConsoleAndPowersOff) {
  std::mutex mu;
  std::string console;
  Serial com1([&](std::string_view s) {
    std::lock_guard lock(mu);
    console += s;
  });
  TestGuestOptions o;
  o.vcpus = 2;
  o.working_set_mib = 1;
  o.max_rewrites = 100;
  o.poweroff_when_done = true;
  auto g = boot(o, &com1);
  ASSERT_TRUE(g) << g.error().what();
  for (const auto& st : (*g)->runner->join()) ASSERT_TRUE(st) << st.error().what();
  EXPECT_TRUE((*g)->monitor->figures().powered_off);
  EXPECT_EQ((*g)->monitor->figures().done, 2u);
  std::lock_guard lock(mu);
  EXPECT_EQ(console, "ferry test guest: 2 vCPUs, 256 pages to dirty\n");
}

TEST(TestGuest, RefusesLayoutsThatDoNotFit) {
  TestGuestOptions o;
  o.working_set_mib = 64;
  auto ram = GuestRegion::create(0, 0, 16 << 20, "ram");
  ASSERT_TRUE(ram);
  auto st = load_test_guest(*ram, o, 1000000);
  ASSERT_FALSE(st);
  EXPECT_NE(st.error().message().find("64 MiB working set needs"), std::string::npos) << st.error().what();
  o.working_set_mib = 1;
  o.vcpus = 17;
  EXPECT_FALSE(load_test_guest(*ram, o, 1000000));
}

}  // namespace
}  // namespace ferry::kvm

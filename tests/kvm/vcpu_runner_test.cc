// vCPU threads against the real kernel: pause must stop every guest
// instruction until resume, over many cycles, with no lost kick.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <cstring>
#include <thread>

#include "kvm/guest_memory.hh"
#include "tests/kvm/wait.hh"
#include "kvm/real_mode_code.hh"
#include "kvm/system.hh"
#include "kvm/vcpu_runner.hh"
#include "kvm/vm.hh"

namespace ferry::kvm {
namespace {

using namespace std::chrono_literals;

constexpr std::uint64_t kCounters = 0x3000;  // one u32 counter per vCPU, 8 bytes apart

// Real mode: `inc dword [counter]; jmp back` forever, one copy per vCPU.
std::vector<std::uint8_t> counting_loop(std::uint16_t counter) {
  return {0x66, 0xFF, 0x06, static_cast<std::uint8_t>(counter), static_cast<std::uint8_t>(counter >> 8), 0xEB, 0xF9};
}

struct Machine {
  GuestRegion mem;
  Vm vm;
  std::vector<Vcpu> vcpus;
  std::uint32_t counter(std::size_t i) const {
    return std::atomic_ref<std::uint32_t>(*reinterpret_cast<std::uint32_t*>(mem.host_at(kCounters + 8 * i)))
        .load(std::memory_order_relaxed);
  }
};

// `code(i)` is placed at 0x100 * i and vCPU i starts there.
Result<Machine> make_machine(std::size_t n, const std::function<std::vector<std::uint8_t>(std::size_t)>& code) {
  auto mem = GuestRegion::create(0, 0, 64 * 1024, "ram");
  if (!mem) return std::unexpected(mem.error());
  auto kvm = Kvm::open();
  if (!kvm) return std::unexpected(kvm.error());
  auto vm = kvm->create_vm();
  if (!vm) return std::unexpected(vm.error());
  if (auto ok = vm->set_memory_region(*mem, false); !ok) return std::unexpected(ok.error());
  Machine m{std::move(*mem), std::move(*vm), {}};
  m.vcpus.reserve(n);  // the runner keeps pointers: no reallocation after start
  for (std::size_t i = 0; i < n; ++i) {
    const auto c = code(i);
    std::memcpy(m.mem.host_at(0x100 * i), c.data(), c.size());
    auto v = m.vm.create_vcpu(static_cast<std::uint32_t>(i));
    if (!v) return std::unexpected(v.error());
    if (auto ok = real_mode_enter(*v, 0x100 * i); !ok) return std::unexpected(ok.error());
    m.vcpus.push_back(std::move(*v));
  }
  return m;
}

std::vector<Vcpu*> pointers(Machine& m) {
  std::vector<Vcpu*> out;
  for (auto& v : m.vcpus) out.push_back(&v);
  return out;
}

using test::wait_until;

TEST(VcpuRunner, PauseFreezesEveryVcpuAndResumeRestartsThem) {
  constexpr std::size_t kVcpus = 2;
  auto m = make_machine(kVcpus, [](std::size_t i) { return counting_loop(static_cast<std::uint16_t>(kCounters + 8 * i)); });
  ASSERT_TRUE(m) << m.error().what();
  auto runner = VcpuRunner::start(pointers(*m), [](Vcpu&) -> Result<ExitAction> { return fail("unexpected exit"); });
  ASSERT_TRUE(runner) << runner.error().what();
  std::vector<std::uint32_t> last(kVcpus, 0);
  std::chrono::nanoseconds worst{0};
  constexpr int kCycles = 40;
  for (int cycle = 0; cycle < kCycles; ++cycle) {
    // Running: every guest makes progress.
    for (std::size_t i = 0; i < kVcpus; ++i)
      ASSERT_TRUE(wait_until([&] { return m->counter(i) != last[i]; }, 20s)) << "vCPU " << i << " cycle " << cycle;
    const auto t0 = std::chrono::steady_clock::now();
    auto ok = (*runner)->pause();
    worst = std::max(worst, std::chrono::steady_clock::now() - t0);
    ASSERT_TRUE(ok) << ok.error().what();
    ASSERT_TRUE((*runner)->paused());
    // Paused: no guest instruction runs, so no counter moves.
    for (std::size_t i = 0; i < kVcpus; ++i) last[i] = m->counter(i);
    std::this_thread::sleep_for(3ms);
    for (std::size_t i = 0; i < kVcpus; ++i) ASSERT_EQ(m->counter(i), last[i]) << "vCPU " << i << " ran while paused";
    (*runner)->resume();
  }
  std::printf("[ figures  ] %d pause cycles of %zu vCPUs; slowest pause %.3f ms\n", kCycles, kVcpus,
              std::chrono::duration<double, std::milli>(worst).count());
  for (const auto& st : (*runner)->stop_and_join()) EXPECT_TRUE(st) << st.error().what();
}

TEST(VcpuRunner, HandlerDecidesWhenAVcpuStops) {
  auto m = make_machine(2, [](std::size_t) { return std::vector<std::uint8_t>{0xF4}; });  // hlt
  ASSERT_TRUE(m) << m.error().what();
  std::atomic<int> halts{0};
  auto runner = VcpuRunner::start(pointers(*m), [&](Vcpu& v) -> Result<ExitAction> {
    if (v.run().exit_reason != KVM_EXIT_HLT) return fail("exit {}", v.run().exit_reason);
    ++halts;
    return ExitAction::kStop;
  });
  ASSERT_TRUE(runner) << runner.error().what();
  for (const auto& st : (*runner)->join()) EXPECT_TRUE(st) << st.error().what();
  EXPECT_EQ(halts.load(), 2);
  EXPECT_EQ((*runner)->exits(0), 1u);
  EXPECT_EQ((*runner)->exits(1), 1u);
}

TEST(VcpuRunner, HandlerErrorsAreReportedWithTheVcpuAndExit) {
  auto m = make_machine(1, [](std::size_t) { return std::vector<std::uint8_t>{0xF4}; });
  ASSERT_TRUE(m) << m.error().what();
  auto runner = VcpuRunner::start(pointers(*m), [](Vcpu&) -> Result<ExitAction> { return fail("device on fire"); });
  ASSERT_TRUE(runner) << runner.error().what();
  const auto results = (*runner)->join();
  ASSERT_EQ(results.size(), 1u);
  ASSERT_FALSE(results[0]);
  EXPECT_EQ(results[0].error().message(), "vCPU 0 exit HLT: device on fire");
}

TEST(VcpuRunner, PauseWithMixedLiveAndFinishedVcpus) {
  // vCPU 0 halts and ends; vCPU 1 counts forever. Pause must not wait for the
  // finished one.
  auto m = make_machine(2, [](std::size_t i) {
    return i == 0 ? std::vector<std::uint8_t>{0xF4} : counting_loop(static_cast<std::uint16_t>(kCounters + 8));
  });
  ASSERT_TRUE(m) << m.error().what();
  auto runner = VcpuRunner::start(pointers(*m), [](Vcpu&) -> Result<ExitAction> { return ExitAction::kStop; });
  ASSERT_TRUE(runner) << runner.error().what();
  ASSERT_TRUE(wait_until([&] { return (*runner)->exits(0) == 1; }, 20s));
  ASSERT_TRUE(wait_until([&] { return m->counter(1) > 0; }, 20s));
  auto ok = (*runner)->pause(10s);
  ASSERT_TRUE(ok) << ok.error().what();
  const auto c = m->counter(1);
  std::this_thread::sleep_for(3ms);
  EXPECT_EQ(m->counter(1), c);
  (*runner)->resume();
  EXPECT_TRUE(wait_until([&] { return m->counter(1) != c; }, 20s));
  for (const auto& st : (*runner)->stop_and_join()) EXPECT_TRUE(st) << st.error().what();
}

TEST(VcpuRunner, EndHandlerHearsOfVcpusThatEndByThemselvesOnly) {
  // vCPU 0 halts (kStop), vCPU 1 fails in its handler, vCPU 2 counts until
  // stopped by request: the end handler hears of 0 and 1, not of 2.
  auto m = make_machine(3, [](std::size_t i) {
    return i < 2 ? std::vector<std::uint8_t>{0xF4} : counting_loop(static_cast<std::uint16_t>(kCounters + 16));
  });
  ASSERT_TRUE(m) << m.error().what();
  std::mutex mu;
  std::vector<std::pair<std::uint32_t, bool>> ended;
  auto runner = VcpuRunner::start(
      pointers(*m),
      [](Vcpu& v) -> Result<ExitAction> {
        if (v.id() == 1) return fail("device on fire");
        return ExitAction::kStop;
      },
      false, [&](Vcpu& v, const Status& st) {
        std::lock_guard lock(mu);
        ended.emplace_back(v.id(), st.has_value());
      });
  ASSERT_TRUE(runner) << runner.error().what();
  ASSERT_TRUE(wait_until([&] { return (*runner)->live() == 1; }, 20s));
  ASSERT_TRUE(wait_until([&] { return m->counter(2) > 0; }, 20s));
  (void)(*runner)->stop_and_join();
  std::lock_guard lock(mu);
  std::sort(ended.begin(), ended.end());
  ASSERT_EQ(ended.size(), 2u);
  EXPECT_EQ(ended[0], std::make_pair(0u, true));
  EXPECT_EQ(ended[1], std::make_pair(1u, false));
}

TEST(VcpuRunner, APauseThatTimesOutIsWithdrawn) {
  // vCPU 0 is stuck in its exit handler (a device blocked on the host), so
  // it cannot acknowledge. The pause fails, and vCPU 1, which had parked,
  // must run again instead of staying frozen behind a failed pause.
  auto m = make_machine(2, [](std::size_t i) {
    return i == 0 ? std::vector<std::uint8_t>{0xF4} : counting_loop(static_cast<std::uint16_t>(kCounters + 8));
  });
  ASSERT_TRUE(m) << m.error().what();
  std::mutex mu;
  std::condition_variable cv;
  bool entered = false, release = false;
  auto runner = VcpuRunner::start(pointers(*m), [&](Vcpu&) -> Result<ExitAction> {
    std::unique_lock lock(mu);
    entered = true;
    cv.notify_all();
    cv.wait(lock, [&] { return release; });
    return ExitAction::kStop;
  });
  ASSERT_TRUE(runner) << runner.error().what();
  {
    std::unique_lock lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, 20s, [&] { return entered; }));
  }
  auto st = (*runner)->pause(100ms);
  ASSERT_FALSE(st);
  EXPECT_NE(st.error().message().find("only 1 of 2 vCPUs acknowledged"), std::string::npos) << st.error().what();
  EXPECT_FALSE((*runner)->paused());
  const auto c = m->counter(1);
  EXPECT_TRUE(wait_until([&] { return m->counter(1) != c; }, 20s)) << "vCPU 1 stayed parked after a failed pause";
  {
    std::lock_guard lock(mu);
    release = true;
    cv.notify_all();
  }
  for (const auto& r : (*runner)->stop_and_join()) EXPECT_TRUE(r) << r.error().what();
}

}  // namespace
}  // namespace ferry::kvm

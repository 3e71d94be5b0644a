#include "kvm/vcpu_runner.hh"

#include <linux/kvm.h>
#include <pthread.h>
#include <signal.h>

#include <algorithm>
#include <cerrno>

#include "userspace/base/thread_name.hh"
#include "kvm/exit_reason.hh"

namespace ferry::kvm {
namespace {

// The kick signal. Its handler does nothing: delivery alone makes KVM_RUN
// return EINTR. SA_RESTART keeps other syscalls on the vCPU thread (an exit
// handler's write(), say) from failing with EINTR; KVM_RUN is never restarted.
constexpr int kKickSignal = SIGUSR1;

void on_kick(int) {}

Status install_kick_handler() {
  static const int rc = [] {
    struct sigaction sa {};
    sa.sa_handler = on_kick;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    return ::sigaction(kKickSignal, &sa, nullptr) == 0 ? 0 : errno;
  }();
  if (rc != 0) return std::unexpected(sys_error("sigaction(SIGUSR1) for vCPU kicks", rc));
  return {};
}

void set_immediate_exit(Vcpu& v, bool on) {
  std::atomic_ref<std::uint8_t>(v.run().immediate_exit).store(on ? 1 : 0, std::memory_order_seq_cst);
}

}  // namespace

Result<std::unique_ptr<VcpuRunner>> VcpuRunner::start(std::vector<Vcpu*> vcpus, ExitHandler handler,
                                                      bool start_paused, EndHandler on_end) {
  if (vcpus.empty()) return fail("vCPU runner: no vCPUs");
  if (!handler) return fail("vCPU runner: no exit handler");
  if (auto ok = install_kick_handler(); !ok) return std::unexpected(ok.error());
  std::unique_ptr<VcpuRunner> r(new VcpuRunner(std::move(vcpus), std::move(handler), start_paused, std::move(on_end)));
  return r;
}

VcpuRunner::VcpuRunner(std::vector<Vcpu*> vcpus, ExitHandler handler, bool start_paused, EndHandler on_end)
    : handler_(std::move(handler)), on_end_(std::move(on_end)) {
  // Set before any thread exists, so each parks before its first KVM_RUN.
  pause_requested_ = start_paused;
  attention_.store(start_paused, std::memory_order_release);
  for (auto* v : vcpus) {
    auto s = std::make_unique<Slot>();
    s->vcpu = v;
    set_immediate_exit(*v, false);
    slots_.push_back(std::move(s));
  }
  std::lock_guard lock(mu_);  // threads start only once every handle is recorded
  live_ = slots_.size();
  for (auto& s : slots_) {
    s->thread = std::thread([this, slot = s.get()] { thread_main(*slot); });
    s->handle = s->thread.native_handle();
    s->alive = true;
  }
}

VcpuRunner::~VcpuRunner() {
  if (!joined_) stop_and_join();
}

void VcpuRunner::thread_main(Slot& slot) {
  Vcpu& v = *slot.vcpu;
  name_this_thread(fmt::format("vcpu{}", v.id()));
  Status result;
  bool requested = false;  // ended by request_stop, not by itself
  for (;;) {
    // A thread that reads false here just before a pause is requested is
    // still caught: the pauser sets immediate_exit before signalling, so the
    // KVM_RUN below returns at once (see kick_all).
    if (attention_.load(std::memory_order_acquire)) {
      std::unique_lock lock(mu_);
      if (pause_requested_ && !stop_requested_) {
        ++acked_;
        cv_.notify_all();
        cv_.wait(lock, [&] { return !pause_requested_ || stop_requested_; });
        --acked_;
      }
      if (stop_requested_) {
        requested = true;
        break;
      }
    }
    if (auto ok = v.run_once(); !ok) {
      result = std::unexpected(ok.error());
      break;
    }
    maybe_throttle(slot);
    const auto reason = v.run().exit_reason;
    if (reason == KVM_EXIT_INTR) continue;  // our kick (or immediate_exit): re-check the flags
    slot.exits.fetch_add(1, std::memory_order_relaxed);
    auto action = handler_(v);
    if (!action) {
      result = std::unexpected(std::move(action.error()).context(fmt::format("vCPU {} exit {}", v.id(), exit_reason_name(reason))));
      break;
    }
    if (*action == ExitAction::kStop) break;
  }
  if (!requested && on_end_) on_end_(v, result);
  std::lock_guard lock(mu_);
  slot.result = std::move(result);
  slot.alive = false;
  --live_;
  cv_.notify_all();  // a pause() waiting for acks counts live threads only
}

void VcpuRunner::kick_all() {
  // Order matters: immediate_exit first, then the signal (see the header).
  // Under mu_, so no thread can finish (and be joined) between the alive
  // check and the signal; callable from any thread, a vCPU's included.
  std::lock_guard lock(mu_);
  for (auto& s : slots_) set_immediate_exit(*s->vcpu, true);
  for (auto& s : slots_)
    if (s->alive) ::pthread_kill(s->handle, kKickSignal);
}

Status VcpuRunner::pause(std::chrono::milliseconds timeout) {
  {
    std::lock_guard lock(mu_);
    if (stop_requested_) return fail("vCPU runner: pause after stop");
    pause_requested_ = true;
    attention_.store(true, std::memory_order_release);
    cv_.notify_all();  // wakes a vCPU sleeping off its throttle share
  }
  kick_all();
  std::unique_lock lock(mu_);
  if (!cv_.wait_for(lock, timeout, [&] { return acked_ == live_; })) {
    const auto acked = acked_, live = live_;
    lock.unlock();
    resume();
    return fail("vCPU runner: only {} of {} vCPUs acknowledged the pause within {} ms", acked, live, timeout.count());
  }
  return {};
}

void VcpuRunner::resume() {
  std::lock_guard lock(mu_);
  // Every live thread is parked: clearing immediate_exit cannot race with a
  // KVM_RUN, and a later pause() sets it again before kicking.
  for (auto& s : slots_) set_immediate_exit(*s->vcpu, false);
  pause_requested_ = false;
  attention_.store(stop_requested_, std::memory_order_release);
  cv_.notify_all();
}

std::size_t VcpuRunner::live() const {
  std::lock_guard lock(mu_);
  return live_;
}

bool VcpuRunner::paused() const {
  std::lock_guard lock(mu_);
  return pause_requested_ && acked_ == live_;
}

std::vector<Status> VcpuRunner::join() {
  std::vector<Status> out;
  {
    std::lock_guard lock(mu_);
    ticker_stop_ = true;
    cv_.notify_all();
  }
  if (ticker_.joinable()) ticker_.join();
  for (auto& s : slots_)
    if (s->thread.joinable()) s->thread.join();
  joined_ = true;
  for (auto& s : slots_) out.push_back(s->result);
  return out;
}

void VcpuRunner::request_stop() {
  {
    std::lock_guard lock(mu_);
    stop_requested_ = true;
    attention_.store(true, std::memory_order_release);
    cv_.notify_all();
  }
  kick_all();
}

std::vector<Status> VcpuRunner::stop_and_join() {
  request_stop();
  return join();
}

void VcpuRunner::set_throttle(std::size_t i, double share) {
  share = std::clamp(share, 0.0, 0.95);
  slots_[i]->throttle_permille.store(static_cast<std::uint32_t>(share * 1000), std::memory_order_relaxed);
  std::lock_guard lock(mu_);
  if (share > 0 && !ticker_.joinable() && !stop_requested_) ticker_ = std::thread([this] { throttle_main(); });
}

double VcpuRunner::throttle(std::size_t i) const {
  return slots_[i]->throttle_permille.load(std::memory_order_relaxed) / 1000.0;
}

void VcpuRunner::throttle_main() {
  name_this_thread("vcpu-throttle");
  std::unique_lock lock(mu_);
  while (!ticker_stop_ && !stop_requested_) {
    // Only the signal, not immediate_exit: a tick that arrives while the
    // thread is outside KVM_RUN is not lost, because throttle_due stays set
    // until the thread's next exit.
    for (auto& s : slots_)
      if (s->alive && s->throttle_permille.load(std::memory_order_relaxed) > 0) {
        s->throttle_due.store(true, std::memory_order_release);
        ::pthread_kill(s->handle, kKickSignal);
      }
    cv_.wait_for(lock, kThrottlePeriod, [&] { return ticker_stop_ || stop_requested_; });
  }
}

void VcpuRunner::maybe_throttle(Slot& slot) {
  // Every exit passes here: a plain load first, the exchange only on a tick.
  if (!slot.throttle_due.load(std::memory_order_relaxed) || !slot.throttle_due.exchange(false, std::memory_order_acq_rel))
    return;
  const auto permille = slot.throttle_permille.load(std::memory_order_relaxed);
  if (permille == 0) return;
  const auto hold = std::chrono::duration_cast<std::chrono::nanoseconds>(kThrottlePeriod) * permille / 1000;
  const auto t0 = std::chrono::steady_clock::now();
  std::unique_lock lock(mu_);
  cv_.wait_for(lock, hold, [&] { return pause_requested_ || stop_requested_; });
  slot.throttled_ns.fetch_add(static_cast<std::uint64_t>((std::chrono::steady_clock::now() - t0).count()),
                              std::memory_order_relaxed);
}

}  // namespace ferry::kvm

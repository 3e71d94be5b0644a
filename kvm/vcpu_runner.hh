#pragma once
// Runs a VM's vCPUs, one thread each, and pauses/resumes them all promptly
// and without races.
//
// Pausing (as kvmtool and QEMU do): set kvm_run.immediate_exit, then signal
// the vCPU thread. The signal kicks a thread that is inside KVM_RUN out with
// EINTR; immediate_exit makes a thread that is just about to enter KVM_RUN
// return at once instead, so there is no window in which a kick is lost.
// Each thread then acknowledges under a mutex, and pause() returns only when
// every live vCPU has acknowledged: after it returns no guest instruction
// runs until resume().
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <pthread.h>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "userspace/base/error.hh"
#include "kvm/vcpu.hh"

namespace ferry::kvm {

enum class ExitAction { kContinue, kStop };

// Called on the vCPU's thread for every exit except the runner's own kicks
// (KVM_EXIT_INTR). Errors stop that vCPU and are reported by join().
using ExitHandler = std::function<Result<ExitAction>(Vcpu&)>;
// Called on a vCPU's thread as it ends by itself: the handler said kStop
// (ok), or the handler or KVM_RUN failed (the error). Not called for threads
// ended by request_stop().
using EndHandler = std::function<void(Vcpu&, const Status&)>;

class VcpuRunner {
 public:
  // The vCPUs must outlive the runner and stay where they are (the threads
  // hold pointers). Threads start running the guest immediately, or, with
  // start_paused, park before their first KVM_RUN until resume() (a VM
  // restored to be inspected, or held until a migration commits).
  static Result<std::unique_ptr<VcpuRunner>> start(std::vector<Vcpu*> vcpus, ExitHandler handler,
                                                   bool start_paused = false, EndHandler on_end = {});

  ~VcpuRunner();  // stops and joins
  VcpuRunner(const VcpuRunner&) = delete;
  VcpuRunner& operator=(const VcpuRunner&) = delete;

  // Kicks every vCPU out of the guest and waits until each live one has
  // acknowledged. Call pause/resume/stop from one controlling thread. On
  // timeout the pause is withdrawn (the vCPUs that parked run again), so a
  // failed pause never leaves the VM half stopped.
  Status pause(std::chrono::milliseconds timeout = std::chrono::seconds(5));
  void resume();
  bool paused() const;

  // Asks every vCPU thread to end and kicks them; does not wait. Safe to
  // call from a vCPU thread (an exit handler powering the VM off).
  void request_stop();

  // Asks every vCPU thread to end (kicking them), then waits for them.
  // Returns each vCPU's outcome: ok, or the error that stopped it.
  std::vector<Status> stop_and_join();
  // Waits for every vCPU to stop on its own (handler said kStop, or error).
  std::vector<Status> join();

  // Throttling (the switchover policy's "slow the vCPUs that dirty most",
  // like QEMU's dirty-limit and vMotion's stun): vCPU i is held out of the
  // guest for `share` (0..0.95) of each kThrottlePeriod. A ticker thread
  // kicks throttled vCPUs once per period; the vCPU thread then sleeps its
  // share (interruptibly: pause and stop still act at once). 0 = full speed.
  static constexpr std::chrono::milliseconds kThrottlePeriod{20};
  void set_throttle(std::size_t i, double share);
  double throttle(std::size_t i) const;
  std::chrono::nanoseconds throttled(std::size_t i) const {
    return std::chrono::nanoseconds(slots_[i]->throttled_ns.load(std::memory_order_relaxed));
  }

  std::uint64_t exits(std::size_t i) const { return slots_[i]->exits.load(std::memory_order_relaxed); }
  std::size_t size() const { return slots_.size(); }
  // vCPU threads that have not ended (by kStop, an error or a stop request).
  std::size_t live() const;

 private:
  struct Slot {
    Vcpu* vcpu = nullptr;
    std::thread thread;
    pthread_t handle{};  // for kicks: read without touching `thread`
    bool alive = false;  // guarded by mu_; a kick only goes to a live thread
    std::atomic<std::uint64_t> exits{0};
    std::atomic<std::uint32_t> throttle_permille{0};
    std::atomic<bool> throttle_due{false};
    std::atomic<std::uint64_t> throttled_ns{0};
    Status result;
  };

  VcpuRunner(std::vector<Vcpu*> vcpus, ExitHandler handler, bool start_paused, EndHandler on_end);
  void thread_main(Slot& slot);
  void kick_all();
  void throttle_main();
  void maybe_throttle(Slot& slot);

  ExitHandler handler_;
  EndHandler on_end_;
  std::vector<std::unique_ptr<Slot>> slots_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool pause_requested_ = false;
  bool stop_requested_ = false;
  // pause_requested_ || stop_requested_, readable without the lock: the run
  // loop checks it on every exit and takes mu_ only when it is set.
  std::atomic<bool> attention_{false};
  std::size_t acked_ = 0;  // live threads parked in the pause
  std::size_t live_ = 0;   // threads still running their loop
  bool joined_ = false;
  std::thread ticker_;  // started by the first set_throttle
  bool ticker_stop_ = false;  // guarded by mu_
};

}  // namespace ferry::kvm

#pragma once
// The VMM side of the built-in test guest (kvm/guest/): loading the image,
// building the long-mode environment it is entered in, and watching its
// ports (heartbeats, verification failures, completion).
#include <chrono>
#include <functional>
#include <cstdint>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "userspace/base/error.hh"
#include "kvm/guest/guest_abi.h"
#include "kvm/devices/uart/serial.hh"
#include "kvm/guest_memory.hh"
#include "kvm/vcpu.hh"
#include "kvm/vcpu_runner.hh"

namespace ferry::kvm {

class DirtyTracker;

struct TestGuestOptions {
  std::uint32_t vcpus = 1;
  fg_workload workload = FG_DIRTY;
  fg_pattern pattern = FG_SEQUENTIAL;
  std::uint32_t hot_percent = 10;
  std::uint64_t working_set_mib = 8;
  double rate_mib_s = 0;  // whole VM; 0 = as fast as the vCPUs go
  std::uint64_t max_rewrites = 0;  // per vCPU; 0 = forever
  std::uint64_t seed = 1;
  bool poweroff_when_done = false;  // the last vCPU to finish powers the VM off
};

// The embedded guest image (built from kvm/guest/guest.c by CMake).
std::span<const std::byte> test_guest_image();

// Smallest RAM (one region at gpa 0) that holds the guest and its working set.
std::uint64_t test_guest_min_memory(const TestGuestOptions& o);

// KVM_GET_TSC_KHZ: the guest paces itself by the TSC.
Result<std::uint32_t> vcpu_tsc_khz(const Vcpu& vcpu);

// Writes GDT, identity page tables (0..4 GiB, 2 MiB pages), the parameter
// block, zeroed status blocks and the image into `ram` (slot at gpa 0).
// When `tracker` is given the VMM's own writes are marked dirty there.
Status load_test_guest(GuestRegion& ram, const TestGuestOptions& o, std::uint32_t tsc_khz,
                       DirtyTracker* tracker = nullptr);

// Puts the vCPU in 64-bit long mode at the guest's entry with its own stack
// and rdi = cpu, as if a boot loader had just jumped there.
Status enter_test_guest(Vcpu& vcpu, std::uint32_t cpu);

// The guest's own counters for one vCPU, read from guest memory.
fg_status read_test_guest_status(const GuestRegion& ram, std::uint32_t cpu);

// Watches the guest's ports from the vCPU threads. Heartbeats are
// timestamped on arrival; the longest gap between two is the pause the guest
// saw (what migration downtime is measured by).
class TestGuestMonitor {
 public:
  // `serial` (optional) receives the guest's COM1 port I/O; `on_poweroff`
  // runs on the vCPU thread that powered off (e.g. VcpuRunner::request_stop).
  explicit TestGuestMonitor(const GuestRegion& ram, Serial* serial = nullptr,
                            std::function<void()> on_poweroff = {})
      : ram_(ram), serial_(serial), on_poweroff_(std::move(on_poweroff)) {}

  // An ExitHandler for VcpuRunner: ports are handled, DONE stops the vCPU,
  // FAIL and anything unexpected (a triple fault, an unknown port) is an
  // error that names what the guest reported.
  Result<ExitAction> on_exit(Vcpu& vcpu);

  struct Figures {
    std::uint64_t heartbeats = 0;
    std::uint64_t last_sequence = 0;
    std::chrono::nanoseconds max_gap{0};
    // Wall-clock (CLOCK_REALTIME) arrival of the first heartbeat this monitor
    // saw and of the latest: a migration's guest-seen downtime is the
    // destination's first minus the source's last (same host, or clocks
    // kept in sync by NTP/PTP).
    std::chrono::system_clock::time_point first_beat_wall{};
    std::chrono::system_clock::time_point last_beat_wall{};
    std::uint32_t ready = 0;
    std::uint32_t done = 0;
    bool powered_off = false;
  };
  Figures figures() const;
  // Forget the gap history (e.g. to measure only across one pause).
  void reset_gap();
  // The longest gap between heartbeats since the last call (the gap still
  // open now included), then starts a new window: how a migration reports
  // what the guest saw of each round without touching max_gap.
  std::chrono::nanoseconds take_window_gap();

 private:
  const GuestRegion& ram_;
  Serial* serial_ = nullptr;
  std::function<void()> on_poweroff_;
  mutable std::mutex mu_;
  Figures f_;
  std::chrono::steady_clock::time_point last_beat_{};
  std::chrono::nanoseconds window_gap_{0};
};

}  // namespace ferry::kvm

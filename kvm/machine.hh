#pragma once
// A whole VM as `ferry run` and `ferry restore` operate it: guest memory,
// the KVM VM and its vCPUs (with the in-kernel irqchip and PIT by default,
// as a real guest has), the serial console, the built-in test guest's
// monitor, and the vCPU threads. Pause, resume, snapshot and status are the
// operations the control API exposes.
//
// Threading: one controlling thread calls everything here except the
// notifier, which runs on a vCPU thread when the VM stops by itself.
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "userspace/base/error.hh"
#include "kvm/devices/guest_access.hh"
#include "kvm/devices/manager.hh"
#include "kvm/eventfd.hh"
#include "kvm/devices/net/config.hh"
#include "kvm/devices/net/virtio_net.hh"
#include "kvm/devices/uart/uart.hh"
#include "kvm/dirty_tracker.hh"
#include "kvm/guest_memory.hh"
#include "kvm/linux/boot.hh"
#include "kvm/snapshot.hh"
#include "kvm/system.hh"
#include "kvm/test_guest.hh"
#include "kvm/vcpu_runner.hh"
#include "kvm/vcpu_state.hh"
#include "kvm/vm.hh"
#include "kvm/vm_state.hh"

namespace ferry::kvm {

inline constexpr std::uint32_t kVmConfigVersion = 1;

// Values are on disk (kVmConfig): never renumber.
enum class GuestKind : std::uint32_t { kTestGuest = 1, kLinux = 2 };
std::string_view guest_kind_name(GuestKind k);

struct MachineConfig {
  std::uint64_t memory_bytes = 0;  // 0: the smallest that fits the guest
  bool irqchip = true;             // in-kernel PIC/IOAPIC/LAPICs and PIT
  HugePages huge_pages = HugePages::kOff;
  GuestKind kind = GuestKind::kTestGuest;
  TestGuestOptions guest;          // kTestGuest; guest.vcpus is the VM's vCPU count
  LinuxBootConfig linux_boot;      // kLinux; linux_boot.vcpus is the VM's vCPU count
  std::vector<net::NetConfig> nets;  // kLinux: virtio-net devices on TAPs
};

// What a snapshot records about the VM's shape (the kVmConfig section).
struct VmConfigState {
  GuestKind kind = GuestKind::kTestGuest;
  std::uint32_t vcpus = 0;
  bool irqchip = false;
  bool pit = false;
  std::uint32_t tsc_khz = 0;  // the source's; the guest paces by it
  friend bool operator==(const VmConfigState&, const VmConfigState&) = default;
};
std::vector<std::byte> encode_vm_config(const VmConfigState& c);
Result<VmConfigState> decode_vm_config(std::span<const std::byte> bytes);

enum class RunState { kRunning, kPaused, kStopped };
std::string_view run_state_name(RunState s);

struct VcpuStatus {
  std::uint64_t exits = 0;
  fg_status guest{};  // the guest's own counters, read from its memory
};

struct MachineStatus {
  GuestKind kind = GuestKind::kTestGuest;
  RunState state = RunState::kRunning;
  std::string stop_reason;  // when stopped
  std::uint32_t vcpus = 0;
  std::uint64_t memory_bytes = 0;
  bool irqchip = false;
  HugePages huge_pages = HugePages::kOff;
  std::uint32_t tsc_khz = 0;
  std::string restored_from;  // snapshot path, if restored
  std::chrono::steady_clock::duration uptime{};
  fg_params params{};  // test guest: its workload, as it sees it
  TestGuestMonitor::Figures monitor;  // test guest only
  std::vector<VcpuStatus> per_vcpu;
  struct Net {
    std::string id, tap, mac;
    net::NetFigures figures;
  };
  std::vector<Net> nets;
};

// The shape a migration destination builds before any memory arrives: the
// VM and its memory, no CPU state yet (Machine::incoming).
struct MachineShape {
  GuestKind kind = GuestKind::kTestGuest;
  std::uint32_t vcpus = 0;
  bool irqchip = true;
  struct Region {
    std::uint32_t slot = 0;
    std::uint64_t gpa = 0;
    std::uint64_t size = 0;
  };
  std::vector<Region> regions;
  // The devices the source's VM has (Machine::devices()); nullopt when the
  // source did not say (protocol 1.1), and then the guest kind decides.
  std::optional<std::vector<DeviceDescription>> devices;
};

// ok when `built` is exactly `wanted` (same ids, kinds and configurations,
// in the same order); else an error naming the first difference.
Status same_devices(const std::vector<DeviceDescription>& wanted, const std::vector<DeviceDescription>& built);

struct SnapshotFigures {
  SnapshotWriteFigures file;
  std::chrono::nanoseconds paused_for{0};  // how long the vCPUs were stopped for it
  bool was_running = false;
};

class Machine {
 public:
  using Notify = std::function<void()>;

  // `console` receives the guest's serial output (may be empty); `stopped`
  // is called from a vCPU thread when the VM stops by itself: the guest
  // powered off, reported a verification failure, or a vCPU failed.
  static Result<std::unique_ptr<Machine>> boot(const MachineConfig& config, Serial::Sink console, Notify stopped);
  // A new VM from a snapshot, its vCPUs parked until resume() when
  // start_paused, else running. The memory backing is this host's choice,
  // not part of the snapshot.
  // `nets`: TAPs for the snapshot's network devices, in order (their MACs
  // come from the snapshot).
  static Result<std::unique_ptr<Machine>> restore(const Snapshot& snap, Serial::Sink console, Notify stopped,
                                                  bool start_paused, HugePages huge_pages = HugePages::kOff,
                                                  const std::vector<net::NetConfig>& nets = {});

  // A migration destination's VM: memory and vCPUs exist, nothing runs and
  // no CPU state is loaded. Memory is written by the receiver, then
  // load_state() applies the source's state image and starts the vCPUs.
  // `nets`: this host's TAPs for the VM's network devices, in order (their
  // MACs come with the state).
  static Result<std::unique_ptr<Machine>> incoming(const MachineShape& shape, Serial::Sink console, Notify stopped,
                                                   HugePages huge_pages = HugePages::kOff,
                                                   const std::vector<net::NetConfig>& nets = {});
  // incoming() only, once: the state image (kVmConfig, vCPUs, clock,
  // chips, serial; what state_image() produced), which must match the shape.
  Status load_state(const state::StateImage& image, bool start_paused);

  ~Machine();
  Machine(const Machine&) = delete;
  Machine& operator=(const Machine&) = delete;

  Status pause();
  Status resume();
  // After a migration, once the VM runs here: every network device asks
  // its guest to announce itself and sends RARPs from its MAC.
  void announce_network();
  // Bytes for the guest's serial console (its keyboard).
  void console_input(std::string_view bytes);
  // The VMM's own access to guest RAM (diagnostics; what devices do by
  // DMA). Writes are marked for dirty tracking and are refused unless the
  // VM runs: a paused VM's memory may be in a snapshot or a migration's
  // last round, which a later write would silently miss.
  Status read_guest(std::uint64_t gpa, std::span<std::byte> out) const;
  Status write_guest(std::uint64_t gpa, std::span<const std::byte> bytes);
  // Pauses if running, writes the snapshot, resumes if it was running.
  Result<SnapshotFigures> snapshot(const std::string& path);
  MachineStatus status() const;
  // Stops and joins the vCPUs (idempotent); the first vCPU error, if any.
  Status stop(std::string reason = "stopped by request");

  // Full CPU and VM state, for tests and the migration engine. Paused only.
  struct CapturedState {
    std::vector<VcpuState> vcpus;
    VmState vm;
    SerialState serial;
  };
  Result<CapturedState> capture_state();

  // The state image a snapshot holds minus memory: kVmConfig, every vCPU,
  // clock, irqchip, PIT, serial. Paused only.
  Result<std::vector<std::byte>> state_image();

  // Dirty tracking for live migration. The backend (ring or bitmap) is
  // chosen when the VM is created, because the ring must be enabled before
  // the first vCPU exists; tracking itself costs nothing until started.
  // start: sets KVM_MEM_LOG_DIRTY_PAGES on every slot, which write-protects
  // guest memory so that every later write is reported. stop: clears it
  // (the guest writes at full speed again).
  // start is all or nothing: when it fails, logging is off again.
  Status start_dirty_tracking();
  Status stop_dirty_tracking();
  bool dirty_tracking() const { return tracking_; }
  // Pages dirtied since the previous harvest, re-armed before returning
  // (see DirtyTracker::harvest); includes what vCPU threads harvested when
  // their rings filled up.
  Status harvest_dirty(DirtyLog& out);
  DirtyBackend dirty_backend() const { return dirty_backend_; }
  // Pages each vCPU pushed to its ring since the VM started (ring backend);
  // empty with the bitmap, which cannot attribute writes to vCPUs.
  std::vector<std::uint64_t> dirtied_per_vcpu() const;
  // Per vCPU, the share of time to hold it back (0 = full speed), as the
  // switchover policy decides; see VcpuRunner::set_throttle.
  void set_throttle(const std::vector<double>& shares);
  std::vector<std::chrono::nanoseconds> throttled_time() const;

  // The CPUID the guest was given (vCPU 0's, read before it first ran).
  const std::vector<kvm_cpuid_entry2>& guest_cpuid() const { return guest_cpuid_; }
  std::vector<const GuestRegion*> regions() const;
  std::uint32_t vcpu_count() const { return static_cast<std::uint32_t>(vcpus_.size()); }
  GuestKind kind() const { return kind_; }
  bool has_irqchip() const { return vm_->has_irqchip(); }
  std::uint32_t tsc_khz() const { return tsc_khz_; }
  // Test guest only: the heartbeat monitor's figures (zeros otherwise).
  TestGuestMonitor::Figures monitor_figures() const;
  // Test guest only: the longest heartbeat gap since the last call (see
  // TestGuestMonitor::take_window_gap); nullopt for other guests.
  std::optional<std::chrono::nanoseconds> take_guest_stall();
  // Marks the VM as restored from `what` for status() ("migrated from ...").
  void set_origin(std::string what) { restored_from_ = std::move(what); }

  Serial& serial() { return uart_->serial(); }
  // The VM's devices (kind, id, configuration), in the order they were added.
  std::vector<DeviceDescription> devices() const { return devices_->describe(); }
  const GuestRegion& ram() const { return *regions_.front(); }

 private:
  Machine() = default;
  static Result<std::unique_ptr<Machine>> boot_linux(const MachineConfig& config, Serial::Sink console, Notify stopped);
  Status create_vm(std::uint64_t memory_bytes, HugePages huge, bool irqchip, std::uint32_t vcpus);
  Status create_dirty_tracker();
  // The platform's devices for this guest kind: COM1 (its IRQ wired for
  // Linux; the test guest polls), and for Linux the ACPI PM block and the
  // reset ports. Before any vCPU runs.
  Status create_devices(Serial::Sink console);
  // virtio-net on each TAP (Linux guests): windows and GSIs from
  // net/config.hh, in the order given.
  // A destination's (incoming) TAPs start with their carrier off.
  Status create_nets(const std::vector<net::NetConfig>& nets, bool incoming);
  Result<ExitAction> on_linux_exit(Vcpu& vcpu);
  Result<state::StateWriter> state_sections();
  Status apply_state(const state::StateImage& img, const VmConfigState& cfg);
  Status start_vcpus(bool paused);
  void on_vcpu_ended(const std::string& why);

  std::optional<Kvm> kvm_;
  std::optional<Vm> vm_;
  std::vector<std::unique_ptr<GuestRegion>> regions_;
  std::vector<Vcpu> vcpus_;
  std::vector<std::uint32_t> msr_indices_;
  std::unique_ptr<DeviceManager> devices_;
  std::vector<std::unique_ptr<IrqFd>> irqfds_;  // the virtio devices' interrupt lines
  std::vector<IoEventFd> kicks_;                // their queue notifications, without an exit
  std::vector<net::VirtioNet*> nets_;           // owned by their transports in devices_
  Uart* uart_ = nullptr;  // owned by devices_
  GuestKind kind_ = GuestKind::kTestGuest;
  std::unique_ptr<TestGuestMonitor> monitor_;      // kTestGuest
  std::unique_ptr<VcpuRunner> runner_;
  DirtyBackend dirty_backend_ = DirtyBackend::kBitmap;
  std::unique_ptr<DirtyTracker> tracker_;
  std::unique_ptr<GuestAccess> guest_access_;  // over regions_, marking tracker_
  bool tracking_ = false;
  std::mutex ring_full_mu_;
  std::unique_ptr<DirtyLog> ring_full_log_;  // harvested by vCPUs whose ring filled
  std::vector<kvm_cpuid_entry2> guest_cpuid_;
  bool incoming_ = false;  // built by incoming(), state not yet loaded
  Notify notify_;
  std::uint32_t tsc_khz_ = 0;
  std::string restored_from_;
  std::chrono::steady_clock::time_point started_ = std::chrono::steady_clock::now();

  mutable std::mutex mu_;  // guards the fields below (vCPU threads write them)
  bool stopped_ = false;
  bool paused_ = false;
  std::string stop_reason_;
  std::uint32_t halted_ = 0;  // vCPUs that ended with kStop (no in-kernel LAPIC: HLT exits)
};

}  // namespace ferry::kvm

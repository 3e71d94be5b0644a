#pragma once
// What the migration engine needs from a VM, and from the host that
// receives one: the seam between the sessions (source.cc, destination*.cc)
// and kvm::Machine. kvm_vm.hh adapts a kvm::Machine to it; the sessions'
// unit tests run both sides in one process against a fake VM whose memory
// is a real memfd region (kvm::GuestRegion needs no /dev/kvm).
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "kvm/dirty_tracker.hh"
#include "kvm/guest_memory.hh"
#include "kvm/machine.hh"
#include "userspace/base/error.hh"
#include "userspace/migration/payloads.hh"
#include "userspace/migration/precheck.hh"

namespace ferry::migration {

// The running VM a source migrates (owned by its process, not by the engine).
class SourceVm {
 public:
  virtual ~SourceVm() = default;
  // What the destination must build: vCPUs, regions, CPUID, devices.
  virtual Precheck describe() const = 0;
  // Guest RAM: the one region the page path moves.
  virtual const kvm::GuestRegion& ram() const = 0;
  virtual std::uint64_t memory_bytes() const = 0;  // every region
  virtual std::uint32_t vcpu_count() const = 0;

  virtual kvm::DirtyBackend dirty_backend() const = 0;
  virtual Status start_dirty_tracking() = 0;
  virtual Status stop_dirty_tracking() = 0;
  // Pages dirtied since the last harvest (vCPUs and the VMM), re-armed.
  virtual Status harvest_dirty(kvm::DirtyLog& out) = 0;
  // Cumulative pages each vCPU dirtied; empty when the backend cannot tell.
  virtual std::vector<std::uint64_t> dirtied_per_vcpu() const = 0;
  virtual void set_throttle(const std::vector<double>& shares) = 0;
  virtual std::vector<std::chrono::nanoseconds> throttled_time() const = 0;

  virtual Status pause() = 0;
  virtual Status resume() = 0;
  // For good: the VM runs elsewhere now.
  virtual Status stop(std::string reason) = 0;
  // CPU and device state, serialized (kvm/state); the VM is paused.
  virtual Result<std::vector<std::byte>> state_image() = 0;
  // The guest's own liveness signal, for the downtime it saw: the wall time
  // (ns) of its last heartbeat, 0 when it has none.
  virtual std::uint64_t last_heartbeat_wall_ns() const = 0;
  // The longest stretch the guest went without running since the last call.
  virtual std::optional<std::chrono::nanoseconds> take_guest_stall() = 0;
};

// The VM a destination builds for an incoming migration, paused until COMMIT.
class IncomingVm {
 public:
  virtual ~IncomingVm() = default;
  virtual const kvm::GuestRegion& ram() const = 0;
  // Loads a state image from the source; the VM stays paused.
  virtual Status load_state(std::span<const std::byte> image) = 0;
  virtual Status resume() = 0;
  virtual Status stop(std::string reason) = 0;
  virtual void set_origin(std::string what) = 0;
  // After resume: the wall time (ns) of the guest's first heartbeat here,
  // waiting up to `within` for it; 0 when the guest has no heartbeat.
  virtual std::uint64_t first_heartbeat_wall_ns(std::chrono::milliseconds within) = 0;
};

// The receiving host: what it offers, and building a VM of a given shape.
class IncomingHost {
 public:
  virtual ~IncomingHost() = default;
  virtual Result<HostResources> resources() = 0;
  virtual Result<std::unique_ptr<IncomingVm>> build(const kvm::MachineShape& shape) = 0;
};

}  // namespace ferry::migration

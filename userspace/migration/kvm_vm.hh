#pragma once
// The migration engine's view (vm.hh) of a real kvm::Machine.
#include <memory>

#include "kvm/machine.hh"
#include "userspace/migration/vm.hh"

namespace ferry::migration {

// Borrows the machine; its process owns it.
class KvmSourceVm final : public SourceVm {
 public:
  explicit KvmSourceVm(kvm::Machine& m) : m_(m) {}
  Precheck describe() const override;
  const kvm::GuestRegion& ram() const override { return m_.ram(); }
  std::uint64_t memory_bytes() const override;
  std::uint32_t vcpu_count() const override { return m_.vcpu_count(); }
  kvm::DirtyBackend dirty_backend() const override { return m_.dirty_backend(); }
  Status start_dirty_tracking() override { return m_.start_dirty_tracking(); }
  Status stop_dirty_tracking() override { return m_.stop_dirty_tracking(); }
  Status harvest_dirty(kvm::DirtyLog& out) override { return m_.harvest_dirty(out); }
  std::vector<std::uint64_t> dirtied_per_vcpu() const override { return m_.dirtied_per_vcpu(); }
  void set_throttle(const std::vector<double>& shares) override { m_.set_throttle(shares); }
  std::vector<std::chrono::nanoseconds> throttled_time() const override { return m_.throttled_time(); }
  Status pause() override { return m_.pause(); }
  Status resume() override { return m_.resume(); }
  Status stop(std::string reason) override { return m_.stop(std::move(reason)); }
  Result<std::vector<std::byte>> state_image() override { return m_.state_image(); }
  std::uint64_t last_heartbeat_wall_ns() const override;
  std::optional<std::chrono::nanoseconds> take_guest_stall() override { return m_.take_guest_stall(); }

 private:
  kvm::Machine& m_;
};

// Owns the machine it built until the process takes it (take()).
class KvmIncomingVm final : public IncomingVm {
 public:
  explicit KvmIncomingVm(std::unique_ptr<kvm::Machine> m, bool announce = true) : m_(std::move(m)), announce_(announce) {}
  const kvm::GuestRegion& ram() const override { return m_->ram(); }
  Status load_state(std::span<const std::byte> image) override;
  // The VM runs here from now on: its network devices announce it.
  Status resume() override {
    if (auto ok = m_->resume(); !ok) return ok;
    if (announce_) m_->announce_network();
    return {};
  }
  Status stop(std::string reason) override { return m_->stop(std::move(reason)); }
  void set_origin(std::string what) override { m_->set_origin(std::move(what)); }
  std::uint64_t first_heartbeat_wall_ns(std::chrono::milliseconds within) override;
  std::unique_ptr<kvm::Machine> take() { return std::move(m_); }

 private:
  std::unique_ptr<kvm::Machine> m_;
  bool announce_;
};

// This host's KVM: its limits and CPUID, and Machine::incoming().
class KvmIncomingHost final : public IncomingHost {
 public:
  KvmIncomingHost(kvm::Serial::Sink console, kvm::Machine::Notify stopped, kvm::HugePages huge,
                  std::vector<kvm::net::NetConfig> nets = {}, bool announce = true)
      : console_(std::move(console)), stopped_(std::move(stopped)), huge_(huge), nets_(std::move(nets)),
        announce_(announce) {}
  Result<HostResources> resources() override;
  Result<std::unique_ptr<IncomingVm>> build(const kvm::MachineShape& shape) override;

 private:
  kvm::Serial::Sink console_;
  kvm::Machine::Notify stopped_;
  kvm::HugePages huge_;
  std::vector<kvm::net::NetConfig> nets_;
  bool announce_;
};

}  // namespace ferry::migration

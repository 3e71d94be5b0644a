// kvm::Machine as the migration engine sees it (kvm_vm.hh).
#include "userspace/migration/kvm_vm.hh"

#include <thread>

#include "kvm/state/format.hh"
#include "kvm/system.hh"
#include "userspace/base/io.hh"

namespace ferry::migration {

Precheck KvmSourceVm::describe() const {
  Precheck p;
  p.vcpus = m_.vcpu_count();
  for (const auto* r : m_.regions()) p.regions.push_back({r->slot(), r->gpa(), r->size()});
  p.guest_kind = static_cast<std::uint32_t>(m_.kind());
  for (const auto& e : m_.guest_cpuid()) p.cpuid.push_back({e.function, e.index, e.eax, e.ebx, e.ecx, e.edx});
  if (p.cpuid.size() > kMaxCpuidEntries) p.cpuid.resize(kMaxCpuidEntries);
  p.tsc_khz = m_.tsc_khz();
  p.irqchip = m_.has_irqchip();
  p.devices.emplace();
  for (const auto& d : m_.devices()) p.devices->push_back({d.kind, d.id, d.config});
  return p;
}

std::uint64_t KvmSourceVm::memory_bytes() const {
  std::uint64_t total = 0;
  for (const auto* r : m_.regions()) total += r->size();
  return total;
}

std::uint64_t KvmSourceVm::last_heartbeat_wall_ns() const { return wall_ns(m_.monitor_figures().last_beat_wall); }

Status KvmIncomingVm::load_state(std::span<const std::byte> image) {
  auto img = kvm::state::parse_state(image);
  if (!img) return std::unexpected(std::move(img.error()).context("state image"));
  return m_->load_state(*img, /*start_paused=*/true);
}

// The built-in guest beats every millisecond: a short wait finds its first
// beat here. Linux guests have no heartbeat the VMM can see.
std::uint64_t KvmIncomingVm::first_heartbeat_wall_ns(std::chrono::milliseconds within) {
  if (m_->kind() != kvm::GuestKind::kTestGuest) return 0;
  const auto deadline = std::chrono::steady_clock::now() + within;
  std::uint64_t beat = 0;
  while ((beat = wall_ns(m_->monitor_figures().first_beat_wall)) == 0 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  return beat;
}

Result<HostResources> KvmIncomingHost::resources() {
  auto kvm = kvm::Kvm::open();
  if (!kvm) return std::unexpected(kvm.error());
  HostResources h;
  h.mem_available = meminfo("MemAvailable").value_or(0) * 1024;
  const int mv = kvm->check_extension(KVM_CAP_MAX_VCPUS);
  h.max_vcpus = mv > 0 ? static_cast<std::uint32_t>(mv) : 0;
  auto cpuid = kvm->supported_cpuid();
  if (!cpuid) return std::unexpected(cpuid.error());
  h.supported_cpuid = std::move(*cpuid);
  return h;
}

Result<std::unique_ptr<IncomingVm>> KvmIncomingHost::build(const kvm::MachineShape& shape) {
  auto m = kvm::Machine::incoming(shape, std::move(console_), std::move(stopped_), huge_, nets_);
  if (!m) return std::unexpected(std::move(m.error()));
  return std::unique_ptr<IncomingVm>(std::make_unique<KvmIncomingVm>(std::move(*m), announce_));
}

}  // namespace ferry::migration

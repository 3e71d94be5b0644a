#include "kvm/devices/manager.hh"

#include <linux/kvm.h>

#include <cstring>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "kvm/vcpu.hh"

namespace ferry::kvm {

bool is_device_section(state::SectionType type) {
  return type == state::SectionType::kSerial || type == state::SectionType::kDeviceOther ||
         type == state::SectionType::kVirtio;
}

Status DeviceManager::add_device(std::unique_ptr<Device> device) {
  const auto d = device->describe();
  for (const auto& other : devices_) {
    if (other->describe().id == d.id) return fail("devices: two devices named {}", d.id);
    if (device->state_key() && other->state_key() == device->state_key())
      return fail("devices: {} and {} would write the same state section", d.id, other->describe().id);
  }
  // Check every range first, so that a refused device leaves nothing behind.
  Bus trial = bus_;
  for (const auto& r : device->ranges())
    if (auto ok = trial.add(r, *device); !ok) return ok;
  bus_ = std::move(trial);
  devices_.push_back(std::move(device));
  return {};
}

ExitAction DeviceManager::finish(IoOutcome outcome) {
  switch (outcome) {
    case IoOutcome::kDone: return ExitAction::kContinue;
    case IoOutcome::kPowerOff: on_stop_("the guest powered off"); return ExitAction::kStop;
    case IoOutcome::kReboot: on_stop_("the guest rebooted"); return ExitAction::kStop;
  }
  return ExitAction::kContinue;
}

Result<ExitAction> DeviceManager::on_io(Vcpu& vcpu) {
  kvm_run& run = vcpu.run();
  auto* data = reinterpret_cast<std::uint8_t*>(&run) + run.io.data_offset;
  const bool out = run.io.direction == KVM_EXIT_IO_OUT;
  const std::uint16_t port = run.io.port;
  const auto hit = bus_.find(Space::kPio, port);
  // A string instruction (rep outsb/insb) carries count accesses to one port.
  for (std::uint32_t i = 0; i < run.io.count; ++i, data += run.io.size) {
    std::span<std::uint8_t> access(data, run.io.size);
    if (hit) {
      const auto outcome = out ? hit->device->write(hit->range, hit->offset, access)
                               : hit->device->read(hit->range, hit->offset, access);
      if (outcome != IoOutcome::kDone) return finish(outcome);
      continue;
    }
    if (port != 0x80)  // the POST/delay port gets a write per port delay
      spdlog::trace("vCPU {}: {} port {:#x} (size {}): no device", vcpu.id(), out ? "write" : "read", port,
                    run.io.size);
    if (!out) std::memset(data, 0xff, run.io.size);
  }
  return ExitAction::kContinue;
}

Result<ExitAction> DeviceManager::on_mmio(Vcpu& vcpu) {
  kvm_run& run = vcpu.run();
  const auto len = std::min<std::size_t>(run.mmio.len, sizeof run.mmio.data);
  std::span<std::uint8_t> access(run.mmio.data, len);
  if (const auto hit = bus_.find(Space::kMmio, run.mmio.phys_addr)) {
    return finish(run.mmio.is_write ? hit->device->write(hit->range, hit->offset, access)
                                    : hit->device->read(hit->range, hit->offset, access));
  }
  spdlog::trace("vCPU {}: MMIO {} {:#x} ({} bytes): no device", vcpu.id(), run.mmio.is_write ? "write" : "read",
                run.mmio.phys_addr, run.mmio.len);
  if (!run.mmio.is_write) std::memset(run.mmio.data, 0xff, sizeof run.mmio.data);
  return ExitAction::kContinue;
}

void DeviceManager::pause() {
  for (auto& d : devices_) d->pause();
}

void DeviceManager::resume() {
  for (auto& d : devices_) d->resume();
}

void DeviceManager::save(state::StateWriter& w) const {
  for (const auto& d : devices_)
    if (auto key = d->state_key()) w.add(key->type, key->instance, d->state_version(), d->save_state());
}

Status DeviceManager::restore(const state::StateImage& image) {
  for (const auto& s : image.sections) {
    if (!is_device_section(s.type)) continue;
    bool claimed = false;
    for (const auto& d : devices_) claimed = claimed || d->state_key() == StateKey{s.type, s.instance};
    if (!claimed)
      return fail("the state carries a device ({} section, instance {}) this VM does not have",
                  state::section_type_name(s.type), s.instance);
  }
  for (auto& d : devices_) {
    const auto key = d->state_key();
    if (!key) continue;
    const auto* s = image.find(key->type, key->instance);
    if (!s) {
      if (d->state_required()) return fail("no state for device {} ({} section)", d->describe().id, state::section_type_name(key->type));
      continue;
    }
    if (auto ok = d->restore_state(s->version, s->payload); !ok) return ok;
  }
  return {};
}

std::vector<DeviceDescription> DeviceManager::describe() const {
  std::vector<DeviceDescription> out;
  for (const auto& d : devices_) out.push_back(d->describe());
  return out;
}

}  // namespace ferry::kvm

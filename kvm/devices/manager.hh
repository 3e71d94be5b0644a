#pragma once
// Owns a VM's devices: registers their ranges on the bus, dispatches the
// port and MMIO exits of every vCPU to them, quiesces and resumes them with
// the VM, writes their state sections into the state image and reads them
// back (rejecting versions a device does not know, and state for devices
// this VM does not have), and describes them so a destination can build
// the same set before it loads their state.
//
// Devices are added before any vCPU runs; from then on the set is fixed.
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "kvm/devices/bus.hh"
#include "kvm/devices/device.hh"
#include "kvm/state/format.hh"
#include "kvm/vcpu_runner.hh"

namespace ferry::kvm {

class Vcpu;

class DeviceManager {
 public:
  // Runs on the vCPU thread whose access powered the VM off or reset it;
  // that vCPU then stops (the callee stops the rest).
  using OnStop = std::function<void(std::string reason)>;
  explicit DeviceManager(OnStop on_stop) : on_stop_(std::move(on_stop)) {}
  DeviceManager(const DeviceManager&) = delete;
  DeviceManager& operator=(const DeviceManager&) = delete;

  // All or nothing: a device whose range overlaps another's, or whose state
  // key or id is taken, is not added and nothing of it stays registered.
  template <class D>
  Result<D*> add(std::unique_ptr<D> device) {
    D* raw = device.get();
    if (auto ok = add_device(std::move(device)); !ok) return std::unexpected(ok.error());
    return raw;
  }

  // KVM_EXIT_IO and KVM_EXIT_MMIO: served by the device that claims the
  // address; unclaimed addresses behave like an empty bus (reads float
  // high, writes vanish), which is how guests conclude a device is absent.
  Result<ExitAction> on_io(Vcpu& vcpu);
  Result<ExitAction> on_mmio(Vcpu& vcpu);

  void pause();
  void resume();

  // Every device's section, in the order the devices were added.
  void save(state::StateWriter& w) const;
  // Each device's section; a required one the image lacks, a version a
  // device does not know, or a device section no device here claims is an
  // error naming the device.
  Status restore(const state::StateImage& image);

  std::vector<DeviceDescription> describe() const;
  const Bus& bus() const { return bus_; }

 private:
  Status add_device(std::unique_ptr<Device> device);
  ExitAction finish(IoOutcome outcome);

  OnStop on_stop_;
  Bus bus_;
  std::vector<std::unique_ptr<Device>> devices_;
};

// The device sections the state format defines (kSerial, kDeviceOther):
// what DeviceManager::restore owns in an image.
bool is_device_section(state::SectionType type);

}  // namespace ferry::kvm

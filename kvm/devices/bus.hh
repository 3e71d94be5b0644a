#pragma once
// The I/O bus: which device answers a port or an MMIO address. Ranges are
// registered before any vCPU runs and never change afterwards, so lookups
// on vCPU threads take no lock. Overlapping ranges are refused at
// registration: two devices answering one address is a configuration bug
// that would otherwise show up as a guest misreading registers.
#include <cstdint>
#include <map>
#include <optional>

#include "kvm/devices/device.hh"
#include "userspace/base/error.hh"

namespace ferry::kvm {

class Bus {
 public:
  struct Hit {
    Device* device = nullptr;
    IoRange range;
    std::uint64_t offset = 0;  // from range.base
  };

  Status add(const IoRange& range, Device& device);
  // The device whose range holds `addr`, if any.
  std::optional<Hit> find(Space space, std::uint64_t addr) const;
  std::size_t size() const { return pio_.size() + mmio_.size(); }

 private:
  struct Entry {
    IoRange range;
    Device* device;
  };
  std::map<std::uint64_t, Entry>& map_for(Space s) { return s == Space::kPio ? pio_ : mmio_; }
  const std::map<std::uint64_t, Entry>& map_for(Space s) const { return s == Space::kPio ? pio_ : mmio_; }
  std::map<std::uint64_t, Entry> pio_, mmio_;  // by base
};

}  // namespace ferry::kvm

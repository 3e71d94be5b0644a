#include "kvm/devices/bus.hh"

#include <fmt/format.h>

namespace ferry::kvm {

std::string_view space_name(Space s) { return s == Space::kPio ? "port" : "MMIO"; }

Status Bus::add(const IoRange& range, Device& device) {
  const auto name = device.describe().id;
  if (range.size == 0) return fail("bus: {} registers an empty {} range at {:#x}", name, space_name(range.space), range.base);
  if (range.end() < range.base || (range.space == Space::kPio && range.end() > 0x10000))
    return fail("bus: {}'s {} range {:#x}+{:#x} runs past the address space", name, space_name(range.space), range.base,
                range.size);
  auto& m = map_for(range.space);
  // The neighbour below may reach into the new range; the one at or above
  // its base may start inside it.
  auto above = m.lower_bound(range.base);
  if (above != m.end() && above->first < range.end())
    return fail("bus: {}'s {} range {:#x}..{:#x} overlaps {}'s {:#x}..{:#x}", name, space_name(range.space), range.base,
                range.end() - 1, above->second.device->describe().id, above->second.range.base,
                above->second.range.end() - 1);
  if (above != m.begin()) {
    const auto& below = std::prev(above)->second;
    if (below.range.end() > range.base)
      return fail("bus: {}'s {} range {:#x}..{:#x} overlaps {}'s {:#x}..{:#x}", name, space_name(range.space),
                  range.base, range.end() - 1, below.device->describe().id, below.range.base, below.range.end() - 1);
  }
  m.emplace(range.base, Entry{range, &device});
  return {};
}

std::optional<Bus::Hit> Bus::find(Space space, std::uint64_t addr) const {
  const auto& m = map_for(space);
  auto it = m.upper_bound(addr);
  if (it == m.begin()) return std::nullopt;
  --it;
  const Entry& e = it->second;
  if (addr >= e.range.end()) return std::nullopt;
  return Hit{e.device, e.range, addr - e.range.base};
}

}  // namespace ferry::kvm

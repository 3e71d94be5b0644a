#pragma once
// What `--net tap=NAME[,mac=MAC]` asks for, and where each network device
// sits in a Linux guest's address space: virtio-mmio windows from
// kVirtioMmioBase, one page apart (in the 32-bit hole, below the IOAPIC),
// interrupts on GSIs from kVirtioFirstGsi (IOAPIC pins 16-23, which no
// ISA device uses).
#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "userspace/base/error.hh"

namespace ferry::kvm::net {

using Mac = std::array<std::uint8_t, 6>;

inline constexpr std::uint64_t kVirtioMmioBase = 0xd0000000;
inline constexpr std::uint64_t kVirtioMmioStride = 0x1000;
inline constexpr std::uint32_t kVirtioFirstGsi = 16;
inline constexpr std::size_t kMaxNets = 8;  // GSIs 16..23

struct NetConfig {
  std::string tap;
  std::optional<Mac> mac;  // none: a random locally administered one (52:54:00:xx:xx:xx)
};

// "tap=NAME[,mac=52:54:00:12:34:56]".
Result<NetConfig> parse_net(std::string_view spec);
// Each of the `--net` options given, in order.
Result<std::vector<NetConfig>> parse_nets(const std::vector<std::string>& specs);
Result<Mac> parse_mac(std::string_view text);
std::string format_mac(const Mac& mac);
Mac random_mac();

}  // namespace ferry::kvm::net

#include "kvm/devices/net/config.hh"

#include <net/if.h>

#include <random>

#include <fmt/format.h>

namespace ferry::kvm::net {

Result<Mac> parse_mac(std::string_view text) {
  Mac m{};
  if (text.size() != 17) return fail("MAC '{}': six hex bytes separated by ':' (52:54:00:12:34:56)", text);
  for (std::size_t i = 0; i < 6; ++i) {
    if (i > 0 && text[3 * i - 1] != ':') return fail("MAC '{}': bytes are separated by ':'", text);
    unsigned v = 0;
    for (std::size_t k = 0; k < 2; ++k) {
      const char c = text[3 * i + k];
      const int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
      if (d < 0) return fail("MAC '{}': '{}' is not a hex digit", text, c);
      v = v * 16 + static_cast<unsigned>(d);
    }
    m[i] = static_cast<std::uint8_t>(v);
  }
  if (m[0] & 1) return fail("MAC '{}' is a multicast address", text);
  return m;
}

std::string format_mac(const Mac& m) {
  return fmt::format("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5]);
}

Mac random_mac() {
  std::random_device rd;
  const auto r = rd();
  return {0x52, 0x54, 0x00, static_cast<std::uint8_t>(r), static_cast<std::uint8_t>(r >> 8),
          static_cast<std::uint8_t>(r >> 16)};
}

Result<NetConfig> parse_net(std::string_view spec) {
  NetConfig c;
  while (!spec.empty()) {
    const auto comma = spec.find(',');
    const std::string_view item = spec.substr(0, comma);
    spec = comma == std::string_view::npos ? std::string_view{} : spec.substr(comma + 1);
    const auto eq = item.find('=');
    const std::string_view key = item.substr(0, eq);
    const std::string_view value = eq == std::string_view::npos ? std::string_view{} : item.substr(eq + 1);
    if (key == "tap") {
      if (value.empty() || value.size() >= IFNAMSIZ) return fail("--net tap={}: a name of 1 to {} characters", value, IFNAMSIZ - 1);
      c.tap = value;
    } else if (key == "mac") {
      auto m = parse_mac(value);
      if (!m) return std::unexpected(m.error());
      c.mac = *m;
    } else {
      return fail("--net: unknown key '{}' (tap=NAME[,mac=MAC])", key);
    }
  }
  if (c.tap.empty()) return fail("--net: tap=NAME is required (tap=NAME[,mac=MAC])");
  return c;
}

Result<std::vector<NetConfig>> parse_nets(const std::vector<std::string>& specs) {
  std::vector<NetConfig> out;
  for (const auto& spec : specs) {
    auto n = parse_net(spec);
    if (!n) return std::unexpected(n.error());
    out.push_back(std::move(*n));
  }
  return out;
}

}  // namespace ferry::kvm::net

// "[SCHEME://]HOST:PORT" (endpoint.hh).
#include "userspace/transport/endpoint.hh"

#include <charconv>

namespace ferry::transport {

std::string Endpoint::str() const {
  if (host.find(':') != std::string::npos) return fmt::format("[{}]:{}", host, port);
  return fmt::format("{}:{}", host, port);
}

std::string Endpoint::uri() const { return fmt::format("{}://{}", scheme, str()); }

Result<Endpoint> parse_endpoint(std::string_view full) {
  std::string_view text = full;
  std::string scheme = "tcp";
  if (const auto sep = text.find("://"); sep != std::string_view::npos) {
    scheme = std::string(text.substr(0, sep));
    if (scheme != "tcp") return fail("'{}': unknown transport '{}' (supported: {})", full, scheme, kSchemes);
    text = text.substr(sep + 3);
  }
  auto expected = [&](std::string_view hint = {}) { return fail("'{}': expected HOST:PORT{}", full, hint); };
  std::string_view host, port;
  if (text.starts_with('[')) {
    const auto close = text.find(']');
    if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':') {
      return expected(" (IPv6 as [ADDRESS]:PORT)");
    }
    host = text.substr(1, close - 1);
    port = text.substr(close + 2);
  } else {
    const auto colon = text.rfind(':');
    if (colon == std::string_view::npos) return expected();
    host = text.substr(0, colon);
    port = text.substr(colon + 1);
    if (host.find(':') != std::string_view::npos) return expected(" (IPv6 as [ADDRESS]:PORT)");
  }
  if (host.empty()) return expected();
  unsigned value = 0;
  auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
  if (port.empty() || ec != std::errc() || end != port.data() + port.size() || value > 65535) {
    return fail("'{}': port '{}' is not a number from 0 to 65535", full, port);
  }
  return Endpoint{.host = std::string(host), .port = static_cast<std::uint16_t>(value), .scheme = std::move(scheme)};
}

}  // namespace ferry::transport

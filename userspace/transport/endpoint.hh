#pragma once
// Where a migration connects or listens: "[SCHEME://]HOST:PORT". The scheme
// names the transport; only tcp exists today (a later issue adds tls), and
// it is the default, so "HOST:PORT" keeps meaning what it always meant.
// Hosts are IPv4 addresses, IPv6 addresses in brackets, or names.
#include <cstdint>
#include <string>
#include <string_view>

#include "userspace/base/error.hh"

namespace ferry::transport {

struct Endpoint {
  std::string host;
  std::uint16_t port = 0;
  std::string scheme = "tcp";
  std::string str() const;  // "host:port" ("[::1]:port" for IPv6), as users type it
  std::string uri() const;  // "tcp://host:port"
};

// Port 0 parses (listening on any free port); dialers refuse it.
Result<Endpoint> parse_endpoint(std::string_view text);

// The schemes parse_endpoint accepts, for help texts and errors.
inline constexpr std::string_view kSchemes = "tcp";

}  // namespace ferry::transport

// Listener/Dialer by scheme (connection.hh).
#include "userspace/transport/connection.hh"

#include "userspace/transport/tcp.hh"

namespace ferry::transport {

Result<std::unique_ptr<Listener>> listen(const Endpoint& where) {
  if (where.scheme != "tcp") return fail("listen on {}: unknown transport (supported: {})", where.uri(), kSchemes);
  auto l = TcpListener::open(where);
  if (!l) return std::unexpected(std::move(l.error()));
  return std::unique_ptr<Listener>(std::move(*l));
}

Result<std::unique_ptr<Dialer>> dialer_for(const Endpoint& to) {
  if (to.scheme != "tcp") return fail("connect to {}: unknown transport (supported: {})", to.uri(), kSchemes);
  return std::unique_ptr<Dialer>(std::make_unique<TcpDialer>());
}

}  // namespace ferry::transport

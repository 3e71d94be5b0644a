// Listener/Dialer by scheme and security (connection.hh), and the TLS pair
// (tls.hh): TCP underneath, the handshake on top.
#include "userspace/transport/connection.hh"

#include "userspace/transport/tcp.hh"
#include "userspace/transport/tls.hh"

namespace ferry::transport {
namespace {

class TlsListener final : public Listener {
 public:
  TlsListener(std::unique_ptr<TcpListener> tcp, TlsContext ctx) : tcp_(std::move(tcp)), ctx_(std::move(ctx)) {}
  // Plain TCP accept: the handshake is secure()'s, on the connection's own
  // thread, so a peer that stalls it delays only itself.
  Result<Connection> accept(std::chrono::milliseconds timeout) override { return tcp_->accept(timeout); }
  Result<Connection> secure(Connection c, std::chrono::steady_clock::time_point deadline) override {
    return ctx_.secure(std::move(c), "", deadline);
  }
  std::string address() const override { return tcp_->address(); }

 private:
  std::unique_ptr<TcpListener> tcp_;
  TlsContext ctx_;
};

class TlsDialer final : public Dialer {
 public:
  explicit TlsDialer(TlsContext ctx) : ctx_(std::move(ctx)) {}
  Result<Connection> dial(const Endpoint& to, std::chrono::milliseconds timeout) override {
    // One deadline for the TCP connect and the handshake together.
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    auto c = TcpDialer().dial(to, timeout);
    if (!c) return c;
    return ctx_.secure(std::move(*c), to.host, deadline);
  }

 private:
  TlsContext ctx_;
};

}  // namespace

Result<std::unique_ptr<Listener>> listen(const Endpoint& where, const Security& security) {
  if (where.scheme != "tcp") return fail("listen on {}: unknown transport (supported: {})", where.uri(), kSchemes);
  auto l = TcpListener::open(where);
  if (!l) return std::unexpected(std::move(l.error()));
  if (!security.encrypted()) return std::unique_ptr<Listener>(std::move(*l));
  auto ctx = TlsContext::load(security, TlsRole::kServer);
  if (!ctx) return std::unexpected(std::move(ctx.error()).context(fmt::format("listen on {}", where.str())));
  return std::unique_ptr<Listener>(std::make_unique<TlsListener>(std::move(*l), std::move(*ctx)));
}

Result<std::unique_ptr<Dialer>> dialer_for(const Endpoint& to, const Security& security) {
  if (to.scheme != "tcp") return fail("connect to {}: unknown transport (supported: {})", to.uri(), kSchemes);
  if (!security.encrypted()) return std::unique_ptr<Dialer>(std::make_unique<TcpDialer>());
  auto ctx = TlsContext::load(security, TlsRole::kClient);
  if (!ctx) return std::unexpected(std::move(ctx.error()).context(fmt::format("connect to {}", to.str())));
  return std::unique_ptr<Dialer>(std::make_unique<TlsDialer>(std::move(*ctx)));
}

}  // namespace ferry::transport

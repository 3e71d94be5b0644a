#pragma once
// The transport's one way in: a Listener accepts and a Dialer dials, and
// both hand out Connections. The migration engine opens every connection
// (streams, replies, resolvers) through these, so a new transport (TLS, an
// in-process pair for tests) is a new Listener/Dialer pair and nothing else
// changes. What flows over a Connection afterwards is the io_uring data
// path's business (sender.hh, receiver.hh): a Connection is a connected,
// blocking stream socket.
#include <array>
#include <chrono>
#include <cstddef>
#include <memory>
#include <optional>
#include <string>

#include "userspace/base/error.hh"
#include "userspace/base/unique_fd.hh"
#include "userspace/transport/endpoint.hh"

namespace ferry::transport {

// One connected stream socket and who is at the other end. Move-only.
class Connection {
 public:
  Connection() = default;
  Connection(UniqueFd socket, std::string peer) : fd_(std::move(socket)), peer_(std::move(peer)) {}
  Connection(Connection&&) noexcept = default;
  Connection& operator=(Connection&&) noexcept = default;

  int fd() const { return fd_.get(); }
  explicit operator bool() const { return static_cast<bool>(fd_); }
  const std::string& peer() const { return peer_; }  // "host:port", or what the transport calls it
  // Hands the socket over (to a Sender, which owns it from then on).
  UniqueFd release() { return std::move(fd_); }

  // What protects the bytes: "plain TCP" or the TLS details (tls.hh).
  const std::string& security() const { return security_; }
  // A secret both ends derived from an authenticated handshake (TLS's
  // exporter), never sent: a later connection proves it belongs to the
  // same session with it. None on plain TCP.
  using Secret = std::array<std::byte, 32>;
  const std::optional<Secret>& secret() const { return secret_; }
  void set_security(std::string what, std::optional<Secret> secret) {
    security_ = std::move(what);
    secret_ = secret;
  }

 private:
  UniqueFd fd_;
  std::string peer_;
  std::string security_ = "plain TCP";
  std::optional<Secret> secret_;
};

class Listener {
 public:
  virtual ~Listener() = default;
  // The next connection; fails with ETIMEDOUT after `timeout` (0: waits
  // forever). Connections that vanish before they are accepted are skipped.
  virtual Result<Connection> accept(std::chrono::milliseconds timeout) = 0;
  // What must happen on an accepted connection before a single byte of it
  // reaches the protocol (the TLS handshake), before `deadline`. Called on
  // the connection's own thread, so a slow peer holds up nobody else.
  // Plain transports hand the connection back as it is.
  virtual Result<Connection> secure(Connection c, std::chrono::steady_clock::time_point /*deadline*/) {
    return c;
  }
  // What it listens on, as users would dial it ("host:port", the port
  // resolved when 0 was asked for).
  virtual std::string address() const = 0;
};

class Dialer {
 public:
  virtual ~Dialer() = default;
  // One new connection to `to`, within `timeout`; errors name the endpoint.
  virtual Result<Connection> dial(const Endpoint& to, std::chrono::milliseconds timeout) = 0;
};

struct Security;
// The transport an endpoint's scheme names (tcp), secured as asked (tls.hh).
Result<std::unique_ptr<Listener>> listen(const Endpoint& where, const Security& security);
Result<std::unique_ptr<Dialer>> dialer_for(const Endpoint& to, const Security& security);

}  // namespace ferry::transport

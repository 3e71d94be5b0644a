#pragma once
// TCP for the migration: listening and connecting with TCP_NODELAY, a
// bounded TCP_USER_TIMEOUT and generous socket buffers (tcp.cc says why),
// as a Listener/Dialer pair and as the plain socket calls beneath them
// (which the transport benchmarks and tests use directly).
#include <chrono>
#include <cstdint>

#include "userspace/base/error.hh"
#include "userspace/base/unique_fd.hh"
#include "userspace/transport/connection.hh"
#include "userspace/transport/endpoint.hh"

namespace ferry::transport {

class TcpListener final : public Listener {
 public:
  // Binds and listens; port 0 picks a free port (address() tells which).
  static Result<std::unique_ptr<TcpListener>> open(const Endpoint& where, int backlog = 16);
  Result<Connection> accept(std::chrono::milliseconds timeout) override;
  std::string address() const override { return address_; }
  std::uint16_t port() const { return port_; }

 private:
  TcpListener(UniqueFd fd, std::string address, std::uint16_t port)
      : fd_(std::move(fd)), address_(std::move(address)), port_(port) {}
  UniqueFd fd_;
  std::string address_;
  std::uint16_t port_ = 0;
};

class TcpDialer final : public Dialer {
 public:
  Result<Connection> dial(const Endpoint& to, std::chrono::milliseconds timeout) override;
};

// The socket calls beneath. listen_tcp: port 0 picks a free port
// (listening_port() tells which).
Result<UniqueFd> listen_tcp(const Endpoint& where, int backlog = 16);
Result<std::uint16_t> listening_port(int fd);
Result<UniqueFd> connect_tcp(const Endpoint& to, std::chrono::milliseconds timeout);
// accept() with a timeout (0: forever); the accepted socket gets the same options.
Result<UniqueFd> accept_tcp(int listen_fd, std::chrono::milliseconds timeout);

}  // namespace ferry::transport

#pragma once
// A network namespace of the test's own, for a client that must not share
// the host's stack (a guest's peer on a bridge): made on a helper thread
// (namespaces are per thread), kept by its fd, entered by short-lived
// threads that create sockets or start commands there (a socket stays in
// the namespace it was made in; a child process inherits its thread's).
// Links are made with netlink (libmnl): busybox's `ip` in the sandbox can
// neither name a veth's peer nor move a link between namespaces.
#include <chrono>
#include <functional>
#include <string>

#include "tests/e2e/process.hh"

namespace ferry::test {

class ClientNetns {
 public:
  // An empty `error()` when it worked.
  ClientNetns();
  ~ClientNetns();
  ClientNetns(const ClientNetns&) = delete;
  ClientNetns& operator=(const ClientNetns&) = delete;

  const std::string& error() const { return error_; }
  // A veth pair: `here` in the caller's namespace, `there` in this one.
  bool add_veth(const std::string& here, const std::string& there);
  // Runs `fn` on a thread inside the namespace (sockets made there, and
  // processes started there, belong to it).
  void inside(const std::function<void()>& fn) const;
  ProcessResult sh(const std::string& cmd, std::chrono::seconds limit = std::chrono::seconds(60)) const;
  // A TCP connection from inside to ip:port; -1 on failure.
  int connect_tcp(const std::string& ip, int port) const;

 private:
  int fd_ = -1;
  std::string error_;
};

}  // namespace ferry::test

#pragma once
// An in-process transport: every dial() makes a socketpair(AF_UNIX,
// SOCK_STREAM), keeps one end for the next accept() and returns the other.
// Real sockets, real io_uring reads and sends, no network: the migration
// sessions' unit tests run a source and a destination in one process over
// it, and a test can put a relay between the two ends to cut, corrupt or
// drop frames deterministically (connect_hook).
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>

#include "userspace/transport/connection.hh"

namespace ferry::transport {

class LocalLink final : public Listener, public Dialer {
 public:
  // Called with both ends of each new pair (dialer's first) before the
  // listener's end is queued; it may replace either (a relay in between).
  using ConnectHook = std::function<void(Connection& dialer_end, Connection& listener_end)>;
  explicit LocalLink(ConnectHook hook = {}) : hook_(std::move(hook)) {}

  Result<Connection> dial(const Endpoint& to, std::chrono::milliseconds timeout) override;
  Result<Connection> accept(std::chrono::milliseconds timeout) override;
  std::string address() const override { return "local"; }
  // Makes every blocked and later accept() fail ("listener closed").
  void close();

 private:
  ConnectHook hook_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Connection> pending_;
  std::uint64_t dialed_ = 0;
  bool closed_ = false;
};

}  // namespace ferry::transport

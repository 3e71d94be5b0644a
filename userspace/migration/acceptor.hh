#pragma once
// The destination's front door: accepts connections on its own thread and
// reads each one's HELLO on a thread of its own, so a silent or slow peer
// delays nobody else. Only connections whose HELLO arrived in time come
// out of next(); the others (garbage, a wrong version, nothing before the
// deadline) are answered with ABORT where possible, logged, counted, and
// closed. At most `max_handshakes` connections may be in their handshake at
// once, and as many may wait in the queue: one more is closed at once, so a
// flood costs a bounded number of threads and buffers. Internal to the
// destination.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <thread>

#include "userspace/migration/incoming.hh"
#include "userspace/transport/connection.hh"

namespace ferry::migration {

class Acceptor {
 public:
  struct Options {
    std::chrono::milliseconds read_timeout{60000};  // of the streams handed out
    std::chrono::milliseconds hello_deadline{kHelloDeadline};
    std::size_t max_handshakes = 16;
  };
  Acceptor(transport::Listener& listener, Options o);
  Acceptor(const Acceptor&) = delete;
  Acceptor& operator=(const Acceptor&) = delete;
  // Stops accepting, cuts the handshakes under way short and waits for them.
  ~Acceptor();

  // The next connection that said HELLO, oldest first; fails with
  // ETIMEDOUT after `timeout` (0: waits forever), or when the listener
  // failed (closed).
  Result<Incoming> next(std::chrono::milliseconds timeout);
  // Connections refused so far (bad or missing HELLO, or over a cap).
  std::uint32_t refused() const { return refused_; }
  // From now on a migrating HELLO is answered with ABORT ("this destination
  // is busy") instead of queued: once the session has its streams only
  // resolvers may come in, and queued connections must not pile up.
  void close_migrations() { migrations_closed_ = true; }

 private:
  struct Handshake {
    std::thread thread;
    std::shared_ptr<std::atomic<bool>> done;
  };
  void accept_loop();
  void handshake(transport::Connection c);
  void reap();  // joins handshakes that have ended; accept thread only

  transport::Listener& listener_;
  Options o_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> migrations_closed_{false};
  std::atomic<std::uint32_t> refused_{0};
  std::atomic<std::size_t> in_handshake_{0};
  std::list<Handshake> handshakes_;  // accept thread only (and the destructor, after it)

  std::mutex mu_;
  std::condition_variable cv_;
  // Duplicates of the sockets still in their handshake, for the destructor
  // to shut down (a duplicate keeps the number from being reused).
  std::set<int> handshake_fds_;
  std::deque<Incoming> ready_;
  std::optional<Error> listener_error_;
  std::thread accept_thread_;  // last: it uses the members above
};

}  // namespace ferry::migration

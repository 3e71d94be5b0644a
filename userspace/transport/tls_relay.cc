// The userspace TLS relay, for kernels without TLS (tls_internal.hh). One
// thread per connection moves bytes between the engine's end of a
// socketpair and the TLS connection, both non-blocking, in one poll loop:
// OpenSSL does not allow SSL_read and SSL_write on two threads at once.
// The engine keeps its io_uring path; it just talks to a socketpair.
#include <fcntl.h>
#include <openssl/err.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>
#include <system_error>
#include <thread>
#include <vector>

#include "userspace/base/thread_name.hh"
#include "userspace/transport/tls_internal.hh"

namespace ferry::transport {
namespace {

constexpr std::size_t kBuffer = 256 * 1024;
constexpr int kPairBuffer = 4 * 1024 * 1024;
// How long the peer has to close its side after the engine closed ours.
constexpr std::chrono::seconds kPeerCloseWait{30};

struct Relay {
  SslPtr ssl;
  UniqueFd tcp, plain;
  std::shared_ptr<const TlsContext::State> keep;

  void run();
};

void Relay::run() {
  name_this_thread("tls-relay");
  SigpipeBlock no_sigpipe;
  std::vector<char> up(kBuffer), down(kBuffer);  // engine -> peer, peer -> engine
  std::size_t up_len = 0, up_off = 0, down_len = 0, down_off = 0;
  bool plain_eof = false, tls_eof = false, sent_close = false, closed_plain = false;
  bool write_wants_read = false, write_wants_write = false, read_wants_write = false;
  std::chrono::steady_clock::time_point close_deadline{};
  std::string why;
  while (why.empty()) {
    bool progress = false;
    if (!plain_eof && up_len == 0) {
      const ssize_t n = ::recv(plain.get(), up.data(), up.size(), MSG_DONTWAIT);
      if (n > 0) {
        up_len = static_cast<std::size_t>(n), up_off = 0, progress = true;
      } else if (n == 0) {
        plain_eof = true, progress = true;
      } else if (errno != EAGAIN && errno != EINTR) {
        why = fmt::format("engine side: {}", std::strerror(errno));
      }
    }
    if (up_off < up_len) {
      write_wants_read = write_wants_write = false;
      const int r = SSL_write(ssl.get(), up.data() + up_off, static_cast<int>(up_len - up_off));
      if (r > 0) {
        up_off += static_cast<std::size_t>(r), progress = true;
        if (up_off == up_len) up_len = up_off = 0;
      } else {
        const int e = SSL_get_error(ssl.get(), r);
        if (e == SSL_ERROR_WANT_WRITE) write_wants_write = true;
        else if (e == SSL_ERROR_WANT_READ) write_wants_read = true;
        else {
          const int err = errno;
          const std::string q = ssl_errors();
          why = fmt::format("sending: {}", q.empty() ? std::strerror(err) : q);
        }
      }
    }
    if (plain_eof && up_len == 0 && !sent_close) {
      // close_notify: the peer reads a clean end. One record in a socket
      // buffer that had room for the engine's data; if it does not fit now
      // the peer sees the end of the stream without it.
      (void)SSL_shutdown(ssl.get());
      ::shutdown(tcp.get(), SHUT_WR);
      sent_close = true, progress = true;
      close_deadline = std::chrono::steady_clock::now() + kPeerCloseWait;
    }
    if (!tls_eof && down_len == 0) {
      read_wants_write = false;
      const int r = SSL_read(ssl.get(), down.data(), static_cast<int>(down.size()));
      if (r > 0) {
        down_len = static_cast<std::size_t>(r), down_off = 0, progress = true;
      } else {
        const int e = SSL_get_error(ssl.get(), r);
        if (e == SSL_ERROR_WANT_WRITE) read_wants_write = true;
        else if (e == SSL_ERROR_ZERO_RETURN) tls_eof = true, progress = true;  // close_notify: a clean end
        else if (e == SSL_ERROR_SSL && ERR_GET_REASON(ERR_peek_error()) == SSL_R_UNEXPECTED_EOF_WHILE_READING) {
          // A kernel-TLS peer closes without close_notify: the stream ended
          // at a record boundary, which the engine's framing judges.
          ERR_clear_error();
          tls_eof = true, progress = true;
        } else if (e != SSL_ERROR_WANT_READ) {
          const int err = errno;
          const std::string q = ssl_errors();
          why = fmt::format("receiving: {}", q.empty() ? std::strerror(err) : q);
        }
      }
    }
    if (down_off < down_len) {
      const ssize_t n = ::send(plain.get(), down.data() + down_off, down_len - down_off, MSG_DONTWAIT | MSG_NOSIGNAL);
      if (n > 0) {
        down_off += static_cast<std::size_t>(n), progress = true;
        if (down_off == down_len) down_len = down_off = 0;
      } else if (n < 0 && errno != EAGAIN && errno != EINTR) {
        why = fmt::format("engine side: {}", std::strerror(errno));
      }
    }
    if (tls_eof && down_len == 0 && !closed_plain) {
      ::shutdown(plain.get(), SHUT_WR);  // the engine reads the end of the stream
      closed_plain = true, progress = true;
    }
    if (plain_eof && sent_close && closed_plain) break;
    if (progress || !why.empty()) continue;
    pollfd p[2] = {{plain.get(), 0, 0}, {tcp.get(), 0, 0}};
    if (!plain_eof && up_len == 0) p[0].events |= POLLIN;
    if (down_off < down_len) p[0].events |= POLLOUT;
    // An engine end that was closed reports POLLHUP whatever is asked: with
    // nothing to read from it or write to it, leave it out, or poll would
    // return at once, forever.
    if (p[0].events == 0) p[0].fd = -1;
    if ((!tls_eof && down_len == 0) || write_wants_read) p[1].events |= POLLIN;
    if (write_wants_write || read_wants_write) p[1].events |= POLLOUT;
    if (p[1].events == 0) p[1].fd = -1;  // likewise a socket shut down both ways
    // Once the engine is done, the peer has a while to close its side; a
    // peer that never does must not keep the thread (and the socket).
    int timeout_ms = -1;
    if (sent_close) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(close_deadline -
                                                                              std::chrono::steady_clock::now());
      if (left.count() <= 0) break;
      timeout_ms = static_cast<int>(left.count());
    }
    if (::poll(p, 2, timeout_ms) < 0 && errno != EINTR) why = fmt::format("poll: {}", std::strerror(errno));
  }
  // Why it ended is not logged: the engine reports its own side of it, and
  // a relay may end while the process exits (no logger to write to then).
  (void)why;
  // Either side learns that the other is gone.
  ::shutdown(plain.get(), SHUT_RDWR);
  ::shutdown(tcp.get(), SHUT_RDWR);
}

}  // namespace

SigpipeBlock::SigpipeBlock() {
  sigset_t pipe, pending, old;
  sigemptyset(&pipe);
  sigaddset(&pipe, SIGPIPE);
  sigpending(&pending);
  was_pending_ = sigismember(&pending, SIGPIPE) == 1;
  pthread_sigmask(SIG_BLOCK, &pipe, &old);
  was_blocked_ = sigismember(&old, SIGPIPE) == 1;
}

SigpipeBlock::~SigpipeBlock() {
  sigset_t pipe, pending;
  sigemptyset(&pipe);
  sigaddset(&pipe, SIGPIPE);
  sigpending(&pending);
  if (!was_pending_ && sigismember(&pending, SIGPIPE) == 1) {
    const timespec zero{0, 0};
    (void)sigtimedwait(&pipe, nullptr, &zero);  // ours: drop it
  }
  if (!was_blocked_) pthread_sigmask(SIG_UNBLOCK, &pipe, nullptr);
}

Result<UniqueFd> start_tls_relay(SslPtr ssl, UniqueFd tcp, std::shared_ptr<const TlsContext::State> keep) {
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return fail_sys("socketpair");
  UniqueFd engine(sv[0]), relay(sv[1]);
  for (int fd : sv) {
    // Deep buffers: the engine queues whole batches of pages.
    (void)::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &kPairBuffer, sizeof kPairBuffer);
    (void)::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &kPairBuffer, sizeof kPairBuffer);
  }
  SSL_set_mode(ssl.get(), SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  if (auto flags = ::fcntl(tcp.get(), F_GETFL); flags < 0 || ::fcntl(tcp.get(), F_SETFL, flags | O_NONBLOCK) != 0)
    return fail_sys("fcntl(O_NONBLOCK)");
  try {
    auto r = std::make_unique<Relay>(Relay{std::move(ssl), std::move(tcp), std::move(relay), std::move(keep)});
    std::thread([r = std::move(r)] { r->run(); }).detach();
  } catch (const std::system_error& e) {
    return fail("no thread for the TLS relay: {}", e.what());
  }
  return engine;
}

}  // namespace ferry::transport

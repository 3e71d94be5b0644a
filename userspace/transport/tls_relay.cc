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
        else why = fmt::format("sending: {}", ssl_errors().empty() ? std::strerror(errno) : ssl_errors());
      }
    }
    if (plain_eof && up_len == 0 && !sent_close) {
      (void)SSL_shutdown(ssl.get());  // close_notify: the peer reads a clean end
      ::shutdown(tcp.get(), SHUT_WR);
      sent_close = true, progress = true;
    }
    if (!tls_eof && down_len == 0) {
      read_wants_write = false;
      const int r = SSL_read(ssl.get(), down.data(), static_cast<int>(down.size()));
      if (r > 0) {
        down_len = static_cast<std::size_t>(r), down_off = 0, progress = true;
      } else {
        const int e = SSL_get_error(ssl.get(), r);
        if (e == SSL_ERROR_WANT_WRITE) read_wants_write = true;
        else if (e == SSL_ERROR_ZERO_RETURN || (e == SSL_ERROR_SYSCALL && ERR_peek_error() == 0)) tls_eof = true, progress = true;
        else if (e != SSL_ERROR_WANT_READ) why = fmt::format("receiving: {}", ssl_errors());
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
    if ((!tls_eof && down_len == 0) || write_wants_read) p[1].events |= POLLIN;
    if (write_wants_write || read_wants_write) p[1].events |= POLLOUT;
    if (::poll(p, 2, -1) < 0 && errno != EINTR) why = fmt::format("poll: {}", std::strerror(errno));
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

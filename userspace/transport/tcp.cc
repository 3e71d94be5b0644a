// TCP for the migration (tcp.hh): listening, connecting with a timeout,
// accepting with a timeout, and the Listener/Dialer built on them.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>

#include <cerrno>
#include <chrono>
#include <fstream>
#include <memory>

#include "userspace/transport/socket_util.hh"
#include "userspace/transport/tcp.hh"

namespace ferry::transport {
namespace {

using SteadyClock = std::chrono::steady_clock;

// What we ask for per direction; the kernel doubles it for bookkeeping.
constexpr int kSocketBuffer = 4 << 20;

struct FreeAddrInfo {
  void operator()(addrinfo* ai) const { ::freeaddrinfo(ai); }
};
using AddrInfoList = std::unique_ptr<addrinfo, FreeAddrInfo>;

Result<AddrInfoList> resolve(const Endpoint& where, bool passive) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0);
  const std::string port = std::to_string(where.port);
  addrinfo* list = nullptr;
  if (int rc = ::getaddrinfo(where.host.c_str(), port.c_str(), &hints, &list); rc != 0) {
    if (rc == EAI_SYSTEM) return std::unexpected(sys_error(fmt::format("resolve '{}'", where.host), errno));
    return fail("resolve '{}': {}", where.host, ::gai_strerror(rc));
  }
  return AddrInfoList(list);
}

// The third field of net.ipv4.tcp_wmem / tcp_rmem: how far the kernel's
// autotuning grows a socket buffer. 0 when unreadable.
long autotune_ceiling(const char* path) {
  std::ifstream in(path);
  long min = 0, def = 0, max = 0;
  if (in >> min >> def >> max) return max;
  return 0;
}

// Setting SO_SNDBUF/SO_RCVBUF switches the kernel's autotuning off for that
// buffer, so it only pays when autotuning would stop below what we ask for.
// SO_*BUFFORCE (CAP_NET_ADMIN) is not capped by net.core.[rw]mem_max; the
// plain option is. Failures are harmless: the socket just keeps the default.
void raise_buffer(int fd, int opt, int force_opt, const char* autotune_sysctl) {
  if (autotune_ceiling(autotune_sysctl) >= 2L * kSocketBuffer) return;
  int bytes = kSocketBuffer;
  if (::setsockopt(fd, SOL_SOCKET, force_opt, &bytes, sizeof bytes) == 0) return;
  (void)::setsockopt(fd, SOL_SOCKET, opt, &bytes, sizeof bytes);
}

void raise_buffers(int fd) {
  raise_buffer(fd, SO_SNDBUF, SO_SNDBUFFORCE, "/proc/sys/net/ipv4/tcp_wmem");
  raise_buffer(fd, SO_RCVBUF, SO_RCVBUFFORCE, "/proc/sys/net/ipv4/tcp_rmem");
}

int remaining_ms(SteadyClock::time_point deadline) {
  auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - SteadyClock::now());
  return static_cast<int>(std::max<std::int64_t>(0, left.count()));
}

// poll() for `events`, retrying on EINTR. Returns false on timeout.
// timeout 0 waits forever.
Result<bool> wait_for(int fd, short events, std::chrono::milliseconds timeout,
                      SteadyClock::time_point deadline) {
  for (;;) {
    pollfd p{.fd = fd, .events = events, .revents = 0};
    int rc = ::poll(&p, 1, timeout.count() > 0 ? remaining_ms(deadline) : -1);
    if (rc > 0) return true;
    if (rc == 0) return false;
    if (errno != EINTR) return fail_sys("poll");
  }
}

Result<UniqueFd> connect_one(const addrinfo& ai, std::chrono::milliseconds timeout,
                             SteadyClock::time_point deadline) {
  UniqueFd fd(::socket(ai.ai_family, ai.ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai.ai_protocol));
  if (!fd) return fail_sys("socket");
  // Before connect(): the receive buffer size decides the window scale
  // offered in the SYN.
  raise_buffers(fd.get());
  if (::connect(fd.get(), ai.ai_addr, ai.ai_addrlen) != 0) {
    if (errno != EINPROGRESS) return fail_sys("connect");
    auto ready = wait_for(fd.get(), POLLOUT, timeout, deadline);
    if (!ready) return std::unexpected(std::move(ready.error()));
    if (!*ready) {
      return std::unexpected(Error(fmt::format("no connection within {} ms", timeout.count()), ETIMEDOUT));
    }
    int err = 0;
    socklen_t len = sizeof err;
    if (::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len) != 0) return fail_sys("getsockopt(SO_ERROR)");
    if (err != 0) return std::unexpected(sys_error("connect", err));
  }
  if (auto s = set_blocking(fd.get()); !s) return std::unexpected(std::move(s.error()));
  if (auto s = tune_tcp_socket(fd.get()); !s) return std::unexpected(std::move(s.error()));
  return fd;
}

}  // namespace

Status set_blocking(int fd) {
  int flags = ::fcntl(fd, F_GETFL);
  if (flags < 0) return fail_sys("fcntl(F_GETFL)");
  if ((flags & O_NONBLOCK) && ::fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) != 0) {
    return fail_sys("fcntl(F_SETFL, blocking)");
  }
  return {};
}

Status tune_tcp_socket(int fd) {
  int one = 1;
  if (::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0) {
    return fail_sys("setsockopt(TCP_NODELAY)");
  }
  // Data unacknowledged for this long fails the connection. Without it a
  // partitioned peer (no RST) keeps a send blocked for ~15 minutes of
  // retransmissions, and a migration's timeouts never get to act.
  unsigned user_timeout_ms = 30000;
  if (::setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout_ms, sizeof user_timeout_ms) != 0) {
    return fail_sys("setsockopt(TCP_USER_TIMEOUT)");
  }
  raise_buffers(fd);
  return {};
}

Result<UniqueFd> listen_tcp(const Endpoint& where, int backlog) {
  auto list = resolve(where, /*passive=*/true);
  if (!list) return std::unexpected(std::move(list.error()).context(fmt::format("listen on {}", where.str())));
  Error last("no addresses");
  for (const addrinfo* ai = list->get(); ai; ai = ai->ai_next) {
    UniqueFd fd(::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol));
    if (!fd) {
      last = sys_error("socket");
      continue;
    }
    int one = 1;
    if (::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0) {
      last = sys_error("setsockopt(SO_REUSEADDR)");
      continue;
    }
    // Accepted sockets inherit the buffers, and the receive buffer must be
    // set before the handshake to get a matching window scale.
    raise_buffers(fd.get());
    if (::bind(fd.get(), ai->ai_addr, ai->ai_addrlen) != 0) {
      last = sys_error("bind");
      continue;
    }
    if (::listen(fd.get(), backlog) != 0) {
      last = sys_error("listen");
      continue;
    }
    return fd;
  }
  return std::unexpected(std::move(last).context(fmt::format("listen on {}", where.str())));
}

Result<std::uint16_t> listening_port(int fd) {
  sockaddr_storage addr{};
  socklen_t len = sizeof addr;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) return fail_sys("getsockname");
  if (addr.ss_family == AF_INET) return ntohs(reinterpret_cast<const sockaddr_in&>(addr).sin_port);
  if (addr.ss_family == AF_INET6) return ntohs(reinterpret_cast<const sockaddr_in6&>(addr).sin6_port);
  return fail("getsockname: not an IP socket (family {})", addr.ss_family);
}

Result<UniqueFd> connect_tcp(const Endpoint& to, std::chrono::milliseconds timeout) {
  const auto what = fmt::format("connect to {}", to.str());
  if (to.port == 0) return fail("{}: port 0 is only for listening", what);
  auto list = resolve(to, /*passive=*/false);
  if (!list) return std::unexpected(std::move(list.error()).context(what));
  // One deadline for all addresses a name resolves to.
  const auto deadline = SteadyClock::now() + timeout;
  Error last("no addresses");
  for (const addrinfo* ai = list->get(); ai; ai = ai->ai_next) {
    auto fd = connect_one(*ai, timeout, deadline);
    if (fd) return fd;
    last = std::move(fd.error());
    if (last.sys_errno() == ETIMEDOUT) break;
  }
  return std::unexpected(std::move(last).context(what));
}

Result<UniqueFd> accept_tcp(int listen_fd, std::chrono::milliseconds timeout) {
  const auto deadline = SteadyClock::now() + timeout;
  for (;;) {
    auto ready = wait_for(listen_fd, POLLIN, timeout, deadline);
    if (!ready) return std::unexpected(std::move(ready.error()).context("accept"));
    if (!*ready) {
      return std::unexpected(
          Error(fmt::format("accept: no connection within {} ms", timeout.count()), ETIMEDOUT));
    }
    UniqueFd fd(::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC));
    if (!fd) {
      // The connection may be gone again between poll and accept, and a
      // non-blocking listener says so with EAGAIN.
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ECONNABORTED || errno == EINTR) continue;
      return fail_sys("accept");
    }
    if (auto s = tune_tcp_socket(fd.get()); !s) return std::unexpected(std::move(s.error()).context("accept"));
    return fd;
  }
}

Result<std::unique_ptr<TcpListener>> TcpListener::open(const Endpoint& where, int backlog) {
  auto fd = listen_tcp(where, backlog);
  if (!fd) return std::unexpected(std::move(fd.error()));
  auto port = listening_port(fd->get());
  if (!port) return std::unexpected(std::move(port.error()).context(fmt::format("listen on {}", where.str())));
  Endpoint bound = where;
  bound.port = *port;
  return std::unique_ptr<TcpListener>(new TcpListener(std::move(*fd), bound.str(), *port));
}

Result<Connection> TcpListener::accept(std::chrono::milliseconds timeout) {
  auto fd = accept_tcp(fd_.get(), timeout);
  if (!fd) return std::unexpected(std::move(fd.error()));
  sockaddr_storage addr{};
  socklen_t len = sizeof addr;
  std::string peer = "?";
  char host[INET6_ADDRSTRLEN] = {};
  if (::getpeername(fd->get(), reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    if (addr.ss_family == AF_INET) {
      const auto& a = reinterpret_cast<const sockaddr_in&>(addr);
      if (::inet_ntop(AF_INET, &a.sin_addr, host, sizeof host)) peer = Endpoint{host, ntohs(a.sin_port)}.str();
    } else if (addr.ss_family == AF_INET6) {
      const auto& a = reinterpret_cast<const sockaddr_in6&>(addr);
      if (::inet_ntop(AF_INET6, &a.sin6_addr, host, sizeof host)) peer = Endpoint{host, ntohs(a.sin6_port)}.str();
    }
  }
  return Connection(std::move(*fd), std::move(peer));
}

Result<Connection> TcpDialer::dial(const Endpoint& to, std::chrono::milliseconds timeout) {
  auto fd = connect_tcp(to, timeout);
  if (!fd) return std::unexpected(std::move(fd.error()));
  return Connection(std::move(*fd), to.str());
}

}  // namespace ferry::transport

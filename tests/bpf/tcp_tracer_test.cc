// TcpTracer against the real kernel: real loopback connections, checked
// against what the kernel itself reports for the same socket (TCP_INFO).
// Needs root (CAP_BPF + CAP_PERFMON, CAP_NET_ADMIN for TCP_REPAIR).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <functional>
#include <future>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "bpf/tcp_tracer.hh"

namespace ferry::bpf {
namespace {

class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  Fd(Fd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  Fd& operator=(Fd&& o) noexcept {
    std::swap(fd_, o.fd_);
    return *this;
  }
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  int get() const { return fd_; }

 private:
  int fd_;
};

uint64_t monotonic_ns() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000u + static_cast<uint64_t>(ts.tv_nsec);
}

// A listening socket on the loopback address of `family`, on a free port.
struct Listener {
  Fd fd;
  int family = AF_INET;
  uint16_t port = 0;
};

Listener listen_loopback(int family) {
  Listener l{Fd(::socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0)), family, 0};
  EXPECT_GE(l.fd.get(), 0) << std::strerror(errno);
  sockaddr_storage ss{};
  socklen_t len = 0;
  if (family == AF_INET6) {
    auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
    a->sin6_family = AF_INET6;
    a->sin6_addr = in6addr_loopback;
    len = sizeof *a;
  } else {
    auto* a = reinterpret_cast<sockaddr_in*>(&ss);
    a->sin_family = AF_INET;
    a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    len = sizeof *a;
  }
  EXPECT_EQ(::bind(l.fd.get(), reinterpret_cast<sockaddr*>(&ss), len), 0) << std::strerror(errno);
  EXPECT_EQ(::listen(l.fd.get(), 4), 0) << std::strerror(errno);
  EXPECT_EQ(::getsockname(l.fd.get(), reinterpret_cast<sockaddr*>(&ss), &len), 0);
  l.port = ntohs(family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port
                                    : reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
  return l;
}

Fd connect_to(const Listener& l) {
  Fd fd(::socket(l.family, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_storage ss{};
  socklen_t len = 0;
  if (l.family == AF_INET6) {
    auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
    *a = sockaddr_in6{.sin6_family = AF_INET6, .sin6_port = htons(l.port), .sin6_flowinfo = 0,
                      .sin6_addr = in6addr_loopback, .sin6_scope_id = 0};
    len = sizeof *a;
  } else {
    auto* a = reinterpret_cast<sockaddr_in*>(&ss);
    a->sin_family = AF_INET;
    a->sin_port = htons(l.port);
    a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    len = sizeof *a;
  }
  EXPECT_EQ(::connect(fd.get(), reinterpret_cast<sockaddr*>(&ss), len), 0) << std::strerror(errno);
  return fd;
}

bool send_all(int fd, const char* data, size_t n) {
  while (n > 0) {
    ssize_t w = ::send(fd, data, n, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    data += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

// Reads exactly n bytes, or fails after 10 s without progress.
bool recv_all(int fd, char* data, size_t n) {
  while (n > 0) {
    pollfd p{.fd = fd, .events = POLLIN, .revents = 0};
    if (::poll(&p, 1, 10'000) != 1) return false;
    ssize_t r = ::recv(fd, data, n, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    data += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

uint64_t socket_cookie(int fd) {
  uint64_t cookie = 0;
  socklen_t len = sizeof cookie;
  EXPECT_EQ(::getsockopt(fd, SOL_SOCKET, SO_COOKIE, &cookie, &len), 0) << std::strerror(errno);
  return cookie;
}

tcp_info tcp_info_of(int fd) {
  tcp_info info{};
  socklen_t len = sizeof info;
  EXPECT_EQ(::getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &len), 0) << std::strerror(errno);
  return info;
}

std::optional<TcpConnStats> find(const std::vector<TcpConnStats>& conns, uint64_t cookie) {
  for (const auto& c : conns) {
    if (c.cookie == cookie) return c;
  }
  return std::nullopt;
}

// What the client saw of one transfer, for comparison with the tracer.
struct Transfer {
  uint64_t cookie = 0;          // client socket
  uint64_t server_cookie = 0;   // the accepted socket
  uint16_t client_port = 0;
  tcp_info info{};              // client's TCP_INFO with nothing in flight
  size_t bytes = 0;
};

// Streams `bytes` from a client to `l`'s accepted socket. The server then
// answers 'd' (which acknowledges everything), the client reads its
// TCP_INFO, and only then does the server send 't': the tcp_probe event for
// 't' records exactly the state TCP_INFO showed, since the client has no
// data in flight for 't' to acknowledge.
// `connected` runs on the client socket before any data is sent.
Transfer stream(const Listener& l, size_t bytes,
                const std::function<void(int)>& connected = [](int) {}) {
  Transfer t;
  t.bytes = bytes;
  std::promise<void> info_read;
  std::promise<uint64_t> server_cookie;
  std::thread server([&] {
    Fd conn(::accept4(l.fd.get(), nullptr, nullptr, SOCK_CLOEXEC));
    server_cookie.set_value(conn.get() >= 0 ? socket_cookie(conn.get()) : 0);
    std::vector<char> buf(bytes);
    bool ok = conn.get() >= 0 && recv_all(conn.get(), buf.data(), buf.size()) &&
              send_all(conn.get(), "d", 1);
    info_read.get_future().wait();
    if (ok) send_all(conn.get(), "t", 1);
    char eof;
    recv_all(conn.get(), &eof, 1);  // until the client closes
  });

  Fd client = connect_to(l);
  connected(client.get());
  t.cookie = socket_cookie(client.get());
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  ::getsockname(client.get(), reinterpret_cast<sockaddr*>(&ss), &len);
  t.client_port = ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);  // same offset in _in6
  std::vector<char> data(bytes, 'x');
  EXPECT_TRUE(send_all(client.get(), data.data(), data.size())) << std::strerror(errno);
  char reply = 0;
  EXPECT_TRUE(recv_all(client.get(), &reply, 1));
  EXPECT_EQ(reply, 'd');
  t.info = tcp_info_of(client.get());
  EXPECT_EQ(t.info.tcpi_unacked, 0u) << "data still in flight after the server's reply";
  info_read.set_value();
  EXPECT_TRUE(recv_all(client.get(), &reply, 1));
  EXPECT_EQ(reply, 't');
  t.server_cookie = server_cookie.get_future().get();
  client = Fd();
  server.join();
  return t;
}

bool tracefs_events_visible() {
  return ::access("/sys/kernel/tracing/events", F_OK) == 0 ||
         ::access("/sys/kernel/debug/tracing/events", F_OK) == 0;
}

class TcpTracerTest : public ::testing::Test {
 protected:
  // Attaching to tracepoints needs tracefs, which hosts often leave
  // unmounted: mount it in a private mount namespace, leaving the host as
  // it is. Runs before any test thread exists (unshare needs that).
  static void SetUpTestSuite() {
    if (::geteuid() != 0) return;
    if (tracefs_events_visible()) return;
    if (::unshare(CLONE_NEWNS) != 0) {
      suite_error_ = std::string("unshare(CLONE_NEWNS): ") + std::strerror(errno);
    } else if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) {
      suite_error_ = std::string("make / private: ") + std::strerror(errno);
    } else if (::mount("nodev", "/sys/kernel/tracing", "tracefs", 0, nullptr) != 0) {
      suite_error_ = std::string("mount tracefs: ") + std::strerror(errno);
    }
  }

  void SetUp() override {
    // Not a skip: CI runs as root, and a test that cannot run is a failure.
    ASSERT_EQ(::geteuid(), 0u) << "TcpTracer tests need root (CAP_BPF + CAP_PERFMON to load "
                                  "BPF, CAP_NET_ADMIN for TCP_REPAIR); run them as root";
    ASSERT_TRUE(suite_error_.empty()) << suite_error_;
    auto tracer = TcpTracer::open();
    ASSERT_TRUE(tracer) << tracer.error().what();
    tracer_.emplace(std::move(*tracer));
  }

  std::vector<TcpConnStats> connections() {
    auto conns = tracer_->connections();
    EXPECT_TRUE(conns) << conns.error().what();
    return conns ? *conns : std::vector<TcpConnStats>{};
  }

  static inline std::string suite_error_;
  std::optional<TcpTracer> tracer_;
};

TEST_F(TcpTracerTest, RecordsTheWatchedConnectionAsTheKernelSeesIt) {
  constexpr size_t kBytes = 4 << 20;
  Listener watched = listen_loopback(AF_INET);
  Listener other = listen_loopback(AF_INET);
  ASSERT_TRUE(tracer_->watch_port(watched.port));

  const uint64_t before = monotonic_ns();
  Transfer t = stream(watched, kBytes);
  const uint64_t after = monotonic_ns();
  Transfer u = stream(other, kBytes);
  if (HasFailure()) return;

  auto conns = connections();
  auto c = find(conns, t.cookie);
  ASSERT_TRUE(c) << "client connection to watched port " << watched.port << " not recorded ("
                 << conns.size() << " connections)";
  EXPECT_EQ(c->remote_port, watched.port);
  EXPECT_EQ(c->local_port, t.client_port);
  EXPECT_EQ(c->local, "127.0.0.1:" + std::to_string(t.client_port));
  EXPECT_EQ(c->remote, "127.0.0.1:" + std::to_string(watched.port));

  EXPECT_GT(c->samples, 0u);
  EXPECT_GT(c->srtt_us, 0.0);
  EXPECT_LT(c->srtt_us, 1e6);
  EXPECT_GE(c->cwnd_segments, 1u);
  EXPECT_GT(c->mss, 0u);
  EXPECT_GT(c->snd_wnd_bytes, 0u);
  EXPECT_GE(c->bytes_acked, kBytes * 9 / 10);
  // Exactly: every advance of snd_una was seen, from the first ACK of the
  // first byte (the baseline) to the event for 't' (everything acked).
  EXPECT_EQ(c->bytes_acked, kBytes);
  EXPECT_GE(c->last_update_ns, before);
  EXPECT_LE(c->last_update_ns, after);

  // The tcp_probe event for 't' saw the state TCP_INFO reported (see stream()).
  EXPECT_EQ(c->srtt_us, static_cast<double>(t.info.tcpi_rtt)) << "srtt is not in microseconds";
  EXPECT_EQ(c->cwnd_segments, t.info.tcpi_snd_cwnd);
  EXPECT_EQ(c->mss, t.info.tcpi_snd_mss);
  EXPECT_GT(c->capacity_bytes_per_s(), 0.0);

  // The accepted side of the same connection has the watched local port.
  auto s = find(conns, t.server_cookie);
  ASSERT_TRUE(s) << "server side of the watched connection not recorded";
  EXPECT_EQ(s->local_port, watched.port);
  EXPECT_EQ(s->remote_port, t.client_port);
  EXPECT_GT(s->samples, 0u);
  // It sent only 'd' and 't'; whether their ACKs were seen depends on the
  // client's delayed ACKs, which may ride on its FIN.
  EXPECT_LE(s->bytes_acked, 2u);

  for (const auto& x : conns) {
    EXPECT_NE(x.local_port, other.port) << "unwatched connection recorded: " << x.local;
    EXPECT_NE(x.remote_port, other.port) << "unwatched connection recorded: " << x.local;
    EXPECT_NE(x.cookie, u.cookie);
    EXPECT_NE(x.cookie, u.server_cookie);
  }
}

TEST_F(TcpTracerTest, ReportsIpv6Endpoints) {
  Listener l = listen_loopback(AF_INET6);
  ASSERT_TRUE(tracer_->watch_port(l.port));
  Transfer t = stream(l, 256 << 10);
  if (HasFailure()) return;

  auto c = find(connections(), t.cookie);
  ASSERT_TRUE(c) << "IPv6 connection not recorded";
  EXPECT_EQ(c->local, "[::1]:" + std::to_string(t.client_port));
  EXPECT_EQ(c->remote, "[::1]:" + std::to_string(l.port));
  EXPECT_EQ(c->bytes_acked, t.bytes);
  EXPECT_EQ(c->mss, t.info.tcpi_snd_mss);
}

// How migration code uses it: the port of its own socket, known only once
// connected (here the client's ephemeral port, not the listener's).
TEST_F(TcpTracerTest, WatchesAPortRegisteredAfterConnect) {
  Listener l = listen_loopback(AF_INET);
  uint16_t port = 0;
  Transfer t = stream(l, 1 << 20, [&](int fd) {
    sockaddr_in a{};
    socklen_t len = sizeof a;
    ASSERT_EQ(::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len), 0);
    port = ntohs(a.sin_port);
    ASSERT_TRUE(tracer_->watch_port(port));
  });
  if (HasFailure()) return;

  auto c = find(connections(), t.cookie);
  ASSERT_TRUE(c) << "connection on watched local port " << port << " not recorded";
  EXPECT_EQ(c->local_port, port);
  EXPECT_EQ(c->bytes_acked, t.bytes);
  // The socket was established before its port was watched: the mss must
  // still be found (on kernels without skaddr in tcp_probe, too).
  EXPECT_EQ(c->mss, t.info.tcpi_snd_mss);
}

// TCP_REPAIR (what CRIU restores sockets with) queues data as already sent
// without transmitting it, so the kernel has to retransmit it: a real
// retransmission, without dropping packets or waiting on timing luck.
TEST_F(TcpTracerTest, CountsRetransmissions) {
  Listener l = listen_loopback(AF_INET);
  ASSERT_TRUE(tracer_->watch_port(l.port));
  Fd client = connect_to(l);
  Fd server(::accept4(l.fd.get(), nullptr, nullptr, SOCK_CLOEXEC));
  ASSERT_GE(server.get(), 0) << std::strerror(errno);
  const uint64_t cookie = socket_cookie(client.get());

  // One ordinary exchange first: no retransmission yet.
  char byte = 'a';
  ASSERT_TRUE(send_all(client.get(), &byte, 1));
  ASSERT_TRUE(recv_all(server.get(), &byte, 1));
  ASSERT_TRUE(send_all(server.get(), &byte, 1));
  ASSERT_TRUE(recv_all(client.get(), &byte, 1));
  auto c = find(connections(), cookie);
  ASSERT_TRUE(c) << "connection not recorded";
  EXPECT_EQ(c->retransmits, 0u);

  int on = TCP_REPAIR_ON, queue = TCP_SEND_QUEUE, off = TCP_REPAIR_OFF;
  ASSERT_EQ(::setsockopt(client.get(), IPPROTO_TCP, TCP_REPAIR, &on, sizeof on), 0)
      << std::strerror(errno);
  ASSERT_EQ(::setsockopt(client.get(), IPPROTO_TCP, TCP_REPAIR_QUEUE, &queue, sizeof queue), 0)
      << std::strerror(errno);
  const char payload[] = "retransmit me";
  ASSERT_TRUE(send_all(client.get(), payload, sizeof payload)) << std::strerror(errno);
  ASSERT_EQ(::setsockopt(client.get(), IPPROTO_TCP, TCP_REPAIR, &off, sizeof off), 0)
      << std::strerror(errno);

  // It can only arrive by retransmission (tail loss probe or RTO).
  char got[sizeof payload] = {};
  ASSERT_TRUE(recv_all(server.get(), got, sizeof got)) << "payload never retransmitted";
  EXPECT_STREQ(got, payload);
  // The ACK for it, so the count below is final.
  ASSERT_TRUE(send_all(server.get(), &byte, 1));
  ASSERT_TRUE(recv_all(client.get(), &byte, 1));

  const tcp_info info = tcp_info_of(client.get());
  ASSERT_GE(info.tcpi_total_retrans, 1u);
  c = find(connections(), cookie);
  ASSERT_TRUE(c);
  EXPECT_EQ(c->retransmits, info.tcpi_total_retrans);
}

TEST_F(TcpTracerTest, WatchPortRejectsZeroAndMovedFromTracer) {
  auto zero = tracer_->watch_port(0);
  ASSERT_FALSE(zero);
  EXPECT_NE(zero.error().what().find("port 0"), std::string::npos) << zero.error().what();

  TcpTracer owner = std::move(*tracer_);
  auto moved = tracer_->connections();
  ASSERT_FALSE(moved);
  EXPECT_NE(moved.error().what().find("not loaded"), std::string::npos) << moved.error().what();
  EXPECT_FALSE(tracer_->watch_port(80));
  EXPECT_TRUE(owner.watch_port(80));
  EXPECT_TRUE(owner.connections());
}

TEST(TcpConnStats, CapacityIsWindowPerRoundTrip) {
  TcpConnStats s;
  s.cwnd_segments = 10;
  s.mss = 1000;
  s.srtt_us = 2000;  // 10 kB per 2 ms
  EXPECT_DOUBLE_EQ(s.capacity_bytes_per_s(), 5e6);
  s.srtt_us = 0;
  EXPECT_EQ(s.capacity_bytes_per_s(), 0.0) << "no RTT yet";
  s.srtt_us = 2000;
  s.mss = 0;
  EXPECT_EQ(s.capacity_bytes_per_s(), 0.0) << "mss unknown";
}

}  // namespace
}  // namespace ferry::bpf

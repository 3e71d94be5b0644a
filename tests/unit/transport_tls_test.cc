// TLS on real loopback TCP (transport/tls.hh): both credential modes, the
// refusals (a wrong key, a stranger's CA, a name that does not match, a
// plain-TCP peer, a silent one), bytes through both ways on both data
// paths (kernel TLS where this kernel has it, and the userspace relay
// everywhere), and what crosses the wire: never the cleartext.
#include <gtest/gtest.h>

#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <future>
#include <random>
#include <thread>

#include "tests/temp_dir.hh"
#include "userspace/base/unique_fd.hh"
#include "userspace/transport/connection.hh"
#include "userspace/transport/tcp.hh"
#include "userspace/transport/tls.hh"

namespace ferry::transport {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// CA, host "dst" (named 127.0.0.1), host "src", a host whose certificate
// names another host, and a CA nobody trusts with a host of its own.
struct Certs {
  test::TempDir dir{"ferry-tls"};
  bool ok = false;
  Certs() {
    const std::string made = dir.path + "/ours", other = dir.path + "/theirs";
    ok = std::system(fmt::format("{} {} dst=IP:127.0.0.1 src=DNS:src wrongname=DNS:elsewhere >/dev/null && "
                                 "{} {} stranger=IP:127.0.0.1 >/dev/null",
                                 FERRY_TLS_CERTS, made, FERRY_TLS_CERTS, other)
                         .c_str()) == 0;
  }
  Security host(const std::string& name, const std::string& ca = "ours") const {
    return {Security::Kind::kCertificates, dir.path + "/" + ca + "/" + name};
  }
};

std::string write_psk(const test::TempDir& d, const std::string& name, const std::string& hex, int mode = 0600) {
  const std::string p = d.path + "/" + name;
  std::ofstream(p) << hex << "\n";
  ::chmod(p.c_str(), mode);
  return p;
}

const std::string kKeyA(64, 'a'), kKeyB(64, 'b');

// A listener and the result of securing one connection on each side.
struct Pair {
  Result<Connection> client = std::unexpected(Error("not run")), server = std::unexpected(Error("not run"));
};

Pair handshake(const Security& client_sec, const Security& server_sec, bool kernel = true,
               std::chrono::milliseconds deadline = 5000ms) {
  Pair p;
  auto l = TcpListener::open({"127.0.0.1", 0});
  if (!l) return p;
  auto sctx = TlsContext::load(server_sec, TlsRole::kServer);
  auto cctx = TlsContext::load(client_sec, TlsRole::kClient);
  if (!sctx || !cctx) {
    p.client = std::unexpected(cctx ? Error("-") : cctx.error());
    p.server = std::unexpected(sctx ? Error("-") : sctx.error());
    return p;
  }
  if (!kernel) {
    sctx->disable_kernel_tls();
    cctx->disable_kernel_tls();
  }
  auto server = std::async(std::launch::async, [&]() -> Result<Connection> {
    auto c = (*l)->accept(5s);
    if (!c) return c;
    return sctx->secure(std::move(*c), "", Clock::now() + deadline);
  });
  auto raw = connect_tcp({"127.0.0.1", (*l)->port()}, 5s);
  if (raw) p.client = cctx->secure(Connection(std::move(*raw), "dst"), "127.0.0.1", Clock::now() + deadline);
  p.server = server.get();
  return p;
}

// `n` random bytes each way at once, checked; the bytes as sent.
void exchange(Connection& a, Connection& b, std::size_t n) {
  std::vector<char> ab(n), ba(n);
  std::mt19937 rng(7);
  std::generate(ab.begin(), ab.end(), [&] { return static_cast<char>(rng()); });
  std::generate(ba.begin(), ba.end(), [&] { return static_cast<char>(rng()); });
  auto pump = [](int fd, const std::vector<char>& out, std::vector<char>& in) {
    std::thread w([&] {
      for (std::size_t at = 0; at < out.size();) {
        const ssize_t k = ::send(fd, out.data() + at, out.size() - at, MSG_NOSIGNAL);
        if (k <= 0) return;
        at += static_cast<std::size_t>(k);
      }
    });
    in.assign(out.size(), 0);
    for (std::size_t at = 0; at < in.size();) {
      const ssize_t k = ::recv(fd, in.data() + at, in.size() - at, 0);
      if (k <= 0) break;
      at += static_cast<std::size_t>(k);
    }
    w.join();
  };
  std::vector<char> got_at_b, got_at_a;
  std::thread tb([&] { pump(b.fd(), ba, got_at_b); });
  pump(a.fd(), ab, got_at_a);
  tb.join();
  EXPECT_TRUE(got_at_b == ab) << "client to server bytes differ";
  EXPECT_TRUE(got_at_a == ba) << "server to client bytes differ";
}

void expect_secured_pair(Pair& p, const std::string& who) {
  ASSERT_TRUE(p.client) << p.client.error().what();
  ASSERT_TRUE(p.server) << p.server.error().what();
  EXPECT_NE(p.client->security().find("TLS 1.3 TLS_AES_128_GCM_SHA256"), std::string::npos) << p.client->security();
  EXPECT_NE(p.server->security().find(who), std::string::npos) << p.server->security();
  ASSERT_TRUE(p.client->secret() && p.server->secret());
  EXPECT_EQ(*p.client->secret(), *p.server->secret()) << "both ends export the same session secret";
  exchange(*p.client, *p.server, 4 << 20);
}

TEST(Tls, APreSharedKeyAuthenticatesBothEndsOnBothDataPaths) {
  test::TempDir d;
  const Security psk{Security::Kind::kPreSharedKey, write_psk(d, "psk", kKeyA)};
  for (const bool kernel : {true, false}) {
    SCOPED_TRACE(kernel ? "kernel TLS where available" : "userspace relay");
    auto p = handshake(psk, psk, kernel);
    expect_secured_pair(p, "pre-shared key");
    const bool want_kernel = kernel && kernel_tls_available();
    if (p.client) std::cout << "secured: " << p.client->security() << "\n";
    EXPECT_NE(p.client->security().find(want_kernel ? "kernel TLS" : "userspace relay"), std::string::npos)
        << p.client->security();
  }
  // Two connections of one key still have secrets of their own.
  auto p1 = handshake(psk, psk), p2 = handshake(psk, psk);
  ASSERT_TRUE(p1.client && p2.client);
  EXPECT_NE(*p1.client->secret(), *p2.client->secret());
}

TEST(Tls, AWrongKeyIsRefusedOnBothSides) {
  test::TempDir d;
  const Security a{Security::Kind::kPreSharedKey, write_psk(d, "a", kKeyA)};
  const Security b{Security::Kind::kPreSharedKey, write_psk(d, "b", kKeyB)};
  auto p = handshake(a, b);
  ASSERT_FALSE(p.client);
  ASSERT_FALSE(p.server);
  EXPECT_NE(p.server.error().what().find("the peer's pre-shared key is not ours"), std::string::npos)
      << p.server.error().what();
  EXPECT_NE(p.client.error().what().find("is the pre-shared key the same on both hosts?"), std::string::npos)
      << p.client.error().what();
  EXPECT_NE(p.server.error().what().find("TLS with 127.0.0.1:"), std::string::npos) << p.server.error().what();
}

TEST(Tls, KeyFilesThatAreShortOrReadableByOthersAreRefused) {
  test::TempDir d;
  auto open = TlsContext::load({Security::Kind::kPreSharedKey, write_psk(d, "open", kKeyA, 0644)}, TlsRole::kClient);
  ASSERT_FALSE(open);
  EXPECT_NE(open.error().what().find("readable by others (mode 644); chmod 600 it"), std::string::npos)
      << open.error().what();
  auto shrt = TlsContext::load({Security::Kind::kPreSharedKey, write_psk(d, "short", std::string(30, 'c'))},
                               TlsRole::kServer);
  ASSERT_FALSE(shrt);
  EXPECT_NE(shrt.error().what().find("15 bytes; at least 32 are needed"), std::string::npos) << shrt.error().what();
  auto nothex = TlsContext::load({Security::Kind::kPreSharedKey, write_psk(d, "nothex", std::string(64, 'z'))},
                                 TlsRole::kServer);
  ASSERT_FALSE(nothex);
  EXPECT_NE(nothex.error().what().find("not hex"), std::string::npos) << nothex.error().what();
  auto missing = TlsContext::load({Security::Kind::kCertificates, d.path + "/none"}, TlsRole::kServer);
  ASSERT_FALSE(missing);
  EXPECT_NE(missing.error().what().find("/none/ca.pem"), std::string::npos) << missing.error().what();
}

TEST(Tls, CertificatesAuthenticateBothHostsAndTheNameTheSourceDialled) {
  Certs c;
  ASSERT_TRUE(c.ok) << "tools/tls-certs failed";
  for (const bool kernel : {true, false}) {
    SCOPED_TRACE(kernel ? "kernel TLS where available" : "userspace relay");
    auto p = handshake(c.host("src"), c.host("dst"), kernel);
    expect_secured_pair(p, "peer CN=src");
    if (p.client) {
      EXPECT_NE(p.client->security().find("peer CN=dst"), std::string::npos) << p.client->security();
    }
  }
}

TEST(Tls, AStrangersCaAndANameThatDoesNotMatchAreRefused) {
  Certs c;
  ASSERT_TRUE(c.ok) << "tools/tls-certs failed";
  {
    SCOPED_TRACE("a client from a CA the destination does not trust");
    auto p = handshake(c.host("stranger", "theirs"), c.host("dst"));
    ASSERT_FALSE(p.server);
    EXPECT_NE(p.server.error().what().find("the peer refused our certificate"), std::string::npos)
        << p.server.error().what();
    ASSERT_FALSE(p.client);
    EXPECT_NE(p.client.error().what().find("the peer's certificate is not acceptable"), std::string::npos)
        << p.client.error().what();
    EXPECT_FALSE(p.client && p.client->secret() && p.server);
  }
  {
    SCOPED_TRACE("a destination from a CA the source does not trust");
    auto p = handshake(c.host("src"), c.host("stranger", "theirs"));
    ASSERT_FALSE(p.client);
    EXPECT_NE(p.client.error().what().find("certificate"), std::string::npos) << p.client.error().what();
  }
  {
    SCOPED_TRACE("a destination whose certificate names another host");
    auto p = handshake(c.host("src"), c.host("wrongname"));
    ASSERT_FALSE(p.client);
    EXPECT_NE(p.client.error().what().find("IP address mismatch"), std::string::npos) << p.client.error().what();
  }
}

// A TLS 1.3 server may skip the offered key and present a certificate
// instead; a client that holds only a key must not take that for proof.
TEST(Tls, APreSharedKeyClientNeverSettlesForACertificate) {
  Certs c;
  ASSERT_TRUE(c.ok) << "tools/tls-certs failed";
  test::TempDir d;
  const Security psk{Security::Kind::kPreSharedKey, write_psk(d, "psk", kKeyA)};
  auto p = handshake(psk, c.host("dst"));
  ASSERT_FALSE(p.client) << "a PSK client accepted a server that did not use the key: " << p.client->security();
  EXPECT_FALSE(p.server && p.client);
}

// When the engine closes its end and the peer stays silent, the relay waits
// in poll, not in a loop (a closed socketpair end reports POLLHUP to every
// poll): the process burns next to no CPU meanwhile.
TEST(Tls, ARelayWhoseEngineClosedWaitsWithoutSpinning) {
  test::TempDir d;
  const Security psk{Security::Kind::kPreSharedKey, write_psk(d, "psk", kKeyA)};
  auto p = handshake(psk, psk, /*kernel=*/false);
  ASSERT_TRUE(p.client && p.server);
  UniqueFd(p.client->release());  // the engine is done; the peer says nothing
  std::this_thread::sleep_for(100ms);
  auto cpu = [] {
    rusage u{};
    ::getrusage(RUSAGE_SELF, &u);
    return u.ru_utime.tv_sec + u.ru_stime.tv_sec + (u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
  };
  const double before = cpu();
  std::this_thread::sleep_for(1s);
  EXPECT_LT(cpu() - before, 0.3) << "a relay thread spins";
  // The peer learns the end: its read sees the stream close.
  char b;
  EXPECT_EQ(::recv(p.server->fd(), &b, 1, 0), 0);
}

TEST(Tls, APlainPeerOrASilentOneIsRefusedByTheDeadline) {
  test::TempDir d;
  const Security psk{Security::Kind::kPreSharedKey, write_psk(d, "psk", kKeyA)};
  auto l = TcpListener::open({"127.0.0.1", 0});
  ASSERT_TRUE(l);
  auto sctx = TlsContext::load(psk, TlsRole::kServer);
  ASSERT_TRUE(sctx) << sctx.error().what();
  {
    SCOPED_TRACE("plain bytes instead of a ClientHello");
    auto raw = connect_tcp({"127.0.0.1", (*l)->port()}, 5s);
    ASSERT_TRUE(raw);
    const std::string junk = "FERRY HELLO in clear text, 32 bytes long, and some more";
    ASSERT_EQ(::send(raw->get(), junk.data(), junk.size(), MSG_NOSIGNAL), static_cast<ssize_t>(junk.size()));
    auto c = (*l)->accept(5s);
    ASSERT_TRUE(c);
    const auto t0 = Clock::now();
    auto s = sctx->secure(std::move(*c), "", Clock::now() + 10s);
    ASSERT_FALSE(s);
    EXPECT_LT(Clock::now() - t0, 5s) << "refused at once, not at the deadline";
    EXPECT_NE(s.error().what().find("the peer does not speak TLS"), std::string::npos) << s.error().what();
  }
  {
    SCOPED_TRACE("a peer that says nothing");
    auto raw = connect_tcp({"127.0.0.1", (*l)->port()}, 5s);
    ASSERT_TRUE(raw);
    auto c = (*l)->accept(5s);
    ASSERT_TRUE(c);
    auto s = sctx->secure(std::move(*c), "", Clock::now() + 300ms);
    ASSERT_FALSE(s);
    EXPECT_EQ(s.error().sys_errno(), ETIMEDOUT) << s.error().what();
  }
}

// What a tap on the wire sees: every byte between the two ends, through a
// forwarder in the middle. A megabyte of a recognisable page pattern goes
// through; not one 16-byte piece of it appears on the wire.
TEST(Tls, TheWireCarriesNoCleartext) {
  test::TempDir d;
  const Security psk{Security::Kind::kPreSharedKey, write_psk(d, "psk", kKeyA)};
  for (const bool kernel : {true, false}) {
    SCOPED_TRACE(kernel ? "kernel TLS where available" : "userspace relay");
    auto l = TcpListener::open({"127.0.0.1", 0});
    auto tap = TcpListener::open({"127.0.0.1", 0});
    ASSERT_TRUE(l && tap);
    auto sctx = TlsContext::load(psk, TlsRole::kServer);
    auto cctx = TlsContext::load(psk, TlsRole::kClient);
    ASSERT_TRUE(sctx && cctx);
    if (!kernel) {
      cctx->disable_kernel_tls();
      sctx->disable_kernel_tls();
    }
    std::string wire;
    std::thread forwarder([&] {
      auto in = (*tap)->accept(5s);
      auto out = connect_tcp({"127.0.0.1", (*l)->port()}, 5s);
      if (!in || !out) return;
      std::thread back([&] {
        char b[65536];
        for (ssize_t k; (k = ::recv(out->get(), b, sizeof b, 0)) > 0;) (void)::send(in->fd(), b, k, MSG_NOSIGNAL);
        ::shutdown(in->fd(), SHUT_WR);
      });
      char b[65536];
      for (ssize_t k; (k = ::recv(in->fd(), b, sizeof b, 0)) > 0;) {
        wire.append(b, static_cast<std::size_t>(k));
        (void)::send(out->get(), b, k, MSG_NOSIGNAL);
      }
      ::shutdown(out->get(), SHUT_WR);
      back.join();
    });
    auto server = std::async(std::launch::async, [&]() -> Result<Connection> {
      auto c = (*l)->accept(5s);
      if (!c) return c;
      return sctx->secure(std::move(*c), "", Clock::now() + 5s);
    });
    auto raw = connect_tcp({"127.0.0.1", (*tap)->port()}, 5s);
    ASSERT_TRUE(raw);
    auto client = cctx->secure(Connection(std::move(*raw), "tap"), "127.0.0.1", Clock::now() + 5s);
    auto srv = server.get();
    ASSERT_TRUE(client) << client.error().what();
    ASSERT_TRUE(srv) << srv.error().what();
    std::string page;
    for (int i = 0; page.size() < 4096; ++i) page += fmt::format("guest page {:06} ", i);
    page.resize(4096);
    std::string payload;
    for (int i = 0; i < 256; ++i) payload += page;
    std::thread reader([&] {
      std::string got(payload.size(), 0);
      for (std::size_t at = 0; at < got.size();) {
        const ssize_t k = ::recv(srv->fd(), got.data() + at, got.size() - at, 0);
        if (k <= 0) break;
        at += static_cast<std::size_t>(k);
      }
      EXPECT_TRUE(got == payload) << "the server did not read what was sent";
    });
    for (std::size_t at = 0; at < payload.size();) {
      const ssize_t k = ::send(client->fd(), payload.data() + at, payload.size() - at, MSG_NOSIGNAL);
      ASSERT_GT(k, 0);
      at += static_cast<std::size_t>(k);
    }
    reader.join();
    UniqueFd(client->release());
    UniqueFd(srv->release());
    forwarder.join();
    EXPECT_GE(wire.size(), payload.size()) << "the tap saw less than what went through";
    for (std::size_t at = 0; at + 16 <= page.size(); at += 256)
      ASSERT_EQ(wire.find(page.substr(at, 16)), std::string::npos) << "cleartext on the wire: " << page.substr(at, 16);
  }
}

TEST(Tls, TheUserMustSayHowToSecureAMigration) {
  auto none = security_from_flags("", "", false);
  ASSERT_FALSE(none);
  EXPECT_NE(none.error().what().find("--tls-dir DIR"), std::string::npos);
  EXPECT_NE(none.error().what().find("--insecure"), std::string::npos);
  auto two = security_from_flags("d", "", true);
  ASSERT_FALSE(two);
  EXPECT_NE(two.error().what().find("exclude each other"), std::string::npos);
  auto insecure = security_from_flags("", "", true);
  ASSERT_TRUE(insecure);
  EXPECT_FALSE(insecure->encrypted());
  EXPECT_NE(insecure->describe().find("not authenticated, not encrypted"), std::string::npos);
  auto mode = security_from_mode("psk", "/k");
  ASSERT_TRUE(mode);
  EXPECT_EQ(mode->kind, Security::Kind::kPreSharedKey);
  EXPECT_FALSE(security_from_mode("psk", ""));
  EXPECT_FALSE(security_from_mode("tls", "/k"));
}

}  // namespace
}  // namespace ferry::transport

// The transport's way in (transport/connection.hh): endpoints with a
// scheme, the TCP listener and dialer, and the in-process socketpair link.
#include <gtest/gtest.h>

#include <sys/socket.h>
#include <unistd.h>

#include <thread>

#include "userspace/transport/connection.hh"
#include "userspace/transport/local.hh"
#include "userspace/transport/tcp.hh"
#include "userspace/transport/tls.hh"

namespace ferry::transport {
namespace {

using namespace std::chrono_literals;

TEST(Endpoint, TakesAnOptionalTcpSchemeAndRefusesOthers) {
  auto plain = parse_endpoint("10.0.0.1:4444");
  ASSERT_TRUE(plain) << plain.error().what();
  EXPECT_EQ(plain->scheme, "tcp");
  EXPECT_EQ(plain->uri(), "tcp://10.0.0.1:4444");
  auto with = parse_endpoint("tcp://[::1]:7");
  ASSERT_TRUE(with) << with.error().what();
  EXPECT_EQ(with->host, "::1");
  EXPECT_EQ(with->port, 7);
  EXPECT_EQ(with->str(), "[::1]:7");
  auto tls = parse_endpoint("tls://host:1");
  ASSERT_FALSE(tls);
  EXPECT_NE(tls.error().what().find("unknown transport 'tls' (supported: tcp)"), std::string::npos)
      << tls.error().what();
  auto bad = parse_endpoint("tcp://nohost");
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().what().find("'tcp://nohost': expected HOST:PORT"), std::string::npos) << bad.error().what();
}

void expect_connected(Connection& a, Connection& b) {
  ASSERT_TRUE(a);
  ASSERT_TRUE(b);
  ASSERT_EQ(::write(a.fd(), "ping", 4), 4);
  char buf[4] = {};
  ASSERT_EQ(::read(b.fd(), buf, 4), 4);
  EXPECT_EQ(std::string(buf, 4), "ping");
}

TEST(TcpTransport, ListenerAndDialerByScheme) {
  auto ep = parse_endpoint("tcp://127.0.0.1:0");
  ASSERT_TRUE(ep);
  auto listener = listen(*ep, Security{});
  ASSERT_TRUE(listener) << listener.error().what();
  const std::string where = (*listener)->address();
  EXPECT_TRUE(where.starts_with("127.0.0.1:")) << where;
  EXPECT_FALSE(where.ends_with(":0")) << "the port that was picked, not 0";
  auto to = parse_endpoint(where);
  ASSERT_TRUE(to);
  auto dialer = dialer_for(*to, Security{});
  ASSERT_TRUE(dialer);
  auto out = (*dialer)->dial(*to, 2s);
  ASSERT_TRUE(out) << out.error().what();
  auto in = (*listener)->accept(2s);
  ASSERT_TRUE(in) << in.error().what();
  EXPECT_TRUE(in->peer().starts_with("127.0.0.1:")) << in->peer();
  expect_connected(*out, *in);
  auto none = (*listener)->accept(50ms);
  ASSERT_FALSE(none);
  EXPECT_EQ(none.error().sys_errno(), ETIMEDOUT);
}

TEST(LocalLink, DialsSocketpairsThatTheListenerAcceptsInOrder) {
  std::vector<std::string> hooked;
  LocalLink link([&](Connection& d, Connection& l) { hooked.push_back(d.peer() + " / " + l.peer()); });
  auto a = link.dial({.host = "x", .port = 1}, 1s);
  auto b = link.dial({.host = "x", .port = 1}, 1s);
  ASSERT_TRUE(a && b);
  auto a_in = link.accept(1s);
  auto b_in = link.accept(1s);
  ASSERT_TRUE(a_in && b_in);
  expect_connected(*a, *a_in);
  expect_connected(*b_in, *b);
  EXPECT_EQ(hooked.size(), 2u);
  auto none = link.accept(20ms);
  ASSERT_FALSE(none);
  EXPECT_EQ(none.error().sys_errno(), ETIMEDOUT);
  // close() wakes a blocked accept and refuses new dials.
  std::thread closer([&] {
    std::this_thread::sleep_for(20ms);
    link.close();
  });
  auto woken = link.accept(0ms);
  closer.join();
  ASSERT_FALSE(woken);
  EXPECT_NE(woken.error().what().find("closed"), std::string::npos);
  auto refused = link.dial({.host = "x", .port = 1}, 1s);
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().sys_errno(), ECONNREFUSED);
}

}  // namespace
}  // namespace ferry::transport

// The trust e2e tests (issue 15): migrations over TLS between real
// processes, what crosses the wire, and strangers on the destination's
// port. Real sockets, real kernel TLS in the sandbox (the userspace relay
// on kernels without it).
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <mutex>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "tests/e2e/migration_rig.hh"
#include "userspace/base/crc32c.hh"
#include "userspace/base/unique_fd.hh"
#include "userspace/migration/protocol.hh"
#include "userspace/transport/tls.hh"

namespace ferry::test {
namespace {

using nlohmann::json;

// The built-in guest paced at 1 MiB/s: slower than emulated AES-GCM moves
// pages in the sandbox (about 4 MiB/s), so a migration over TLS converges
// there as it does natively.
std::vector<std::string> paced_source_argv(const TempDir& dir, const std::string& api) {
  auto argv = source_argv(dir, api);
  argv.insert(argv.end(), {"--rate", "1"});
  return argv;
}

// A TCP connection to HOST:PORT (IPv4), or an invalid fd.
UniqueFd dial_tcp(const std::string& hostport) {
  const auto colon = hostport.rfind(':');
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<std::uint16_t>(std::stoi(hostport.substr(colon + 1))));
  ::inet_pton(AF_INET, hostport.substr(0, colon).c_str(), &a.sin_addr);
  UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (fd && ::connect(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) return UniqueFd();
  return fd;
}

std::uint64_t rss_kib(int pid) {
  std::ifstream in(fmt::format("/proc/{}/status", pid));
  for (std::string line; std::getline(in, line);)
    if (line.starts_with("VmRSS:")) return std::stoull(line.substr(6));
  return 0;
}

// A 32-byte header with valid CRCs that claims a 64 MiB payload, as type
// `t` (the header CRC recomputed after the type is patched in).
std::vector<std::byte> claim_64mib(migration::FrameType t) {
  auto h = migration::encode_header(migration::FrameType::kState, 0, migration::kMaxPayload, 0);
  const auto type = static_cast<std::uint16_t>(t);
  h[8] = static_cast<std::byte>(type & 0xff);
  h[9] = static_cast<std::byte>(type >> 8);
  const std::uint32_t crc = crc32c(std::span<const std::byte>(h).first(migration::kHeaderCrcOffset));
  for (int i = 0; i < 4; ++i) h[migration::kHeaderCrcOffset + i] = static_cast<std::byte>(crc >> (8 * i));
  return {h.begin(), h.end()};
}

// Strangers on the destination's port, before and during a real migration
// over TLS: a port scan, garbage, a wrong version, headers that claim 64 MiB
// (as the first frame and as HELLO), TLS clients with the wrong key, a
// silent peer and a trickling one. The handshake refuses each before
// anything is built for it; none costs the receiver memory (its RSS, read
// from /proc, barely moves), and the migration they surround completes.
TEST(Migration, StrangersOnThePortCostOnlyTheirConnectionsDuringARealMigration) {
  TempDir dir;
  const std::string api = dir.path + "/src.sock";
  BackgroundProcess src(paced_source_argv(dir, api));
  ASSERT_GT(verified(wait_status(api, [](const json& j) { return verified(j) > 200; }, 300s)), 200u) << src.output();
  auto dst = start_receiver(dir, "dst", "", "127.0.0.1:0", Wire::kTls);
  ASSERT_FALSE(dst.listen.empty()) << dst.p->output();
  const int pid = find_event(dst.p->output(), "listening")["pid"].get<int>();
  const std::uint64_t rss0 = rss_kib(pid);
  ASSERT_GT(rss0, 0u);
  std::vector<UniqueFd> held;
  auto send_bytes = [&](std::span<const std::byte> b) {
    auto fd = dial_tcp(dst.listen);
    ASSERT_TRUE(fd) << "connect to " << dst.listen;
    EXPECT_EQ(::send(fd.get(), b.data(), b.size(), MSG_NOSIGNAL), static_cast<ssize_t>(b.size()));
    held.push_back(std::move(fd));  // kept open: the receiver must close them, not us
  };
  for (int i = 0; i < 8; ++i) {
    (void)dial_tcp(dst.listen);  // a port scan: connect, close
    send_bytes(claim_64mib(migration::FrameType::kState));
    send_bytes(claim_64mib(migration::FrameType::kHello));
  }
  const std::string garbage = "GET / HTTP/1.1\r\nHost: ferry\r\n\r\n";
  send_bytes(std::as_bytes(std::span(garbage)));
  auto wrong = migration::encode_frame(migration::FrameType::kHello, 0, {});
  wrong[4] = std::byte{2};  // version 2.0
  send_bytes(wrong);
  // Credentials that are not the destination's: a TLS client with another key.
  TempDir keys("ferry-wrong-key");
  const std::string other = keys.path + "/psk";
  std::ofstream(other) << std::string(64, '9') << "\n";
  ::chmod(other.c_str(), 0600);
  auto ctx = transport::TlsContext::load({transport::Security::Kind::kPreSharedKey, other}, transport::TlsRole::kClient);
  ASSERT_TRUE(ctx) << ctx.error().what();
  for (int i = 0; i < 2; ++i) {
    auto fd = dial_tcp(dst.listen);
    ASSERT_TRUE(fd);
    auto c = ctx->secure(transport::Connection(std::move(fd), "stranger"), "127.0.0.1",
                         std::chrono::steady_clock::now() + 10s);
    EXPECT_FALSE(c) << "a TLS client with the wrong key got through";
  }
  std::this_thread::sleep_for(2s);
  const std::uint64_t rss1 = rss_kib(pid);
  EXPECT_LT(rss1, rss0 + 16 * 1024) << "16 headers claiming 64 MiB each grew the receiver from " << rss0 << " to "
                                    << rss1 << " KiB";
  // During the migration: one peer that says nothing, one that trickles a
  // byte every 200 ms, each reconnecting when cut off.
  std::atomic<bool> stop{false};
  std::thread pests([&] {
    UniqueFd silent, trickle;
    while (!stop) {
      if (!silent) silent = dial_tcp(dst.listen);
      if (!trickle) trickle = dial_tcp(dst.listen);
      if (trickle && ::send(trickle.get(), "F", 1, MSG_NOSIGNAL) != 1) trickle = UniqueFd();
      char b;
      if (silent && ::recv(silent.get(), &b, 1, MSG_DONTWAIT) == 0) silent = UniqueFd();
      std::this_thread::sleep_for(200ms);
    }
  });
  auto r = migrate(api, dst.listen, {"--verify", "--tls-psk", test_psk()});
  stop = true;
  pests.join();
  ASSERT_EQ(r.exit_code, 0) << r.describe() << dst.p->output();
  // The source is done at CONFIRMED; the destination prints its event after.
  const auto ev = wait_output(*dst.p, [](const std::string& out) -> std::optional<json> {
    auto j = find_event(out, "received");
    if (j.is_null()) return std::nullopt;
    return j;
  }, 60s);
  ASSERT_TRUE(ev) << "no received event\n" << dst.p->output();
  const json received = *ev;
  EXPECT_GE(received["refused_connections"].get<int>(), 20) << received.dump();
  EXPECT_EQ(received["verified"], true);
  EXPECT_EQ(src.wait(60s).exit_code, 0);
  expect_destination_runs_then_quit(dst);
}


// Records every byte the source sends to the destination, passing it on
// (one connection after another, each on its own thread): what a tap on
// the wire between the hosts would see.
class WireTap {
 public:
  explicit WireTap(const std::string& to) : to_(to) {
    fd_ = UniqueFd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (::bind(fd_.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(fd_.get(), 16) != 0 ||
        ::getsockname(fd_.get(), reinterpret_cast<sockaddr*>(&a), &len) != 0)
      return;
    address_ = fmt::format("127.0.0.1:{}", ntohs(a.sin_port));
    accept_ = std::thread([this] {
      for (;;) {
        UniqueFd in(::accept4(fd_.get(), nullptr, nullptr, SOCK_CLOEXEC));
        if (!in || stop_) return;
        auto out = dial_tcp(to_);
        if (!out) continue;
        std::lock_guard lock(mu_);
        pumps_.emplace_back([this, in = std::move(in), out = std::move(out)]() mutable { pump(std::move(in), std::move(out)); });
      }
    });
  }
  ~WireTap() {
    stop_ = true;
    ::shutdown(fd_.get(), SHUT_RDWR);
    accept_.join();
    std::lock_guard lock(mu_);
    for (auto& t : pumps_) t.join();
  }
  const std::string& address() const { return address_; }
  std::string captured() {
    std::lock_guard lock(mu_);
    return wire_;
  }

 private:
  void pump(UniqueFd in, UniqueFd out) {
    std::thread back([&] {
      char b[65536];
      for (ssize_t k; (k = ::recv(out.get(), b, sizeof b, 0)) > 0;) (void)::send(in.get(), b, k, MSG_NOSIGNAL);
      ::shutdown(in.get(), SHUT_WR);
    });
    char b[65536];
    for (ssize_t k; (k = ::recv(in.get(), b, sizeof b, 0)) > 0;) {
      {
        std::lock_guard lock(mu_);
        if (wire_.size() < (256u << 20)) wire_.append(b, static_cast<std::size_t>(k));
      }
      (void)::send(out.get(), b, k, MSG_NOSIGNAL);
    }
    ::shutdown(out.get(), SHUT_WR);
    back.join();
  }
  std::string to_, address_;
  UniqueFd fd_;
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::string wire_;
  std::vector<std::thread> pumps_;
  std::thread accept_;
};

// A live migration over TLS with --verify, through a tap: it completes, the
// report names the channel, the guest goes on at the destination, and the
// wire never carries a frame in clear (every frame starts with "FMIG" and
// version 1.x; not once in what the tap saw).
TEST(Migration, OverTlsTheWireCarriesNoFrameInClear) {
  TempDir dir;
  const std::string api = dir.path + "/src.sock";
  BackgroundProcess src(paced_source_argv(dir, api));
  ASSERT_GT(verified(wait_status(api, [](const json& j) { return verified(j) > 200; }, 300s)), 200u) << src.output();
  auto dst = start_receiver(dir, "dst", "", "127.0.0.1:0", Wire::kTls);
  ASSERT_FALSE(dst.listen.empty()) << dst.p->output();
  const json listening = find_event(dst.p->output(), "listening");
  EXPECT_NE(listening.value("security", "").find("TLS 1.3, pre-shared key"), std::string::npos) << listening.dump();
  WireTap tap(dst.listen);
  ASSERT_FALSE(tap.address().empty());
  auto r = migrate(api, tap.address(), {"--verify", "--tls-psk", test_psk()});
  ASSERT_EQ(r.exit_code, 0) << r.describe() << dst.p->output();
  const json rep = json::parse(r.out);
  EXPECT_EQ(rep["phase"], "migrated");
  EXPECT_TRUE(rep["verified"].get<bool>());
  const std::string channel = rep["security"]["channel"].get<std::string>();
  std::cout << "channel: " << channel << "\n";
  EXPECT_NE(channel.find("TLS 1.3 TLS_AES_128_GCM_SHA256 (pre-shared key)"), std::string::npos) << channel;
  EXPECT_EQ(rep["security"]["mode"], "psk");
  const std::string wire = tap.captured();
  // At least the working set went through (4 MiB), encrypted.
  EXPECT_GT(wire.size(), 4u << 20) << "the tap saw too little";
  const std::string frame_start("FMIG\x01\x00", 6);
  EXPECT_EQ(wire.find(frame_start), std::string::npos) << "a frame header in clear on the wire";
  EXPECT_EQ(wire.find("resolver"), std::string::npos);
  EXPECT_EQ(src.wait(60s).exit_code, 0);
  expect_destination_runs_then_quit(dst);
}

// The same migration without credentials on either side does not start.
TEST(Migration, NeitherSideStartsWithoutBeingToldHowToSecureIt) {
  auto rcv = run_process({FERRY_BIN, "receive", "--listen", "127.0.0.1:0"}, 30s);
  EXPECT_EQ(rcv.exit_code, 2) << rcv.describe();
  EXPECT_NE(rcv.err.find("--tls-dir DIR (certificates), --tls-psk FILE"), std::string::npos) << rcv.describe();
  auto mig = run_process({FERRY_BIN, "migrate", "--vm", "/nonexistent.sock", "--to", "127.0.0.1:9"}, 30s);
  EXPECT_EQ(mig.exit_code, 2) << mig.describe();
  EXPECT_NE(mig.err.find("--insecure (plain TCP"), std::string::npos) << mig.describe();
}

}  // namespace
}  // namespace ferry::test

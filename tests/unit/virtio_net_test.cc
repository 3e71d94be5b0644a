// virtio-net behind the virtio-mmio transport, on a real TAP interface: the
// guest's side is rings a test driver writes into real guest memory, the
// host's side is a packet socket on the TAP, which lives in a network
// namespace of its own (made on a helper thread, so nothing touches the
// host's network). Frames cross both ways with their headers, a backlog
// waits in the TAP until the guest posts buffers, the control queue and
// the announce request work, a malicious transmit chain breaks only the
// device, and the MAC travels in the device's state.
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#include <chrono>
#include <cstring>
#include <optional>
#include <thread>

#include "kvm/devices/net/virtio_net.hh"
#include "tests/unit/virtio_driver.hh"

namespace ferry::kvm::net {
namespace {

using namespace std::chrono_literals;
using virtio::bit;
using virtio::testing::GuestRam;
using virtio::testing::kDescNext;
using virtio::testing::kDescWrite;
using virtio::testing::MmioDriver;
using virtio::testing::Ring;

constexpr std::uint16_t kTestType = 0x88b5;  // IEEE local experimental ethertype
constexpr Mac kGuestMac{0x52, 0x54, 0x00, 0xfe, 0x00, 0x01};
constexpr std::uint64_t kRxBuffers = 0x40000, kTxBuffers = 0x80000, kCtrlBuffers = 0x90000;
constexpr std::uint16_t kRing = 16;

// The host's end: a TAP in a fresh network namespace, up, and a packet
// socket bound to it.
struct HostWire {
  std::optional<Tap> tap;
  UniqueFd packet;
  int ifindex = 0;
  std::string error;

  explicit HostWire(const std::string& name) {
    std::thread([&] {
      // Namespaces are per thread: only this one moves.
      if (::unshare(CLONE_NEWNET) < 0) {
        error = fmt::format("unshare(CLONE_NEWNET): {} (the test needs CAP_SYS_ADMIN)", std::strerror(errno));
        return;
      }
      auto t = Tap::open(name);
      if (!t) {
        error = t.error().what();
        return;
      }
      UniqueFd s(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
      ifreq ifr{};
      std::strncpy(ifr.ifr_name, name.c_str(), IFNAMSIZ - 1);
      if (::ioctl(s.get(), SIOCGIFFLAGS, &ifr) < 0 || (ifr.ifr_flags |= IFF_UP, ::ioctl(s.get(), SIOCSIFFLAGS, &ifr) < 0)) {
        error = fmt::format("bringing {} up: {}", name, std::strerror(errno));
        return;
      }
      UniqueFd p(::socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, htons(ETH_P_ALL)));
      sockaddr_ll sll{};
      sll.sll_family = AF_PACKET;
      sll.sll_protocol = htons(ETH_P_ALL);
      sll.sll_ifindex = t->ifindex();
      if (!p || ::bind(p.get(), reinterpret_cast<sockaddr*>(&sll), sizeof sll) < 0) {
        error = fmt::format("packet socket on {}: {}", name, std::strerror(errno));
        return;
      }
      timeval tv{0, 100000};
      ::setsockopt(p.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
      ifindex = t->ifindex();
      tap.emplace(std::move(*t));
      packet = std::move(p);
    }).join();
  }

  bool send(const std::vector<std::byte>& frame) {
    return ::send(packet.get(), frame.data(), frame.size(), 0) == static_cast<ssize_t>(frame.size());
  }
  // The next frame of the test's ethertype that reached the host from the
  // TAP's other end (what the guest sent), within `within`.
  std::optional<std::vector<std::byte>> receive(std::chrono::milliseconds within) {
    const auto end = std::chrono::steady_clock::now() + within;
    std::vector<std::byte> buf(2048);
    while (std::chrono::steady_clock::now() < end) {
      sockaddr_ll from{};
      socklen_t len = sizeof from;
      const ssize_t n = ::recvfrom(packet.get(), buf.data(), buf.size(), 0, reinterpret_cast<sockaddr*>(&from), &len);
      if (n < 14 || from.sll_pkttype == PACKET_OUTGOING) continue;
      if (std::to_integer<int>(buf[12]) != (kTestType >> 8) || std::to_integer<int>(buf[13]) != (kTestType & 0xff))
        continue;
      buf.resize(static_cast<std::size_t>(n));
      return buf;
    }
    return std::nullopt;
  }
};

std::vector<std::byte> ethernet(const Mac& dst, const Mac& src, std::string_view payload) {
  std::vector<std::byte> f(std::max<std::size_t>(60, 14 + payload.size()));
  std::memcpy(f.data(), dst.data(), 6);
  std::memcpy(f.data() + 6, src.data(), 6);
  f[12] = std::byte{kTestType >> 8};
  f[13] = std::byte{kTestType & 0xff};
  std::memcpy(f.data() + 14, payload.data(), payload.size());
  return f;
}

template <class F>
bool eventually(F&& f, std::chrono::milliseconds within = 5s) {
  const auto end = std::chrono::steady_clock::now() + within;
  while (std::chrono::steady_clock::now() < end) {
    if (f()) return true;
    std::this_thread::sleep_for(5ms);
  }
  return f();
}

struct Rig {
  explicit Rig(const std::string& tap_name) : wire(tap_name) {
    if (!wire.error.empty()) return;
    auto dev = VirtioNet::create(std::move(*wire.tap), kGuestMac, ram.mem);
    if (!dev) {
      wire.error = dev.error().what();
      return;
    }
    net = dev->get();
    transport.emplace(virtio::MmioTransport::Config{.id = "net0", .base = 0xd0000000, .gsi = 5,
                                                    .key = {state::SectionType::kVirtio, 0}},
                      ram.mem, std::move(*dev), [this] { ++edges; });
    regs.emplace(MmioDriver{*transport});
  }
  std::uint64_t features() const {
    return bit(virtio::kFeatureVersion1) | bit(kNetMac) | bit(kNetStatus) | bit(kNetMrgRxbuf) | bit(kNetCtrlVq) |
           bit(kNetCtrlRx) | bit(kNetGuestAnnounce);
  }
  void bring_up() { regs->bring_up(features(), {rx.layout(), tx.layout(), ctrl.layout()}); }
  void post_rx(std::uint16_t from, std::uint16_t count) {
    for (std::uint16_t i = from; i < from + count; ++i) {
      rx.desc(i % kRing, kRxBuffers + 0x1000ull * (i % kRing), 4096, kDescWrite, 0);
      rx.make_available(i % kRing);
    }
    regs->notify(VirtioNet::kRxQueue);
  }
  // The frames of the test's ethertype the guest received so far, without
  // their virtio-net header (whose num_buffers must be 1).
  std::vector<std::vector<std::byte>> received() {
    std::vector<std::vector<std::byte>> out;
    for (std::uint16_t i = 0; i < rx.used_idx(); ++i) {
      const auto [head, len] = rx.used_elem(i);
      const std::byte* b = ram.at(kRxBuffers + 0x1000ull * head);
      if (len < 12 + 14) continue;
      EXPECT_EQ(ram.get16(kRxBuffers + 0x1000ull * head + 10), 1) << "num_buffers";
      if (std::to_integer<int>(b[12 + 12]) != (kTestType >> 8)) continue;
      out.emplace_back(b + 12, b + len);
    }
    return out;
  }

  GuestRam ram{256 * kPageSize};
  Ring rx{ram, 0x20000, kRing}, tx{ram, 0x24000, kRing}, ctrl{ram, 0x28000, kRing};
  HostWire wire;
  VirtioNet* net = nullptr;
  std::atomic<int> edges{0};
  std::optional<virtio::MmioTransport> transport;
  std::optional<MmioDriver> regs;
};

#define REQUIRE_RIG(r) ASSERT_TRUE((r).wire.error.empty()) << (r).wire.error

TEST(VirtioNet, FramesCrossBothWaysThroughARealTap) {
  Rig r("ferrytest0");
  REQUIRE_RIG(r);
  r.bring_up();
  ASSERT_EQ(r.regs->rd(0x070) & virtio::kStatusNeedsReset, 0u) << r.transport->failure();
  // The MAC in the configuration space, as the driver reads it.
  std::array<std::uint8_t, 6> mac{};
  r.transport->read(r.regs->range, 0x100, mac);
  EXPECT_EQ(mac, kGuestMac);
  r.post_rx(0, 4);

  // Host to guest.
  const Mac host{0x02, 0, 0, 0, 0, 0x99};
  const auto in = ethernet(kGuestMac, host, "ferry: host to guest");
  r.ram.harvest();
  ASSERT_TRUE(r.wire.send(in));
  ASSERT_TRUE(eventually([&] { return !r.received().empty(); })) << "the frame never reached the guest's ring";
  EXPECT_EQ(r.received().front(), in);
  EXPECT_GT(r.edges.load(), 0) << "no interrupt for the received frame";
  EXPECT_TRUE(r.regs->rd(0x060) & 1);
  const auto dirty = r.ram.harvest();
  bool buffer_marked = false;
  for (std::uint64_t p : dirty) buffer_marked |= p >= kRxBuffers && p < kRxBuffers + 0x1000ull * kRing;
  EXPECT_TRUE(buffer_marked) << "the receive buffer the device wrote was not marked dirty";
  EXPECT_TRUE(dirty.contains(0x22000)) << "the receive used ring was not marked dirty";

  // Guest to host: the header (no offloads), then the frame, in two buffers.
  const auto out = ethernet({0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, kGuestMac, "ferry: guest to host");
  r.ram.put(kTxBuffers, std::vector<std::byte>(12));
  r.ram.put(kTxBuffers + 0x100, out);
  r.tx.desc(0, kTxBuffers, 12, kDescNext, 1);
  r.tx.desc(1, kTxBuffers + 0x100, static_cast<std::uint32_t>(out.size()), 0, 0);
  r.tx.make_available(0);
  r.regs->notify(VirtioNet::kTxQueue);
  auto got = r.wire.receive(5s);
  ASSERT_TRUE(got) << "the guest's frame never left the TAP";
  EXPECT_EQ(*got, out);
  EXPECT_TRUE(eventually([&] { return r.tx.used_idx() == 1; }));
  const auto fig = r.net->figures();
  EXPECT_EQ(fig.tx_packets, 1u);
  EXPECT_EQ(fig.tx_bytes, out.size());
  EXPECT_GE(fig.rx_packets, 1u);
}

TEST(VirtioNet, ABacklogWaitsInTheTapUntilTheGuestPostsBuffers) {
  Rig r("ferrytest1");
  REQUIRE_RIG(r);
  r.bring_up();
  const Mac host{0x02, 0, 0, 0, 0, 0x98};
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(r.wire.send(ethernet(kGuestMac, host, fmt::format("backlog {}", i))));
  std::this_thread::sleep_for(100ms);
  EXPECT_EQ(r.rx.used_idx(), 0) << "delivered without buffers";
  EXPECT_EQ(r.net->figures().rx_dropped, 0u) << "a frame was dropped for want of buffers instead of waiting";
  r.post_rx(0, 8);
  ASSERT_TRUE(eventually([&] { return r.received().size() >= 3; }))
      << "the backlog was not delivered once buffers came: " << r.received().size();
  const auto got = r.received();
  for (int i = 0; i < 3; ++i) EXPECT_EQ(got[i], ethernet(kGuestMac, host, fmt::format("backlog {}", i)));
}

TEST(VirtioNet, AnnounceIsAskedInTheConfigAndAcknowledgedOnTheControlQueue) {
  Rig r("ferrytest2");
  REQUIRE_RIG(r);
  r.bring_up();
  const int before = r.edges.load();
  ASSERT_TRUE(r.net->announce());
  EXPECT_EQ(r.edges.load(), before + 1);
  EXPECT_TRUE(r.regs->rd(0x060) & 2) << "a configuration interrupt";
  std::array<std::uint8_t, 2> status{};
  r.transport->read(r.regs->range, 0x100 + 6, status);
  EXPECT_EQ(status[0], kNetStatusLinkUp | kNetStatusAnnounce);
  // VIRTIO_NET_CTRL_ANNOUNCE_ACK: class 3, command 0; then a status byte.
  r.ram.put(kCtrlBuffers, {std::byte{3}, std::byte{0}});
  r.ram.put(kCtrlBuffers + 0x100, {std::byte{0xee}});
  r.ctrl.desc(0, kCtrlBuffers, 2, kDescNext, 1);
  r.ctrl.desc(1, kCtrlBuffers + 0x100, 1, kDescWrite, 0);
  r.ctrl.make_available(0);
  r.regs->notify(VirtioNet::kCtrlQueue);
  ASSERT_TRUE(eventually([&] { return r.ctrl.used_idx() == 1; }));
  EXPECT_EQ(*r.ram.at(kCtrlBuffers + 0x100), std::byte{0}) << "VIRTIO_NET_OK";
  r.transport->read(r.regs->range, 0x100 + 6, status);
  EXPECT_EQ(status[0], kNetStatusLinkUp);
  // A command it does not know gets VIRTIO_NET_ERR.
  r.ram.put(kCtrlBuffers, {std::byte{99}, std::byte{0}});
  r.ctrl.make_available(0);
  r.regs->notify(VirtioNet::kCtrlQueue);
  ASSERT_TRUE(eventually([&] { return r.ctrl.used_idx() == 2; }));
  EXPECT_EQ(*r.ram.at(kCtrlBuffers + 0x100), std::byte{1}) << "VIRTIO_NET_ERR";
}

TEST(VirtioNet, AMaliciousTransmitChainBreaksTheDeviceNotTheVmm) {
  Rig r("ferrytest3");
  REQUIRE_RIG(r);
  r.bring_up();
  r.tx.desc(0, 1ull << 40, 64, 0, 0);  // outside guest RAM
  r.tx.make_available(0);
  r.regs->notify(VirtioNet::kTxQueue);
  ASSERT_TRUE(eventually([&] { return (r.regs->rd(0x070) & virtio::kStatusNeedsReset) != 0; }));
  EXPECT_NE(r.transport->failure().find("not RAM"), std::string::npos) << r.transport->failure();
  EXPECT_TRUE(r.regs->rd(0x060) & 2);
  EXPECT_EQ(r.tx.used_idx(), 0);
  // The driver resets the device and starts again: it works.
  r.tx.reset();
  r.rx.reset();
  r.ctrl.reset();
  r.bring_up();
  EXPECT_EQ(r.regs->rd(0x070) & virtio::kStatusNeedsReset, 0u);
  const auto out = ethernet({0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, kGuestMac, "after reset");
  r.ram.put(kTxBuffers, std::vector<std::byte>(12));
  r.ram.put(kTxBuffers + 12, out);
  r.tx.desc(0, kTxBuffers, static_cast<std::uint32_t>(12 + out.size()), 0, 0);
  r.tx.make_available(0);
  r.regs->notify(VirtioNet::kTxQueue);
  auto got = r.wire.receive(5s);
  ASSERT_TRUE(got);
  EXPECT_EQ(*got, out);
}

TEST(VirtioNet, TheMacTravelsInTheDeviceState) {
  GuestRam ram(16 * kPageSize);
  HostWire a("ferrytest4"), b("ferrytest5");
  ASSERT_TRUE(a.error.empty() && b.error.empty()) << a.error << b.error;
  auto src = VirtioNet::create(std::move(*a.tap), kGuestMac, ram.mem);
  auto dst = VirtioNet::create(std::move(*b.tap), Mac{0x02, 1, 2, 3, 4, 5}, ram.mem);
  ASSERT_TRUE(src && dst);
  const auto state = (*src)->save();
  ASSERT_TRUE((*dst)->restore(state));
  EXPECT_EQ((*dst)->mac(), kGuestMac);
  auto bad = state;
  bad[0] = std::byte{2};
  auto r = (*dst)->restore(bad);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().what().find("version 2"), std::string::npos) << r.error().what();
  EXPECT_FALSE((*dst)->restore(std::span(state).first(5)));
}

TEST(NetConfig, ParsesTapAndMacAndSaysWhatIsWrong) {
  auto c = parse_net("tap=ftap0,mac=52:54:00:AB:cd:01");
  ASSERT_TRUE(c) << c.error().what();
  EXPECT_EQ(c->tap, "ftap0");
  ASSERT_TRUE(c->mac);
  EXPECT_EQ(format_mac(*c->mac), "52:54:00:ab:cd:01");
  auto bare = parse_net("tap=x");
  ASSERT_TRUE(bare);
  EXPECT_FALSE(bare->mac);
  const Mac r = random_mac();
  EXPECT_EQ(r[0], 0x52);
  EXPECT_EQ(r[0] & 1, 0) << "a random MAC must be unicast";
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"mac=52:54:00:00:00:01", "tap=NAME is required"},
      {"tap=", "a name of 1 to 15 characters"},
      {"tap=abcdefghijklmnop", "a name of 1 to 15 characters"},
      {"tap=t,speed=10", "unknown key 'speed'"},
      {"tap=t,mac=52:54:00:00:00", "six hex bytes"},
      {"tap=t,mac=52:54:00:00:00:0g", "'g' is not a hex digit"},
      {"tap=t,mac=01:00:5e:00:00:01", "multicast"},
  };
  for (const auto& [spec, why] : bad) {
    auto e = parse_net(spec);
    ASSERT_FALSE(e) << spec;
    EXPECT_NE(e.error().what().find(why), std::string::npos) << spec << ": " << e.error().what();
  }
  auto all = parse_nets({"tap=a", "tap=b,mac=52:54:00:00:00:02"});
  ASSERT_TRUE(all);
  ASSERT_EQ(all->size(), 2u);
  EXPECT_EQ((*all)[1].tap, "b");
}

TEST(NetConfig, TheRarpFrameAnnouncesTheMac) {
  const Mac mac{0x52, 0x54, 0x00, 1, 2, 3};
  const auto f = rarp_frame(mac);
  ASSERT_EQ(f.size(), kVnetHeaderBytes + 60);
  const std::byte* e = f.data() + kVnetHeaderBytes;
  for (int i = 0; i < 6; ++i) EXPECT_EQ(e[i], std::byte{0xff}) << "broadcast";
  EXPECT_EQ(std::memcmp(e + 6, mac.data(), 6), 0);
  EXPECT_EQ(e[12], std::byte{0x80});
  EXPECT_EQ(e[13], std::byte{0x35});  // RARP
  EXPECT_EQ(e[21], std::byte{3});     // reverse request
  EXPECT_EQ(std::memcmp(e + 22, mac.data(), 6), 0);
  EXPECT_EQ(std::memcmp(e + 32, mac.data(), 6), 0);
}

// With MRG_RXBUF a frame larger than one buffer spans several (num_buffers
// says how many); with too few posted it waits for more instead of being
// dropped.
TEST(VirtioNet, ALargeFrameWaitsForEnoughBuffersAndSpansThem) {
  Rig r("ferrytest6");
  REQUIRE_RIG(r);
  r.bring_up();
  const std::uint32_t kSmall = 256;
  r.rx.desc(0, kRxBuffers, kSmall, kDescWrite, 0);
  r.rx.make_available(0);
  r.regs->notify(VirtioNet::kRxQueue);
  const Mac host{0x02, 0, 0, 0, 0, 0x97};
  const auto big = ethernet(kGuestMac, host, std::string(900, 'x') + "end");
  ASSERT_TRUE(r.wire.send(big));
  std::this_thread::sleep_for(150ms);
  // 12 + 917 bytes need four 256-byte buffers: one is not enough.
  EXPECT_EQ(r.net->figures().rx_dropped, 0u) << "dropped instead of waiting for buffers";
  for (std::uint16_t i = 1; i < 6; ++i) {
    r.rx.desc(i, kRxBuffers + 0x1000ull * i, kSmall, kDescWrite, 0);
    r.rx.make_available(i);
  }
  r.regs->notify(VirtioNet::kRxQueue);
  ASSERT_TRUE(eventually([&] {
    for (std::uint16_t u = 0; u < r.rx.used_idx(); ++u) {
      const auto [head, len] = r.rx.used_elem(u);
      const std::uint16_t n = r.ram.get16(kRxBuffers + 0x1000ull * head + 10);
      if (n == 4) return true;
    }
    return false;
  })) << "no frame spanning 4 buffers arrived";
  // Find it and put its pieces together.
  std::vector<std::byte> joined;
  for (std::uint16_t u = 0; u < r.rx.used_idx(); ++u) {
    auto [head, len] = r.rx.used_elem(u);
    if (r.ram.get16(kRxBuffers + 0x1000ull * head + 10) != 4) continue;
    for (int k = 0; k < 4; ++k) {
      std::tie(head, len) = r.rx.used_elem(static_cast<std::uint16_t>(u + k));
      const std::byte* b = r.ram.at(kRxBuffers + 0x1000ull * head);
      joined.insert(joined.end(), b, b + len);
    }
    break;
  }
  ASSERT_EQ(joined.size(), 12 + big.size());
  EXPECT_TRUE(std::equal(big.begin(), big.end(), joined.begin() + 12)) << "the frame's pieces differ";
}

}  // namespace
}  // namespace ferry::kvm::net

// A Linux guest's network on a TAP, and what live migration promises for
// it (tools/kvm-sandbox: the sandbox is "the host"). The guest's TAPs are
// ports of a bridge; the client lives in a network namespace of its own on
// a veth into the same bridge, as a machine on the LAN would. The guest
// runs an echo server; the client holds one TCP connection to it and
// streams numbered lines through it while the VM is snapshotted, restored
// and migrated, and checks every byte came back once and in order.
#include <gtest/gtest.h>

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <iterator>
#include <fstream>
#include <filesystem>
#include <chrono>
#include <mutex>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "tests/e2e/linux_guest.hh"
#include "tests/e2e/netns.hh"

namespace ferry::test {
namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

// One TCP connection and a stream of numbered lines through it: a writer
// sends a line every 20 ms while streaming, a reader takes the echoes and
// keeps the longest silence between two of them.
class EchoStream {
 public:
  explicit EchoStream(int fd) : fd_(fd) {}
  ~EchoStream() {
    stop();
    if (fd_ >= 0) ::close(fd_);
  }
  bool ok() const { return fd_ >= 0; }

  // One line there and back, outside streaming.
  std::string echo(const std::string& line, std::chrono::seconds within) {
    if (::send(fd_, line.data(), line.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(line.size())) return "";
    std::string got;
    const auto end = Clock::now() + within;
    while (got.size() < line.size() && Clock::now() < end) {
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, 100) <= 0) continue;
      char buf[256];
      const ssize_t n = ::recv(fd_, buf, std::min(sizeof buf, line.size() - got.size()), 0);
      if (n <= 0) break;
      got.append(buf, static_cast<std::size_t>(n));
    }
    return got;
  }

  void start() {
    running_ = true;
    last_ = Clock::now();
    writer_ = std::thread([this] {
      for (int seq = 0; running_; ++seq) {
        const auto line = fmt::format("seq={:06d}\n", seq);
        if (::send(fd_, line.data(), line.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(line.size())) {
          error_ = fmt::format("send: {}", std::strerror(errno));
          return;
        }
        {
          std::lock_guard lock(mu_);
          sent_ += line;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
    });
    reader_ = std::thread([this] {
      char buf[4096];
      while (running_ || pending() > 0) {
        pollfd p{fd_, POLLIN, 0};
        if (::poll(&p, 1, 100) <= 0) {
          if (!running_ && Clock::now() - stopped_at_ > std::chrono::seconds(30)) return;
          continue;
        }
        const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
        if (n <= 0) {
          error_ = n == 0 ? "the connection was closed" : fmt::format("recv: {}", std::strerror(errno));
          return;
        }
        const auto now = Clock::now();
        std::lock_guard lock(mu_);
        max_stall_ = std::max(max_stall_, now - last_);
        last_ = now;
        got_.append(buf, static_cast<std::size_t>(n));
      }
    });
  }
  // Stops sending, waits (up to 30 s) for the last echoes.
  void stop() {
    if (!running_.exchange(false)) return;
    stopped_at_ = Clock::now();
    if (writer_.joinable()) writer_.join();
    if (reader_.joinable()) reader_.join();
  }
  // The longest silence so far, and restart measuring (one figure per phase).
  double take_stall_ms() {
    std::lock_guard lock(mu_);
    const double ms = std::chrono::duration<double, std::milli>(max_stall_).count();
    max_stall_ = {};
    return ms;
  }
  std::string sent() const {
    std::lock_guard lock(mu_);
    return sent_;
  }
  std::string got() const {
    std::lock_guard lock(mu_);
    return got_;
  }
  const std::string& error() const { return error_; }

 private:
  std::size_t pending() const {
    std::lock_guard lock(mu_);
    return sent_.size() > got_.size() ? sent_.size() - got_.size() : 0;
  }
  int fd_;
  std::atomic<bool> running_{false};
  std::thread writer_, reader_;
  mutable std::mutex mu_;
  std::string sent_, got_, error_;
  Clock::time_point last_, stopped_at_;
  Clock::duration max_stall_{};
};

class LinuxNet : public LinuxGuest {
 protected:
  // A bridge `br` holding the host's 10.0.N.1, with `taps` (persistent,
  // so each exists before the process that opens it) and a veth to the
  // client's namespace, which gets 10.0.N.9.
  void SetUpLan(int n, const std::vector<std::string>& taps) {
    subnet_ = n;
    br_ = fmt::format("fbr{}", n);
    taps_ = taps;
    std::vector<std::string> cmds = {fmt::format("brctl addbr {}", br_)};
    for (const auto& t : taps)
      cmds.insert(cmds.end(), {fmt::format("tunctl -t {} >/dev/null", t), fmt::format("brctl addif {} {}", br_, t),
                               fmt::format("ip link set {} up", t)});
    for (const auto& c : cmds) {
      auto r = sh(c);
      ASSERT_EQ(r.exit_code, 0) << c << "\n" << r.describe();
    }
    ASSERT_TRUE(client_.error().empty()) << client_.error();
    const std::string vb = fmt::format("fvb{}", n);
    ASSERT_TRUE(client_.add_veth(vb, "eth0")) << client_.error();
    for (const auto& c : {fmt::format("brctl addif {} {}", br_, vb), fmt::format("ip link set {} up", vb),
                          fmt::format("ip addr add 10.0.{}.1/24 dev {}", n, br_), fmt::format("ip link set {} up", br_)}) {
      auto r = sh(c);
      ASSERT_EQ(r.exit_code, 0) << c << "\n" << r.describe();
    }
    for (const auto& c : {std::string("ip link set lo up"), fmt::format("ip addr add 10.0.{}.9/24 dev eth0", n),
                          std::string("ip link set eth0 up")}) {
      auto r = client_.sh(c);
      ASSERT_EQ(r.exit_code, 0) << "(client namespace) " << c << "\n" << r.describe();
    }
  }
  void TearDown() override {
    if (br_.empty()) return;
    (void)sh(fmt::format("ip link set {} down; brctl delbr {}; ip link del fvb{}", br_, br_, subnet_));
    for (const auto& t : taps_) (void)sh(fmt::format("tunctl -d {} >/dev/null", t));
  }
  static ProcessResult sh(const std::string& cmd) { return run_process({"/bin/sh", "-c", cmd}, 60s); }

  std::string guest_ip() const { return fmt::format("10.0.{}.2", subnet_); }
  // `ferry run` of the Linux guest with eth0 on `tap` at 10.0.N.2, and its
  // echo server on port 7000, once eth0 is up.
  void start_guest(std::unique_ptr<BackgroundProcess>& vm, const std::string& api, const std::string& log,
                   const std::string& tap, const std::string& mac) {
    auto args = run_args(1, api, log);
    args.back() += fmt::format(" ferry.ip={}/24", guest_ip());
    args.insert(args.end(), {"--net", fmt::format("tap={},mac={}", tap, mac)});
    vm = std::make_unique<BackgroundProcess>(args);
    ASSERT_TRUE(vm->started());
    ASSERT_TRUE(wait_console(log, [&](const std::string& s) { return contains(s, fmt::format("{}/24 up", guest_ip())); },
                             300s))
        << "eth0 did not come up\n--- console ---\n" << slurp(log) << "\n" << vm->output();
    ASSERT_TRUE(type(api, "nc -l -p 7000 -e cat &"));
  }
  std::unique_ptr<EchoStream> connect() {
    int fd = -1;
    for (int i = 0; i < 60 && fd < 0; ++i) {
      fd = client_.connect_tcp(guest_ip(), 7000);
      if (fd < 0) std::this_thread::sleep_for(500ms);
    }
    return std::make_unique<EchoStream>(fd);
  }
  // `ferry receive` with `args`; its address once it listens.
  static std::string start_receiver(std::unique_ptr<BackgroundProcess>& dst, std::vector<std::string> args) {
    dst = std::make_unique<BackgroundProcess>(args);
    for (int i = 0; i < 600; ++i) {
      std::istringstream in(dst->output());
      for (std::string line; std::getline(in, line);)
        if (auto j = json::parse(line, nullptr, false); !j.is_discarded() && j.value("event", "") == "listening")
          return j["listen"];
      std::this_thread::sleep_for(100ms);
    }
    return "";
  }
  // The port (interface name) bridge `br` has learned `mac` on, from its
  // forwarding database in sysfs (brforward: 16-byte __fdb_entry records);
  // "" when it has not learned it.
  static std::string bridge_port_of(const std::string& br, const std::string& mac) {
    std::ifstream f("/sys/class/net/" + br + "/brforward", std::ios::binary);
    const std::string raw((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    for (std::size_t off = 0; off + 16 <= raw.size(); off += 16) {
      const auto* e = reinterpret_cast<const unsigned char*>(raw.data() + off);
      if (fmt::format("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", e[0], e[1], e[2], e[3], e[4], e[5]) != mac) continue;
      const int port = e[6] | (e[12] << 8);  // port_no, port_hi
      for (const auto& dir : std::filesystem::directory_iterator("/sys/class/net/" + br + "/brif")) {
        std::ifstream pn(dir.path() / "port_no");
        std::string v;
        pn >> v;
        if (!v.empty() && std::stoi(v, nullptr, 0) == port) return dir.path().filename();
      }
    }
    return "";
  }
  static json net_status(const std::string& api) {
    auto st = run_process({FERRY_BIN, "status", "--vm", api, "--json"}, 60s);
    auto j = json::parse(st.out, nullptr, false);
    return j.is_discarded() ? json() : j["nets"];
  }

  ClientNetns client_;
  int subnet_ = 0;
  std::string br_;
  std::vector<std::string> taps_;
};

TEST_F(LinuxNet, AGuestOnABridgeAnswersPingAndTcpFromAClientNamespace) {
  SetUpLan(4, {"ftap4"});
  std::unique_ptr<BackgroundProcess> vm;
  const std::string api = dir_ + "/n4.sock", log = dir_ + "/n4.log";
  ASSERT_NO_FATAL_FAILURE(start_guest(vm, api, log, "ftap4", "52:54:00:12:34:04"));
  auto ping = client_.sh(fmt::format("ping -c 3 -W 5 {}", guest_ip()));
  EXPECT_EQ(ping.exit_code, 0) << "client to guest\n" << ping.describe() << "\n--- console ---\n" << slurp(log);
  auto conn = connect();
  ASSERT_TRUE(conn->ok()) << "no TCP connection to the guest\n" << slurp(log);
  EXPECT_EQ(conn->echo("over tcp\n", 20s), "over tcp\n");
  ASSERT_TRUE(type(api, "ping -c 2 -W 5 10.0.4.9 >/dev/null && echo guest-ping-ok"));
  EXPECT_TRUE(wait_console(log, [&](const std::string& s) { return has_line(s, "guest-ping-ok"); }, 60s))
      << "guest to client\n--- console ---\n" << slurp(log);
  const auto nets = net_status(api);
  ASSERT_EQ(nets.size(), 1u);
  EXPECT_EQ(nets[0]["mac"], "52:54:00:12:34:04");
  EXPECT_GE(nets[0]["rx_packets"].get<int>(), 5);
  EXPECT_GE(nets[0]["tx_packets"].get<int>(), 5);
  ASSERT_TRUE(type(api, "poweroff -f"));
  EXPECT_EQ(vm->wait(120s).exit_code, 0) << vm->output();
}

// The stream crosses two migrations: the first destination announces the
// VM, the second is told not to; every byte comes back once, in order,
// over the one connection, and the client-seen stall of each is printed.
TEST_F(LinuxNet, ATcpStreamSurvivesLiveMigrationsWithAndWithoutTheAnnounce) {
  SetUpLan(5, {"fa5", "fb5", "fc5"});
  std::unique_ptr<BackgroundProcess> a, b, c;
  const std::string api_a = dir_ + "/a5.sock", api_b = dir_ + "/b5.sock", api_c = dir_ + "/c5.sock";
  const std::string log_a = dir_ + "/a5.log", log_b = dir_ + "/b5.log", log_c = dir_ + "/c5.log";
  ASSERT_NO_FATAL_FAILURE(start_guest(a, api_a, log_a, "fa5", "52:54:00:12:34:05"));
  auto conn = connect();
  ASSERT_TRUE(conn->ok()) << slurp(log_a);
  ASSERT_EQ(conn->echo("before\n", 20s), "before\n");
  conn->start();
  std::this_thread::sleep_for(1s);
  const double idle_stall = conn->take_stall_ms();

  struct Move {
    const char* what;
    std::string from, to_api, to_log;
    std::unique_ptr<BackgroundProcess>* to;
    std::vector<std::string> extra;
    double stall_ms = 0, downtime_ms = 0;
    std::string port;  // the bridge port the guest's MAC is learned on, after the move
  };
  std::vector<Move> moves;
  moves.push_back({"with the announce", api_a, api_b, log_b, &b, {"--net", "tap=fb5"}, 0, 0, ""});
  moves.push_back({"without the announce", api_b, api_c, log_c, &c, {"--net", "tap=fc5", "--no-announce"}, 0, 0, ""});
  for (auto& m : moves) {
    SCOPED_TRACE(m.what);
    // Plain TCP: this test is about the guest's network, not the channel's.
    std::vector<std::string> args = {FERRY_BIN, "receive", "--listen", "127.0.0.1:0", "--api", m.to_api,
                                     "--serial-log", m.to_log, "--json", "--insecure"};
    args.insert(args.end(), m.extra.begin(), m.extra.end());
    const std::string listen = start_receiver(*m.to, args);
    ASSERT_FALSE(listen.empty()) << (*m.to)->output();
    (void)conn->take_stall_ms();
    // --verify: the device writes received frames into guest memory during
    // pre-copy; the digests match only if those pages were tracked.
    auto r = run_process(
        {FERRY_BIN, "migrate", "--vm", m.from, "--to", listen, "--json", "--downtime-limit", "1000", "--verify",
         "--insecure"},
        900s);
    ASSERT_EQ(r.exit_code, 0) << r.describe() << "\n" << (*m.to)->output();
    const auto rep = json::parse(r.out);
    m.downtime_ms = rep["downtime_ms"].get<double>();
    EXPECT_TRUE(rep["verified"].get<bool>()) << rep.dump(2);
    std::this_thread::sleep_for(3s);  // the stream settles on the new host
    m.stall_ms = conn->take_stall_ms();
    m.port = bridge_port_of(br_, "52:54:00:12:34:05");
    ASSERT_TRUE(conn->error().empty()) << conn->error();
  }
  conn->stop();
  EXPECT_TRUE(conn->error().empty()) << "the connection broke: " << conn->error();
  const std::string sent = conn->sent(), got = conn->got();
  EXPECT_GT(sent.size(), 100u);
  EXPECT_EQ(got, sent) << "echoes lost, repeated or reordered (" << got.size() << " of " << sent.size() << " bytes)";
  EXPECT_EQ(conn->echo("after\n", 20s), "after\n") << "the connection does not work after the moves";
  std::printf("[ figures  ] TCP stream through two live migrations: longest client-seen stall %.0f ms idle, "
              "%.0f ms with the announce (downtime %.1f ms), %.0f ms without (downtime %.1f ms); %zu bytes echoed\n",
              idle_stall, moves[0].stall_ms, moves[0].downtime_ms, moves[1].stall_ms, moves[1].downtime_ms,
              got.size());
  // The bridge forwards the guest's MAC to the destination's TAP after each move.
  EXPECT_EQ(moves[0].port, "fb5") << "after the announcing move";
  EXPECT_EQ(moves[1].port, "fc5") << "after the move without the announce";
  // The announcing destination sent its RARPs; the other did not.
  const auto nets_c = net_status(api_c);
  ASSERT_EQ(nets_c.size(), 1u);
  EXPECT_EQ(nets_c[0]["mac"], "52:54:00:12:34:05") << "the MAC did not travel with the VM";
  EXPECT_EQ(nets_c[0]["rarps_sent"].get<int>(), 0);
  ASSERT_EQ(run_process({FERRY_BIN, "quit", "--vm", api_c}, 60s).exit_code, 0);
  for (auto* p : {&a, &b, &c}) (void)(*p)->wait(60s);
}

// A migration that fails before READY (its destination killed during
// pre-copy) leaves the guest running on the source, connection and all.
TEST_F(LinuxNet, AFailedMigrationKeepsTheConnectionOnTheSource) {
  SetUpLan(6, {"fa6", "fb6"});
  std::unique_ptr<BackgroundProcess> a, b;
  const std::string api_a = dir_ + "/a6.sock", api_b = dir_ + "/b6.sock";
  ASSERT_NO_FATAL_FAILURE(start_guest(a, api_a, dir_ + "/a6.log", "fa6", "52:54:00:12:34:06"));
  auto conn = connect();
  ASSERT_TRUE(conn->ok());
  ASSERT_EQ(conn->echo("before\n", 20s), "before\n");
  const std::string listen =
      start_receiver(b, {FERRY_BIN, "receive", "--listen", "127.0.0.1:0", "--api", api_b, "--json", "--net", "tap=fb6",
                         "--insecure"});
  ASSERT_FALSE(listen.empty());
  // A slow link (1 MiB/s) keeps it in pre-copy long enough to kill the destination there.
  BackgroundProcess mig(
      {FERRY_BIN, "migrate", "--vm", api_a, "--to", listen, "--json", "--max-bandwidth", "1M", "--insecure"});
  bool precopy = false;
  for (int i = 0; i < 600 && !precopy; ++i) {
    auto st = run_process({FERRY_BIN, "status", "--vm", api_a, "--json"}, 30s);
    precopy = st.out.find("\"precopy\"") != std::string::npos;
    if (!precopy) std::this_thread::sleep_for(100ms);
  }
  ASSERT_TRUE(precopy) << "the migration never reached pre-copy\n" << mig.output();
  (void)b->wait(std::chrono::seconds(0));  // SIGKILL: the destination dies mid pre-copy
  auto end = mig.wait(300s);
  EXPECT_EQ(end.exit_code, 1) << end.describe();
  EXPECT_EQ(conn->echo("after the failed move\n", 30s), "after the failed move\n")
      << "the source lost its network after a rollback";
  const auto nets = net_status(api_a);
  ASSERT_EQ(nets.size(), 1u);
  EXPECT_EQ(nets[0]["tap"], "fa6");
  ASSERT_EQ(run_process({FERRY_BIN, "quit", "--vm", api_a}, 60s).exit_code, 0);
  (void)a->wait(60s);
}

// Snapshot, quit, restore in a new process on the same TAP: the device
// comes back with its queues and MAC, and the same connection carries on.
TEST_F(LinuxNet, SnapshotAndRestoreCarryTheDevice) {
  SetUpLan(7, {"fa7"});
  std::unique_ptr<BackgroundProcess> a;
  const std::string api = dir_ + "/a7.sock", snap = dir_ + "/n7.snap";
  ASSERT_NO_FATAL_FAILURE(start_guest(a, api, dir_ + "/a7.log", "fa7", "52:54:00:12:34:07"));
  auto conn = connect();
  ASSERT_TRUE(conn->ok());
  ASSERT_EQ(conn->echo("before\n", 20s), "before\n");
  auto s = run_process({FERRY_BIN, "snapshot", "--vm", api, snap}, 300s);
  ASSERT_EQ(s.exit_code, 0) << s.describe();
  ASSERT_EQ(run_process({FERRY_BIN, "quit", "--vm", api}, 60s).exit_code, 0);
  (void)a->wait(60s);
  // Without the TAP the snapshot's device cannot be rebuilt: a clear refusal.
  auto refused = run_process({FERRY_BIN, "restore", snap, "--api", dir_ + "/r7x.sock"}, 120s);
  EXPECT_FALSE(refused.timed_out) << "a restore without the TAP ran instead of being refused\n" << refused.describe();
  EXPECT_NE(refused.exit_code, 0) << refused.describe();
  EXPECT_NE(refused.err.find("virtio section, instance 0) this VM does not have"), std::string::npos)
      << refused.describe();
  BackgroundProcess r({FERRY_BIN, "restore", snap, "--api", dir_ + "/r7.sock", "--serial-log", dir_ + "/r7.log",
                       "--net", "tap=fa7"});
  ASSERT_TRUE(r.started());
  // Sent once the guest runs again: a segment lost to a VM that is not up
  // yet would wait out TCP's backed-off retransmission timer.
  bool running = false;
  for (int i = 0; i < 1200 && !running; ++i) {
    auto st = run_process({FERRY_BIN, "status", "--vm", dir_ + "/r7.sock", "--json"}, 30s);
    running = st.out.find("\"running\"") != std::string::npos;
    if (!running) std::this_thread::sleep_for(100ms);
  }
  ASSERT_TRUE(running) << r.output();
  EXPECT_EQ(conn->echo("after the restore\n", 60s), "after the restore\n")
      << "the restored guest's network does not work\n" << r.output();
  const auto nets = net_status(dir_ + "/r7.sock");
  ASSERT_EQ(nets.size(), 1u);
  EXPECT_EQ(nets[0]["mac"], "52:54:00:12:34:07");
  ASSERT_EQ(run_process({FERRY_BIN, "quit", "--vm", dir_ + "/r7.sock"}, 60s).exit_code, 0);
  (void)r.wait(60s);
}

}  // namespace
}  // namespace ferry::test

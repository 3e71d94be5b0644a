// The migration data path (userspace/transport/sender.hh, receiver.hh, tcp.hh) against the real
// kernel: loopback TCP sockets and real io_uring rings, nothing mocked but
// the rate limiter's clock.
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <future>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "userspace/transport/receiver.hh"
#include "userspace/transport/sender.hh"
#include "userspace/transport/tcp.hh"
#include "userspace/transport/uring_probe.hh"

namespace ferry::transport {
namespace {

using namespace std::chrono_literals;
using Bytes = std::vector<std::byte>;
using SteadyClock = std::chrono::steady_clock;

// Deterministic, position-dependent bytes, so a reordered, lost or
// duplicated range shows up as a mismatch.
Bytes pattern(std::size_t n, std::uint64_t seed) {
  Bytes out(n);
  std::uint64_t x = seed * 0x9e3779b97f4a7c15ull + 1;
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    std::memcpy(&out[i], &x, 8);
  }
  for (; i < n; ++i) out[i] = static_cast<std::byte>(i * 31 + seed);
  return out;
}

struct Pair {
  UniqueFd sender;
  UniqueFd receiver;
};

// A connected loopback pair through the helpers under test.
Pair tcp_pair() {
  auto listener = listen_tcp(Endpoint{.host = "127.0.0.1", .port = 0});
  EXPECT_TRUE(listener) << listener.error().what();
  if (!listener) return {};
  auto port = listening_port(listener->get());
  EXPECT_TRUE(port) << port.error().what();
  if (!port) return {};
  auto out = connect_tcp(Endpoint{.host = "127.0.0.1", .port = *port}, 2s);
  EXPECT_TRUE(out) << out.error().what();
  if (!out) return {};
  auto in = accept_tcp(listener->get(), 2s);
  EXPECT_TRUE(in) << in.error().what();
  if (!in) return {};
  return Pair{std::move(*out), std::move(*in)};
}

std::unique_ptr<Sender> start_sender(UniqueFd fd, SenderOptions options = {}) {
  auto sender = Sender::start(std::move(fd), std::move(options));
  EXPECT_TRUE(sender) << sender.error().what();
  return sender ? std::move(*sender) : nullptr;
}

iovec range(const Bytes& b, std::size_t offset = 0, std::size_t len = SIZE_MAX) {
  len = std::min(len, b.size() - offset);
  return iovec{.iov_base = const_cast<std::byte*>(b.data() + offset), .iov_len = len};
}

void set_linger_zero(int fd) {
  const linger l{.l_onoff = 1, .l_linger = 0};
  ASSERT_EQ(::setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l), 0);
}

// ---------------------------------------------------------------------------
// Sender + Receiver: bytes arrive exact and in order.

// One frame of the plan: its head size and the sizes of its borrowed ranges.
struct FramePlan {
  std::size_t head;
  std::vector<std::size_t> ranges;
};

std::size_t frame_bytes(const FramePlan& f) {
  std::size_t n = f.head;
  for (auto r : f.ranges) n += r;
  return n;
}

// Sends `plan` (borrowed ranges cut from one source buffer, heads made per
// frame), receives each frame with one read_exact into separate buffers per
// range, and checks every byte.
void send_and_verify(const std::vector<FramePlan>& plan, SenderOptions options, SenderStats* stats_out = nullptr) {
  std::size_t borrowed_total = 0, total = 0;
  for (const auto& f : plan) {
    total += frame_bytes(f);
    borrowed_total += frame_bytes(f) - f.head;
  }
  const Bytes source = pattern(borrowed_total, 1);

  auto [out, in] = tcp_pair();
  ASSERT_TRUE(out && in);
  auto sender = start_sender(std::move(out), options);
  ASSERT_TRUE(sender);

  // The receiver's buffers: one per head and per range, each filled with a
  // byte the pattern is unlikely to produce everywhere.
  std::vector<std::vector<Bytes>> got(plan.size());
  for (std::size_t i = 0; i < plan.size(); ++i) {
    got[i].emplace_back(plan[i].head, std::byte{0xee});
    for (auto r : plan[i].ranges) got[i].emplace_back(r, std::byte{0xee});
  }
  auto receive = [&]() -> std::string {
    auto rx = Receiver::create(in.get(), "rx");
    if (!rx) return rx.error().what();
    for (std::size_t i = 0; i < plan.size(); ++i) {
      std::vector<iovec> iov;
      for (auto& b : got[i]) iov.push_back({.iov_base = b.data(), .iov_len = b.size()});
      auto n = rx->read_exact(iov, 5s);
      if (!n) return fmt::format("frame {}: {}", i, n.error().what());
      if (*n != frame_bytes(plan[i])) return fmt::format("frame {}: read {} bytes", i, *n);
    }
    if (rx->bytes() != total) return fmt::format("receiver counted {} of {} bytes", rx->bytes(), total);
    return "";
  };
  auto reader = std::async(std::launch::async, [&] {
    std::string failure = receive();
    // A failed reader must not leave the sender waiting on a full socket.
    if (!failure.empty()) ::shutdown(in.get(), SHUT_RDWR);
    return failure;
  });

  std::vector<Bytes> heads;
  std::size_t offset = 0;
  for (std::size_t i = 0; i < plan.size(); ++i) {
    heads.push_back(pattern(plan[i].head, 1000 + i));
    std::vector<iovec> borrowed;
    for (auto r : plan[i].ranges) {
      borrowed.push_back(iovec{.iov_base = const_cast<std::byte*>(source.data() + offset), .iov_len = r});
      offset += r;
    }
    auto sent = sender->send(heads.back(), std::move(borrowed));
    if (!sent) break;  // the reader's failure says why
  }
  auto flushed = sender->flush();
  ASSERT_EQ(reader.wait_for(10s), std::future_status::ready);
  ASSERT_EQ(reader.get(), "");
  ASSERT_TRUE(flushed) << flushed.error().what();

  offset = 0;
  for (std::size_t i = 0; i < plan.size(); ++i) {
    ASSERT_EQ(got[i][0], heads[i]) << "head of frame " << i;
    for (std::size_t r = 0; r < plan[i].ranges.size(); ++r) {
      const std::size_t len = plan[i].ranges[r];
      // (An empty vector's data() may be null, which memcmp must not get.)
      ASSERT_TRUE(len == 0 || std::memcmp(got[i][r + 1].data(), source.data() + offset, len) == 0)
          << "frame " << i << " range " << r << " (" << len << " bytes at source offset " << offset << ")";
      offset += len;
    }
  }
  const SenderStats stats = sender->stats();
  EXPECT_EQ(stats.bytes, total);
  EXPECT_EQ(stats.frames, plan.size());
  if (stats_out) *stats_out = stats;
}

TEST(TransportStream, FramesArriveByteExactAndInOrder) {
  const std::vector<std::size_t> pages_300(300, 4096), pages_2500(2500, 4096), pages_4096(4096, 4096);
  const std::vector<FramePlan> plan = {
      {16, {}},                         // head only
      {0, {4096}},                      // no head
      {32, {0, 100, 0, 7, 0}},          // empty borrowed ranges
      {0, {}},                          // nothing at all
      {8, pages_300},                   // many iovecs
      {8, pages_2500},                  // more than IOV_MAX (1024) iovecs, both sides
      {24, {48u << 20}},                // one large range
      {1, {3u << 20, (5u << 20) + 13}}, // odd sizes
      {40, pages_4096},                 // 16 MiB read into 4096 page-sized buffers
      {3, {1}},
  };
  std::size_t total = 0;
  for (const auto& f : plan) total += frame_bytes(f);
  ASSERT_GT(total, 64u << 20);
  send_and_verify(plan, SenderOptions{.name = "stream 0"});
}

TEST(TransportStream, ShortFramesInterleaveWithLargeOnesInOrder) {
  // Many small frames right behind large ones: ordering must hold while a
  // large request is still going out in pieces.
  std::vector<FramePlan> plan;
  for (int i = 0; i < 200; ++i) plan.push_back({static_cast<std::size_t>(i % 7), {static_cast<std::size_t>(i % 3 == 0 ? 300000 : 17 * i)}});
  send_and_verify(plan, SenderOptions{.max_queued_bytes = 1u << 20, .name = "stream 1"});
}

// ---------------------------------------------------------------------------
// Zero-copy: the fallback to plain sends, and why.

TEST(TransportStream, ZeroCopyFallsBackOnLoopbackWithoutLosingBytes) {
  // Phase one is sent while zero-copy is on; flush() waits for its
  // notifications, which on loopback say "copied", so phase two goes out
  // plain. Both phases are checked byte for byte.
  std::vector<FramePlan> plan;
  for (int i = 0; i < 4; ++i) plan.push_back({16, {256u << 10, 4096, 100}});
  std::size_t borrowed_total = 0;
  for (const auto& f : plan) borrowed_total += frame_bytes(f) - f.head;
  const Bytes source = pattern(2 * borrowed_total, 2);

  auto [out, in] = tcp_pair();
  ASSERT_TRUE(out && in);
  auto sender = start_sender(std::move(out), SenderOptions{.zero_copy = ZeroCopy::kAuto, .name = "stream 2"});
  ASSERT_TRUE(sender);
  const SenderStats initial = sender->stats();
  EXPECT_TRUE(initial.zero_copy_active) << initial.zero_copy_note;

  auto reader = std::async(std::launch::async, [&, fd = in.get()] {
    Bytes all(2 * (borrowed_total + plan.size() * 16));
    auto rx = Receiver::create(fd, "rx");
    if (!rx) return Bytes{};
    auto n = rx->read_exact(all, 5s);
    return n && *n == all.size() ? all : Bytes{};
  });

  std::size_t offset = 0;
  Bytes expected;
  auto send_phase = [&](int phase) {
    for (std::size_t i = 0; i < plan.size(); ++i) {
      Bytes head = pattern(16, 100 * phase + i);
      expected.insert(expected.end(), head.begin(), head.end());
      std::vector<iovec> borrowed;
      for (auto r : plan[i].ranges) {
        borrowed.push_back(range(source, offset, r));
        expected.insert(expected.end(), source.begin() + offset, source.begin() + offset + r);
        offset += r;
      }
      ASSERT_TRUE(sender->send(std::move(head), std::move(borrowed)));
    }
    auto flushed = sender->flush();
    ASSERT_TRUE(flushed) << flushed.error().what();
  };

  send_phase(1);
  const SenderStats after_one = sender->stats();
  send_phase(2);
  const SenderStats after_two = sender->stats();

  ASSERT_EQ(reader.wait_for(10s), std::future_status::ready);
  const Bytes got = reader.get();
  ASSERT_EQ(got.size(), expected.size());
  EXPECT_TRUE(got == expected) << "bytes differ across the zero-copy fallback";

  EXPECT_FALSE(after_two.zero_copy_active);
  // Whether this kernel reports zero-copy usage, as the independent probe
  // (a SEND_ZC of its own) finds: not the version, since distribution
  // kernels backport io_uring (Debian's 6.1 has the report).
  auto caps = probe_io_uring();
  ASSERT_TRUE(caps) << caps.error().what();
  ASSERT_TRUE(caps->op_sendmsg_zc) << "kernel without IORING_OP_SENDMSG_ZC (< 6.1)";
  if (caps->zc_report_usage) {
    EXPECT_GE(after_one.zc_requests, 1u);
    EXPECT_GE(after_one.zc_copied, 1u);
    EXPECT_FALSE(after_one.zero_copy_active);
    EXPECT_EQ(after_one.zero_copy_note, "kernel copied the data (loopback/veth?): plain sends");
    // Phase two went out plain only.
    EXPECT_EQ(after_two.zc_requests, after_one.zc_requests);
    EXPECT_GT(after_two.plain_requests, after_one.plain_requests);
  } else {
    EXPECT_EQ(after_two.zc_requests, 0u);
    EXPECT_NE(after_two.zero_copy_note.find("cannot report zero-copy usage"), std::string::npos)
        << after_two.zero_copy_note;
  }
}

TEST(TransportStream, ZeroCopyOffSendsPlainOnly) {
  std::vector<FramePlan> plan(8, FramePlan{16, {128u << 10, 4096}});
  SenderStats stats;
  send_and_verify(plan, SenderOptions{.zero_copy = ZeroCopy::kOff, .name = "stream 3"}, &stats);
  EXPECT_EQ(stats.zc_requests, 0u);
  EXPECT_EQ(stats.zc_copied, 0u);
  EXPECT_GE(stats.plain_requests, plan.size());
  EXPECT_FALSE(stats.zero_copy_active);
  EXPECT_FALSE(stats.zero_copy_note.empty());
}

// ---------------------------------------------------------------------------
// Failures: sticky, named, and never a hang.

// Sends 1 MiB frames until the stream fails (at most `tries`).
Status send_until_failure(Sender& sender, const Bytes& data, int tries = 200) {
  for (int i = 0; i < tries; ++i) {
    if (auto s = sender.send({}, {range(data)}); !s) return s;
    if (auto s = sender.flush(); !s) return s;
  }
  return {};
}

TEST(TransportStream, PeerResetFailsSendAndFlushWithTheStreamName) {
  auto [out, in] = tcp_pair();
  ASSERT_TRUE(out && in);
  auto sender = start_sender(std::move(out), SenderOptions{.name = "stream 7"});
  ASSERT_TRUE(sender);
  set_linger_zero(in.get());
  in.reset();  // RST

  const Bytes data = pattern(1u << 20, 7);
  auto failed = send_until_failure(*sender, data);
  ASSERT_FALSE(failed) << "sending into a reset connection kept succeeding";
  const std::string what = failed.error().what();
  EXPECT_TRUE(what.starts_with("stream 7: send: ")) << what;
  EXPECT_TRUE(failed.error().sys_errno() == ECONNRESET || failed.error().sys_errno() == EPIPE) << what;

  // Sticky: every later call returns the same error.
  auto again = sender->send(Bytes(10), {range(data)});
  ASSERT_FALSE(again);
  EXPECT_EQ(again.error().what(), what);
  auto flushed = sender->flush();
  ASSERT_FALSE(flushed);
  EXPECT_EQ(flushed.error().what(), what);
}

TEST(TransportStream, PeerCloseFailsLaterSends) {
  auto [out, in] = tcp_pair();
  ASSERT_TRUE(out && in);
  auto sender = start_sender(std::move(out), SenderOptions{.name = "stream 8"});
  ASSERT_TRUE(sender);
  in.reset();  // FIN; the peer's kernel answers further data with RST

  const Bytes data = pattern(1u << 20, 8);
  auto failed = send_until_failure(*sender, data);
  ASSERT_FALSE(failed) << "sending to a closed peer kept succeeding";
  EXPECT_TRUE(failed.error().what().starts_with("stream 8: send: ")) << failed.error().what();
  EXPECT_EQ(sender->flush().error().what(), failed.error().what());
}

TEST(TransportStream, AbortWakesABlockedSend) {
  auto [out, in] = tcp_pair();  // `in` never reads: the socket buffers fill up
  ASSERT_TRUE(out && in);
  auto sender = start_sender(std::move(out), SenderOptions{.max_queued_bytes = 1u << 20, .name = "stream 4"});
  ASSERT_TRUE(sender);

  const Bytes data = pattern(1u << 20, 4);
  std::atomic<int> sent{0};
  auto blocked = std::async(std::launch::async, [&]() -> Status {
    for (;;) {
      if (auto s = sender->send({}, {range(data)}); !s) return s;
      ++sent;
    }
  });
  // Wait until send() has stopped returning: the buffers are full.
  int last = -1;
  for (int i = 0; i < 100 && sent.load() != last; ++i) {
    last = sent.load();
    std::this_thread::sleep_for(100ms);
  }
  ASSERT_EQ(blocked.wait_for(0ms), std::future_status::timeout) << "send() never blocked";
  EXPECT_GT(sent.load(), 0);

  const auto t0 = SteadyClock::now();
  sender->abort("operator said so");
  ASSERT_EQ(blocked.wait_for(2s), std::future_status::ready) << "abort() did not wake send()";
  EXPECT_LT(SteadyClock::now() - t0, 1s);
  auto result = blocked.get();
  ASSERT_FALSE(result);
  EXPECT_EQ(result.error().what(), "stream 4: aborted: operator said so");
  auto flushed = sender->flush();
  ASSERT_FALSE(flushed);
  EXPECT_EQ(flushed.error().what(), "stream 4: aborted: operator said so");

  // Destruction must not hang on data the peer never took.
  const auto t1 = SteadyClock::now();
  sender.reset();
  EXPECT_LT(SteadyClock::now() - t1, 2s);
}

TEST(TransportStream, AbortWakesThePeersAndALocalReader) {
  auto [out, in] = tcp_pair();
  ASSERT_TRUE(out && in);
  auto sender = start_sender(std::move(out), SenderOptions{.name = "stream 5"});
  ASSERT_TRUE(sender);
  ASSERT_TRUE(sender->send(pattern(100, 5)));
  ASSERT_TRUE(sender->flush());

  auto peer = std::async(std::launch::async, [fd = in.get()]() -> std::string {
    auto rx = Receiver::create(fd, "peer");
    if (!rx) return rx.error().what();
    Bytes buf(1u << 20);
    auto n = rx->read_exact(buf);
    return n ? fmt::format("read {} bytes", *n) : n.error().what();
  });
  auto local = std::async(std::launch::async, [fd = sender->fd()] {
    char c;
    return ::recv(fd, &c, 1, 0);
  });
  std::this_thread::sleep_for(100ms);
  ASSERT_EQ(peer.wait_for(0ms), std::future_status::timeout);
  ASSERT_EQ(local.wait_for(0ms), std::future_status::timeout);

  sender->abort("test");
  ASSERT_EQ(peer.wait_for(2s), std::future_status::ready);
  EXPECT_EQ(peer.get(), "peer: connection closed after 100 of 1048576 bytes");
  ASSERT_EQ(local.wait_for(2s), std::future_status::ready);
  EXPECT_EQ(local.get(), 0);
}

TEST(TransportStream, DestructorDoesNotHangOnUnsentZeroCopyData) {
  // The peer never reads, so zero-copy data sits in the send queue and its
  // notifications cannot come until the connection is reset.
  auto [out, in] = tcp_pair();
  ASSERT_TRUE(out && in);
  auto sender = start_sender(std::move(out), SenderOptions{.name = "stream 6"});
  ASSERT_TRUE(sender);
  // 60 MiB: more than both socket buffers hold, less than max_queued_bytes.
  const Bytes data = pattern(20u << 20, 6);
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(sender->send(pattern(8, 60 + i), {range(data)}));
  std::this_thread::sleep_for(200ms);

  const auto t0 = SteadyClock::now();
  sender.reset();
  EXPECT_LT(SteadyClock::now() - t0, 2s);

  // The peer is not left waiting either: its reads end (EOF or reset).
  const timeval tv{.tv_sec = 2, .tv_usec = 0};
  ASSERT_EQ(::setsockopt(in.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv), 0);
  Bytes sink(1u << 20);
  ssize_t n = 0;
  while ((n = ::recv(in.get(), sink.data(), sink.size(), 0)) > 0) {
  }
  EXPECT_FALSE(n < 0 && errno == EAGAIN) << "the peer's read hung after the Sender was destroyed";
}

// ---------------------------------------------------------------------------
// Receiver: end of stream, errors, idle timeout.

TEST(TransportReceiver, CleanEofAtABoundaryReturnsZero) {
  auto [out, in] = tcp_pair();
  ASSERT_TRUE(out && in);
  const Bytes data = pattern(100, 9);
  ASSERT_EQ(::send(out.get(), data.data(), data.size(), 0), 100);
  ASSERT_EQ(::shutdown(out.get(), SHUT_WR), 0);

  auto rx = Receiver::create(in.get(), "stream 0");
  ASSERT_TRUE(rx) << rx.error().what();
  Bytes got(100);
  auto n = rx->read_exact(got, 2s);
  ASSERT_TRUE(n) << n.error().what();
  EXPECT_EQ(*n, 100u);
  EXPECT_EQ(got, data);
  auto eof = rx->read_exact(got, 2s);
  ASSERT_TRUE(eof) << eof.error().what();
  EXPECT_EQ(*eof, 0u);
  EXPECT_EQ(rx->bytes(), 100u);
}

TEST(TransportReceiver, EofPartWayNamesTheCounts) {
  auto [out, in] = tcp_pair();
  ASSERT_TRUE(out && in);
  const Bytes data = pattern(100, 10);
  ASSERT_EQ(::send(out.get(), data.data(), data.size(), 0), 100);
  out.reset();

  auto rx = Receiver::create(in.get(), "stream 0");
  ASSERT_TRUE(rx) << rx.error().what();
  // Split over two ranges so the EOF lands after a range boundary.
  Bytes a(60), b(4036);
  const iovec iov[] = {{a.data(), a.size()}, {b.data(), b.size()}};
  auto n = rx->read_exact(iov, 2s);
  ASSERT_FALSE(n);
  EXPECT_EQ(n.error().what(), "stream 0: connection closed after 100 of 4096 bytes");
}

TEST(TransportReceiver, ResetIsASocketError) {
  auto [out, in] = tcp_pair();
  ASSERT_TRUE(out && in);
  set_linger_zero(out.get());
  out.reset();
  auto rx = Receiver::create(in.get(), "stream 0");
  ASSERT_TRUE(rx) << rx.error().what();
  Bytes buf(10);
  auto n = rx->read_exact(buf, 2s);
  ASSERT_FALSE(n);
  EXPECT_EQ(n.error().sys_errno(), ECONNRESET) << n.error().what();
  EXPECT_TRUE(n.error().what().starts_with("stream 0: recv: ")) << n.error().what();
}

TEST(TransportReceiver, IdleTimeoutCancelsAndLeavesTheBufferAlone) {
  auto [out, in] = tcp_pair();
  ASSERT_TRUE(out && in);
  auto rx = Receiver::create(in.get(), "stream 0");
  ASSERT_TRUE(rx) << rx.error().what();

  Bytes buf(4096, std::byte{0xaa});
  const auto t0 = SteadyClock::now();
  auto n = rx->read_exact(buf, 50ms);
  const auto took = SteadyClock::now() - t0;
  ASSERT_FALSE(n);
  EXPECT_EQ(n.error().message(), "stream 0: no data for 50 ms");
  EXPECT_EQ(n.error().sys_errno(), ETIMEDOUT);
  EXPECT_GE(took, 50ms);
  EXPECT_LT(took, 1s);

  // Data that arrives now must not land in the buffer: the request was
  // cancelled before read_exact returned.
  const Bytes data = pattern(4096, 11);
  ASSERT_EQ(::send(out.get(), data.data(), data.size(), 0), 4096);
  std::this_thread::sleep_for(100ms);
  EXPECT_TRUE(buf == Bytes(4096, std::byte{0xaa})) << "the cancelled receive wrote into the buffer";
  // ... and is still there for the next read.
  auto again = rx->read_exact(buf, 2s);
  ASSERT_TRUE(again) << again.error().what();
  EXPECT_TRUE(buf == data);
}

TEST(TransportReceiver, TrickleKeepsAnIdleTimeoutFromFiring) {
  // The timeout is about silence, not about the whole read: data arriving
  // in pieces spaced below the timeout completes the read.
  auto [out, in] = tcp_pair();
  ASSERT_TRUE(out && in);
  const Bytes data = pattern(1000, 12);
  auto writer = std::async(std::launch::async, [&, fd = out.get()] {
    for (std::size_t i = 0; i < 5; ++i) {
      std::this_thread::sleep_for(40ms);
      if (::send(fd, data.data() + i * 200, 200, 0) != 200) return false;
    }
    return true;
  });
  auto rx = Receiver::create(in.get(), "stream 0");
  ASSERT_TRUE(rx) << rx.error().what();
  Bytes got(1000);
  auto n = rx->read_exact(got, 100ms);
  ASSERT_TRUE(n) << n.error().what();
  EXPECT_EQ(got, data);
  EXPECT_TRUE(writer.get());
}

// ---------------------------------------------------------------------------
// RateLimiter with a fake clock: sleeping advances it.

struct FakeTime {
  std::mutex mu;
  SteadyClock::time_point now{};
  std::chrono::nanoseconds slept{0};
  int sleeps = 0;
  int clock_calls = 0;

  RateLimiter::Clock clock() {
    return [this] {
      std::lock_guard lock(mu);
      ++clock_calls;
      return now;
    };
  }
  RateLimiter::Sleep sleep() {
    return [this](std::chrono::nanoseconds d) {
      std::lock_guard lock(mu);
      now += d;
      slept += d;
      ++sleeps;
    };
  }
  double slept_s() {
    std::lock_guard lock(mu);
    return std::chrono::duration<double>(slept).count();
  }
};

TEST(RateLimiter, UnlimitedNeverSleeps) {
  FakeTime t;
  RateLimiter limiter(0, t.clock(), t.sleep());
  for (int i = 0; i < 10; ++i) limiter.acquire(1ull << 30);
  EXPECT_EQ(t.sleeps, 0);
  EXPECT_EQ(limiter.rate(), 0);
}

TEST(RateLimiter, SleepsOffEveryByteBeyondTheBurstAtTheRate) {
  FakeTime t;
  RateLimiter limiter(10e6, t.clock(), t.sleep());  // burst: 50 ms worth, 500 kB
  limiter.acquire(500'000);
  EXPECT_EQ(t.sleeps, 0) << "the first burst goes out at once";
  for (int i = 0; i < 10; ++i) limiter.acquire(1'000'000);
  EXPECT_NEAR(t.slept_s(), 1.0, 1e-6);
  EXPECT_EQ(t.sleeps, 10);
}

TEST(RateLimiter, BurstIsCappedAfterIdling) {
  FakeTime t;
  RateLimiter limiter(1e6, t.clock(), t.sleep());  // 50 ms is 50 kB: the 256 KiB floor applies
  t.now += std::chrono::hours(1);                   // an hour idle saves up no more than the burst
  limiter.acquire(256 * 1024);
  EXPECT_EQ(t.sleeps, 0);
  limiter.acquire(1000);
  EXPECT_NEAR(t.slept_s(), 0.001, 1e-6);
}

TEST(RateLimiter, RequestBeyondTheBurstLeavesDebt) {
  FakeTime t;
  RateLimiter limiter(1e6, t.clock(), t.sleep());
  limiter.acquire(256 * 1024 + 2'000'000);  // allowed, with 2 s of debt
  EXPECT_NEAR(t.slept_s(), 2.0, 1e-6);
  limiter.acquire(1'000'000);  // the bucket is empty, not refilled by the debt's sleep
  EXPECT_NEAR(t.slept_s(), 3.0, 1e-6);
}

TEST(RateLimiter, SetRateChangesThePace) {
  FakeTime t;
  RateLimiter limiter(1e6, t.clock(), t.sleep());
  limiter.acquire(256 * 1024);
  limiter.acquire(1'000'000);
  EXPECT_NEAR(t.slept_s(), 1.0, 1e-6);
  limiter.set_rate(4e6);
  EXPECT_EQ(limiter.rate(), 4e6);
  limiter.acquire(1'000'000);
  EXPECT_NEAR(t.slept_s(), 1.25, 1e-6);
  limiter.set_rate(0);
  limiter.acquire(1ull << 30);
  EXPECT_NEAR(t.slept_s(), 1.25, 1e-6);
}

TEST(RateLimiter, SenderAcquiresEveryByteOnceInPiecesOfAtMostOneMiB) {
  FakeTime t;
  RateLimiter limiter(100e6, t.clock(), t.sleep());  // burst 5 MB
  const int constructor_calls = t.clock_calls;
  const Bytes data = pattern(8u << 20, 13);
  auto [out, in] = tcp_pair();
  ASSERT_TRUE(out && in);
  auto sender = start_sender(std::move(out), SenderOptions{.limiter = &limiter, .name = "stream 9"});
  ASSERT_TRUE(sender);
  auto reader = std::async(std::launch::async, [fd = in.get()] {
    Bytes all((8u << 20) + 16);
    auto rx = Receiver::create(fd, "rx");
    return rx && rx->read_exact(all, 5s).value_or(0) == all.size();
  });
  ASSERT_TRUE(sender->send(pattern(16, 14), {range(data)}));
  ASSERT_TRUE(sender->flush());
  EXPECT_TRUE(reader.get());

  const double total = (8u << 20) + 16;
  EXPECT_NEAR(t.slept_s(), (total - 5e6) / 100e6, 1e-6);
  std::lock_guard lock(t.mu);
  EXPECT_GE(t.clock_calls - constructor_calls, 9) << "pieces larger than 1 MiB";
}

// ---------------------------------------------------------------------------
// Endpoints and the TCP helpers.

TEST(Endpoint, ParsesHostPortForms) {
  struct Case {
    const char* text;
    const char* host;
    std::uint16_t port;
    const char* str;
  };
  for (const Case& c : {Case{"1.2.3.4:80", "1.2.3.4", 80, "1.2.3.4:80"},
                        Case{"[::1]:8080", "::1", 8080, "[::1]:8080"},
                        Case{"[fe80::1%eth0]:1", "fe80::1%eth0", 1, "[fe80::1%eth0]:1"},
                        Case{"migrate.example.com:0", "migrate.example.com", 0, "migrate.example.com:0"},
                        Case{"localhost:65535", "localhost", 65535, "localhost:65535"}}) {
    auto e = parse_endpoint(c.text);
    ASSERT_TRUE(e) << c.text << ": " << e.error().what();
    EXPECT_EQ(e->host, c.host);
    EXPECT_EQ(e->port, c.port);
    EXPECT_EQ(e->str(), c.str);
  }
}

TEST(Endpoint, RejectsMalformedText) {
  struct Case {
    const char* text;
    const char* error;
  };
  for (const Case& c : {
           Case{"1.2.3.4", "'1.2.3.4': expected HOST:PORT"},
           Case{"", "'': expected HOST:PORT"},
           Case{":80", "':80': expected HOST:PORT"},
           Case{"::1:80", "'::1:80': expected HOST:PORT (IPv6 as [ADDRESS]:PORT)"},
           Case{"[::1]80", "'[::1]80': expected HOST:PORT (IPv6 as [ADDRESS]:PORT)"},
           Case{"[::1]", "'[::1]': expected HOST:PORT (IPv6 as [ADDRESS]:PORT)"},
           Case{"[]:80", "'[]:80': expected HOST:PORT"},
           Case{"host:", "'host:': port '' is not a number from 0 to 65535"},
           Case{"host:65536", "'host:65536': port '65536' is not a number from 0 to 65535"},
           Case{"host:8x", "'host:8x': port '8x' is not a number from 0 to 65535"},
           Case{"host:-1", "'host:-1': port '-1' is not a number from 0 to 65535"},
       }) {
    auto e = parse_endpoint(c.text);
    ASSERT_FALSE(e) << c.text << " parsed as " << e->str();
    EXPECT_EQ(e.error().what(), c.error);
  }
}

bool nodelay(int fd) {
  int v = 0;
  socklen_t len = sizeof v;
  return ::getsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &v, &len) == 0 && v != 0;
}

void listen_connect_accept(const std::string& listen_on, const std::string& connect_host) {
  auto where = parse_endpoint(listen_on);
  ASSERT_TRUE(where) << where.error().what();
  auto listener = listen_tcp(*where);
  ASSERT_TRUE(listener) << listener.error().what();
  auto port = listening_port(listener->get());
  ASSERT_TRUE(port) << port.error().what();
  EXPECT_NE(*port, 0);
  auto out = connect_tcp(Endpoint{.host = connect_host, .port = *port}, 2s);
  ASSERT_TRUE(out) << out.error().what();
  auto in = accept_tcp(listener->get(), 2s);
  ASSERT_TRUE(in) << in.error().what();
  EXPECT_TRUE(nodelay(out->get()));
  EXPECT_TRUE(nodelay(in->get()));
  char c = 'x';
  ASSERT_EQ(::send(out->get(), &c, 1, 0), 1);
  c = 0;
  ASSERT_EQ(::recv(in->get(), &c, 1, 0), 1);
  EXPECT_EQ(c, 'x');
}

TEST(Endpoint, ListenOnPortZeroConnectAndAcceptOverIPv4) { listen_connect_accept("127.0.0.1:0", "127.0.0.1"); }
TEST(Endpoint, ListenOnPortZeroConnectAndAcceptOverIPv6) { listen_connect_accept("[::1]:0", "::1"); }
TEST(Endpoint, ConnectResolvesNames) { listen_connect_accept("127.0.0.1:0", "localhost"); }

TEST(Endpoint, AcceptTimesOut) {
  auto listener = listen_tcp(Endpoint{.host = "127.0.0.1", .port = 0});
  ASSERT_TRUE(listener) << listener.error().what();
  const auto t0 = SteadyClock::now();
  auto in = accept_tcp(listener->get(), 50ms);
  ASSERT_FALSE(in);
  EXPECT_GE(SteadyClock::now() - t0, 50ms);
  EXPECT_EQ(in.error().message(), "accept: no connection within 50 ms");
}

TEST(Endpoint, ConnectFailuresNameTheEndpoint) {
  // A port nobody listens on: bind one, note it, close it.
  std::uint16_t port = 0;
  {
    auto listener = listen_tcp(Endpoint{.host = "127.0.0.1", .port = 0});
    ASSERT_TRUE(listener);
    port = listening_port(listener->get()).value_or(0);
  }
  auto refused = connect_tcp(Endpoint{.host = "127.0.0.1", .port = port}, 2s);
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().sys_errno(), ECONNREFUSED);
  EXPECT_TRUE(refused.error().what().starts_with(fmt::format("connect to 127.0.0.1:{}: ", port)))
      << refused.error().what();

  auto zero = connect_tcp(Endpoint{.host = "127.0.0.1", .port = 0}, 2s);
  ASSERT_FALSE(zero);
  EXPECT_EQ(zero.error().what(), "connect to 127.0.0.1:0: port 0 is only for listening");
}

TEST(Endpoint, ConnectTimesOutWhenTheListenerDropsSyns) {
  // With its accept queue full a listener drops SYNs, so connect() neither
  // succeeds nor fails: only our timeout ends it.
  auto listener = listen_tcp(Endpoint{.host = "127.0.0.1", .port = 0}, /*backlog=*/0);
  ASSERT_TRUE(listener) << listener.error().what();
  const Endpoint to{.host = "127.0.0.1", .port = listening_port(listener->get()).value_or(0)};
  std::vector<UniqueFd> queued;
  for (int i = 0; i < 8; ++i) {
    const auto t0 = SteadyClock::now();
    auto fd = connect_tcp(to, 200ms);
    if (!fd) {
      EXPECT_EQ(fd.error().message(), fmt::format("connect to {}: no connection within 200 ms", to.str()));
      EXPECT_GE(SteadyClock::now() - t0, 200ms);
      return;
    }
    queued.push_back(std::move(*fd));
  }
  FAIL() << "every connect succeeded although nobody accepts";
}

}  // namespace
}  // namespace ferry::transport

// The migration sessions in one process: a source (SourceMigration) and a
// destination (receive_migration) over an in-process socketpair transport
// (transport::LocalLink), against fake VMs whose memory is a real memfd
// region and whose "guest" is a thread rewriting pages while the VM runs.
// A relay between the two ends of each connection (relay.hh) injects one
// fault where the engine surely gets to it: a cut, a corrupt frame, a
// cancel while READY is held back, a lost COMMIT, a lost CONFIRMED. Each
// test asserts the commit rule: exactly one side runs the VM, and a side
// that ran it has the source's memory and state.
#include <gtest/gtest.h>

#include <poll.h>
#include <sys/socket.h>

#include <cstring>
#include <unistd.h>

#include <functional>
#include <future>

#include "tests/temp_dir.hh"
#include "tests/unit/migration_session_fakes.hh"
#include "userspace/migration/acceptor.hh"
#include "userspace/migration/destination.hh"
#include "userspace/migration/incoming.hh"
#include "userspace/migration/incoming_control.hh"
#include "userspace/migration/session_records.hh"
#include "userspace/migration/source.hh"
#include "userspace/transport/local.hh"

namespace ferry::migration {
namespace {

using namespace std::chrono_literals;
using testing::FakeHost;
using testing::FakeSourceVm;
using testing::Fault;
using testing::Relay;

constexpr std::uint32_t kStreams = 2;

struct Sessions {
  explicit Sessions(Fault fault) : relay(fault) {}
  // A test that failed half way must not hang here: a held destination
  // ends when the listener closes, a held frame when the relay lets go.
  ~Sessions() {
    link.close();
    relay.release();
    source.reset();
    if (destination.valid()) (void)destination.wait_for(30s);
  }
  Relay relay;
  transport::LocalLink link{[this](transport::Connection& dialer, transport::Connection& listener) {
    relay.interpose(dialer, listener);
  }};
  FakeHost host;
  FakeSourceVm* source_vm = nullptr;
  std::unique_ptr<SourceMigration> source;
  std::future<Result<IncomingSession>> destination;
  std::promise<Phase> ended;  // the first final phase (resolve() reports again)
  std::atomic<bool> ended_once{false};
  std::function<void(MigrateOptions&)> adjust;  // before start()
  std::function<void(ReceiveOptions&)> receive_adjust;
  std::function<void()> before_source;  // once the destination listens, before the source starts

  void start(std::chrono::milliseconds idle_timeout = 5s, bool verify = true) {
    ReceiveOptions ro;
    ro.idle_timeout = idle_timeout;
    ro.stream_accept_timeout = 5s;
    if (receive_adjust) receive_adjust(ro);
    destination = std::async(std::launch::async, [this, ro] { return receive_migration(link, ro, host); });
    if (before_source) before_source();
    auto vm = std::make_unique<FakeSourceVm>();
    source_vm = vm.get();
    MigrateOptions mo;
    mo.to = {.host = "local", .port = 1};
    mo.dialer = &link;
    mo.streams = kStreams;
    mo.verify = verify;
    mo.policy = PolicyKind::kFixedThreshold;
    mo.downtime_limit = Millis(50);
    mo.timeout = 5s;  // the guest writes forever: switch over at the latest then
    mo.on_timeout = TimeoutAction::kForceSwitchover;
    mo.reply_timeout = 5s;
    mo.confirm_timeout = 300ms;
    mo.zero_copy = transport::ZeroCopy::kOff;
    if (adjust) adjust(mo);
    source = SourceMigration::start(std::move(vm), mo, [this](Phase p) {
      if (!ended_once.exchange(true)) ended.set_value(p);
    });
  }
  Phase source_end() {
    auto f = ended.get_future();
    EXPECT_EQ(f.wait_for(30s), std::future_status::ready) << "the source session never ended";
    return f.get();
  }
  Result<IncomingSession> destination_end() {
    EXPECT_EQ(destination.wait_for(30s), std::future_status::ready) << "the destination session never ended";
    return destination.get();
  }
  Result<QueryResult> ask(bool discard) {
    return query_destination(link, {.host = "local", .port = 1}, source->status().session, discard, 5s);
  }
};

TEST(MigrationSessions, TheVmMovesWithItsMemoryAndStateAndRunsOnlyAtTheDestination) {
  Sessions r(Fault{});
  r.start();
  EXPECT_EQ(r.source_end(), Phase::kMigrated) << r.source->status().error;
  auto got = r.destination_end();
  ASSERT_TRUE(got) << got.error().what();
  auto& dst = r.host.last();
  EXPECT_TRUE(dst.resumed);
  EXPECT_FALSE(dst.stopped);
  EXPECT_TRUE(r.source_vm->stopped());
  EXPECT_FALSE(r.source_vm->running());
  // The guest wrote during pre-copy; what the destination holds is the
  // memory and state at the pause.
  const auto st = r.source->status();
  EXPECT_GE(st.rounds.size(), 2u);
  EXPECT_GT(r.source_vm->writes_during_migration(), 0u);
  EXPECT_EQ(dst.state, r.source_vm->last_state());
  EXPECT_EQ(std::memcmp(dst.ram->host(), r.source_vm->ram().host(), r.source_vm->ram().size()), 0);
  EXPECT_TRUE(got->figures.verified);
  EXPECT_EQ(got->figures.session, st.session);
  // Holes were never sent; zero pages went as markers.
  EXPECT_EQ(st.unallocated_pages, r.source_vm->ram().pages() - FakeSourceVm::kAllocatedPages);
  EXPECT_GE(st.zero_pages, FakeSourceVm::kZeroPages);
  EXPECT_EQ(r.relay.fired(), false);
}

void expect_source_runs_destination_does_not(Sessions& r, Result<IncomingSession>& got) {
  EXPECT_FALSE(got);
  EXPECT_TRUE(r.source_vm->running()) << "the source must resume its VM before COMMIT";
  EXPECT_FALSE(r.source_vm->stopped());
  EXPECT_FALSE(r.source_vm->tracking());
  if (r.host.built()) {
    EXPECT_FALSE(r.host.last().resumed) << "the destination ran the VM without COMMIT";
  }
}

TEST(MigrationSessions, ACutConnectionRollsBackAndTheSourceKeepsRunning) {
  Sessions r(Fault{.kind = Fault::kCut, .type = FrameType::kPages, .nth = 2});
  r.start();
  EXPECT_EQ(r.source_end(), Phase::kFailed);
  auto got = r.destination_end();
  EXPECT_TRUE(r.relay.fired());
  expect_source_runs_destination_does_not(r, got);
  EXPECT_FALSE(r.source->status().error.empty());
}

TEST(MigrationSessions, ACorruptFrameIsRefusedAndTheSourceKeepsRunning) {
  Sessions r(Fault{.kind = Fault::kCorrupt, .type = FrameType::kPages, .nth = 1});
  r.start();
  EXPECT_EQ(r.source_end(), Phase::kFailed);
  auto got = r.destination_end();
  EXPECT_TRUE(r.relay.fired());
  expect_source_runs_destination_does_not(r, got);
  ASSERT_FALSE(got);
  EXPECT_NE(got.error().what().find("CRC"), std::string::npos) << "[" << got.error().what() << "]";
  // The destination told the source why.
  EXPECT_NE(r.source->status().error.find("CRC"), std::string::npos) << r.source->status().error;
}

// A destination that keeps its connection open but stops reading: the
// source's round never ends, so the policy never sees the timeout. The
// session's own deadline cancels it, and the guest runs on at the source.
TEST(MigrationSessions, APeerThatStopsReadingIsCancelledAtTheTimeout) {
  Sessions r(Fault{.kind = Fault::kHold, .type = FrameType::kPages, .nth = 1});
  r.adjust = [](MigrateOptions& mo) {
    mo.timeout = 1s;
    mo.on_timeout = TimeoutAction::kCancel;
    mo.downtime_limit = Millis(0.001);  // never fits: rounds go on until the link fills
    mo.timeout_grace = 300ms;
  };
  r.start(/*idle_timeout=*/60s);
  ASSERT_TRUE(r.relay.wait_fired(20s));
  EXPECT_EQ(r.source_end(), Phase::kCancelled);
  const auto st = r.source->status();
  EXPECT_NE(st.error.find("timeout"), std::string::npos) << st.error;
  EXPECT_NE(st.error.find("still in precopy"), std::string::npos) << st.error;
  // Cancelled at the deadline, not at the destination's idle timeout.
  EXPECT_LT(st.elapsed_ms, 20000.0);
  EXPECT_TRUE(r.source_vm->running());
  EXPECT_FALSE(r.source_vm->tracking());
  r.relay.release();
  auto got = r.destination_end();
  expect_source_runs_destination_does_not(r, got);
}

TEST(MigrationSessions, AnAbortAfterReadyDropsTheDestinationsCopy) {
  Sessions r(Fault{.kind = Fault::kHold, .type = FrameType::kReady, .nth = 1});
  r.start();
  // READY was sent and is held back: the destination has loaded the VM.
  ASSERT_TRUE(r.relay.wait_fired(20s));
  r.source->cancel("operator cancel while READY is on its way");
  EXPECT_EQ(r.source_end(), Phase::kCancelled);
  auto got = r.destination_end();
  ASSERT_FALSE(got);
  EXPECT_NE(got.error().what().find("aborted after READY"), std::string::npos) << got.error().what();
  expect_source_runs_destination_does_not(r, got);
  ASSERT_TRUE(r.host.built());
  EXPECT_TRUE(r.host.last().loaded);
  EXPECT_TRUE(r.host.last().stopped);
  r.relay.release();
}

TEST(MigrationSessions, ALostCommitLeavesBothPausedUntilResolveResumesTheSource) {
  test::TempDir dir;
  auto records = SessionRecords::open(dir.path);
  ASSERT_TRUE(records) << records.error().what();
  Sessions r(Fault{.kind = Fault::kDrop, .type = FrameType::kCommit, .nth = 1});
  r.receive_adjust = [&](ReceiveOptions& ro) { ro.records = &*records; };
  r.start(/*idle_timeout=*/1s);
  EXPECT_EQ(r.source_end(), Phase::kOutcomeUnknown);
  EXPECT_TRUE(r.relay.fired());
  // Neither side runs: the source waits for an operator, the destination
  // holds the VM paused for a resolver.
  EXPECT_FALSE(r.source_vm->running());
  EXPECT_FALSE(r.source_vm->stopped());
  auto q = r.ask(/*discard=*/false);
  ASSERT_TRUE(q) << q.error().what();
  EXPECT_EQ(q->outcome, SessionOutcome::kHolding);
  EXPECT_FALSE(r.host.last().resumed);
  // `ferry resolve`: the destination never ran it, so it is dropped there
  // and the source resumes.
  auto d = r.ask(/*discard=*/true);
  ASSERT_TRUE(d) << d.error().what();
  EXPECT_EQ(d->outcome, SessionOutcome::kDiscarded);
  // Recorded before the copy was dropped: a restarted receiver says so too.
  EXPECT_EQ(**records->find(r.source->status().session), SessionOutcome::kDiscarded);
  ASSERT_TRUE(r.source->resolve(false));
  EXPECT_EQ(r.source->phase(), Phase::kFailed);
  auto got = r.destination_end();
  ASSERT_FALSE(got);
  EXPECT_NE(got.error().what().find("discarded"), std::string::npos) << got.error().what();
  EXPECT_TRUE(r.host.last().stopped);
  EXPECT_FALSE(r.host.last().resumed);
  EXPECT_TRUE(r.source_vm->running());
}

TEST(MigrationSessions, ALostConfirmationIsResolvedByAskingTheDestination) {
  Sessions r(Fault{.kind = Fault::kDrop, .type = FrameType::kConfirmed, .nth = 1});
  r.start();
  EXPECT_EQ(r.source_end(), Phase::kOutcomeUnknown);
  auto got = r.destination_end();
  ASSERT_TRUE(got) << got.error().what();
  EXPECT_TRUE(r.relay.fired());
  // The destination runs it; the source, never having been told, waits paused.
  EXPECT_TRUE(r.host.last().resumed);
  EXPECT_FALSE(r.source_vm->running());
  EXPECT_FALSE(r.source_vm->stopped());
  // A resolve after a successful receive asks the responder, which says "running".
  ResolveResponder responder(r.link, got->figures.session);
  auto q = r.ask(/*discard=*/true);
  ASSERT_TRUE(q) << q.error().what();
  EXPECT_EQ(q->outcome, SessionOutcome::kRunning);
  ASSERT_TRUE(r.source->resolve(true));
  EXPECT_EQ(r.source->phase(), Phase::kMigrated);
  EXPECT_TRUE(r.source_vm->stopped());
  EXPECT_FALSE(r.host.last().stopped);
  EXPECT_EQ(std::memcmp(r.host.last().ram->host(), r.source_vm->ram().host(), r.source_vm->ram().size()), 0);
}

// What a resolve connection that skips the QUERY is told when it sends a
// bare ABORT: "" when the destination answered with anything else.
std::string bare_abort(Sessions& r) {
  auto c = r.link.dial({.host = "local", .port = 1}, 1s);
  if (!c) return "dial: " + c.error().what();
  MigrationStream::Options so;
  so.name = "stranger";
  so.read_timeout = 5s;
  auto s = MigrationStream::open(std::move(*c), so);
  if (!s) return "open: " + s.error().what();
  Hello h;
  h.host = "stranger";
  h.purpose = HelloPurpose::kResolve;
  h.stream_count = 0;
  if (!(*s)->send_now(FrameType::kHello, h) || !(*s)->send_now(FrameType::kAbort, Abort{"drop it"})) return "send";
  auto f = (*s)->in().next_frame();
  if (!f || !*f || (*f)->type != FrameType::kAbort) return "";
  return decode_abort((*f)->payload).value_or(Abort{}).reason;
}

bool wait_for_phase(const IncomingControl& c, IncomingPhase p) {
  for (int i = 0; i < 200 && c.view().phase != p; ++i) std::this_thread::sleep_for(50ms);
  return c.view().phase == p;
}

// COMMIT lost, then the source process is gone: nothing can resume its
// copy. A stranger's bare ABORT changes nothing; the operator commits the
// held VM forward at the destination (`ferry resolve --source-gone`),
// recorded before it resumes.
TEST(MigrationSessions, AHeldVmWhoseSourceIsGoneIsCommittedForwardAndRecorded) {
  test::TempDir dir;
  auto records = SessionRecords::open(dir.path);
  ASSERT_TRUE(records) << records.error().what();
  IncomingControl control;
  auto early = control.commit_forward(1s);  // nothing held yet
  ASSERT_FALSE(early);
  EXPECT_NE(early.error().what().find("nothing to commit: the incoming migration is listening"), std::string::npos)
      << early.error().what();
  Sessions r(Fault{.kind = Fault::kDrop, .type = FrameType::kCommit, .nth = 1});
  r.receive_adjust = [&](ReceiveOptions& ro) {
    ro.records = &*records;
    ro.control = &control;
  };
  r.start(/*idle_timeout=*/1s);
  EXPECT_EQ(r.source_end(), Phase::kOutcomeUnknown);
  ASSERT_TRUE(wait_for_phase(control, IncomingPhase::kHolding));
  const std::uint64_t session = r.source->status().session;
  EXPECT_TRUE(r.source->status().commit_sent) << "COMMIT left the source whole; only the relay dropped it";
  EXPECT_EQ(control.view().session, session);
  EXPECT_EQ(bare_abort(r), "ABORT refused: ask about the session (QUERY) first");
  auto q = r.ask(/*discard=*/false);
  ASSERT_TRUE(q) << q.error().what();
  EXPECT_EQ(q->outcome, SessionOutcome::kHolding) << "a stranger's ABORT dropped the only copy";
  EXPECT_FALSE(records->find(session)->has_value());

  ASSERT_TRUE(control.commit_forward(10s));
  auto got = r.destination_end();
  ASSERT_TRUE(got) << got.error().what();
  EXPECT_TRUE(r.host.last().resumed);
  EXPECT_EQ(control.view().phase, IncomingPhase::kRunning);
  EXPECT_EQ(**records->find(session), SessionOutcome::kCommitted);
  EXPECT_EQ(std::memcmp(r.host.last().ram->host(), r.source_vm->ram().host(), r.source_vm->ram().size()), 0);
  EXPECT_FALSE(r.source_vm->running()) << "two copies run";
}

// The destination ran the VM after COMMIT, CONFIRMED was lost, then the
// destination process ended. A receiver restarted on the same state
// directory says "committed" (not "unknown", which would resume the
// source and fork the guest), and the source stops its copy.
TEST(MigrationSessions, ARestartedReceiverAnswersFromItsRecordSoTheSourceNeverRunsASecondCopy) {
  test::TempDir dir;
  auto records = SessionRecords::open(dir.path);
  ASSERT_TRUE(records) << records.error().what();
  Sessions r(Fault{.kind = Fault::kDrop, .type = FrameType::kConfirmed, .nth = 1});
  r.receive_adjust = [&](ReceiveOptions& ro) { ro.records = &*records; };
  r.start();
  EXPECT_EQ(r.source_end(), Phase::kOutcomeUnknown);
  auto got = r.destination_end();
  ASSERT_TRUE(got) << got.error().what();
  const std::uint64_t session = got->figures.session;
  EXPECT_EQ(**records->find(session), SessionOutcome::kCommitted);
  got->vm.reset();  // the destination process ends, and its VM with it

  auto restarted = SessionRecords::open(dir.path);
  ASSERT_TRUE(restarted);
  FakeHost host2;
  ReceiveOptions ro;
  ro.records = &*restarted;
  auto second = std::async(std::launch::async, [&] { return receive_migration(r.link, ro, host2); });
  auto q = r.ask(/*discard=*/true);
  ASSERT_TRUE(q) << q.error().what();
  EXPECT_EQ(q->outcome, SessionOutcome::kCommitted);
  ASSERT_TRUE(r.source->resolve(true));
  EXPECT_EQ(r.source->phase(), Phase::kMigrated);
  EXPECT_TRUE(r.source_vm->stopped());
  EXPECT_FALSE(r.source_vm->running());
  r.link.close();
  ASSERT_EQ(second.wait_for(10s), std::future_status::ready);
  EXPECT_FALSE(second.get()) << "the restarted receiver got a migration from nowhere";
  EXPECT_EQ(host2.builds(), 0u);
}

// Strangers reach the destination's port before the source: garbage, a
// wrong protocol version, one that says nothing, one that trickles a byte
// at a time. Each is answered or cut off and costs only its own
// connection; nothing is built for them, and the migration that follows
// runs to the end.
TEST(MigrationSessions, StrangersCostOnlyTheirConnectionsAndTheMigrationStillRuns) {
  Sessions r(Fault{});
  std::vector<transport::Connection> strangers;
  std::string answer_to_garbage;
  std::chrono::steady_clock::duration silent_cut{};
  r.receive_adjust = [](ReceiveOptions& ro) { ro.hello_deadline = 1s; };
  r.before_source = [&] {
    auto dial = [&] {
      auto c = r.link.dial({.host = "local", .port = 1}, 1s);
      EXPECT_TRUE(c) << (c ? "" : c.error().what());
      return c ? std::move(*c) : transport::Connection{};
    };
    // Garbage: answered with an ABORT that says why, then closed.
    auto g = dial();
    const std::string garbage = "GET / HTTP/1.1\r\nHost: ferry\r\n\r\n and some more bytes to fill a header";
    ASSERT_EQ(::write(g.fd(), garbage.data(), garbage.size()), static_cast<ssize_t>(garbage.size()));
    FrameReader reader;
    std::array<std::byte, 4096> buf{};
    for (ssize_t n; (n = ::read(g.fd(), buf.data(), buf.size())) > 0;) {
      auto frames = reader.feed(std::span(buf).first(static_cast<std::size_t>(n)));
      ASSERT_TRUE(frames) << frames.error().what();
      for (auto& f : *frames)
        if (f.type == FrameType::kAbort) answer_to_garbage = decode_abort(f.payload).value_or(Abort{}).reason;
    }
    // A wrong version: a HELLO frame of protocol 2.0.
    auto v = dial();
    auto frame = encode_frame(FrameType::kHello, 0, encode(Hello{}));
    frame[4] = std::byte{2};  // version_major, little-endian u16 at offset 4
    ASSERT_EQ(::write(v.fd(), frame.data(), frame.size()), static_cast<ssize_t>(frame.size()));
    strangers.push_back(std::move(v));
    // Silent: cut off at the HELLO deadline.
    auto s = dial();
    const auto t0 = std::chrono::steady_clock::now();
    char byte;
    EXPECT_EQ(::read(s.fd(), &byte, 1), 0) << "the silent peer's connection was not closed";
    silent_cut = std::chrono::steady_clock::now() - t0;
    // Trickling: a byte every 200 ms never completes a header, and the
    // deadline is not an idle timer it could keep restarting.
    auto t = dial();
    const auto t1 = std::chrono::steady_clock::now();
    bool closed = false;
    for (int i = 0; i < 30 && !closed && ::send(t.fd(), "F", 1, MSG_NOSIGNAL) == 1; ++i) {
      pollfd p{t.fd(), POLLIN, 0};
      closed = ::poll(&p, 1, 200) == 1 && ::read(t.fd(), &byte, 1) <= 0;
    }
    EXPECT_TRUE(closed) << "the trickling peer held its connection for 6 s";
    EXPECT_LT(std::chrono::steady_clock::now() - t1, 5s) << "the trickling peer held its connection";
  };
  r.start();
  EXPECT_EQ(r.source_end(), Phase::kMigrated) << r.source->status().error;
  auto got = r.destination_end();
  ASSERT_TRUE(got) << got.error().what();
  EXPECT_NE(answer_to_garbage.find("bad magic"), std::string::npos) << answer_to_garbage;
  EXPECT_GE(silent_cut, 900ms);
  EXPECT_LT(silent_cut, 5s);
  EXPECT_EQ(got->figures.refused_connections, 4u);
  EXPECT_EQ(r.host.builds(), 1u) << "something was built for a stranger";
  EXPECT_TRUE(r.host.last().resumed);
}

// The front door reads each HELLO on its own thread: a peer that says
// nothing, with a deadline far beyond the test's patience, delays neither
// the source's connections nor the end of the session.
TEST(MigrationSessions, ASilentPeerDelaysNobody) {
  Sessions r(Fault{});
  transport::Connection silent;
  r.receive_adjust = [](ReceiveOptions& ro) { ro.hello_deadline = 120s; };
  r.before_source = [&] {
    auto c = r.link.dial({.host = "local", .port = 1}, 1s);
    ASSERT_TRUE(c);
    silent = std::move(*c);
    std::this_thread::sleep_for(100ms);  // accepted, and in its handshake, before the source dials
  };
  const auto t0 = std::chrono::steady_clock::now();
  r.start();
  EXPECT_EQ(r.source_end(), Phase::kMigrated) << r.source->status().error;
  auto got = r.destination_end();
  ASSERT_TRUE(got) << got.error().what();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 60s);
  char byte;
  EXPECT_EQ(::read(silent.fd(), &byte, 1), 0) << "the session ended without closing the silent peer";
}

// A flood: beyond max_handshakes connections in their handshake, the next
// is closed at once; the ones in their handshake still get their answer.
TEST(MigrationAcceptor, ClosesConnectionsBeyondTheHandshakeCap) {
  transport::LocalLink link;
  Acceptor acceptor(link, {.read_timeout = 30s, .hello_deadline = 30s, .max_handshakes = 2});
  // The counts move on the acceptor's threads, just after the peer hears.
  auto refused_reaches = [&](std::uint32_t n) {
    for (int i = 0; i < 50 && acceptor.refused() < n; ++i) std::this_thread::sleep_for(20ms);
    std::this_thread::sleep_for(50ms);  // and that handshake thread has ended
    return acceptor.refused();
  };
  // Reads frames from `c` until an ABORT (its reason) or the end ("").
  auto abort_reason = [](transport::Connection& c) {
    FrameReader reader;
    std::array<std::byte, 4096> buf{};
    for (ssize_t n; (n = ::read(c.fd(), buf.data(), buf.size())) > 0;) {
      auto frames = reader.feed(std::span(buf).first(static_cast<std::size_t>(n)));
      if (!frames) return frames.error().what();
      for (auto& f : *frames)
        if (f.type == FrameType::kAbort) return decode_abort(f.payload).value_or(Abort{}).reason;
    }
    return std::string();
  };
  // A first header that claims a 64 MiB STATE is refused from the header,
  // at once: nothing waits for (or sets aside room for) that payload.
  {
    auto big = link.dial({.host = "local", .port = 1}, 1s);
    ASSERT_TRUE(big);
    const auto header = encode_header(FrameType::kState, 0, kMaxPayload, 0);
    ASSERT_EQ(::write(big->fd(), header.data(), header.size()), static_cast<ssize_t>(header.size()));
    const auto t0 = std::chrono::steady_clock::now();
    EXPECT_EQ(abort_reason(*big), "expected HELLO, got STATE");
    EXPECT_LT(std::chrono::steady_clock::now() - t0, 5s);
    EXPECT_EQ(refused_reaches(1), 1u);
  }
  std::vector<transport::Connection> silent;
  for (int i = 0; i < 2; ++i) {
    auto c = link.dial({.host = "local", .port = 1}, 1s);
    ASSERT_TRUE(c);
    silent.push_back(std::move(*c));
  }
  std::this_thread::sleep_for(300ms);  // both accepted
  auto extra = link.dial({.host = "local", .port = 1}, 1s);
  ASSERT_TRUE(extra);
  pollfd p{extra->fd(), POLLIN, 0};
  ASSERT_EQ(::poll(&p, 1, 5000), 1) << "the connection over the cap was not closed";
  char byte;
  EXPECT_EQ(::read(extra->fd(), &byte, 1), 0);
  EXPECT_EQ(refused_reaches(2), 2u);
  // One of the two in their handshake says HELLO: it comes out.
  auto hello = encode_frame(FrameType::kHello, 0, encode(Hello{}));
  ASSERT_EQ(::write(silent[0].fd(), hello.data(), hello.size()), static_cast<ssize_t>(hello.size()));
  auto in = acceptor.next(5s);
  ASSERT_TRUE(in) << in.error().what();
  ASSERT_TRUE(in->hello) << in->hello.error().what();
  EXPECT_EQ(in->hello->purpose, HelloPurpose::kMigrate);
  auto none = acceptor.next(200ms);
  ASSERT_FALSE(none);
  EXPECT_EQ(none.error().sys_errno(), ETIMEDOUT);
  // Once the session has its streams, another migration is told it is busy.
  acceptor.close_migrations();
  ASSERT_EQ(::write(silent[1].fd(), hello.data(), hello.size()), static_cast<ssize_t>(hello.size()));
  EXPECT_EQ(abort_reason(silent[1]), "this destination is busy with another migration");
  EXPECT_FALSE(acceptor.next(200ms));
  EXPECT_EQ(refused_reaches(3), 3u);
}

// The phase tables are the commit rule: nothing leaves COMMIT except the
// destination's answer, nothing but a resolver ends a held VM.
TEST(MigrationSessions, PhaseTablesFollowTheCommitRule) {
  using enum Phase;
  for (Phase p : {kConnecting, kPrecheck, kPrecopy, kSwitchover}) {
    EXPECT_TRUE(phase_transition_allowed(p, kFailed));
    EXPECT_TRUE(phase_transition_allowed(p, kCancelled));
  }
  EXPECT_FALSE(phase_transition_allowed(kCommitting, kFailed));
  EXPECT_FALSE(phase_transition_allowed(kCommitting, kCancelled));
  EXPECT_TRUE(phase_transition_allowed(kCommitting, kOutcomeUnknown));
  EXPECT_TRUE(phase_transition_allowed(kOutcomeUnknown, kFailed));
  EXPECT_FALSE(phase_transition_allowed(kPrecopy, kCommitting));
  EXPECT_FALSE(phase_transition_allowed(kMigrated, kFailed));
  EXPECT_FALSE(phase_transition_allowed(kCancelled, kPrecopy));
  using I = IncomingPhase;
  EXPECT_FALSE(incoming_transition_allowed(I::kReceiving, I::kRunning));
  // Only the operator, with the source gone, commits a held VM forward.
  EXPECT_TRUE(incoming_transition_allowed(I::kHolding, I::kRunning));
  EXPECT_FALSE(incoming_transition_allowed(I::kHolding, I::kFailed));
  EXPECT_TRUE(incoming_transition_allowed(I::kReady, I::kRunning));
  EXPECT_TRUE(incoming_transition_allowed(I::kHolding, I::kDiscarded));
  EXPECT_FALSE(incoming_transition_allowed(I::kRunning, I::kFailed));
}

}  // namespace
}  // namespace ferry::migration

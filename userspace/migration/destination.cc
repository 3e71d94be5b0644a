#include "userspace/base/io.hh"
#include "userspace/migration/destination.hh"

#include <sys/socket.h>
#include <unistd.h>

#include <condition_variable>
#include <cstring>
#include <deque>
#include <fstream>
#include <mutex>

#include <spdlog/spdlog.h>

#include "userspace/base/thread_name.hh"
#include "kvm/state/format.hh"
#include "kvm/system.hh"
#include "kvm/snapshot.hh"
#include "userspace/migration/digest.hh"
#include "userspace/migration/page_ledger.hh"
#include "userspace/migration/page_path.hh"
#include "userspace/migration/precheck.hh"
#include "userspace/migration/wire.hh"
#include "userspace/transport/stream.hh"

namespace ferry::migration {
namespace {

using Clock = std::chrono::steady_clock;



Result<HostResources> host_resources() {
  auto kvm = kvm::Kvm::open();
  if (!kvm) return std::unexpected(kvm.error());
  HostResources h;
  h.mem_available = meminfo("MemAvailable").value_or(0) * 1024;
  const int mv = kvm->check_extension(KVM_CAP_MAX_VCPUS);
  h.max_vcpus = mv > 0 ? static_cast<std::uint32_t>(mv) : 0;
  auto cpuid = kvm->supported_cpuid();
  if (!cpuid) return std::unexpected(cpuid.error());
  h.supported_cpuid = std::move(*cpuid);
  return h;
}

// A connection's replies: small frames, plain sends.
struct Replier {
  std::unique_ptr<transport::Sender> sender;
  std::unique_ptr<FrameSender> framer;
  static Result<Replier> make(UniqueFd fd, std::string name) {
    transport::SenderOptions so;
    so.zero_copy = transport::ZeroCopy::kOff;
    so.name = std::move(name);
    auto s = transport::Sender::start(std::move(fd), so);
    if (!s) return std::unexpected(s.error());
    Replier r;
    r.sender = std::move(*s);
    r.framer = std::make_unique<FrameSender>(*r.sender);
    return r;
  }
  template <class T>
  Status send(FrameType t, const T& m) {
    if (auto ok = framer->send(t, m); !ok) return ok;
    return sender->flush();
  }
};

// Serves one resolver connection whose HELLO was read: QUERY, then maybe
// ABORT. `outcome` says what this process knows; `discard` is called on an
// ABORT while holding and returns whether the VM was dropped.
void serve_resolver(std::unique_ptr<FrameSource> src, Replier rep, std::uint64_t session,
                    const std::function<SessionOutcome()>& outcome, const std::function<bool()>& discard) {
  for (;;) {
    auto f = src->next_frame();
    if (!f || !*f) return;
    if ((*f)->type == FrameType::kQuery) {
      auto q = decode_query((*f)->payload);
      if (!q) return;
      const SessionOutcome o = q->token == session ? outcome() : SessionOutcome::kUnknown;
      (void)rep.send(FrameType::kQueryResult, QueryResult{q->token, o, std::string(session_outcome_name(o))});
    } else if ((*f)->type == FrameType::kAbort) {
      const bool dropped = outcome() == SessionOutcome::kHolding && discard && discard();
      const SessionOutcome o = dropped ? SessionOutcome::kDiscarded : outcome();
      (void)rep.send(FrameType::kQueryResult, QueryResult{session, o, std::string(session_outcome_name(o))});
      return;
    } else {
      return;
    }
  }
}

// Reads a new connection's HELLO.
struct Opened {
  std::unique_ptr<FrameSource> src;
  UniqueFd fd;
  Hello hello;
};
// On failure `fd` stays with the caller, to answer with ABORT.
Result<Opened> open_connection(UniqueFd& fd, std::chrono::milliseconds timeout) {
  auto r = transport::Receiver::create(fd.get(), "incoming");
  if (!r) return std::unexpected(r.error());
  auto src = std::make_unique<FrameSource>(std::move(*r), timeout);
  auto f = src->next_frame();
  if (!f) return std::unexpected(f.error());
  if (!*f) return fail("the peer closed the connection before HELLO");
  if ((*f)->type != FrameType::kHello) return fail("expected HELLO, got {}", frame_type_name((*f)->type));
  auto h = decode_hello((*f)->payload);
  if (!h) return std::unexpected(h.error());
  return Opened{std::move(src), std::move(fd), *h};
}

class Session {
 public:
  Session(int listen_fd, const ReceiveOptions& o) : listen_fd_(listen_fd), o_(o) {}
  // Every way out joins the stream threads (idempotent).
  ~Session() { stop_streams(); }
  Result<Received> run(kvm::Serial::Sink console, kvm::Machine::Notify stopped);

 private:
  struct Stream {
    std::unique_ptr<FrameSource> src;
    UniqueFd fd;  // stream 0's lives in the replier
    std::thread thread;
    std::int64_t last_round = -1;  // guarded by mu_
  };
  Status accept_control();
  Status do_precheck(kvm::Serial::Sink console, kvm::Machine::Notify stopped);
  Status accept_streams();
  void stream_main(std::size_t i);
  Status receive_pages(std::size_t stream, const FrameHeader& h);
  Status receive_zero(std::size_t stream, const std::vector<std::byte>& payload);
  Result<Frame> next_control(std::chrono::milliseconds timeout);
  Status finish_and_ready(const State& state, std::optional<VerifyDigest> digest);
  Result<Received> wait_commit(std::uint64_t last_heartbeat);
  Result<Received> hold();
  void fail_stream(Error e);
  void stop_streams();
  void progress(const std::string& line) {
    if (o_.progress) o_.progress(line);
  }

  int listen_fd_;
  ReceiveOptions o_;
  Hello hello_;
  Replier rep_;
  std::unique_ptr<kvm::Machine> m_;
  std::vector<Stream> streams_;
  PageLedger ledger_;
  PageDigests digests_;  // --verify: each page's last verified checksum (0: zero)
  std::vector<std::uint64_t> written_;  // pages this side wrote data into (bits; one 64-page word per stream)
  ReceivedFigures fig_;
  Clock::time_point t0_;

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Frame> control_;  // non-page frames from stream 0
  std::optional<Error> failed_;
  std::size_t ended_ = 0;
};

void Session::fail_stream(Error e) {
  std::lock_guard lock(mu_);
  if (!failed_) failed_ = std::move(e);
  cv_.notify_all();
}

Status Session::accept_control() {
  for (;;) {
    auto fd = transport::accept_tcp(listen_fd_, std::chrono::milliseconds(0));
    if (!fd) return std::unexpected(fd.error());
    auto c = open_connection(*fd, o_.idle_timeout);
    if (!c) {
      // A peer speaking another version (or garbage) learns why, and this
      // receiver ends: it was waiting for exactly one migration.
      if (auto rep = Replier::make(std::move(*fd), "incoming"))
        (void)rep->send(FrameType::kAbort, Abort{c.error().what().substr(0, kMaxReason)});
      return std::unexpected(std::move(c.error()).context("refused an incoming migration"));
    }
    if (c->hello.purpose == HelloPurpose::kResolve) {
      // Nothing received yet: whatever they ask about is not here.
      auto rep = Replier::make(std::move(c->fd), "resolver");
      if (rep) serve_resolver(std::move(c->src), std::move(*rep), 0, [] { return SessionOutcome::kUnknown; }, {});
      continue;
    }
    if (c->hello.stream_index != 0) {
      spdlog::warn("receive: ignoring stream {} of session {:#x} without its control stream", c->hello.stream_index,
                   c->hello.session);
      continue;
    }
    hello_ = c->hello;
    auto rep = Replier::make(std::move(c->fd), "stream 0");
    if (!rep) return std::unexpected(rep.error());
    rep_ = std::move(*rep);
    streams_.resize(hello_.stream_count);
    streams_[0].src = std::move(c->src);
    fig_.session = hello_.session;
    fig_.source_host = hello_.host;
    fig_.streams = hello_.stream_count;
    t0_ = Clock::now();
    char host[256] = {};
    ::gethostname(host, sizeof host - 1);
    Hello mine;
    mine.host = host;
    mine.session = hello_.session;
    mine.stream_count = hello_.stream_count;
    return rep_.send(FrameType::kHello, mine);
  }
}

Status Session::do_precheck(kvm::Serial::Sink console, kvm::Machine::Notify stopped) {
  auto f = streams_[0].src->next_frame();
  if (!f) return std::unexpected(f.error());
  if (!*f) return fail("the source closed the connection before PRECHECK");
  if ((*f)->type != FrameType::kPrecheck) return fail("expected PRECHECK, got {}", frame_type_name((*f)->type));
  auto p = decode_precheck((*f)->payload, (*f)->minor);
  if (!p) {
    (void)rep_.send(FrameType::kAbort, Abort{p.error().what().substr(0, kMaxReason)});
    return std::unexpected(p.error());
  }
  auto host = host_resources();
  if (!host) return std::unexpected(host.error());
  PrecheckResult r = evaluate_precheck(*p, *host);
  if (r.ok) {
    kvm::MachineShape shape;
    shape.kind = static_cast<kvm::GuestKind>(p->guest_kind);
    shape.vcpus = p->vcpus;
    shape.irqchip = p->irqchip;
    for (const auto& g : p->regions) shape.regions.push_back({g.slot, g.gpa, g.size});
    if (p->devices) {
      shape.devices.emplace();
      for (const auto& d : *p->devices) shape.devices->push_back({d.kind, d.id, d.config});
    }
    auto m = kvm::Machine::incoming(shape, std::move(console), std::move(stopped), o_.huge_pages);
    if (!m) {
      r.ok = false;
      r.reason = fmt::format("cannot build the VM here: {}", m.error().what()).substr(0, kMaxReason);
    } else {
      m_ = std::move(*m);
      const auto* ram = m_->regions().front();
      if (auto ok = ledger_.add_slot(ram->slot(), ram->pages()); !ok) return ok;
      written_.assign((ram->pages() + 63) / 64, 0);
      digests_ = PageDigests(ram->pages());
    }
  }
  if (auto ok = rep_.send(FrameType::kPrecheckResult, r); !ok) return ok;
  if (!r.ok) return fail("refused the migration: {}", r.reason);
  progress(fmt::format("accepted a VM from {}: {} vCPUs, {} MiB, {} stream(s)", hello_.host, p->vcpus,
                       p->regions[0].size >> 20, hello_.stream_count));
  return {};
}

Status Session::accept_streams() {
  for (std::size_t got = 1; got < streams_.size();) {
    auto fd = transport::accept_tcp(listen_fd_, o_.stream_accept_timeout);
    if (!fd) return std::unexpected(std::move(fd.error()).context("waiting for the data streams"));
    auto c = open_connection(*fd, o_.idle_timeout);
    if (!c) return std::unexpected(std::move(c.error()).context("data stream"));
    if (c->hello.purpose != HelloPurpose::kMigrate || c->hello.session != hello_.session ||
        c->hello.stream_count != hello_.stream_count || c->hello.stream_index == 0 ||
        streams_[c->hello.stream_index].src) {
      spdlog::warn("receive: refusing a connection that is not a new stream of session {:#x}", hello_.session);
      continue;
    }
    auto& s = streams_[c->hello.stream_index];
    s.src = std::move(c->src);
    s.fd = std::move(c->fd);
    ++got;
  }
  return {};
}

// The page path is page_path.hh's (checked, received straight into guest
// memory, verified); the session keeps the ledger, digests and figures.
Status Session::receive_pages(std::size_t stream, const FrameHeader& h) {
  const auto* ram = m_->regions().front();
  auto r = receive_page_frame(*streams_[stream].src, h, {ram->slot(), ram->host(), ram->pages()}, written_, stream,
                              streams_.size());
  if (!r) return std::unexpected(r.error());
  const auto& pages = r->header.pages;
  // Each page belongs to one stream: no other thread writes its entry.
  for (std::size_t k = 0; k < pages.size(); ++k)
    if (r->good[k]) digests_.set(pages[k].page_index, pages[k].checksum);
  // Checksums were verified outside the lock, so streams verify in
  // parallel; the ledger and the figures are shared, and updated under it
  // once per frame.
  std::lock_guard lock(mu_);
  for (std::size_t k = 0; k < pages.size(); ++k) {
    const std::uint64_t page = pages[k].page_index;
    if (auto ok = r->good[k] ? ledger_.mark_good(ram->slot(), page) : ledger_.mark_bad(ram->slot(), page); !ok)
      return ok;
    if (!r->good[k]) ++fig_.torn_pages;
  }
  fig_.pages += pages.size();
  fig_.bytes += kHeaderSize + h.payload_length;
  return {};
}

Status Session::receive_zero(std::size_t stream, const std::vector<std::byte>& payload) {
  auto z = decode_zero_pages(payload);
  if (!z) return std::unexpected(z.error());
  const auto* ram = m_->regions().front();
  auto zeroed = apply_zero_page_frame(*z, {ram->slot(), ram->host(), ram->pages()}, written_, stream, streams_.size());
  if (!zeroed) return std::unexpected(zeroed.error());
  for (std::uint64_t page : z->page_index) digests_.zero(page);
  std::lock_guard lock(mu_);
  for (std::uint64_t page : z->page_index)
    if (auto ok = ledger_.mark_good(z->slot, page); !ok) return ok;
  fig_.zero_pages += z->page_index.size();
  fig_.zeroed_pages += *zeroed;
  fig_.bytes += kHeaderSize + payload.size();
  return {};
}

void Session::stream_main(std::size_t i) {
  name_this_thread(fmt::format("mig-recv{}", i));
  Stream& s = streams_[i];
  auto fail_here = [&](Error e) { fail_stream(std::move(e).context(fmt::format("stream {}", i))); };
  for (;;) {
    auto h = s.src->next_header();
    if (!h) return fail_here(std::move(h.error()));
    if (!*h) {
      std::lock_guard lock(mu_);
      ++ended_;
      cv_.notify_all();
      return;
    }
    const FrameType t = (*h)->type;
    if (t == FrameType::kPages) {
      if (auto ok = receive_pages(i, **h); !ok) return fail_here(std::move(ok.error()));
      continue;
    }
    auto payload = s.src->payload(**h);
    if (!payload) return fail_here(std::move(payload.error()));
    if (t == FrameType::kZeroPages) {
      if (auto ok = receive_zero(i, *payload); !ok) return fail_here(std::move(ok.error()));
    } else if (t == FrameType::kRoundEnd) {
      auto re = decode_round_end(*payload);
      if (!re) return fail_here(std::move(re.error()));
      std::lock_guard lock(mu_);
      s.last_round = re->round;
      fig_.rounds = std::max(fig_.rounds, re->round + 1);
      cv_.notify_all();
    } else if (i == 0) {
      std::lock_guard lock(mu_);
      control_.push_back(Frame{t, (*h)->sequence, std::move(*payload), (*h)->minor});
      cv_.notify_all();
    } else {
      return fail_here(Error(fmt::format("unexpected {} frame on a data stream", frame_type_name(t))));
    }
  }
}

Result<Frame> Session::next_control(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mu_);
  const bool got = cv_.wait_for(lock, timeout, [&] { return !control_.empty() || failed_ || ended_ > 0; });
  if (!control_.empty()) {
    Frame f = std::move(control_.front());
    control_.pop_front();
    return f;
  }
  if (failed_) return std::unexpected(*failed_);
  if (ended_ > 0) return fail("the source closed the connection");
  if (!got) return fail("no frame from the source within {} ms", timeout.count());
  return fail("no frame from the source");
}

void Session::stop_streams() {
  // Shut the sockets down so blocked readers return, then join them.
  for (auto& s : streams_)
    if (s.fd) ::shutdown(s.fd.get(), SHUT_RDWR);
  if (rep_.sender) rep_.sender->abort("session over");
  for (auto& s : streams_)
    if (s.thread.joinable()) s.thread.join();
}

Status Session::finish_and_ready(const State& state, std::optional<VerifyDigest> digest) {
  // Pages of the final round travel on every stream: wait for each one's
  // ROUND_END before trusting memory.
  {
    std::unique_lock lock(mu_);
    const bool all = cv_.wait_for(lock, o_.idle_timeout, [&] {
      if (failed_) return true;
      for (const auto& s : streams_)
        if (s.last_round < static_cast<std::int64_t>(state.final_round)) return false;
      return true;
    });
    if (failed_) return std::unexpected(*failed_);
    if (!all) return fail("the final round did not complete on every stream within {} ms", o_.idle_timeout.count());
    if (auto ok = ledger_.check_ready(); !ok) return ok;
  }
  if (digest) {
    // From the checksums verified as pages arrived: no memory is re-read.
    const std::uint64_t mine = digests_.digest();
    if (mine != digest->digest)
      return fail("--verify: memory digest mismatch (source {:#018x}, destination {:#018x})", digest->digest, mine);
    fig_.verified = true;
  }
  fig_.receive_ms = std::chrono::duration<double, std::milli>(Clock::now() - t0_).count();
  const auto t = Clock::now();
  auto img = kvm::state::parse_state(state.image);
  if (!img) return std::unexpected(std::move(img.error()).context("state image"));
  if (auto ok = m_->load_state(*img, /*start_paused=*/true); !ok) return ok;
  const auto load = Clock::now() - t;
  fig_.load_ms = std::chrono::duration<double, std::milli>(load).count();
  return rep_.send(FrameType::kReady,
                   Ready{hello_.session, static_cast<std::uint64_t>(std::chrono::nanoseconds(load).count())});
}

Result<Received> Session::wait_commit(std::uint64_t last_heartbeat) {
  auto f = next_control(o_.idle_timeout);
  if (!f) {
    spdlog::error("receive: READY sent, then: {}. Holding the VM paused until `ferry resolve` decides", f.error());
    return hold();
  }
  if (f->type == FrameType::kAbort) {
    auto a = decode_abort(f->payload);
    return fail("the source aborted after READY: {}", a ? a->reason : a.error().what());
  }
  if (f->type != FrameType::kCommit) return hold();
  auto c = decode_commit(f->payload);
  if (!c || c->token != hello_.session) return hold();
  if (auto ok = m_->resume(); !ok) return std::unexpected(ok.error());
  const std::uint64_t resumed = wall_now_ns();
  m_->set_origin(fmt::format("migration from {}", hello_.host));
  // The built-in guest beats every millisecond: wait briefly for the first
  // beat so the source can report the downtime the guest saw.
  std::uint64_t first_beat = 0;
  if (m_->kind() == kvm::GuestKind::kTestGuest) {
    const auto deadline = Clock::now() + std::chrono::milliseconds(500);
    while (Clock::now() < deadline && (first_beat = wall_ns(m_->monitor_figures().first_beat_wall)) == 0)
      std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  if (first_beat && last_heartbeat && first_beat > last_heartbeat)
    fig_.guest_downtime_ms = static_cast<double>(first_beat - last_heartbeat) / 1e6;
  if (auto ok = rep_.send(FrameType::kConfirmed, Confirmed{hello_.session, resumed, first_beat}); !ok)
    spdlog::warn("receive: the VM runs here, but CONFIRMED did not reach the source ({}); it will ask", ok.error());
  stop_streams();
  return Received{std::move(m_), fig_};
}

// READY was sent and the source went quiet: it may have sent COMMIT (and
// still run nothing), or resumed its VM. Only a resolver can tell.
Result<Received> Session::hold() {
  stop_streams();
  for (;;) {
    auto fd = transport::accept_tcp(listen_fd_, std::chrono::milliseconds(0));
    if (!fd) return std::unexpected(fd.error());
    auto c = open_connection(*fd, std::chrono::seconds(30));
    if (!c || c->hello.purpose != HelloPurpose::kResolve) continue;
    auto rep = Replier::make(std::move(c->fd), "resolver");
    if (!rep) continue;
    bool discarded = false;
    serve_resolver(std::move(c->src), std::move(*rep), hello_.session,
                   [&] { return discarded ? SessionOutcome::kDiscarded : SessionOutcome::kHolding; },
                   [&] {
                     discarded = true;
                     return true;
                   });
    if (discarded) {
      (void)m_->stop("discarded by a resolver: the VM runs on the source");
      return fail("the VM was discarded by `ferry resolve` (the source keeps it)");
    }
  }
}

Result<Received> Session::run(kvm::Serial::Sink console, kvm::Machine::Notify stopped) {
  if (auto ok = accept_control(); !ok) return std::unexpected(ok.error());
  if (auto ok = do_precheck(std::move(console), std::move(stopped)); !ok) return std::unexpected(ok.error());
  auto abort_with = [&](Error e) -> Result<Received> {
    (void)rep_.send(FrameType::kAbort, Abort{e.what().substr(0, kMaxReason)});
    stop_streams();
    if (m_) (void)m_->stop("migration failed");
    return std::unexpected(std::move(e));
  };
  if (auto ok = accept_streams(); !ok) return abort_with(ok.error());
  for (std::size_t i = 0; i < streams_.size(); ++i) streams_[i].thread = std::thread([this, i] { stream_main(i); });
  std::optional<VerifyDigest> digest;
  for (;;) {
    // Pre-copy can take as long as the source needs: what times out is a
    // stream with no data for idle_timeout (its reader fails the session).
    auto f = next_control(std::chrono::hours(24 * 365));
    if (!f) return abort_with(f.error());
    if (f->type == FrameType::kAbort) {
      auto a = decode_abort(f->payload);
      stop_streams();
      if (m_) (void)m_->stop("migration aborted by the source");
      return fail("the source aborted: {}", a ? a->reason : a.error().what());
    }
    if (f->type == FrameType::kVerifyDigest) {
      auto d = decode_verify_digest(f->payload);
      if (!d) return abort_with(d.error());
      digest = *d;
      continue;
    }
    if (f->type != FrameType::kState)
      return abort_with(Error(fmt::format("unexpected {} frame from the source", frame_type_name(f->type))));
    auto st = decode_state(f->payload);
    if (!st) return abort_with(st.error());
    progress(fmt::format("state received after {} round(s); loading", st->final_round + 1));
    if (auto ok = finish_and_ready(*st, digest); !ok) return abort_with(ok.error());
    return wait_commit(st->last_heartbeat_wall_ns);
  }
}

}  // namespace

Result<Received> receive_vm(int listen_fd, const ReceiveOptions& options, kvm::Serial::Sink console,
                            kvm::Machine::Notify stopped) {
  Session s(listen_fd, options);
  return s.run(std::move(console), std::move(stopped));
}

ResolveResponder::ResolveResponder(int listen_fd, std::uint64_t session) : fd_(listen_fd), session_(session) {
  thread_ = std::thread([this] {
    name_this_thread("mig-resolve");
    while (!stop_.load()) {
      auto fd = transport::accept_tcp(fd_, std::chrono::milliseconds(200));
      if (!fd) continue;
      auto c = open_connection(*fd, std::chrono::seconds(10));
      if (!c) continue;
      auto rep = Replier::make(std::move(c->fd), "resolver");
      if (!rep) continue;
      if (c->hello.purpose == HelloPurpose::kMigrate) {
        (void)rep->send(FrameType::kAbort, Abort{"this destination already received its VM"});
        continue;
      }
      serve_resolver(std::move(c->src), std::move(*rep), session_, [] { return SessionOutcome::kRunning; }, {});
    }
  });
}

ResolveResponder::~ResolveResponder() {
  stop_ = true;
  if (thread_.joinable()) thread_.join();
}

Result<QueryResult> query_destination(const std::string& to, std::uint64_t session, bool discard_if_holding,
                                      std::chrono::milliseconds timeout) {
  auto ep = transport::parse_endpoint(to);
  if (!ep) return std::unexpected(ep.error());
  auto fd = transport::connect_tcp(*ep, timeout);
  if (!fd) return std::unexpected(std::move(fd.error()).context(fmt::format("connect to {}", to)));
  auto rep = Replier::make(std::move(*fd), "resolver");
  if (!rep) return std::unexpected(rep.error());
  auto r = transport::Receiver::create(rep->sender->fd(), "resolver");
  if (!r) return std::unexpected(r.error());
  FrameSource src(std::move(*r), timeout);
  Hello h;
  h.host = "resolver";
  h.purpose = HelloPurpose::kResolve;
  h.session = session;
  h.stream_count = 0;
  if (auto ok = rep->send(FrameType::kHello, h); !ok) return std::unexpected(ok.error());
  if (auto ok = rep->send(FrameType::kQuery, Query{session}); !ok) return std::unexpected(ok.error());
  auto read_result = [&]() -> Result<QueryResult> {
    auto f = src.next_frame();
    if (!f) return std::unexpected(f.error());
    if (!*f) return fail("the destination closed the connection without answering");
    if ((*f)->type == FrameType::kAbort) {
      auto a = decode_abort((*f)->payload);
      return fail("the destination refused: {}", a ? a->reason : a.error().what());
    }
    if ((*f)->type != FrameType::kQueryResult) return fail("expected QUERY_RESULT, got {}", frame_type_name((*f)->type));
    return decode_query_result((*f)->payload);
  };
  auto q = read_result();
  if (!q || !discard_if_holding || q->outcome != SessionOutcome::kHolding) return q;
  if (auto ok = rep->send(FrameType::kAbort, Abort{"resolver: the source keeps the VM"}); !ok)
    return std::unexpected(ok.error());
  return read_result();
}

}  // namespace ferry::migration

// The destination session (destination.hh): accept the control stream,
// precheck and build the VM, accept the data streams, receive pages on each
// stream's own thread, load the state, READY, and run the VM only on COMMIT;
// a source gone after READY leaves the VM held for a resolver. The phases
// and their one transition function are incoming.hh's.
#include <unistd.h>

#include <condition_variable>
#include <deque>
#include <mutex>

#include <spdlog/spdlog.h>

#include "userspace/base/thread_name.hh"
#include "userspace/migration/acceptor.hh"
#include "userspace/migration/destination.hh"
#include "userspace/migration/digest.hh"
#include "userspace/migration/incoming.hh"
#include "userspace/migration/incoming_control.hh"
#include "userspace/migration/page_ledger.hh"
#include "userspace/migration/page_path.hh"
#include "userspace/migration/precheck.hh"
#include "userspace/migration/session_records.hh"

namespace ferry::migration {
namespace {

using Clock = std::chrono::steady_clock;

class Session {
 public:
  Session(transport::Listener& listener, const ReceiveOptions& o, IncomingHost& host)
      : o_(o), host_(host), acceptor_(listener, {.read_timeout = o.idle_timeout, .hello_deadline = o.hello_deadline}) {}
  // Every way out joins the stream threads (idempotent).
  ~Session() { stop_streams(); }
  Result<IncomingSession> run();

 private:
  struct Stream {
    std::unique_ptr<MigrationStream> io;  // stream 0's also carries the replies
    std::thread thread;
    std::int64_t last_round = -1;  // guarded by mu_
  };
  Status enter(IncomingPhase to);
  Status accept_control();
  Status do_precheck();
  Status accept_streams();
  void stream_main(std::size_t i);
  Status receive_pages(std::size_t stream, const FrameHeader& h);
  Status receive_zero(std::size_t stream, const std::vector<std::byte>& payload);
  // The next frame on stream 0. Before READY any stream's failure or end
  // ends the session; after it (`after_ready`) only stream 0 speaks: the
  // data streams' ends race the source's COMMIT or ABORT and must not be
  // mistaken for a source gone silent.
  Result<Frame> next_control(std::chrono::milliseconds timeout, bool after_ready = false);
  Status finish_and_ready(const State& state, std::optional<VerifyDigest> digest);
  Result<IncomingSession> wait_commit(std::uint64_t last_heartbeat);
  Result<IncomingSession> hold();
  // COMMIT (or, with the source gone, the operator) decided: recorded,
  // then the VM resumes here.
  Status record(SessionOutcome o);
  Result<IncomingSession> run_here(std::uint64_t last_heartbeat, bool confirm);
  Result<IncomingSession> abort_with(Error e);
  void stop_streams();
  template <class T>
  Status reply(FrameType t, const T& m) {
    return streams_[0].io->send_now(t, m);
  }
  PageMemory memory() const {
    const auto& ram = vm_->ram();
    return {ram.slot(), ram.host(), ram.pages()};
  }
  void progress(const std::string& line) {
    if (o_.progress) o_.progress(line);
  }

  ReceiveOptions o_;
  IncomingHost& host_;
  // Every connection comes through here, its HELLO read on its own thread.
  // Declared before the streams and the VM, so it is destroyed after them.
  Acceptor acceptor_;
  IncomingPhase phase_ = IncomingPhase::kListening;
  Hello hello_;
  std::unique_ptr<IncomingVm> vm_;
  std::vector<Stream> streams_;
  PageLedger ledger_;
  PageDigests digests_;  // --verify: each page's last verified checksum (0: zero)
  std::vector<std::uint64_t> written_;  // pages this side wrote data into (bits; one 64-page word per stream)
  ReceivedFigures fig_;
  Clock::time_point t0_;
  std::uint64_t last_heartbeat_ = 0;  // the source's last beat before the pause (STATE)

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Frame> control_;  // non-page frames from stream 0
  std::optional<Error> failed_;
  std::size_t ended_ = 0;
  std::optional<Error> control_end_;  // why stream 0's reader stopped
};

Status Session::enter(IncomingPhase to) {
  if (!incoming_transition_allowed(phase_, to)) {
    spdlog::error("receive: refused phase change {} -> {}", incoming_phase_name(phase_), incoming_phase_name(to));
    return fail("receive: the phase cannot go from {} to {}", incoming_phase_name(phase_), incoming_phase_name(to));
  }
  spdlog::debug("receive: {} -> {}", incoming_phase_name(phase_), incoming_phase_name(to));
  phase_ = to;
  if (o_.control) o_.control->set_phase(to);
  return {};
}

Status Session::accept_control() {
  for (;;) {
    auto in = acceptor_.next(std::chrono::milliseconds(0));
    if (!in) return std::unexpected(in.error());
    const Hello& hello = *in->hello;
    if (hello.purpose == HelloPurpose::kResolve) {
      // Nothing received yet: whatever they ask about is not here. On a
      // thread of its own, which owns the stream: a resolver that then says
      // nothing must not hold up the source.
      std::thread([in = std::make_shared<Incoming>(std::move(*in)), records = o_.records] {
        serve_resolver(*in, 0, std::nullopt, [records](std::uint64_t token) { return recorded_outcome(records, token); },
                       {});
      }).detach();
      continue;
    }
    if (hello.stream_index != 0) {
      spdlog::warn("receive: ignoring stream {} of session {:#x} without its control stream", hello.stream_index,
                   hello.session);
      continue;
    }
    hello_ = hello;
    streams_.resize(hello_.stream_count);
    streams_[0].io = std::move(in->stream);
    fig_.session = hello_.session;
    fig_.secret = in->secret;  // the session secret: its control connection's
    fig_.source_host = hello_.host;
    if (o_.control) o_.control->set_session(hello_.session, hello_.host);
    fig_.streams = hello_.stream_count;
    t0_ = Clock::now();
    char host[256] = {};
    ::gethostname(host, sizeof host - 1);
    Hello mine;
    mine.host = host;
    mine.session = hello_.session;
    mine.stream_count = hello_.stream_count;
    if (auto ok = enter(IncomingPhase::kPrecheck); !ok) return ok;
    return reply(FrameType::kHello, mine);
  }
}

Status Session::do_precheck() {
  auto f = streams_[0].io->in().next_frame();
  if (!f) return std::unexpected(f.error());
  if (!*f) return fail("the source closed the connection before PRECHECK");
  if ((*f)->type != FrameType::kPrecheck) return fail("expected PRECHECK, got {}", frame_type_name((*f)->type));
  auto p = decode_precheck((*f)->payload, (*f)->minor);
  if (!p) {
    (void)reply(FrameType::kAbort, Abort{p.error().what().substr(0, kMaxReason)});
    return std::unexpected(p.error());
  }
  auto resources = host_.resources();
  if (!resources) return std::unexpected(resources.error());
  PrecheckResult r = evaluate_precheck(*p, *resources);
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
    auto vm = host_.build(shape);
    if (!vm) {
      r.ok = false;
      r.reason = fmt::format("cannot build the VM here: {}", vm.error().what()).substr(0, kMaxReason);
    } else {
      vm_ = std::move(*vm);
      const auto& ram = vm_->ram();
      if (auto ok = ledger_.add_slot(ram.slot(), ram.pages()); !ok) return ok;
      written_.assign((ram.pages() + 63) / 64, 0);
      digests_ = PageDigests(ram.pages());
    }
  }
  if (auto ok = reply(FrameType::kPrecheckResult, r); !ok) return ok;
  if (!r.ok) return fail("refused the migration: {}", r.reason);
  progress(fmt::format("accepted a VM from {}: {} vCPUs, {} MiB, {} stream(s)", hello_.host, p->vcpus,
                       p->regions[0].size >> 20, hello_.stream_count));
  return enter(IncomingPhase::kReceiving);
}

Status Session::accept_streams() {
  for (std::size_t got = 1; got < streams_.size();) {
    auto in = acceptor_.next(o_.stream_accept_timeout);
    if (!in) return std::unexpected(std::move(in.error()).context("waiting for the data streams"));
    const Hello& h = *in->hello;
    if (h.purpose != HelloPurpose::kMigrate || h.session != hello_.session || h.stream_count != hello_.stream_count ||
        h.stream_index == 0 || streams_[h.stream_index].io) {
      spdlog::warn("receive: refusing a connection that is not a new stream of session {:#x}", hello_.session);
      continue;
    }
    streams_[h.stream_index].io = std::move(in->stream);
    ++got;
  }
  return {};
}

// The page path is page_path.hh's (checked, received straight into guest
// memory, verified); the session keeps the ledger, digests and figures.
Status Session::receive_pages(std::size_t stream, const FrameHeader& h) {
  const PageMemory mem = memory();
  auto r = receive_page_frame(streams_[stream].io->in(), h, mem, written_, stream, streams_.size());
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
    if (auto ok = r->good[k] ? ledger_.mark_good(mem.slot, page) : ledger_.mark_bad(mem.slot, page); !ok) return ok;
    if (!r->good[k]) ++fig_.torn_pages;
  }
  fig_.pages += pages.size();
  fig_.bytes += kHeaderSize + h.payload_length;
  return {};
}

Status Session::receive_zero(std::size_t stream, const std::vector<std::byte>& payload) {
  auto z = decode_zero_pages(payload);
  if (!z) return std::unexpected(z.error());
  auto zeroed = apply_zero_page_frame(*z, memory(), written_, stream, streams_.size());
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
  auto fail_here = [&](Error e) {
    // Both in one step: a waiter woken in between must not find stream 0
    // ended and no reason.
    std::lock_guard lock(mu_);
    Error why = std::move(e).context(fmt::format("stream {}", i));
    if (i == 0) control_end_ = why;
    if (!failed_) failed_ = std::move(why);
    cv_.notify_all();
  };
  for (;;) {
    auto h = s.io->in().next_header();
    if (!h) return fail_here(std::move(h.error()));
    if (!*h) {
      std::lock_guard lock(mu_);
      ++ended_;
      if (i == 0) control_end_ = Error("the source closed the connection");
      cv_.notify_all();
      return;
    }
    const FrameType t = (*h)->type;
    if (t == FrameType::kPages) {
      if (auto ok = receive_pages(i, **h); !ok) return fail_here(std::move(ok.error()));
      continue;
    }
    auto payload = s.io->in().payload(**h);
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

Result<Frame> Session::next_control(std::chrono::milliseconds timeout, bool after_ready) {
  std::unique_lock lock(mu_);
  const bool got = cv_.wait_for(lock, timeout, [&] {
    return !control_.empty() || control_end_ || (!after_ready && (failed_ || ended_ > 0));
  });
  if (!control_.empty()) {
    Frame f = std::move(control_.front());
    control_.pop_front();
    return f;
  }
  if (after_ready) {
    if (control_end_) return std::unexpected(*control_end_);
    return fail("no frame from the source within {} ms", timeout.count());
  }
  if (failed_) return std::unexpected(*failed_);
  if (ended_ > 0) return fail("the source closed the connection");
  if (!got) return fail("no frame from the source within {} ms", timeout.count());
  return fail("no frame from the source");
}

void Session::stop_streams() {
  // Fail the sockets so blocked readers return, then join them.
  for (auto& s : streams_)
    if (s.io) s.io->abort("session over");
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
  if (auto ok = vm_->load_state(state.image); !ok) return ok;
  const auto load = Clock::now() - t;
  fig_.load_ms = std::chrono::duration<double, std::milli>(load).count();
  if (auto ok = enter(IncomingPhase::kReady); !ok) return ok;
  return reply(FrameType::kReady, Ready{hello_.session, static_cast<std::uint64_t>(std::chrono::nanoseconds(load).count())});
}

Result<IncomingSession> Session::wait_commit(std::uint64_t last_heartbeat) {
  last_heartbeat_ = last_heartbeat;
  auto f = next_control(o_.idle_timeout, /*after_ready=*/true);
  if (!f) {
    spdlog::error("receive: READY sent, then: {}. Holding the VM paused until `ferry resolve` decides", f.error());
    return hold();
  }
  if (f->type == FrameType::kAbort) {
    auto a = decode_abort(f->payload);
    (void)enter(IncomingPhase::kFailed);
    stop_streams();
    (void)vm_->stop("migration aborted by the source after READY");
    return fail("the source aborted after READY: {}", a ? a->reason : a.error().what());
  }
  if (f->type != FrameType::kCommit) return hold();
  auto c = decode_commit(f->payload);
  if (!c || c->token != hello_.session) return hold();
  // The record first: once the VM has run here, a receiver restarted on the
  // same state directory must say so. Without it, hold: a resolver decides.
  if (auto ok = record(SessionOutcome::kCommitted); !ok) {
    spdlog::error("receive: COMMIT arrived, but it could not be recorded ({}); holding the VM paused", ok.error());
    return hold();
  }
  return run_here(last_heartbeat, /*confirm=*/true);
}

Status Session::record(SessionOutcome o) {
  if (!o_.records) return {};
  return o_.records->write(hello_.session, o, hello_.host);
}

Result<IncomingSession> Session::run_here(std::uint64_t last_heartbeat, bool confirm) {
  if (auto ok = enter(IncomingPhase::kRunning); !ok) return std::unexpected(ok.error());
  if (auto ok = vm_->resume(); !ok) return std::unexpected(ok.error());
  const std::uint64_t resumed = wall_now_ns();
  vm_->set_origin(fmt::format("migration from {}", hello_.host));
  // Wait briefly for the guest's first beat so the source can report the
  // downtime the guest saw.
  const std::uint64_t first_beat = vm_->first_heartbeat_wall_ns(std::chrono::milliseconds(500));
  if (first_beat && last_heartbeat && first_beat > last_heartbeat)
    fig_.guest_downtime_ms = static_cast<double>(first_beat - last_heartbeat) / 1e6;
  if (confirm)
    if (auto ok = reply(FrameType::kConfirmed, Confirmed{hello_.session, resumed, first_beat}); !ok)
      spdlog::warn("receive: the VM runs here, but CONFIRMED did not reach the source ({}); it will ask", ok.error());
  stop_streams();
  fig_.refused_connections = acceptor_.refused();
  return IncomingSession{std::move(vm_), fig_};
}

// READY was sent and the source went quiet: it may have sent COMMIT (and
// still run nothing), or resumed its VM. Only a resolver can tell.
Result<IncomingSession> Session::hold() {
  if (auto ok = enter(IncomingPhase::kHolding); !ok) return std::unexpected(ok.error());
  stop_streams();
  for (;;) {
    // The operator may commit forward (the source is gone for good).
    if (o_.control && o_.control->take_commit_request()) {
      auto ok = record(SessionOutcome::kCommitted);
      if (ok) {
        spdlog::warn("receive: committed forward by the operator (the source is gone); the VM runs here");
        auto r = run_here(last_heartbeat_, /*confirm=*/false);
        o_.control->commit_done(r ? Status{} : Status(std::unexpected(r.error())));
        return r;
      }
      o_.control->commit_done(std::unexpected(std::move(ok.error()).context("recording the commit")));
      continue;
    }
    auto in = acceptor_.next(std::chrono::milliseconds(o_.control ? 200 : 0));
    if (!in && in.error().sys_errno() == ETIMEDOUT) continue;
    if (!in) return std::unexpected(in.error());
    if (in->hello->purpose != HelloPurpose::kResolve) {
      (void)in->stream->send_now(FrameType::kAbort, Abort{"this destination holds a VM and serves only resolvers"});
      continue;
    }
    bool discarded = false;
    serve_resolver(
        *in, hello_.session, fig_.secret,
        [&](std::uint64_t token) -> Result<SessionOutcome> {
          if (token != hello_.session) return recorded_outcome(o_.records, token);
          return discarded ? SessionOutcome::kDiscarded : SessionOutcome::kHolding;
        },
        [&] {
          // Recorded before the copy is dropped: a restarted receiver must
          // not later say "unknown" while the source runs it.
          if (auto ok = record(SessionOutcome::kDiscarded); !ok) {
            spdlog::error("receive: a resolver asked to drop the VM, but that could not be recorded ({}); "
                          "still holding it", ok.error());
            return false;
          }
          discarded = true;
          return true;
        });
    if (discarded) {
      (void)enter(IncomingPhase::kDiscarded);
      (void)vm_->stop("discarded by a resolver: the VM runs on the source");
      return fail("the VM was discarded by `ferry resolve` (the source keeps it)");
    }
  }
}

Result<IncomingSession> Session::abort_with(Error e) {
  if (!streams_.empty() && streams_[0].io) (void)reply(FrameType::kAbort, Abort{e.what().substr(0, kMaxReason)});
  (void)enter(IncomingPhase::kFailed);
  stop_streams();
  if (vm_) (void)vm_->stop("migration failed");
  return std::unexpected(std::move(e));
}

Result<IncomingSession> Session::run() {
  if (auto ok = accept_control(); !ok) return std::unexpected(ok.error());
  if (auto ok = do_precheck(); !ok) return std::unexpected(ok.error());
  if (auto ok = accept_streams(); !ok) return abort_with(ok.error());
  acceptor_.close_migrations();
  for (std::size_t i = 0; i < streams_.size(); ++i) streams_[i].thread = std::thread([this, i] { stream_main(i); });
  std::optional<VerifyDigest> digest;
  for (;;) {
    // Pre-copy can take as long as the source needs: what times out is a
    // stream with no data for idle_timeout (its reader fails the session).
    auto f = next_control(std::chrono::hours(24 * 365));
    if (!f) return abort_with(f.error());
    if (f->type == FrameType::kAbort) {
      auto a = decode_abort(f->payload);
      (void)enter(IncomingPhase::kFailed);
      stop_streams();
      if (vm_) (void)vm_->stop("migration aborted by the source");
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

Result<IncomingSession> receive_migration(transport::Listener& listener, const ReceiveOptions& options,
                                          IncomingHost& host) {
  Session s(listener, options, host);
  return s.run();
}

}  // namespace ferry::migration

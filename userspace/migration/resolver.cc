// The destination's side of resolving, and the resolver's: opening an
// incoming connection, serving QUERY/ABORT, the ResolveResponder that keeps
// answering after a successful receive, and query_destination (`ferry
// resolve`). Also the destination's phase table (incoming.hh).
#include <fcntl.h>
#include <sys/socket.h>

#include <condition_variable>
#include <mutex>
#include <thread>

#include <spdlog/spdlog.h>

#include "userspace/base/thread_name.hh"
#include "userspace/base/unique_fd.hh"
#include "userspace/migration/destination.hh"
#include "userspace/migration/incoming.hh"
#include "userspace/migration/session_proof.hh"
#include "userspace/migration/session_records.hh"

namespace ferry::migration {

std::string_view incoming_phase_name(IncomingPhase p) {
  switch (p) {
    case IncomingPhase::kListening: return "listening";
    case IncomingPhase::kPrecheck: return "precheck";
    case IncomingPhase::kReceiving: return "receiving";
    case IncomingPhase::kReady: return "ready";
    case IncomingPhase::kRunning: return "running";
    case IncomingPhase::kHolding: return "holding";
    case IncomingPhase::kFailed: return "failed";
    case IncomingPhase::kDiscarded: return "discarded";
  }
  return "?";
}

bool incoming_transition_allowed(IncomingPhase from, IncomingPhase to) {
  using enum IncomingPhase;
  switch (from) {
    case kListening: return to == kPrecheck || to == kFailed;
    case kPrecheck: return to == kReceiving || to == kFailed;
    case kReceiving: return to == kReady || to == kFailed;
    // After READY the source decides: COMMIT runs the VM here, ABORT drops
    // it; silence (or anything else) holds it for a resolver.
    case kReady: return to == kRunning || to == kHolding || to == kFailed;
    // A resolver's ABORT drops it; the operator, with the source gone for
    // good, commits it forward.
    case kHolding: return to == kDiscarded || to == kRunning;
    case kRunning:
    case kFailed:
    case kDiscarded: return false;
  }
  return false;
}

namespace {

// Shuts the connection down when the HELLO has not arrived in time: the
// blocked read then ends, and the caller says why.
class HelloDeadline {
 public:
  // Holds a duplicate of the socket, so the number it shuts down is never
  // one the caller's close() freed for another connection.
  HelloDeadline(int fd, std::chrono::milliseconds limit)
      : fd_(::fcntl(fd, F_DUPFD_CLOEXEC, 0)), thread_([this, limit] {
          name_this_thread("hello-deadline");
          std::unique_lock lock(mu_);
          if (!cv_.wait_for(lock, limit, [this] { return done_; })) {
            expired_ = true;
            if (fd_) ::shutdown(fd_.get(), SHUT_RDWR);
          }
        }) {}
  HelloDeadline(const HelloDeadline&) = delete;
  HelloDeadline& operator=(const HelloDeadline&) = delete;
  ~HelloDeadline() {
    {
      std::lock_guard lock(mu_);
      done_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  // Stops the clock; whether it had already run out.
  bool stop() {
    std::lock_guard lock(mu_);
    done_ = true;
    cv_.notify_all();
    return expired_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false, expired_ = false;
  UniqueFd fd_;
  std::thread thread_;  // last: it uses the members above
};

}  // namespace

Result<Incoming> open_incoming(transport::Connection c, std::string sender_name, std::chrono::milliseconds read_timeout,
                               std::chrono::milliseconds hello_deadline) {
  MigrationStream::Options so;
  so.name = std::move(sender_name);
  so.receiver_name = "incoming";
  so.read_timeout = read_timeout;
  const int fd = c.fd();
  HelloDeadline deadline(fd, hello_deadline);
  const auto secret = c.secret();
  const std::string peer = c.peer();
  auto s = MigrationStream::open(std::move(c), so);
  if (!s) return std::unexpected(s.error());
  Incoming in{std::move(*s), fail("no HELLO"), secret, peer};
  in.hello = [&]() -> Result<Hello> {
    // The header first: anything but a HELLO is refused before its payload
    // is read (a first header may claim a 64 MiB STATE).
    auto h = in.stream->in().next_header();
    auto p = h && *h && (*h)->type == FrameType::kHello ? in.stream->in().payload(**h)
                                                         : Result<std::vector<std::byte>>();
    if (deadline.stop()) {
      return fail("no HELLO within {} ms of connecting (the connection was closed)", hello_deadline.count());
    }
    if (!h) return std::unexpected(h.error());
    if (!*h) return fail("the peer closed the connection before HELLO");
    if ((*h)->type != FrameType::kHello) return fail("expected HELLO, got {}", frame_type_name((*h)->type));
    if (!p) return std::unexpected(p.error());
    return decode_hello(*p);
  }();
  return in;
}

void serve_resolver(Incoming& in, std::uint64_t session, const std::optional<transport::Connection::Secret>& session_secret,
                    const OutcomeOf& outcome, const std::function<bool()>& discard) {
  MigrationStream& s = *in.stream;
  bool asked_ours = false;
  for (;;) {
    auto f = s.in().next_frame();
    if (!f || !*f) return;
    if ((*f)->type == FrameType::kQuery) {
      auto q = decode_query((*f)->payload);
      if (!q) return;
      if (session != 0 && q->token == session && session_secret &&
          !(in.secret && q->proof && proof_matches(*session_secret, *in.secret, *q->proof))) {
        // It got through TLS, so it holds credentials; it is still not the
        // source of this migration (or a relay replaying another's proof).
        spdlog::warn("resolve: refused a QUERY for session {:#x} from {}: {}", session, in.peer,
                     !in.secret ? "not over TLS" : q->proof ? "its proof is wrong" : "it carries no proof");
        (void)s.send_now(FrameType::kAbort,
                         Abort{"not authorised: a resolver must prove it belongs to the session"});
        return;
      }
      auto o = outcome(q->token);
      if (!o) {
        spdlog::error("resolve: session {:#x}: {}", q->token, o.error());
        (void)s.send_now(FrameType::kAbort, Abort{o.error().what().substr(0, kMaxReason)});
        return;
      }
      asked_ours = asked_ours || (session != 0 && q->token == session);
      (void)s.send_now(FrameType::kQueryResult, QueryResult{q->token, *o, std::string(session_outcome_name(*o))});
    } else if ((*f)->type == FrameType::kAbort) {
      // Only a resolver that asked about this very session may drop it:
      // a bare ABORT from anyone who reached the port changes nothing.
      if (!asked_ours) {
        spdlog::warn("resolve: refused an ABORT that did not follow a QUERY for session {:#x}", session);
        (void)s.send_now(FrameType::kAbort, Abort{"ABORT refused: ask about the session (QUERY) first"});
        return;
      }
      auto now = outcome(session);
      const bool dropped = now && *now == SessionOutcome::kHolding && discard && discard();
      auto after = dropped ? Result<SessionOutcome>(SessionOutcome::kDiscarded) : outcome(session);
      if (!after) return;
      (void)s.send_now(FrameType::kQueryResult, QueryResult{session, *after, std::string(session_outcome_name(*after))});
      return;
    } else {
      return;
    }
  }
}

Result<SessionOutcome> recorded_outcome(const SessionRecords* records, std::uint64_t token) {
  if (!records) return SessionOutcome::kUnknown;
  auto r = records->find(token);
  if (!r) return std::unexpected(r.error());
  return r->value_or(SessionOutcome::kUnknown);
}

ResolveResponder::ResolveResponder(transport::Listener& listener, std::uint64_t session, const SessionRecords* records,
                                   std::optional<transport::Connection::Secret> secret)
    : listener_(listener), session_(session), records_(records), secret_(secret) {
  thread_ = std::thread([this] {
    name_this_thread("mig-resolve");
    while (!stop_.load()) {
      auto raw = listener_.accept(std::chrono::milliseconds(200));
      if (!raw) continue;
      const std::string peer = raw->peer();
      auto c = listener_.secure(std::move(*raw), std::chrono::steady_clock::now() + std::chrono::seconds(10));
      if (!c) {
        spdlog::warn("resolve: refused a connection from {}: {}", peer, c.error().what());
        continue;
      }
      auto in = open_incoming(std::move(*c), "resolver", std::chrono::seconds(10));
      if (!in || !in->hello) continue;
      if (in->hello->purpose == HelloPurpose::kMigrate) {
        (void)in->stream->send_now(FrameType::kAbort, Abort{"this destination already received its VM"});
        continue;
      }
      serve_resolver(
          *in, session_, secret_,
          [this](std::uint64_t token) -> Result<SessionOutcome> {
            return token == session_ ? SessionOutcome::kRunning : recorded_outcome(records_, token);
          },
          {});
    }
  });
}

ResolveResponder::~ResolveResponder() {
  stop_ = true;
  if (thread_.joinable()) thread_.join();
}

Result<QueryResult> query_destination(const std::string& to, const transport::Security& security,
                                      std::uint64_t session, bool discard_if_holding,
                                      std::chrono::milliseconds timeout, const Prove& prove) {
  auto ep = transport::parse_endpoint(to);
  if (!ep) return std::unexpected(ep.error());
  auto dialer = transport::dialer_for(*ep, security);
  if (!dialer) return std::unexpected(dialer.error());
  return query_destination(**dialer, *ep, session, discard_if_holding, timeout, prove);
}

Result<QueryResult> query_destination(transport::Dialer& dialer, const transport::Endpoint& to, std::uint64_t session,
                                      bool discard_if_holding, std::chrono::milliseconds timeout, const Prove& prove) {
  auto c = dialer.dial(to, timeout);
  if (!c) return std::unexpected(std::move(c.error()).context(fmt::format("connect to {}", to.str())));
  Query query{session, std::nullopt};
  if (c->secret() && prove) {
    auto p = prove(*c->secret());
    if (!p) return std::unexpected(std::move(p.error()).context("proving this host is the session's source"));
    query.proof = *p;
  }
  MigrationStream::Options so;
  so.name = "resolver";
  so.read_timeout = timeout;
  auto s = MigrationStream::open(std::move(*c), so);
  if (!s) return std::unexpected(s.error());
  auto& stream = **s;
  Hello h;
  h.host = "resolver";
  h.purpose = HelloPurpose::kResolve;
  h.session = session;
  h.stream_count = 0;
  if (auto ok = stream.send_now(FrameType::kHello, h); !ok) return std::unexpected(ok.error());
  if (auto ok = stream.send_now(FrameType::kQuery, query); !ok) return std::unexpected(ok.error());
  auto read_result = [&]() -> Result<QueryResult> {
    auto f = stream.in().next_frame();
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
  if (auto ok = stream.send_now(FrameType::kAbort, Abort{"resolver: the source keeps the VM"}); !ok)
    return std::unexpected(ok.error());
  return read_result();
}

}  // namespace ferry::migration

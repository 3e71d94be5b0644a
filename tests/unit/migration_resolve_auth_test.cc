// Resolve over TLS (session_proof.hh, serve_resolver, query_destination):
// on real loopback TCP with a real TLS listener and dialer, a destination
// holding session S answers a QUERY about S only with the proof made from
// S's secret and the asking connection's own secret. A resolver with valid
// credentials but no proof, a wrong proof, or a proof replayed from another
// connection is refused and drops nothing; the source's proof works, and
// its ABORT then drops the held copy.
#include <gtest/gtest.h>

#include <sys/stat.h>

#include <atomic>
#include <fstream>
#include <thread>

#include "tests/temp_dir.hh"
#include "userspace/migration/destination.hh"
#include "userspace/migration/incoming.hh"
#include "userspace/migration/session_proof.hh"
#include "userspace/transport/tls.hh"

namespace ferry::migration {
namespace {

using namespace std::chrono_literals;
using transport::Security;

constexpr std::uint64_t kSession = 0x5e55;

Secret secret_of(int seed) {
  Secret s{};
  for (std::size_t i = 0; i < s.size(); ++i) s[i] = static_cast<std::byte>(seed * 31 + i);
  return s;
}

// A destination holding kSession (its secret `session_secret`) that serves
// one resolver per connection, as Session::hold() does.
class HoldingDestination {
 public:
  HoldingDestination(const Security& sec, Secret session_secret) {
    auto ep = transport::parse_endpoint("127.0.0.1:0");
    auto l = transport::listen(*ep, sec);
    if (!l) {
      error_ = l.error().what();
      return;
    }
    listener_ = std::move(*l);
    thread_ = std::thread([this, session_secret] {
      while (!stop_) {
        auto raw = listener_->accept(100ms);
        if (!raw) continue;
        auto c = listener_->secure(std::move(*raw), std::chrono::steady_clock::now() + 5s);
        if (!c) continue;
        auto in = open_incoming(std::move(*c), "resolver", 5s);
        if (!in || !in->hello) continue;
        serve_resolver(
            *in, kSession, session_secret,
            [this](std::uint64_t token) -> Result<SessionOutcome> {
              if (token != kSession) return SessionOutcome::kUnknown;
              return discarded_ ? SessionOutcome::kDiscarded : SessionOutcome::kHolding;
            },
            [this] { return discarded_ = true; });
      }
    });
  }
  ~HoldingDestination() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  std::string address() const { return listener_ ? listener_->address() : ""; }
  const std::string& error() const { return error_; }
  bool discarded() const { return discarded_; }

 private:
  std::unique_ptr<transport::Listener> listener_;
  std::string error_;
  std::atomic<bool> stop_{false}, discarded_{false};
  std::thread thread_;
};

TEST(ResolveOverTls, OnlyTheSessionsProofMayAskAboutItOrDropIt) {
  test::TempDir d;
  const std::string psk = d.path + "/psk";
  std::ofstream(psk) << std::string(64, 'd') << "\n";
  ::chmod(psk.c_str(), 0600);
  const Security sec{Security::Kind::kPreSharedKey, psk};
  const Secret session_secret = secret_of(1);
  HoldingDestination dst(sec, session_secret);
  ASSERT_EQ(dst.error(), "");
  const std::string to = dst.address();

  {
    SCOPED_TRACE("valid credentials, no proof");
    auto q = query_destination(to, sec, kSession, /*discard_if_holding=*/true, 5s);
    ASSERT_FALSE(q);
    EXPECT_NE(q.error().what().find("not authorised"), std::string::npos) << q.error().what();
  }
  {
    SCOPED_TRACE("a proof made with another session's secret");
    auto q = query_destination(to, sec, kSession, true, 5s,
                               [](const Secret& binding) -> Result<Secret> { return session_proof(secret_of(2), binding); });
    ASSERT_FALSE(q);
    EXPECT_NE(q.error().what().find("not authorised"), std::string::npos) << q.error().what();
  }
  {
    SCOPED_TRACE("the source's proof, replayed on another connection");
    Secret seen{};
    auto first = query_destination(to, sec, kSession, false, 5s, [&](const Secret& binding) -> Result<Secret> {
      seen = session_proof(session_secret, binding);
      return seen;
    });
    ASSERT_TRUE(first) << first.error().what();
    EXPECT_EQ(first->outcome, SessionOutcome::kHolding);
    auto replay = query_destination(to, sec, kSession, true, 5s, [&](const Secret&) -> Result<Secret> { return seen; });
    ASSERT_FALSE(replay);
    EXPECT_NE(replay.error().what().find("not authorised"), std::string::npos) << replay.error().what();
  }
  EXPECT_FALSE(dst.discarded()) << "a refused resolver dropped the held copy";
  {
    SCOPED_TRACE("the source's own proof: it may drop the copy");
    auto q = query_destination(to, sec, kSession, /*discard_if_holding=*/true, 5s,
                               [&](const Secret& binding) -> Result<Secret> { return session_proof(session_secret, binding); });
    ASSERT_TRUE(q) << q.error().what();
    EXPECT_EQ(q->outcome, SessionOutcome::kDiscarded);
  }
  EXPECT_TRUE(dst.discarded());
  // Other sessions need no proof (nothing of theirs is held here).
  auto other = query_destination(to, sec, kSession + 1, false, 5s);
  ASSERT_TRUE(other) << other.error().what();
  EXPECT_EQ(other->outcome, SessionOutcome::kUnknown);
}

TEST(ResolveOverTls, AProofIsBoundToItsSecretAndItsConnection) {
  const Secret s = secret_of(3), b1 = secret_of(4), b2 = secret_of(5);
  const Secret p = session_proof(s, b1);
  EXPECT_TRUE(proof_matches(s, b1, p));
  EXPECT_FALSE(proof_matches(s, b2, p));
  EXPECT_FALSE(proof_matches(secret_of(6), b1, p));
  Secret flipped = p;
  flipped[31] ^= std::byte{1};
  EXPECT_FALSE(proof_matches(s, b1, flipped));
  EXPECT_NE(p, Secret{});
}

}  // namespace
}  // namespace ferry::migration

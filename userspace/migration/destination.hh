#pragma once
// The destination side: `ferry receive` waits for one incoming migration
// on its listening socket, checks it can run the VM, builds it, receives
// pages straight into guest memory on every stream, loads the state,
// answers READY, and runs the VM only on COMMIT.
//
// If the source disappears after READY and before COMMIT, the VM is held
// paused (it may or may not be running on the source: only an operator can
// tell) and the listening socket answers resolvers (`ferry resolve`): a
// QUERY is told "holding", an ABORT after it discards the VM here. With the
// source gone for good, the operator commits it forward here instead
// (IncomingControl). Both are recorded first (ReceiveOptions::records).
#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "userspace/base/error.hh"
#include "kvm/machine.hh"
#include "userspace/migration/payloads.hh"
#include "userspace/migration/vm.hh"
#include "userspace/transport/tls.hh"
#include "userspace/transport/connection.hh"

namespace ferry::migration {

class IncomingControl;
class SessionRecords;

struct ReceiveOptions {
  kvm::HugePages huge_pages = kvm::HugePages::kOff;
  // This host's TAPs for the VM's network devices, in order (`ferry
  // receive --net`); the precheck refuses a VM whose devices differ.
  std::vector<kvm::net::NetConfig> nets;
  // Once the VM runs here: ask the guest to announce itself and send RARPs
  // from its MACs (off: only the guest's own traffic teaches the switches).
  bool announce = true;
  // During a session: no byte from the source for this long means it is gone.
  std::chrono::milliseconds idle_timeout{60000};
  std::chrono::milliseconds stream_accept_timeout{10000};
  // How long a new connection has, in all, to send its HELLO.
  std::chrono::milliseconds hello_deadline{kHelloDeadline};
  // Progress lines for the terminal ("receiving round 3: ...").
  std::function<void(const std::string&)> progress;
  // Where COMMIT and discards are recorded before they are acted on, and
  // where resolvers' questions about other sessions are answered from
  // (session_records.hh); null: nothing is recorded.
  const SessionRecords* records = nullptr;
  // The process's handle on the session for its API (incoming_control.hh);
  // null: none.
  IncomingControl* control = nullptr;
};

struct ReceivedFigures {
  std::uint64_t session = 0;
  // The session's secret from its TLS control connection (none over plain
  // TCP): the ResolveResponder checks resolvers' proofs with it.
  std::optional<transport::Connection::Secret> secret;
  std::string source_host;
  std::uint32_t streams = 0;
  std::uint32_t rounds = 0;
  std::uint64_t pages = 0, zero_pages = 0, zeroed_pages = 0, bytes = 0;
  std::uint64_t torn_pages = 0;  // copies that failed their checksum (modified in flight), all resent
  std::uint32_t refused_connections = 0;  // strangers, garbage, wrong versions, silent peers
  double receive_ms = 0, load_ms = 0;
  double guest_downtime_ms = -1;  // first heartbeat here minus last on the source
  bool verified = false;
};

struct Received {
  std::unique_ptr<kvm::Machine> machine;  // running
  ReceivedFigures figures;
};

// Blocks until a migration has been received and committed (the VM runs),
// or fails: refused by the prechecks, aborted by the source, a bad stream,
// discarded by a resolver. A failure before READY leaves nothing behind.
// Every connection comes from `listener`.
Result<Received> receive_vm(transport::Listener& listener, const ReceiveOptions& options, kvm::Serial::Sink console,
                            kvm::Machine::Notify stopped);

// The same session against any host (vm.hh): receive_vm is this with this
// host's KVM; the sessions' unit tests use a fake one.
struct IncomingSession {
  std::unique_ptr<IncomingVm> vm;  // running
  ReceivedFigures figures;
};
Result<IncomingSession> receive_migration(transport::Listener& listener, const ReceiveOptions& options,
                                          IncomingHost& host);

// After a successful receive: answers resolvers on the listening socket
// ("running" for our session, a recorded outcome or "unknown" for any
// other) and refuses new
// migrations, until destroyed.
class ResolveResponder {
 public:
  // `secret`: the session's, from its TLS control connection (none over
  // plain TCP); resolvers asking about the session must prove they know it.
  ResolveResponder(transport::Listener& listener, std::uint64_t session, const SessionRecords* records = nullptr,
                   std::optional<transport::Connection::Secret> secret = std::nullopt);
  ~ResolveResponder();
  ResolveResponder(const ResolveResponder&) = delete;
  ResolveResponder& operator=(const ResolveResponder&) = delete;

 private:
  transport::Listener& listener_;
  std::uint64_t session_;
  const SessionRecords* records_;
  std::optional<transport::Connection::Secret> secret_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

// The resolver's side (`ferry resolve`): asks the destination at `to` what
// became of `session`; with discard_if_holding, a destination holding the
// VM paused drops it (and answers kDiscarded). It connects the way the
// migration did (`security`). Over TLS, `prove` turns the new connection's
// secret into the proof that the asker is the session's source (the
// source VM's process makes it: session_proof.hh).
using Prove = std::function<Result<transport::Connection::Secret>(const transport::Connection::Secret& binding)>;
Result<QueryResult> query_destination(const std::string& to, const transport::Security& security,
                                      std::uint64_t session, bool discard_if_holding,
                                      std::chrono::milliseconds timeout, const Prove& prove = {});
Result<QueryResult> query_destination(transport::Dialer& dialer, const transport::Endpoint& to, std::uint64_t session,
                                      bool discard_if_holding, std::chrono::milliseconds timeout,
                                      const Prove& prove = {});

}  // namespace ferry::migration

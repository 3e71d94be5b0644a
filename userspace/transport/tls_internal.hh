#pragma once
// Internal to the TLS transport (tls.cc, tls_kernel.cc, tls_relay.cc).
#include <openssl/ssl.h>

#include <memory>
#include <string>
#include <vector>

#include "userspace/base/error.hh"
#include "userspace/base/unique_fd.hh"
#include "userspace/transport/tls.hh"

namespace ferry::transport {

struct SslFree {
  void operator()(SSL* s) const { SSL_free(s); }
};
using SslPtr = std::unique_ptr<SSL, SslFree>;
struct SslCtxFree {
  void operator()(SSL_CTX* c) const { SSL_CTX_free(c); }
};

struct TlsContext::State {
  std::unique_ptr<SSL_CTX, SslCtxFree> ctx;
  TlsRole role = TlsRole::kClient;
  Security security;
  std::vector<unsigned char> psk;  // kPreSharedKey only
  bool kernel_tls = true;          // false: always the userspace relay (tests)
};

// The TLS 1.3 traffic secrets of one connection, caught from OpenSSL's key
// log as the handshake derives them (hex, as the key log writes them).
struct TrafficSecrets {
  std::string client, server;
};

// OpenSSL writes to sockets with write(2): a peer that closed would raise
// SIGPIPE and end the process. Blocks it on this thread while alive and
// drops one that became pending (the way libpq and curl do it).
class SigpipeBlock {
 public:
  SigpipeBlock();
  ~SigpipeBlock();
  SigpipeBlock(const SigpipeBlock&) = delete;
  SigpipeBlock& operator=(const SigpipeBlock&) = delete;

 private:
  bool was_pending_ = false;
  bool was_blocked_ = false;
};

// OpenSSL's error queue as text ("" when empty), emptied.
std::string ssl_errors();

// Puts kernel TLS on `fd` with the connection's application traffic
// secrets (record sequence 0 both ways: nothing was sent after the
// handshake). False (and `why`) when the kernel takes neither the ULP nor
// the transmit keys: the socket is still plain TCP then, fit for the
// relay. An error when it took one direction and refused the other.
Result<bool> install_kernel_tls(int fd, const TrafficSecrets& secrets, TlsRole role, std::string& why);

// Starts a detached relay that encrypts between `tcp` (owned by `ssl`) and
// a new socketpair; returns the engine's end. `keep` keeps the context
// alive as long as the relay runs.
Result<UniqueFd> start_tls_relay(SslPtr ssl, UniqueFd tcp, std::shared_ptr<const TlsContext::State> keep);

}  // namespace ferry::transport

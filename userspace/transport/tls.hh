#pragma once
// TLS 1.3 for every migration connection (pages, control, resolve), with
// mutual authentication: certificates (a CA and a host certificate on each
// side, the server's name checked against what the client dialled) or a
// pre-shared key. OpenSSL 3 does the handshake only. Afterwards the keys go
// to the kernel (kTLS, TLS_TX and TLS_RX), so the io_uring page path keeps
// sending and receiving on the same socket and never sees a byte of
// ciphertext. Where the kernel has no TLS (no `tls` module), a relay thread
// per connection encrypts in userspace between the socket and a socketpair
// the engine uses instead: slower, equally secure, and said so in
// Connection::security().
#include <array>
#include <chrono>
#include <memory>
#include <string>

#include "userspace/base/error.hh"
#include "userspace/transport/connection.hh"

namespace ferry::transport {

// How a migration's connections are secured; chosen by the user, never
// defaulted to plain TCP.
struct Security {
  enum class Kind { kInsecure, kCertificates, kPreSharedKey };
  Kind kind = Kind::kInsecure;
  // kCertificates: a directory with ca.pem, cert.pem and key.pem.
  // kPreSharedKey: a file holding the key in hex (at least 32 bytes of key;
  // `openssl rand -hex 32`), readable by its owner only.
  std::string path;

  std::string describe() const;  // "TLS 1.3, certificates from DIR", "plain TCP (--insecure)"
  bool encrypted() const { return kind != Kind::kInsecure; }
};

// From the command line's --tls-dir / --tls-psk / --insecure: exactly one.
Result<Security> security_from_flags(const std::string& tls_dir, const std::string& tls_psk, bool insecure);
// "insecure", "certificates", "psk": how the control API and the status
// name a mode.
std::string_view security_mode_name(Security::Kind k);
Result<Security> security_from_mode(std::string_view mode, std::string path);

enum class TlsRole { kClient, kServer };

// A loaded SSL_CTX for one role. Move-only; shared by the connections it
// made (the userspace relay keeps it alive).
class TlsContext {
 public:
  static Result<TlsContext> load(const Security& s, TlsRole role);
  TlsContext(TlsContext&&) noexcept;
  TlsContext& operator=(TlsContext&&) noexcept;
  ~TlsContext();

  // The handshake on `raw` (a connected TCP socket), finished before
  // `deadline` or failed. `peer_host` is the name or address the client
  // dialled (checked against the server's certificate; unused by the
  // server). The result carries the socket with kernel TLS on it, or the
  // engine's end of the userspace relay, the session secret, and what
  // secures it.
  Result<Connection> secure(Connection raw, const std::string& peer_host,
                            std::chrono::steady_clock::time_point deadline) const;

  TlsRole role() const;
  std::string describe() const;
  // Encrypts in userspace even where the kernel has TLS: the tests run the
  // relay on every machine.
  void disable_kernel_tls();

  struct State;

 private:
  explicit TlsContext(std::shared_ptr<State> s) : s_(std::move(s)) {}
  std::shared_ptr<State> s_;
};

// Whether this kernel can take TLS keys on a socket (the `tls` module):
// tried once on a loopback pair, cached.
bool kernel_tls_available();

}  // namespace ferry::transport

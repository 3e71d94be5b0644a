// TLS 1.3 contexts and the handshake (tls.hh).
#include "userspace/transport/tls.hh"

#include <arpa/inet.h>
#include <fcntl.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include <spdlog/spdlog.h>

#include "userspace/base/hex.hh"
#include "userspace/transport/tls_internal.hh"

namespace ferry::transport {
namespace {

using Clock = std::chrono::steady_clock;

// One suite: AES-128-GCM is what kernels from 4.13 on take for TX and RX,
// and what CPUs accelerate.
constexpr const char* kSuite = "TLS_AES_128_GCM_SHA256";
constexpr unsigned char kSuiteId[2] = {0x13, 0x01};
// The one PSK identity: the key is the secret, the name only labels it.
constexpr std::string_view kPskIdentity = "ferry";
// The label of the session secret both ends export (RFC 8446 7.5).
constexpr std::string_view kExporterLabel = "EXPORTER-ferry-session";
constexpr std::size_t kMinPskBytes = 32;

TlsContext::State* state_of(SSL* ssl) {
  return static_cast<TlsContext::State*>(SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl)));
}

// The key log line "CLIENT_TRAFFIC_SECRET_0 <random> <secret>" carries the
// secret the kernel needs; OpenSSL has no other way to hand it out.
void keylog(const SSL* ssl, const char* line) {
  auto* out = static_cast<TrafficSecrets*>(SSL_get_app_data(ssl));
  if (!out) return;
  std::istringstream in(line);
  std::string label, random, secret;
  in >> label >> random >> secret;
  if (label == "CLIENT_TRAFFIC_SECRET_0") out->client = secret;
  if (label == "SERVER_TRAFFIC_SECRET_0") out->server = secret;
}

SSL_SESSION* psk_session(SSL* ssl, const std::vector<unsigned char>& key) {
  const SSL_CIPHER* cipher = SSL_CIPHER_find(ssl, kSuiteId);
  if (!cipher) return nullptr;
  SSL_SESSION* s = SSL_SESSION_new();
  if (!s) return nullptr;
  if (SSL_SESSION_set1_master_key(s, key.data(), key.size()) != 1 || SSL_SESSION_set_cipher(s, cipher) != 1 ||
      SSL_SESSION_set_protocol_version(s, TLS1_3_VERSION) != 1) {
    SSL_SESSION_free(s);
    return nullptr;
  }
  return s;
}

int use_psk(SSL* ssl, const EVP_MD* md, const unsigned char** id, size_t* idlen, SSL_SESSION** sess) {
  auto* st = state_of(ssl);
  const SSL_CIPHER* cipher = SSL_CIPHER_find(ssl, kSuiteId);
  *sess = nullptr;
  if (!st || !cipher || (md && md != SSL_CIPHER_get_handshake_digest(cipher))) return 1;
  *sess = psk_session(ssl, st->psk);
  *id = reinterpret_cast<const unsigned char*>(kPskIdentity.data());
  *idlen = kPskIdentity.size();
  return *sess ? 1 : 0;
}

int find_psk(SSL* ssl, const unsigned char* id, size_t idlen, SSL_SESSION** sess) {
  auto* st = state_of(ssl);
  *sess = nullptr;
  if (!st || std::string_view(reinterpret_cast<const char*>(id), idlen) != kPskIdentity) return 1;  // unknown: refused
  *sess = psk_session(ssl, st->psk);
  return *sess ? 1 : 0;
}

Result<std::vector<unsigned char>> read_psk(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return fail_sys(fmt::format("pre-shared key {}", path));
  if ((st.st_mode & 077) != 0) {
    return fail("pre-shared key {}: readable by others (mode {:o}); chmod 600 it", path, st.st_mode & 0777);
  }
  std::ifstream in(path);
  std::string text;
  in >> text;
  auto key = from_hex(text);
  if (!key) return fail("pre-shared key {}: not hex ({})", path, key.error().what());
  if (key->size() < kMinPskBytes) {
    return fail("pre-shared key {}: {} bytes; at least {} are needed (openssl rand -hex 32 > {})", path,
                key->size(), kMinPskBytes, path);
  }
  return std::vector<unsigned char>(reinterpret_cast<const unsigned char*>(key->data()),
                                    reinterpret_cast<const unsigned char*>(key->data()) + key->size());
}

Status load_certificates(SSL_CTX* ctx, const std::string& dir) {
  const std::string ca = dir + "/ca.pem", cert = dir + "/cert.pem", key = dir + "/key.pem";
  for (const auto& f : {ca, cert, key})
    if (::access(f.c_str(), R_OK) != 0) return fail_sys(fmt::format("--tls-dir {}: {}", dir, f));
  if (SSL_CTX_load_verify_locations(ctx, ca.c_str(), nullptr) != 1)
    return fail("{}: not a CA certificate: {}", ca, ssl_errors());
  if (SSL_CTX_use_certificate_chain_file(ctx, cert.c_str()) != 1)
    return fail("{}: not a certificate: {}", cert, ssl_errors());
  if (SSL_CTX_use_PrivateKey_file(ctx, key.c_str(), SSL_FILETYPE_PEM) != 1)
    return fail("{}: not a private key: {}", key, ssl_errors());
  if (SSL_CTX_check_private_key(ctx) != 1) return fail("{} does not belong to {}: {}", key, cert, ssl_errors());
  // Both sides prove who they are: a destination takes VMs only from hosts
  // its CA vouches for, and a source hands them only to such hosts.
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
  return {};
}

Status set_blocking(int fd, bool blocking) {
  const int flags = ::fcntl(fd, F_GETFL);
  if (flags < 0) return fail_sys("fcntl(F_GETFL)");
  const int want = blocking ? (flags & ~O_NONBLOCK) : (flags | O_NONBLOCK);
  if (want != flags && ::fcntl(fd, F_SETFL, want) != 0) return fail_sys("fcntl(F_SETFL)");
  return {};
}

std::string peer_name(SSL* ssl) {
  X509* cert = SSL_get0_peer_certificate(ssl);
  if (!cert) return "";
  char cn[256] = {};
  X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, cn, sizeof cn);
  return cn;
}

// OpenSSL's reason, with what it usually means for a migration.
std::string explain(const std::string& why, Security::Kind kind) {
  auto has = [&](std::string_view s) { return why.find(s) != std::string::npos; };
  if (has("binder does not verify")) return fmt::format("the peer's pre-shared key is not ours ({})", why);
  if (has("wrong version number") || has("packet length too long") || has("unexpected eof") ||
      has("record layer failure") || has("http request"))
    return fmt::format("the peer does not speak TLS ({}): is it running with --insecure?", why);
  if (has("alert") && kind == Security::Kind::kPreSharedKey)
    return fmt::format("the peer refused the handshake ({}): is the pre-shared key the same on both hosts?", why);
  if (has("alert unknown ca") || has("alert bad certificate") || has("certificate required") ||
      has("alert certificate unknown") || has("peer did not return a certificate"))
    return fmt::format("the peer refused our certificate or sent none ({}): are both hosts' ca.pem the same CA?", why);
  if (has("no suitable signature algorithm") || has("no shared cipher") || has("alert handshake failure"))
    return fmt::format("no common ground for a handshake ({}): does the peer use the same mode (--tls-dir or "
                       "--tls-psk) as this host?",
                       why);
  return why;
}

// Drives SSL_do_handshake on a non-blocking socket until it is done or the
// deadline passes: one deadline for the whole handshake, so a peer that
// trickles bytes gains nothing.
Status run_handshake(SSL* ssl, int fd, Clock::time_point deadline, Security::Kind kind) {
  for (;;) {
    ERR_clear_error();
    const int r = SSL_do_handshake(ssl);
    if (r == 1) return {};
    const int e = SSL_get_error(ssl, r);
    short events = 0;
    if (e == SSL_ERROR_WANT_READ) events = POLLIN;
    if (e == SSL_ERROR_WANT_WRITE) events = POLLOUT;
    if (events == 0) {
      const long v = SSL_get_verify_result(ssl);
      if (v != X509_V_OK) {
        return fail("the peer's certificate is not acceptable: {} (is it signed by our ca.pem, and does it name "
                    "the address dialled?)",
                    X509_verify_cert_error_string(v));
      }
      auto why = ssl_errors();
      if (why.empty()) why = e == SSL_ERROR_SYSCALL && errno != 0 ? std::strerror(errno) : "the peer closed the connection";
      return fail("{}", explain(why, kind));
    }
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) return std::unexpected(Error("no handshake before the deadline", ETIMEDOUT));
    pollfd p{.fd = fd, .events = events, .revents = 0};
    if (::poll(&p, 1, static_cast<int>(left)) < 0 && errno != EINTR) return fail_sys("poll");
  }
}

}  // namespace

std::string ssl_errors() {
  std::string out;
  for (unsigned long e = ERR_get_error(); e != 0; e = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    if (!out.empty()) out += "; ";
    out += buf;
  }
  return out;
}

std::string Security::describe() const {
  switch (kind) {
    case Kind::kInsecure: return "plain TCP (--insecure): not authenticated, not encrypted";
    case Kind::kCertificates: return fmt::format("TLS 1.3, certificates from {}", path);
    case Kind::kPreSharedKey: return fmt::format("TLS 1.3, pre-shared key {}", path);
  }
  return "?";
}

Result<Security> security_from_flags(const std::string& tls_dir, const std::string& tls_psk, bool insecure) {
  const int given = !tls_dir.empty() + !tls_psk.empty() + insecure;
  if (given == 0) {
    return fail("say how to secure the migration: --tls-dir DIR (certificates), --tls-psk FILE (a pre-shared key), "
                "or --insecure (plain TCP, for a trusted network only)");
  }
  if (given > 1) return fail("--tls-dir, --tls-psk and --insecure exclude each other");
  if (insecure) return Security{};
  if (!tls_dir.empty()) return Security{Security::Kind::kCertificates, tls_dir};
  return Security{Security::Kind::kPreSharedKey, tls_psk};
}

std::string_view security_mode_name(Security::Kind k) {
  switch (k) {
    case Security::Kind::kInsecure: return "insecure";
    case Security::Kind::kCertificates: return "certificates";
    case Security::Kind::kPreSharedKey: return "psk";
  }
  return "?";
}

Result<Security> security_from_mode(std::string_view mode, std::string path) {
  for (auto k : {Security::Kind::kInsecure, Security::Kind::kCertificates, Security::Kind::kPreSharedKey}) {
    if (mode != security_mode_name(k)) continue;
    if (k != Security::Kind::kInsecure && path.empty()) return fail("security mode {} needs a path", mode);
    return Security{k, k == Security::Kind::kInsecure ? std::string() : std::move(path)};
  }
  return fail("unknown security mode '{}' (insecure, certificates, psk)", mode);
}

Result<TlsContext> TlsContext::load(const Security& s, TlsRole role) {
  if (!s.encrypted()) return fail("TLS asked for without credentials");
  // No cleanup at exit: relay threads may still be encrypting a connection
  // when the process ends, and must not find OpenSSL torn down under them.
  static const bool init = OPENSSL_init_ssl(OPENSSL_INIT_NO_ATEXIT, nullptr) == 1;
  if (!init) return fail("OpenSSL failed to initialise: {}", ssl_errors());
  auto st = std::make_shared<State>();
  st->role = role;
  st->security = s;
  st->ctx.reset(SSL_CTX_new(role == TlsRole::kClient ? TLS_client_method() : TLS_server_method()));
  SSL_CTX* ctx = st->ctx.get();
  if (!ctx) return fail("SSL_CTX_new: {}", ssl_errors());
  SSL_CTX_set_app_data(ctx, st.get());
  if (SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) != 1 ||
      SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION) != 1 || SSL_CTX_set_ciphersuites(ctx, kSuite) != 1) {
    return fail("TLS 1.3 with {}: {}", kSuite, ssl_errors());
  }
  // Nothing may follow the handshake but data: kernel TLS takes over at
  // record 0, and a session ticket would be a record it cannot read.
  SSL_CTX_set_num_tickets(ctx, 0);
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_keylog_callback(ctx, keylog);
  if (s.kind == Security::Kind::kCertificates) {
    if (auto ok = load_certificates(ctx, s.path); !ok) return std::unexpected(std::move(ok.error()));
  } else {
    auto key = read_psk(s.path);
    if (!key) return std::unexpected(std::move(key.error()));
    st->psk = std::move(*key);
    if (role == TlsRole::kClient) SSL_CTX_set_psk_use_session_callback(ctx, use_psk);
    else SSL_CTX_set_psk_find_session_callback(ctx, find_psk);
    // A TLS 1.3 server may ignore the offered key and present a certificate
    // instead: with no CA to check it against, the client fails such a
    // handshake (and secure() also insists the key was used). The server,
    // without a certificate of its own, can only complete PSK handshakes.
    if (role == TlsRole::kClient) SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
  }
  return TlsContext(std::move(st));
}

TlsContext::TlsContext(TlsContext&&) noexcept = default;
TlsContext& TlsContext::operator=(TlsContext&&) noexcept = default;
TlsContext::~TlsContext() = default;
TlsRole TlsContext::role() const { return s_->role; }
void TlsContext::disable_kernel_tls() { s_->kernel_tls = false; }
std::string TlsContext::describe() const { return s_->security.describe(); }

Result<Connection> TlsContext::secure(Connection raw, const std::string& peer_host, Clock::time_point deadline) const {
  const std::string peer = raw.peer();
  auto failed = [&](Error e) { return std::unexpected(std::move(e).context(fmt::format("TLS with {}", peer))); };
  SslPtr ssl(SSL_new(s_->ctx.get()));
  if (!ssl) return failed(Error(fmt::format("SSL_new: {}", ssl_errors())));
  TrafficSecrets secrets;
  SSL_set_app_data(ssl.get(), &secrets);
  if (SSL_set_fd(ssl.get(), raw.fd()) != 1) return failed(Error(ssl_errors()));
  if (s_->role == TlsRole::kClient && s_->security.kind == Security::Kind::kCertificates) {
    // The server must be the host the user named: its certificate carries
    // that name or address.
    in6_addr a6{};
    const bool is_ip = ::inet_pton(AF_INET, peer_host.c_str(), &a6) == 1 || ::inet_pton(AF_INET6, peer_host.c_str(), &a6) == 1;
    const int ok = is_ip ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl.get()), peer_host.c_str())
                         : SSL_set1_host(ssl.get(), peer_host.c_str());
    if (ok != 1) return failed(Error(fmt::format("cannot check the name '{}': {}", peer_host, ssl_errors())));
    if (!is_ip) SSL_set_tlsext_host_name(ssl.get(), peer_host.c_str());
  }
  if (s_->role == TlsRole::kClient) SSL_set_connect_state(ssl.get());
  else SSL_set_accept_state(ssl.get());
  if (auto nb = set_blocking(raw.fd(), false); !nb) return failed(std::move(nb.error()));
  SigpipeBlock no_sigpipe;
  if (auto hs = run_handshake(ssl.get(), raw.fd(), deadline, s_->security.kind); !hs)
    return failed(std::move(hs.error()));
  if (auto b = set_blocking(raw.fd(), true); !b) return failed(std::move(b.error()));
  SSL_set_app_data(ssl.get(), nullptr);
  if (s_->security.kind == Security::Kind::kPreSharedKey && SSL_session_reused(ssl.get()) != 1) {
    // Whoever finished a handshake without our key did not prove anything.
    return failed(Error("the peer completed the handshake without the pre-shared key: refused"));
  }

  Connection::Secret secret{};
  if (SSL_export_keying_material(ssl.get(), reinterpret_cast<unsigned char*>(secret.data()), secret.size(),
                                 kExporterLabel.data(), kExporterLabel.size(), nullptr, 0, 0) != 1) {
    return failed(Error(fmt::format("exporting the session secret: {}", ssl_errors())));
  }
  std::string who = s_->security.kind == Security::Kind::kPreSharedKey ? "pre-shared key"
                                                                          : fmt::format("peer CN={}", peer_name(ssl.get()));
  if (secrets.client.empty() || secrets.server.empty()) return failed(Error("no traffic secrets from the handshake"));
  std::string no_kernel = "this kernel has no TLS";
  if (!s_->kernel_tls) no_kernel = "kernel TLS not used";
  if (s_->kernel_tls && kernel_tls_available()) {
    auto k = install_kernel_tls(raw.fd(), secrets, s_->role, no_kernel);
    if (!k) return failed(std::move(k.error()));
    if (*k) {
      Connection c(raw.release(), peer);
      c.set_security(fmt::format("TLS 1.3 {} ({}), kernel TLS", kSuite, who), secret);
      return c;
    }
    spdlog::warn("TLS with {}: kernel TLS refused ({}): encrypting in userspace", peer, no_kernel);
  }
  UniqueFd tcp = raw.release();
  auto engine_end = start_tls_relay(std::move(ssl), std::move(tcp), s_);
  if (!engine_end) return failed(std::move(engine_end.error()));
  Connection c(std::move(*engine_end), peer);
  c.set_security(fmt::format("TLS 1.3 {} ({}), userspace relay ({})", kSuite, who, no_kernel), secret);
  return c;
}

}  // namespace ferry::transport

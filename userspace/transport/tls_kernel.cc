// Kernel TLS: the keys of a finished TLS 1.3 handshake, given to the socket
// (tls_internal.hh). OpenSSL 3.0 offloads TLS 1.3 transmit only; receive
// matters just as much here (the destination reads pages straight into
// guest memory through io_uring), so Ferry derives the record keys itself
// from the traffic secrets (RFC 8446 7.3) and sets both directions.
#include <arpa/inet.h>
#include <linux/tls.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/core_names.h>
#include <openssl/kdf.h>
#include <sys/socket.h>

#include <cstring>
#include <mutex>

#include "userspace/base/hex.hh"
#include "userspace/base/unique_fd.hh"
#include "userspace/transport/tls_internal.hh"

namespace ferry::transport {
namespace {

// HKDF-Expand-Label(secret, label, "", length) with SHA-256.
Result<std::vector<unsigned char>> expand_label(std::span<const std::byte> secret, std::string_view label,
                                                std::size_t length) {
  // HkdfLabel: u16 length, u8 label length, "tls13 " + label, u8 0 (no
  // context). Labels here are "key" and "iv": it always fits.
  constexpr std::string_view kPrefix = "tls13 ";
  unsigned char info[4 + kPrefix.size() + 16];
  if (label.size() > 16) return fail("HKDF label '{}' too long", label);
  std::size_t n = 0;
  info[n++] = static_cast<unsigned char>(length >> 8);
  info[n++] = static_cast<unsigned char>(length & 0xff);
  info[n++] = static_cast<unsigned char>(kPrefix.size() + label.size());
  std::memcpy(info + n, kPrefix.data(), kPrefix.size());
  n += kPrefix.size();
  std::memcpy(info + n, label.data(), label.size());
  n += label.size();
  info[n++] = 0;
  EVP_KDF* kdf = EVP_KDF_fetch(nullptr, "HKDF", nullptr);
  if (!kdf) return fail("HKDF unavailable: {}", ssl_errors());
  EVP_KDF_CTX* kctx = EVP_KDF_CTX_new(kdf);
  EVP_KDF_free(kdf);
  if (!kctx) return fail("HKDF: {}", ssl_errors());
  int mode = EVP_KDF_HKDF_MODE_EXPAND_ONLY;
  char digest[] = "SHA256";
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, digest, 0),
      OSSL_PARAM_construct_int(OSSL_KDF_PARAM_MODE, &mode),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, const_cast<std::byte*>(secret.data()), secret.size()),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, info, n),
      OSSL_PARAM_construct_end()};
  std::vector<unsigned char> out(length);
  const int ok = EVP_KDF_derive(kctx, out.data(), out.size(), params);
  EVP_KDF_CTX_free(kctx);
  if (ok != 1) return fail("HKDF-Expand-Label({}): {}", label, ssl_errors());
  return out;
}

Result<tls12_crypto_info_aes_gcm_128> record_keys(const std::string& secret_hex) {
  auto secret = from_hex(secret_hex);
  if (!secret) return std::unexpected(std::move(secret.error()).context("traffic secret"));
  auto key = expand_label(*secret, "key", TLS_CIPHER_AES_GCM_128_KEY_SIZE);
  auto iv = expand_label(*secret, "iv", TLS_CIPHER_AES_GCM_128_SALT_SIZE + TLS_CIPHER_AES_GCM_128_IV_SIZE);
  if (!key) return std::unexpected(std::move(key.error()));
  if (!iv) return std::unexpected(std::move(iv.error()));
  tls12_crypto_info_aes_gcm_128 info{};
  info.info.version = TLS_1_3_VERSION;
  info.info.cipher_type = TLS_CIPHER_AES_GCM_128;
  std::memcpy(info.key, key->data(), sizeof info.key);
  // TLS 1.3's 12-byte IV: the kernel calls its first 4 bytes the salt.
  std::memcpy(info.salt, iv->data(), sizeof info.salt);
  std::memcpy(info.iv, iv->data() + sizeof info.salt, sizeof info.iv);
  // rec_seq stays 0: the first record after the handshake.
  OPENSSL_cleanse(key->data(), key->size());
  return info;
}

}  // namespace

Result<bool> install_kernel_tls(int fd, const TrafficSecrets& secrets, TlsRole role, std::string& why) {
  if (::setsockopt(fd, SOL_TCP, TCP_ULP, "tls", sizeof "tls") != 0) {
    why = sys_error("setsockopt(TCP_ULP, tls)").what();
    return false;
  }
  const bool client = role == TlsRole::kClient;
  auto tx = record_keys(client ? secrets.client : secrets.server);
  auto rx = record_keys(client ? secrets.server : secrets.client);
  if (!tx) return std::unexpected(std::move(tx.error()));
  if (!rx) return std::unexpected(std::move(rx.error()));
  const int tx_ok = ::setsockopt(fd, SOL_TLS, TLS_TX, &*tx, sizeof *tx);
  const int tx_errno = errno;
  const int rx_ok = tx_ok == 0 ? ::setsockopt(fd, SOL_TLS, TLS_RX, &*rx, sizeof *rx) : -1;
  OPENSSL_cleanse(&*tx, sizeof *tx);
  OPENSSL_cleanse(&*rx, sizeof *rx);
  if (tx_ok != 0) {
    // The ULP without keys passes bytes through as TCP.
    why = sys_error("setsockopt(SOL_TLS, TLS_TX)", tx_errno).what();
    return false;
  }
  if (rx_ok != 0) return fail_sys("setsockopt(SOL_TLS, TLS_RX) after TLS_TX");
  return true;
}

bool kernel_tls_available() {
  static std::once_flag once;
  static bool available = false;
  std::call_once(once, [] {
    // A ULP attaches only to an established TCP socket: a loopback pair.
    UniqueFd l(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (!l || ::bind(l.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(l.get(), 1) != 0 ||
        ::getsockname(l.get(), reinterpret_cast<sockaddr*>(&a), &len) != 0) {
      return;
    }
    UniqueFd c(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!c || ::connect(c.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) return;
    UniqueFd s(::accept4(l.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (::setsockopt(c.get(), SOL_TCP, TCP_ULP, "tls", sizeof "tls") != 0) return;
    // The ULP alone is not enough: the kernel also needs gcm(aes) (a
    // module of its own on some kernels).
    tls12_crypto_info_aes_gcm_128 probe{};
    probe.info.version = TLS_1_3_VERSION;
    probe.info.cipher_type = TLS_CIPHER_AES_GCM_128;
    available = ::setsockopt(c.get(), SOL_TLS, TLS_TX, &probe, sizeof probe) == 0;
  });
  return available;
}

}  // namespace ferry::transport

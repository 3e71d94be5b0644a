// The resolver's proof (session_proof.hh), HMAC-SHA256 from OpenSSL.
#include "userspace/migration/session_proof.hh"

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <cstring>
#include <string_view>

namespace ferry::migration {
namespace {
constexpr std::string_view kLabel = "ferry resolve proof v1";
}  // namespace

Secret session_proof(const Secret& session_secret, const Secret& binding) {
  unsigned char msg[kLabel.size() + sizeof(Secret)];
  std::memcpy(msg, kLabel.data(), kLabel.size());
  std::memcpy(msg + kLabel.size(), binding.data(), binding.size());
  Secret out{};
  std::size_t len = 0;
  // EVP_Q_mac fails only when HMAC or SHA-256 is missing from the library;
  // the zero proof that then results matches nothing a peer computes.
  (void)EVP_Q_mac(nullptr, "HMAC", nullptr, "SHA256", nullptr, session_secret.data(), session_secret.size(), msg,
                  sizeof msg, reinterpret_cast<unsigned char*>(out.data()), out.size(), &len);
  return out;
}

bool proof_matches(const Secret& session_secret, const Secret& binding, const Secret& proof) {
  const Secret want = session_proof(session_secret, binding);
  return CRYPTO_memcmp(want.data(), proof.data(), want.size()) == 0 && want != Secret{};
}

}  // namespace ferry::migration

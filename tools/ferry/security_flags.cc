// The security flags (security_flags.hh).
#include "tools/ferry/security_flags.hh"

#include <filesystem>

namespace ferry::cli {

void add_security_flags(CLI::App* cmd, SecurityFlags& f) {
  cmd->add_option("--tls-dir", f.tls_dir,
                  "TLS 1.3 with certificates: DIR holds ca.pem (the CA both hosts trust), cert.pem and key.pem "
                  "(this host's; the destination's must name the address the source dials). See docs/security.md")
      ->type_name("DIR");
  cmd->add_option("--tls-psk", f.tls_psk,
                  "TLS 1.3 with a pre-shared key: FILE holds at least 32 bytes in hex, mode 600 "
                  "(openssl rand -hex 32 > FILE), the same on both hosts")
      ->type_name("FILE");
  cmd->add_flag("--insecure", f.insecure,
                "plain TCP: no authentication, no encryption (anyone on the path reads guest memory); only on a "
                "network you trust");
}

Result<transport::Security> security_of(const SecurityFlags& f, transport::TlsRole role) {
  auto s = transport::security_from_flags(f.tls_dir, f.tls_psk, f.insecure);
  if (!s) return s;
  if (!s->encrypted()) return s;
  std::error_code ec;
  const auto abs = std::filesystem::absolute(s->path, ec);
  if (!ec) s->path = abs.string();
  if (auto ctx = transport::TlsContext::load(*s, role); !ctx) return std::unexpected(std::move(ctx.error()));
  return s;
}

}  // namespace ferry::cli

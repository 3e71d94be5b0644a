#pragma once
// --tls-dir / --tls-psk / --insecure, shared by `ferry receive`, `ferry
// migrate` and the demo: how a migration's connections are secured.
#include <string>

#include <CLI/CLI.hpp>

#include "userspace/base/error.hh"
#include "userspace/transport/tls.hh"

namespace ferry::cli {

struct SecurityFlags {
  std::string tls_dir, tls_psk;
  bool insecure = false;
};

void add_security_flags(CLI::App* cmd, SecurityFlags& f);
// Exactly one of the three; paths made absolute (the VM process that uses
// them may run elsewhere) and the credentials loaded once to fail early.
Result<transport::Security> security_of(const SecurityFlags& f, transport::TlsRole role);

}  // namespace ferry::cli

#pragma once
// Routes libbpf's diagnostics (including the verifier log on a failed load)
// into spdlog, so they reach the same place as Ferry's own messages instead
// of libbpf's default raw stderr prints.

namespace ferry::bpf {

// Installs the libbpf print callback. Safe to call from every loader: only
// the first call has an effect.
void install_libbpf_logging();

}  // namespace ferry::bpf

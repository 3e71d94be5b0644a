#pragma once
// What the kernel sees of this migration, for the adaptive switchover
// policy: this VM's dirtying per vCPU in real time (eBPF on KVM's dirty
// tracepoints) and the capacity and RTT of the migration connections
// (eBPF on tcp:tcp_probe). Each half works or says why not; the policy then
// falls back to the engine's own counters for that half, and the report
// names what was used.
#include <chrono>
#include <memory>
#include <optional>
#include <string>

#include "userspace/migration/policy.hh"

namespace ferry::migration {

class KernelView {
 public:
  // Never null. use_ebpf=false (ferry migrate --no-ebpf) opens nothing.
  static std::unique_ptr<KernelView> open(bool use_ebpf);
  virtual ~KernelView() = default;

  // A migration socket: its local port is registered with the TCP tracer.
  virtual void watch_socket(int fd) = 0;
  // Marks the start of a pre-copy round.
  virtual void round_begin() = 0;
  // Measurements since round_begin(); nullopt when neither half works.
  // An empty dirty_pages_per_s means the dirty half saw nothing of this VM
  // (e.g. the bitmap on a host whose KVM fires no write-fault tracepoint).
  virtual std::optional<KernelRound> round_end() = 0;
  // One line for the report: what the policy measures with, and why not.
  virtual std::string describe() const = 0;
};

}  // namespace ferry::migration
